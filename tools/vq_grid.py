"""A side-by-side grid of the vq codec at an extreme low rate against classical codecs at their
lowest settings.

    python tools/vq_grid.py --dataset ../shared/datasets/kodak --out results/kodak/vq-grid.png

Each row is one image: the original, then vq at the largest operating point within --bpp, then
each classical codec at its lowest quality (the sweep's own runners: codecs whose programs are
missing are left out, BPG and VTM among them unless installed). Tiles are centre crops at full
resolution, captioned with the whole-image bpp, PSNR and MS-SSIM.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bitstream  # noqa: E402
from codec import api  # noqa: E402
from codec.io import load_image  # noqa: E402
from codec.metrics import bpp, ms_ssim, psnr  # noqa: E402
from codec.sweep import CODECS  # noqa: E402

# The lowest setting of each runner's quality scale (libjxl 0.7 refuses distances past -q 10).
LOWEST = {"bpg444": 51, "vtm": 63, "heif444": 0, "avif444": 0, "jxl": 10, "webp": 0, "jpeg444": 1}
CAPTION = 30


def tile(rgb: np.ndarray, crop: int, text: str) -> Image.Image:
    h, w = rgb.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    im = Image.new("RGB", (crop, crop + CAPTION), "white")
    im.paste(Image.fromarray(rgb[top:top + crop, left:left + crop]), (0, 0))
    ImageDraw.Draw(im).multiline_text((4, crop + 2), text, fill="black", spacing=1)
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--images", nargs="+", default=["kodim04.png", "kodim14.png", "kodim23.png"])
    ap.add_argument("--bpp", type=float, default=0.03, help="vq rate ceiling (default: %(default)s)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    codecs = [n for n in LOWEST if not CODECS[n].missing()]
    print(f"classical codecs at their lowest settings: {', '.join(codecs)} "
          f"(missing: {', '.join(n for n in LOWEST if n not in codecs) or 'none'})", file=sys.stderr)
    rows = []
    for name in args.images:
        rgb = load_image(args.dataset / name)
        h, w = rgb.shape[:2]

        def caption(label, data, out):
            return f"{label}\n{bpp(len(data), w, h):.4f} bpp, {psnr(rgb, out):.1f} dB, MS-SSIM {ms_ssim(rgb, out):.3f}"

        data = api.encode(rgb, model="vq", bpp=args.bpp)
        header = bitstream.read(data).header
        out = api.decode_rgb(data)
        tiles = [tile(rgb, args.crop, f"{name}\noriginal"),
                 tile(out, args.crop, caption(f"vq K={header.codebook}", data, out))]
        for c in codecs:
            data, out, _, _ = CODECS[c].coder(rgb, LOWEST[c])
            tiles.append(tile(out, args.crop, caption(f"{c} q{LOWEST[c]}", data, out)))
        rows.append(tiles)
        print(name, "done", file=sys.stderr)
    tw, th = rows[0][0].size
    grid = Image.new("RGB", (tw * len(rows[0]), th * len(rows)), "white")
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            grid.paste(t, (c * tw, r * th))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({grid.size[0]}x{grid.size[1]})", file=sys.stderr)


if __name__ == "__main__":
    main()
