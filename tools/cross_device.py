"""Files written on one device decode on every other: the cross-device table of the README.

    python tools/cross_device.py encode --dataset DIR --out FILES/cpu-avx512 [--device cuda] [--limit N]
    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 python tools/cross_device.py encode ... --out FILES/cpu-default
    python tools/cross_device.py decode --files FILES/* --dataset DIR --out decoded-cpu.json [--device cuda]
                                        [--pixels PIX.npz] [--reference PIX.npz]
    python tools/cross_device.py table decoded-*.json

encode writes each image of the dataset at a few rates of each model (hp: three qualities; vq: three
operating points). decode decodes every .bin in the writer folders given and records, per
file, whether it decoded, the SHA-256 of its decoded symbols (hp: the latent y; vq: the index maps)
and of its pixels, and its PSNR; with --pixels it keeps the decoded pixels, with --reference it
reports the largest pixel difference against another decoder's. A decoder runs as one process, so
ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA (an older vector instruction set for ATen's and oneDNN's
kernels) and --device choose what it is.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bitstream  # noqa: E402
from codec import api  # noqa: E402
from codec.io import find_images, load_image  # noqa: E402
from codec.metrics import psnr  # noqa: E402

POINTS = [("hp", 16.67), ("hp", 50.0), ("hp", 83.33), ("vq", 38.46), ("vq", 76.92), ("vq", 100.0)]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}"


def encode(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    for path in find_images(args.dataset)[: args.limit]:
        rgb = load_image(path)
        for model, quality in POINTS:
            data = api.encode(rgb, model=model, quality=quality, device=args.device)
            (args.out / f"{path.stem}-{model}-q{quality:g}.bin").write_bytes(data)
    print(f"{args.out}: written on {device_name(args.device)}")


def decode(args) -> None:
    originals = {p.stem: p for p in find_images(args.dataset)}
    reference = dict(np.load(args.reference)) if args.reference else {}
    pixels: dict[str, np.ndarray] = {}
    rows = []
    for path in sorted(p for folder in args.files for p in folder.glob("*.bin")):
        name = path.stem
        row = {"writer": path.parent.name, "file": name}
        data = path.read_bytes()
        try:
            container = bitstream.read(data)
            net = api.model_of(container.header, args.device)
            decoded = net.decode(container.packets, container.header)
            symbols = decoded[0]
            rgb = api.to_rgb(net.reconstruct(*decoded), container.header.height,
                             container.header.width)
        except bitstream.BitstreamError as e:
            rows.append({**row, "decoded": False, "error": str(e)})
            continue
        row.update(decoded=True, symbols=hashlib.sha256(symbols.cpu().numpy().tobytes()).hexdigest(),
                   pixels=hashlib.sha256(rgb.tobytes()).hexdigest(),
                   psnr=round(psnr(load_image(originals[name.rsplit("-", 2)[0]]), rgb), 4))
        key = f"{row['writer']}__{name}"
        if key in reference:
            row["max_pixel_diff"] = int(np.abs(reference[key].astype(np.int16) - rgb).max())
        pixels[key] = rgb
        rows.append(row)
    if args.pixels:
        np.savez_compressed(args.pixels, **pixels)
    args.out.write_text(json.dumps({"decoder": device_name(args.device), "torch": torch.__version__,
                                    "rows": rows}, indent=1))
    print(f"{args.out}: {sum(r['decoded'] for r in rows)} of {len(rows)} files decoded on {device_name(args.device)}")


def table(args) -> None:
    """Markdown: one row per (writer, decoder), with decode rate, symbol agreement with the writer's
    own decode, and the pixel and PSNR differences."""
    runs = [json.loads(Path(p).read_text()) for p in args.results]
    own = {}  # (writer, file) -> symbols as decoded by the first run that decoded it
    for run in runs:
        for r in run["rows"]:
            if r["decoded"]:
                own.setdefault((r["writer"], r["file"]), (r["symbols"], r["psnr"]))
    print("| written on | decoded on | files | decoded | symbols identical | max pixel diff | max abs PSNR diff (dB) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        for writer in sorted({r["writer"] for r in run["rows"]}):
            rows = [r for r in run["rows"] if r["writer"] == writer]
            ok = [r for r in rows if r["decoded"]]
            same = sum(r["symbols"] == own[(writer, r["file"])][0] for r in ok)
            diffs = [r["max_pixel_diff"] for r in ok if "max_pixel_diff" in r]
            dpsnr = max((abs(r["psnr"] - own[(writer, r["file"])][1]) for r in ok), default=0.0)
            print(f"| {writer} | {run['decoder']} | {len(rows)} | {100 * len(ok) / len(rows):.0f} % | "
                  f"{100 * same / max(len(ok), 1):.0f} % | {max(diffs) if diffs else 'n/a'} | {dpsnr:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True, help="a folder named after the writer")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument("--limit", type=int, help="only the first N images")
    e.set_defaults(func=encode)
    d = sub.add_parser("decode")
    d.add_argument("--files", type=Path, nargs="+", required=True, help="writer folders of .bin files")
    d.add_argument("--dataset", type=Path, required=True, help="the original images (for PSNR)")
    d.add_argument("--out", type=Path, required=True, help="the JSON of this decoder's results")
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    d.add_argument("--pixels", type=Path, help="keep the decoded pixels here (.npz)")
    d.add_argument("--reference", type=Path, help="another decoder's --pixels, to measure pixel differences")
    d.set_defaults(func=decode)
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+")
    t.set_defaults(func=table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
