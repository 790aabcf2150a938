"""Rate-distortion sweeps: every image of a dataset through every codec at every quality.

Measured as ../shared/anchors/README.md says: bpp = 8 x whole file bytes / pixels, PSNR-RGB and
MS-SSIM (pytorch_msssim, data_range 255) and HaarPSI (piq) on the 8-bit RGB output, wall times per
image. Writes, in --out: per_image.csv (one row per codec, quality and image; the sweep resumes from
it, measuring again a model whose weights changed, as versions.json tells), <codec>.json in CompressAI's results layout, bdrate.md, rd.png and rd-msssim.png, and with vq
rd-lowrate.png (the extreme low rates).

External programs are found on PATH or through environment variables (BPGENC/BPGDEC, CJXL/DJXL,
HEIF_ENC/HEIF_DEC (heif-convert by default), VTM_ENCODER/VTM_DECODER and VTM_CFG, the path of
VTM's encoder_intra_vtm.cfg). A codec whose program is missing is skipped with a message; the reference
curves of ../shared/anchors/kodak are drawn dashed either way.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from codec.io import find_images, load_image
from codec.metrics import bpp, haarpsi, ms_ssim, psnr

ANCHORS = Path(__file__).resolve().parent.parent.parent / "shared" / "anchors" / "kodak"
CSV_FIELDS = ["codec", "quality", "image", "bytes", "bpp", "psnr-rgb", "ms-ssim-rgb", "haarpsi-rgb",
              "encoding_time", "decoding_time"]


class Devices(NamedTuple):
    """Where our models run ("cpu" or "cuda"): `code` codes and decodes the files, `search` runs the
    -refine codecs' encoder-side search. Classical codecs ignore both."""
    code: str
    search: str


# A coder: (rgb, quality, devices) -> (file bytes, decoded rgb, encode seconds, decode seconds).
Coder = Callable[[np.ndarray, float, Devices], tuple[bytes, np.ndarray, float, float]]


@dataclass
class CodecSpec:
    qualities: list[float] | Callable[[], list[float]]  # a callable is asked only when a sweep runs it
    coder: Coder
    tools: tuple[tuple[str, str], ...] = ()  # (environment variable, default program name)
    version: Callable[[], str] | None = None  # what the rows depend on (our models: the weights' hash)

    def default_qualities(self) -> list[float]:
        return self.qualities() if callable(self.qualities) else self.qualities

    def missing(self) -> list[str]:
        """Programs (or files) this codec needs that are not found, each with the variable that names it."""
        out = []
        for var, default in self.tools:
            value = os.environ.get(var, default)
            if not value or not (shutil.which(value) or (not default and os.path.isfile(value))):
                out.append(f"{value or var} (set {var})")
        return out


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _model_qualities(model: str) -> Callable[[], list[float]]:
    def qualities() -> list[float]:
        from codec import api  # torch and the weights only for a sweep that runs our models
        return api.model_qualities(model)
    return qualities


def _weights_version(model: str) -> Callable[[], str]:
    def version() -> str:
        from codec import zoo
        return zoo.weights_hash(zoo.weights_path(model)).hex()
    return version


def _refined_vq_qualities(count: int = 3) -> Callable[[], list[float]]:
    """The vq points at depth 1 with the `count` largest codebooks: where the vq curve meets the
    classical codecs' lowest settings (refinement costs ~20 decodes of time per image and point)."""
    def qualities() -> list[float]:
        from codec import zoo
        net = zoo.load("vq")[0]
        depth1 = [i for i, (_, d) in enumerate(net.points) if d == 1][-count:]
        return [net.qualities()[i] for i in depth1]
    return qualities


def _learned(model: str, **options) -> Coder:
    def run(rgb: np.ndarray, q: float, devices: Devices):
        from codec import api
        data, te = _timed(api.encode, rgb, model, q, device=devices.code, refine_device=devices.search, **options)
        out, td = _timed(api.decode_rgb, data, device=devices.code)
        return data, out, te, td
    return run


def _pillow(fmt: str, **options) -> Coder:
    def run(rgb: np.ndarray, q: float, devices: Devices):
        def enc():
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format=fmt, quality=int(q), **options)
            return buf.getvalue()

        def dec(data):
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))

        data, te = _timed(enc)
        out, td = _timed(dec, data)
        return data, out, te, td
    return run


def _external(encode_cmd: Callable[[str, str, float], list[str]], decode_cmd: Callable[[str, str], list[str]],
              suffix: str) -> Coder:
    """A codec behind command-line programs: PNG in, its file, PNG out."""
    def run(rgb: np.ndarray, q: float, devices: Devices):
        with tempfile.TemporaryDirectory() as tmp:
            src, mid, dst = (os.path.join(tmp, n) for n in ("in.png", "out" + suffix, "out.png"))
            Image.fromarray(rgb).save(src)
            _, te = _timed(_run_tool, encode_cmd(src, mid, q))
            _, td = _timed(_run_tool, decode_cmd(mid, dst))
            return Path(mid).read_bytes(), load_image(dst), te, td
    return run


class ToolError(RuntimeError):
    """An external codec program failed; the message carries its command and the end of its stderr."""


def _run_tool(cmd: list[str]) -> None:
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ToolError(f"{os.path.basename(cmd[0])} exited with {done.returncode}: {tail[0]}")


def _prog(var: str, default: str) -> str:
    return os.environ.get(var, default)


def _bpg(chroma: str) -> Coder:
    return _external(
        lambda src, out, q: [_prog("BPGENC", "bpgenc"), "-e", "x265", "-c", "ycbcr", "-b", "8", "-f", chroma,
                             "-q", str(int(q)), "-o", out, src],
        lambda src, out: [_prog("BPGDEC", "bpgdec"), "-o", out, src], ".bpg")


# ITU-R BT.709 luma weights, as CompressAI's VTM recipe uses them.
KR, KB = 0.2126, 0.0722
KG = 1 - KR - KB


def rgb_to_ycbcr444(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) uint8 full-range BT.709 YCbCr, truncated to 8 bits as
    CompressAI's recipe (and so the VTM anchor) does."""
    r, g, b = (rgb[..., i].astype(np.float32) / 255 for i in range(3))
    y = KR * r + KG * g + KB * b
    cb = 0.5 * (b - y) / (1 - KB) + 0.5
    cr = 0.5 * (r - y) / (1 - KR) + 0.5
    return (np.clip(np.stack([y, cb, cr]), 0, 1) * 255).astype(np.uint8)


def ycbcr444_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 YCbCr -> (H, W, 3) uint8 RGB, rounded."""
    y, cb, cr = (ycc[i].astype(np.float32) / 255 for i in range(3))
    r = y + (2 - 2 * KR) * (cr - 0.5)
    b = y + (2 - 2 * KB) * (cb - 0.5)
    g = (y - KR * r - KB * b) / KG
    return np.clip(np.round(np.stack([r, g, b], -1) * 255), 0, 255).astype(np.uint8)


def _vtm(rgb: np.ndarray, q: float, devices: Devices):
    """VTM all-intra on 4:4:4 8-bit YCbCr; VTM_CFG names encoder_intra_vtm.cfg."""
    cfg = os.environ.get("VTM_CFG", "")
    h, w = rgb.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        src, bits, rec = (os.path.join(tmp, n) for n in ("in.yuv", "out.bin", "rec.yuv"))
        rgb_to_ycbcr444(rgb).tofile(src)
        _, te = _timed(_run_tool, [
            _prog("VTM_ENCODER", "EncoderAppStatic"), "-i", src, "-c", cfg, "-q", str(int(q)), "-o", os.devnull,
            "-b", bits, "-wdt", str(w), "-hgt", str(h), "-fr", "1", "-f", "1", "--InputChromaFormat=444",
            "--InputBitDepth=8", "--ConformanceWindowMode=1"])
        _, td = _timed(_run_tool, [_prog("VTM_DECODER", "DecoderAppStatic"), "-b", bits, "-o", rec, "-d", "8"])
        decoded = np.fromfile(rec, np.uint8).reshape(3, h, w)
        return Path(bits).read_bytes(), ycbcr444_to_rgb(decoded), te, td


def _heif(chroma: str) -> Coder:
    return _external(
        lambda src, out, q: [_prog("HEIF_ENC", "heif-enc"), "-q", str(int(q)), "-p", f"chroma={chroma}", "-o", out, src],
        lambda src, out: [_prog("HEIF_DEC", "heif-convert"), src, out], ".heic")


HEIF_TOOLS = (("HEIF_ENC", "heif-enc"), ("HEIF_DEC", "heif-convert"))
# Steps of encoder-side search for the -refine codecs (each about two decodes of time). hp's annealing
# search gains most over many steps (results/stills/hp-refine.md), which is GPU work: sweep it with
# --refine-device cuda (results/kodak/hp-refine.json).
REFINE_STEPS = {"hp-refine": 120, "vq-refine": 20}

CODECS: dict[str, CodecSpec] = {
    # Our models: one quality per operating point of the shipped weights (codec.api.model_qualities).
    "hp": CodecSpec(_model_qualities("hp"), _learned("hp"), version=_weights_version("hp")),
    "hp-refine": CodecSpec(_model_qualities("hp"), _learned("hp", refine=REFINE_STEPS["hp-refine"]),
                           version=_weights_version("hp")),
    "vq": CodecSpec(_model_qualities("vq"), _learned("vq"), version=_weights_version("vq")),
    "vq-refine": CodecSpec(_refined_vq_qualities(), _learned("vq", refine=REFINE_STEPS["vq-refine"]),
                           version=_weights_version("vq")),
    "jpeg444": CodecSpec(list(range(5, 100, 5)), _pillow("JPEG", subsampling=0)),
    "jpeg420": CodecSpec(list(range(5, 100, 5)), _pillow("JPEG")),
    "webp": CodecSpec(list(range(5, 100, 5)), _pillow("WEBP")),
    "avif444": CodecSpec(list(range(10, 100, 10)) + [95], _pillow("AVIF", subsampling="4:4:4", speed=6, max_threads=1)),
    "avif420": CodecSpec(list(range(10, 100, 10)) + [95], _pillow("AVIF", subsampling="4:2:0", speed=6, max_threads=1)),
    "bpg444": CodecSpec([47, 45, 42, 40, 37, 35, 32, 30, 27, 25, 22, 20, 17, 12], _bpg("444"),
                        (("BPGENC", "bpgenc"), ("BPGDEC", "bpgdec"))),
    "bpg420": CodecSpec(list(range(47, 21, -5)), _bpg("420"), (("BPGENC", "bpgenc"), ("BPGDEC", "bpgdec"))),
    "vtm": CodecSpec(list(range(47, 21, -5)), _vtm, (("VTM_ENCODER", "EncoderAppStatic"),
                                                    ("VTM_DECODER", "DecoderAppStatic"), ("VTM_CFG", ""))),
    "jxl": CodecSpec([10, 20, 30, 40, 50, 60, 70, 80, 90, 95], _external(
        lambda src, out, q: [_prog("CJXL", "cjxl"), src, out, "-q", str(int(q))],
        lambda src, out: [_prog("DJXL", "djxl"), src, out], ".jxl"), (("CJXL", "cjxl"), ("DJXL", "djxl"))),
    "heif444": CodecSpec(list(range(10, 100, 10)), _heif("444"), HEIF_TOOLS),
    "heif420": CodecSpec(list(range(10, 100, 10)), _heif("420"), HEIF_TOOLS),
}
ALIASES = {"jpeg": ["jpeg444", "jpeg420"], "avif": ["avif444", "avif420"], "bpg": ["bpg444", "bpg420"],
           "heif": ["heif444", "heif420"]}


def _measure(task: tuple[str, float, str, Devices]) -> dict:
    name, q, path, devices = task
    rgb = load_image(path)
    try:
        data, out, te, td = CODECS[name].coder(rgb, q, devices)
    except ToolError as e:  # rows so far are saved: fix the tool and rerun to resume
        raise ToolError(f"{name} at quality {q:g} on {Path(path).name}: {e}") from None
    h, w = rgb.shape[:2]
    return {"codec": name, "quality": q, "image": Path(path).name, "bytes": len(data),
            "bpp": bpp(len(data), w, h), "psnr-rgb": psnr(rgb, out), "ms-ssim-rgb": ms_ssim(rgb, out),
            "haarpsi-rgb": haarpsi(rgb, out), "encoding_time": te, "decoding_time": td}


def _progress(done: int, total: int, label: str, start: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    eta = (time.time() - start) / max(done, 1) * (total - done)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:24.24s} eta {eta:5.0f}s")
    sys.stderr.flush()


def summarise(rows: list[dict], name: str) -> dict:
    """Per-image rows of one codec -> CompressAI results JSON (means over images at each quality).
    A metric missing from some rows (measured by an older version of the sweep) is left out."""
    mine = [r for r in rows if r["codec"] == name]
    qualities = sorted({r["quality"] for r in mine})
    metrics = [k for k in CSV_FIELDS[4:] if all(r.get(k) not in (None, "") for r in mine)]
    results: dict[str, list] = {k: [] for k in ["quality", "n_images"] + metrics}
    for q in qualities:
        sel = [r for r in mine if r["quality"] == q]
        results["quality"].append(q)
        results["n_images"].append(len(sel))
        for k in metrics:
            results[k].append(float(np.mean([float(r[k]) for r in sel])))
    return {"name": name, "description": f"codec sweep {name}", "results": results}


def _stale_codecs(path: Path, names: list[str]) -> list[str]:
    """Codecs among `names` whose version (CodecSpec.version) differs from the one recorded in `path`;
    today's versions are recorded. A codec with no recorded version is taken as unchanged."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    current = {n: CODECS[n].version() for n in names if CODECS[n].version}
    stale = [n for n, v in current.items() if recorded.get(n, v) != v]
    path.write_text(json.dumps({**recorded, **current}, indent=1, sort_keys=True))
    return stale


def run(dataset: Path, names: list[str], out: Path, qualities: list[float] | None = None, jobs: int = 1,
        device: str = "cpu", refine_device: str | None = None) -> None:
    """refine_device: where the -refine codecs search (default: device, where our models code)."""
    images = find_images(dataset)
    devices = Devices(device, refine_device or device)
    if not images:
        raise FileNotFoundError(f"no images under {dataset}")
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "per_image.csv"
    done_keys = set()
    rows: list[dict] = []
    stale = _stale_codecs(out / "versions.json", names)
    if csv_path.exists():
        with open(csv_path) as f:
            reader = csv.DictReader(f)
            for r in reader:
                r["quality"] = float(r["quality"])
                rows.append(r)
                done_keys.add((r["codec"], r["quality"], r["image"]))
        if stale:  # rows of other weights than today's are measured again, not mixed in
            print(f"sweep: {', '.join(stale)} changed since {csv_path} was written: measuring again", file=sys.stderr)
            rows = [r for r in rows if r["codec"] not in stale]
            done_keys = {k for k in done_keys if k[0] not in stale}
        if reader.fieldnames != CSV_FIELDS or stale:  # rewrite with today's columns and rows
            with open(csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, CSV_FIELDS, restval="")
                writer.writeheader()
                writer.writerows({k: r.get(k) for k in CSV_FIELDS} for r in rows)
    runnable = []
    for name in names:
        spec = CODECS[name]
        if spec.missing():
            print(f"sweep: skipping {name}: not found: {', '.join(spec.missing())}", file=sys.stderr)
            continue
        runnable.append(name)
    tasks = [(n, float(q), str(p), devices) for n in runnable for q in (qualities or CODECS[n].default_qualities()) for p in images
             if (n, float(q), p.name) not in done_keys]
    total = len(tasks)
    print(f"sweep: {len(images)} images, codecs {', '.join(runnable)}: {total} encodes to run "
          f"({len(done_keys)} already in {csv_path})", file=sys.stderr)
    new_file = not csv_path.exists()
    start = time.time()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        if new_file:
            writer.writeheader()
        # The learned codec runs in this process (torch threads); classical codecs fan out over --jobs.
        pool_kw = {"max_workers": jobs, "initializer": _one_thread}
        if "cuda" in devices:  # CUDA cannot be used in a forked child
            pool_kw["mp_context"] = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(**pool_kw) if jobs > 1 else _Serial() as pool:
            for i, row in enumerate(pool.map(_measure, tasks)):
                writer.writerow(row)
                f.flush()
                rows.append(row)
                _progress(i + 1, total, f"{row['codec']} q{row['quality']:g} {row['image']}", start)
    if total:
        sys.stderr.write("\n")
    # Report every codec in the CSV, including those measured by earlier runs into the same --out.
    curves = {}
    for name in dict.fromkeys(r["codec"] for r in rows):
        curves[name] = summarise(rows, name)
        (out / f"{name}.json").write_text(json.dumps(curves[name], indent=1))
    report(curves, out)


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)  # --jobs processes share the cores; torch's own threads would oversubscribe


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _anchor_curves() -> dict[str, dict]:
    if not ANCHORS.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(ANCHORS.glob("*.json"))}


def report(curves: dict[str, dict], out: Path) -> None:
    """bdrate.md and the two RD plots for measured curves, beside the anchors' reference curves."""
    from codec.bdrate import bd_psnr, bd_rate
    anchors = _anchor_curves()
    refs = {}
    for ref in ("bpg444", "vtm"):
        if ref in curves:
            refs[ref] = (curves[ref], "measured here")
        elif ref in anchors:
            refs[ref] = (anchors[ref], "anchor")
    lines = ["# BD-rate (PSNR-RGB, Bjøntegaard with PCHIP)", ""]
    lines.append("| codec | " + " | ".join(f"vs {r} ({src}) BD-rate | BD-PSNR" for r, (_, src) in refs.items()) + " |")
    lines.append("|---|" + "---|---|" * len(refs))
    for name, c in curves.items():
        cells = []
        for ref_curve, _ in refs.values():
            rr, cr = ref_curve["results"], c["results"]
            try:
                cells += [f"{bd_rate(rr['bpp'], rr['psnr-rgb'], cr['bpp'], cr['psnr-rgb']):+.1f} %",
                          f"{bd_psnr(rr['bpp'], rr['psnr-rgb'], cr['bpp'], cr['psnr-rgb']):+.2f} dB"]
            except ValueError:
                cells += ["no overlap", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "# Reproduction of the reference curves (../shared/anchors/kodak)", "",
              "Same codec and settings at the same quality values: the largest gaps over those qualities.", "",
              "| codec | qualities compared | max abs dPSNR (dB) | max abs dbpp (%) |", "|---|---|---|---|"]
    for name, c in curves.items():
        if name not in anchors:
            continue
        a, m = anchors[name]["results"], c["results"]
        common = [q for q in m["quality"] if q in a["quality"]]
        if not common:
            continue
        dp = max(abs(m["psnr-rgb"][m["quality"].index(q)] - a["psnr-rgb"][a["quality"].index(q)]) for q in common)
        db = max(abs(m["bpp"][m["quality"].index(q)] / a["bpp"][a["quality"].index(q)] - 1) for q in common)
        lines.append(f"| {name} | {len(common)} | {dp:.3f} | {100 * db:.2f} |")
    (out / "bdrate.md").write_text("\n".join(lines) + "\n")
    _plot(curves, anchors, out / "rd.png", "psnr-rgb", "PSNR-RGB (dB)", (0, 2.2), (22, 42))
    _plot(curves, anchors, out / "rd-msssim.png", "ms-ssim-rgb", "MS-SSIM (RGB)", (0, 2.2), (0.85, 1.0))
    if "vq" in curves:
        _plot(curves, anchors, out / "rd-lowrate.png", "ms-ssim-rgb", "MS-SSIM (RGB)", (0, 0.15), (0.6, 0.95))


# Our codecs' curves stand out in fixed colours; the peers take matplotlib's cycle.
OUR_COLOURS = {"hp": "black", "hp-refine": "dimgray", "vq": "crimson", "vq-refine": "darkorange"}


def _plot(curves, anchors, path: Path, metric: str, label: str, xlim: tuple, ylim: tuple) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    for name, c in curves.items():
        r = c["results"]
        style = {"color": OUR_COLOURS[name], "lw": 2.5, "zorder": 5} if name in OUR_COLOURS else {"lw": 1.2}
        ax.plot(r["bpp"], r[metric], "o-", ms=4, label=f"{name} (measured)", **style)
    for name, c in anchors.items():
        if name in curves or name not in ("bpg444", "vtm", "jpeg444", "webp", "avif444", "jxl", "heif444"):
            continue
        r = c["results"]
        ax.plot(r["bpp"], r[metric], "--", lw=1, label=f"{name} (anchor)")
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel(label)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Kodak, {label} vs rate")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def expand(names: str) -> list[str]:
    """'hp,jpeg,bpg444' -> codec names; ValueError for unknown ones."""
    out: list[str] = []
    for n in (x.strip() for x in names.split(",") if x.strip()):
        if n in ALIASES:
            out += ALIASES[n]
        elif n in CODECS:
            out.append(n)
        else:
            raise ValueError(f"unknown codec {n!r} (known: {', '.join([*CODECS, *ALIASES])})")
    return list(dict.fromkeys(out))
