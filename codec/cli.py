"""Command line: `codec encode`, `codec decode`, `codec info`, `codec sweep`.

Quiet by default: a one-line summary on stderr, or one JSON object on stdout with --json.
Errors: one line `codec: error: ...` on stderr; exit 1 for bad data or files, 2 for bad usage.
Outputs are written to a temporary file and renamed into place, so a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bitstream import BitstreamError, describe
from bitstream.container import ConcealedWarning, read_header
from codec import __version__
from codec.metrics import bpp

EXIT_DATA, EXIT_USAGE = 1, 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as the CLI contract says
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _quality(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"quality must be a number, got {text!r}") from None
    if not (math.isfinite(q) and 0 <= q <= 100):
        raise argparse.ArgumentTypeError(f"quality must be in 0..100, got {text}")
    return q


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BitstreamError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise BitstreamError(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise BitstreamError(f"cannot read {path}: {e.strerror}") from None


def write_output(path: str, data: bytes) -> None:
    """Write atomically: a temporary file beside the target, renamed over it when complete."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or ".")
    except OSError as e:
        raise BitstreamError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise BitstreamError(f"cannot write {path}: {e.strerror}") from None
        raise


def _report(args, summary: str, fields: dict) -> None:
    if args.json:
        print(json.dumps(fields))
    else:
        print(summary, file=sys.stderr)


def cmd_encode_video(args) -> None:
    """A video in (by IN's suffix): every frame coded as an image, with a frame counter on stderr."""
    from codec import api
    from codec.io import ImageReadError, read_video
    for flag, name in ((args.bpp or args.size, "--bpp / --size"), (args.roi, "--roi"), (args.refine, "--refine"),
                       (args.resilient, "--resilient")):
        if flag:
            raise UsageError(f"{name} is for images; a video takes --quality (or --codebook / --depth)")
    frames, rate, count = read_video(args.input)
    t0 = time.perf_counter()

    def progress(i: int) -> None:
        if not args.json:
            print(f"\rframe {i + 1}" + (f"/{count}" if count else ""), end="", file=sys.stderr, flush=True)

    try:
        data = api.encode_video(frames, rate, model=args.model, quality=args.quality, codebook=args.codebook,
                                depth=args.depth, device=args.device, max_pixels=args.max_pixels, progress=progress)
    except (ImageReadError, BitstreamError):  # bad data: ValueErrors too, but exit 1
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        if not args.json:
            print(file=sys.stderr)
    info = describe(data)
    n, w, h = len(info["frames"]), info["width"], info["height"]
    write_output(args.output, data)
    fields = {"input": args.input, "output": args.output, "model": args.model, "quality": info["quality"],
              "width": w, "height": h, "frames": n, "fps": info["fps"], "bytes": len(data),
              "bpp": round(bpp(len(data), w, h) / n, 5), "encode_s": round(time.perf_counter() - t0, 3)}
    _report(args, f"{args.input} -> {args.output}: {n} frames, {len(data)} bytes, {fields['bpp']:.4f} bpp", fields)


def cmd_encode(args) -> None:
    from codec import api
    from codec.io import ImageReadError, is_video, load_image
    from codec.metrics import psnr

    if is_video(args.input):
        return cmd_encode_video(args)
    rgb = load_image(read_input(args.input))
    t0 = time.perf_counter()
    try:
        data = api.encode(rgb, model=args.model, quality=args.quality, bpp=args.bpp, size=args.size,
                          codebook=args.codebook, depth=args.depth, refine=args.refine, device=args.device,
                          refine_device=args.refine_device, max_pixels=args.max_pixels, roi=_region(args.roi, args.roi_quality),
                          roi_quality=args.roi_quality, resilient=args.resilient)
    except (ImageReadError, BitstreamError):  # bad data: ValueErrors too, but exit 1
        raise
    except ValueError as e:  # the API's word for bad arguments
        raise UsageError(str(e)) from None
    encode_s = time.perf_counter() - t0
    h, w = rgb.shape[:2]
    info = describe(data)
    target = api.budget_bytes(args.bpp, args.size, w, h)
    if target is not None and len(data) > target:
        print(f"codec: warning: {len(data)} bytes at the lowest quality, over the {target:.0f}-byte target",
              file=sys.stderr)
    fields = {"input": args.input, "output": args.output, "model": args.model, "quality": info["quality"],
              "width": w, "height": h, "bytes": len(data), "bpp": round(bpp(len(data), w, h), 5),
              "encode_s": round(encode_s, 3)}
    if info["codebook"]:
        fields.update(codebook=info["codebook"], depth=info["depth"])
    if args.json:  # the PSNR a user will get: decode the very bytes just written
        t0 = time.perf_counter()
        decoded = api.decode_rgb(data, device=args.device)
        fields["decode_s"] = round(time.perf_counter() - t0, 3)
        fields["psnr"] = round(psnr(rgb, decoded), 3)
    write_output(args.output, data)
    _report(args, f"{args.input} -> {args.output}: {len(data)} bytes, {fields['bpp']:.4f} bpp", fields)


def _region(values: list[str] | None, quality: float | None):
    """--roi's values -> what api.encode takes: None, "auto", a mask's path or a list of boxes."""
    from codec.roi import parse_box
    if not values:
        if quality is not None:
            raise UsageError("--roi-quality needs a region (--roi)")
        return None
    if len(values) == 1 and (values[0] == "auto" or "," not in values[0]):
        if values[0] != "auto" and not Path(values[0]).is_file():
            raise UsageError(f"--roi {values[0]}: no such mask file (or give x,y,w,h or auto)")
        return values[0]
    try:
        return [parse_box(v) for v in values]
    except ValueError as e:
        raise UsageError(f"--roi: {e}") from None


def _warn_concealed(concealed) -> None:
    for w in concealed:
        if issubclass(w.category, ConcealedWarning):
            print(f"codec: warning: {w.message}", file=sys.stderr)


def cmd_decode_video(args, data: bytes) -> None:
    """A video .bin out to .mkv, .y4m or PNG frames (by OUT's name), with a frame counter on stderr."""
    from codec import api
    from codec.io import encode_image, video_writer, write_video
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as concealed:
        warnings.simplefilter("always", ConcealedWarning)
        header, rate, count, frames = api.decode_video(data, device=args.device, conceal=args.conceal,
                                                       max_pixels=args.max_pixels)  # the file checked first
        try:
            writer = video_writer(args.output)
        except ValueError as e:
            raise UsageError(str(e)) from None

        def counted():
            for i, rgb in enumerate(frames):
                if not args.json:
                    print(f"\rframe {i + 1}/{count}", end="", file=sys.stderr, flush=True)
                yield rgb

        written = []
        try:
            if writer is None:  # PNG frames, each renamed into place when complete
                for i, rgb in enumerate(counted()):
                    write_output(args.output % i, encode_image(rgb))
                    written.append(Path(args.output % i))
            else:
                write_video(args.output, counted(), rate, writer)
        except BaseException:
            for path in written:  # a failure leaves no frame behind either
                path.unlink(missing_ok=True)
            raise
        finally:
            if not args.json:
                print(file=sys.stderr)
    _warn_concealed(concealed)
    w, h = header.width, header.height
    fields = {"input": args.input, "output": args.output, "width": w, "height": h, "frames": count,
              "fps": f"{rate.numerator}/{rate.denominator}", "bytes": len(data), "bpp": round(bpp(len(data), w, h) / count, 5),
              "decode_s": round(time.perf_counter() - t0, 3)}
    _report(args, f"{args.input} -> {args.output}: {count} frames of {w}x{h} at {rate} fps", fields)


def cmd_decode(args) -> None:
    from codec import api
    from codec.io import encode_image, image_format, video_writer

    suffix = "" if args.output == "-" else Path(args.output).suffix
    try:
        image_format(suffix)
        as_image = True
    except ValueError as e:
        try:
            video_writer(args.output)
        except ValueError:
            raise UsageError(f"{e} for {args.output}") from None
        as_image = False
    data = read_input(args.input)
    if read_header(data)[0].mode == "video":
        return cmd_decode_video(args, data)
    if not as_image:
        raise UsageError(f"{args.input} holds an image: decode it to an image file (.png, .jpg, .webp, ...)")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as concealed:
        warnings.simplefilter("always", ConcealedWarning)
        rgb = api.decode_rgb(data, device=args.device, conceal=args.conceal, max_pixels=args.max_pixels)
    decode_s = time.perf_counter() - t0
    _warn_concealed(concealed)
    out = encode_image(rgb, suffix)
    write_output(args.output, out)
    h, w = rgb.shape[:2]
    fields = {"input": args.input, "output": args.output, "width": w, "height": h, "bytes": len(data),
              "bpp": round(bpp(len(data), w, h), 5), "decode_s": round(decode_s, 3)}
    _report(args, f"{args.input} -> {args.output}: {w}x{h}", fields)


def cmd_info(args) -> None:
    fields = describe(read_input(args.input))
    frames = len(fields.get("frames", ())) or 1  # a video's bpp: bits over frames x pixels
    fields["bpp"] = round(bpp(fields["bytes"], fields["width"], fields["height"]) / frames, 5)
    if args.json:
        print(json.dumps(fields))
        return
    for key, value in fields.items():
        if key == "frames":
            print(f"{key:15s} {len(value)}")
            for f in value:
                print(f"  frame {f['index']:5d} offset {f['offset']:8d}  length {f['length']:8d}")
        elif key != "packets":
            print(f"{key:15s} {value}")
    print("packets")
    for p in fields["packets"]:
        print(f"  {p['kind']:8s} offset {p['offset']:8d}  length {p['length']:8d}  covers {p['first']}..{p['first'] + p['count'] - 1}")


def cmd_sweep(args) -> None:
    from codec import sweep
    try:
        names = sweep.expand(args.codecs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not args.dataset.is_dir():
        raise UsageError(f"--dataset {args.dataset} is not a folder")
    sweep.run(args.dataset, names, args.out, args.qualities, args.jobs, args.device, args.refine_device)
    print(f"sweep: results in {args.out} (per_image.csv, <codec>.json, bdrate.md, rd.png)", file=sys.stderr)


def build_parser() -> Parser:
    p = Parser(prog="codec", description="A learned image codec: encode images to self-describing .bin "
               "files and decode them back, with the weights shipped in the package.",
               epilog="Examples:\n  codec encode photo.png photo.bin --quality 60\n  codec decode photo.bin out.png\n"
               "  codec info photo.bin --json\n'-' as IN or OUT means stdin or stdout.",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"codec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    e = sub.add_parser("encode", help="compress an image or a video to a .bin", description="Compress an "
                       "image (PNG, JPEG, WebP, ...) or a video (.mp4, .mkv, .avi, .y4m, .mov, .webm: every frame "
                       "coded on its own, as an image) into a .bin file.")
    e.add_argument("input", metavar="IN", help="image or video file, or - for an image on stdin")
    e.add_argument("output", metavar="OUT", help=".bin file to write, or - for stdout")
    e.add_argument("--model", default="hp", choices=["hp", "vq"],
                   help="hp: hyperprior, about 0.1-2 bpp; vq: vector-quantized, extreme low rates (default: hp)")
    rate = e.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=_quality, default=50.0,
                      help="0..100, higher is better and larger; continuous (default: 50)")
    rate.add_argument("--bpp", type=_positive(float), help="target bits per pixel (whole file): "
                      "the highest quality that fits is searched")
    rate.add_argument("--size", type=_positive(int), help="target file size in bytes, searched like --bpp")
    e.add_argument("--codebook", type=_positive(int), metavar="K",
                   help="vq: codebook size (2, 4, ..., 8192); overrides --quality")
    e.add_argument("--depth", type=_positive(int), metavar="D",
                   help="vq: quantizer stages (residual VQ adds rate; with the full codebook only)")
    e.add_argument("--refine", type=int, default=0, metavar="N",
                   help="N steps of encoder-side search for latents that code better (hp: lower rate-"
                        "distortion loss, gaining more the longer it anneals: 120, with --refine-device cuda, "
                        "saved 6.4 %% of the bits on Kodak; under 40 gains little; vq: indices that decode "
                        "closer, 20); each step costs about two decodes of time; decoding is unchanged")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the networks run")
    e.add_argument("--refine-device", choices=["cpu", "cuda"], help="where --refine's search runs (default: "
                   "--device); the file is coded on --device, so `--refine-device cuda` searches on a GPU "
                   "for a file that decodes on a CPU")
    e.add_argument("--max-pixels", type=_positive(int), metavar="N",
                   help="refuse images of more than N pixels (default: 2^25, about 33.5 M)")
    e.add_argument("--roi", action="append", metavar="MASK|x,y,w,h|auto",
                   help="a region of interest coded better than the rest: a mask image (white = region, resized "
                        "to the image), a box in pixels (repeatable), or auto (skin tones, edges, contrast). hp "
                        "codes it at --roi-quality and the rest at --quality (or the quality --bpp / --size find); "
                        "vq codes it with the larger codebook of --roi-quality's point")
    e.add_argument("--roi-quality", type=_quality, metavar="Q",
                   help="the region's quality, 0..100 (default: hp 80, vq the main codebook)")
    e.add_argument("--resilient", action="store_true",
                   help="write packets that decode each on its own (hp: slices of 128 pixel rows; vq: four "
                        "interleaved quarters of the index map), so that decode --conceal mends lost ones from the "
                        "rest; costs rate (on Kodak at quality 50: hp +1.8 %%, vq +10.6 %%)")
    e.add_argument("--json", action="store_true", help="print one JSON object: bytes, bpp, psnr, times")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="decode a .bin to an image or a video", description="Decode a .bin "
                       "file to an image (PNG unless OUT's extension names another format), or a video's to "
                       ".mkv (lossless FFV1), .y4m or PNG frames (OUT a pattern like frame%%04d.png).")
    d.add_argument("input", metavar="IN", help=".bin file, or - for stdin")
    d.add_argument("output", metavar="OUT", help="image or video to write, or - for an image as PNG on stdout")
    d.add_argument("--conceal", action="store_true",
                   help="decode past damaged, missing or unexpected packets, each reported as a warning, instead of "
                        "failing: vq restores lost indices with its index prior; hp predicts a lost latent packet from "
                        "the hyperprior, or in a --resilient file interpolates a lost slice from its neighbours (a lost "
                        "hyper-latent packet of a file that is not resilient cannot be mended)")
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the networks run")
    d.add_argument("--max-pixels", type=_positive(int), metavar="N",
                   help="refuse files that claim more than N pixels, before decoding (default: 2^25, about 33.5 M)")
    d.add_argument("--json", action="store_true", help="print one JSON object: size, bpp, time")
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="show a .bin's header and packets", description="Print the header "
                       "fields and the packet list (offset, length, kind) of a .bin without decoding it.")
    i.add_argument("input", metavar="IN", help=".bin file, or - for stdin")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("sweep", help="rate-distortion sweep against classical codecs",
                       description="Encode and decode every image of a folder with each codec at each quality; "
                       "write per-image CSV, CompressAI-layout JSON per codec, bdrate.md and RD plots. "
                       "Resumes from the CSV in --out.")
    s.add_argument("--dataset", type=Path, required=True, help="folder of images (e.g. Kodak)")
    from codec.sweep import ALIASES, CODECS  # no torch: the parser stays quick to build
    s.add_argument("--codecs", default="hp,bpg444,vtm,jpeg,webp,avif,jxl,heif",
                   help=f"comma-separated: {', '.join(CODECS)} ({'/'.join(ALIASES)} name both chroma formats)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--qualities", type=float, nargs="+", help="override every codec's quality list")
    s.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where our models run (encode and decode times are then that device's)")
    s.add_argument("--refine-device", choices=["cpu", "cuda"],
                   help="where the -refine codecs search (default: --device); their files are coded on --device")
    s.set_defaults(func=cmd_sweep)
    return p


def main(argv=None) -> int:
    from codec.io import ImageReadError

    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "json", False) and getattr(args, "output", None) == "-":
            raise UsageError("--json and OUT '-' would both write to stdout; pick one")
        if "cuda" in (getattr(args, "device", None), getattr(args, "refine_device", None)):
            import torch
            if not torch.cuda.is_available():
                raise UsageError("cuda asked for, but no CUDA device is available")
        args.func(args)
        return 0
    except UsageError as e:
        print(f"codec: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (BitstreamError, ImageReadError) as e:
        print(f"codec: error: {e}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print("codec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_DATA
    except Exception as e:  # never a traceback for a user; CODEC_DEBUG=1 shows it
        if os.environ.get("CODEC_DEBUG"):
            raise
        print(f"codec: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
