"""Encode and decode one image at a few qualities with each shipped model; print bytes, bpp, PSNR
and MS-SSIM, and keep the .bin files and decoded PNGs."""
import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

import codec
from codec.api import decode_rgb
from codec.io import load_image
from codec.metrics import bpp, ms_ssim, psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", type=Path)
    ap.add_argument("--qualities", type=float, nargs="+", default=[10, 40, 70, 100])
    ap.add_argument("--models", nargs="+", default=["hp", "vq"])
    args = ap.parse_args()
    rgb = load_image(args.image)
    h, w = rgb.shape[:2]
    out = Path(tempfile.mkdtemp(prefix="codec-demo-"))
    print(f"{args.image} ({w}x{h}); files in {out}")
    print(f"{'model':>5} {'quality':>8} {'bytes':>8} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc s':>6} {'dec s':>6}")
    for model in args.models:
        for q in args.qualities:
            t0 = time.perf_counter()
            data = codec.encode(rgb, model=model, quality=q)
            t1 = time.perf_counter()
            decoded = decode_rgb(data)
            t2 = time.perf_counter()
            (out / f"{model}-q{q:g}.bin").write_bytes(data)
            Image.fromarray(decoded).save(out / f"{model}-q{q:g}.png")
            print(f"{model:>5} {q:8g} {len(data):8d} {bpp(len(data), w, h):8.4f} {psnr(rgb, decoded):8.2f} "
                  f"{ms_ssim(rgb, decoded):8.4f} {t1 - t0:6.2f} {t2 - t1:6.2f}")


if __name__ == "__main__":
    main()
