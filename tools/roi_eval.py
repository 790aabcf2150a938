"""Regions of interest at equal file size: each image of a folder with committed boxes is coded
uniformly, then with its boxes as the region and the background's rate searched so that the whole
file is no larger (`size=`): hp uniformly at --quality, the region at --quality + --lift; vq uniformly
at --codebook, the region and the background each with a codebook, the pair whose file comes
closest to the size from below (discrete points: it may come out a few per cent smaller). PSNR and MS-SSIM over the region
(MS-SSIM over the boxes' bounding box grown to at least 176 pixels a side, what MS-SSIM needs) and
over the whole image.

    python tools/roi_eval.py --dataset ../shared/datasets/kodak --boxes results/roi/boxes.json \\
        --out results/roi [--model hp --quality 40 --lift 15 | --model vq --codebook 256] [--picture kodim04.png]

Writes <out>/<model>.json and <out>/<model>.md (and <out>/roi-<model>.jpg: uniform vs ROI side by
side around the region, marked).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bitstream  # noqa: E402
import codec  # noqa: E402
from codec import roi  # noqa: E402
from codec.io import load_image  # noqa: E402
from codec.metrics import ms_ssim, psnr  # noqa: E402


def grown_box(boxes, shape, side: int = 176) -> tuple[slice, slice]:
    """The boxes' bounding box, grown about its centre to at least `side` pixels a side (inside the image)."""
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    spans = []
    for lo, hi, size in ((y0, y1, shape[0]), (x0, x1, shape[1])):
        grow = max(0, side - (hi - lo))
        lo = min(max(0, lo - grow // 2), max(0, size - max(side, hi - lo)))
        spans.append(slice(lo, min(size, lo + max(side, hi - lo))))
    return tuple(spans)


def measure(rgb, data, mask, crop) -> tuple[dict, np.ndarray]:
    out = np.asarray(codec.decode(data))
    h = bitstream.read(data).header
    return {"bytes": len(data), "quality": h.quality, "codebook": h.codebook, "psnr": round(psnr(rgb, out), 3),
            "roi_psnr": round(psnr(rgb[mask], out[mask]), 3), "msssim": round(ms_ssim(rgb, out), 4),
            "roi_msssim": round(ms_ssim(rgb[crop], out[crop]), 4)}, out


def vq_roi_file(rgb, boxes, budget: int) -> bytes:
    """vq's largest ROI file within `budget` bytes over the two knobs: the background's codebook (the
    one `size=` finds and the next larger) and the region's (every larger one, by its quality)."""
    from codec import zoo
    found = bitstream.read(codec.encode(rgb, model="vq", roi=boxes, size=budget)).header.codebook
    sizes = [k for k, d in zoo.load(zoo.DEFAULT_MODEL["vq"])[0].points if d == 1]
    best = b""
    for background in sizes[sizes.index(found):sizes.index(found) + 2]:
        for i, region in enumerate(sizes):
            if region <= background:
                continue
            data = codec.encode(rgb, model="vq", codebook=background, roi=boxes, roi_quality=100 * i / (len(sizes) - 1))
            if len(best) < len(data) <= budget:
                best = data
    if not best:
        raise SystemExit(f"no vq ROI file fits {budget} bytes")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--boxes", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", choices=["hp", "vq"], default="hp")
    ap.add_argument("--quality", type=float, default=40.0, help="hp: the uniform coding's quality")
    ap.add_argument("--lift", type=float, default=15.0, help="hp: the region's quality above it")
    ap.add_argument("--codebook", type=int, default=256, help="vq: the uniform coding's codebook")
    ap.add_argument("--picture", help="the image shown side by side in roi-<model>.jpg")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, pictures = [], {}
    for name, spec in json.loads(args.boxes.read_text()).items():
        rgb = load_image(args.dataset / name)
        boxes = [tuple(b) for b in spec["boxes"]]
        mask, crop = roi.region_mask(boxes, rgb) > 0, grown_box(boxes, rgb.shape)
        if args.model == "hp":
            uniform_data = codec.encode(rgb, quality=args.quality)
            roi_data = codec.encode(rgb, roi=boxes, roi_quality=min(100.0, args.quality + args.lift), size=len(uniform_data))
        else:
            uniform_data = codec.encode(rgb, model="vq", codebook=args.codebook)
            roi_data = vq_roi_file(rgb, boxes, len(uniform_data))
        uniform, u_img = measure(rgb, uniform_data, mask, crop)
        roi, r_img = measure(rgb, roi_data, mask, crop)
        row = {"image": name, "what": spec["what"], "region_share": round(float(mask.mean()), 3),
               "uniform": uniform, "roi": roi}
        rows.append(row)
        pictures[name] = (rgb, u_img, r_img, spec["boxes"])
        print(json.dumps(row), file=sys.stderr, flush=True)
    settings = {"quality": args.quality, "lift": args.lift} if args.model == "hp" else {"codebook": args.codebook}
    (args.out / f"{args.model}.json").write_text(json.dumps({**settings, "rows": rows}, indent=1) + "\n")
    lines = ["| image | region | share | bytes uniform / ROI | region PSNR uniform → ROI | region MS-SSIM | "
             "whole PSNR uniform → ROI | whole MS-SSIM |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u, o = r["uniform"], r["roi"]
        lines.append(f"| {r['image']} | {r['what']} | {100 * r['region_share']:.0f} % | {u['bytes']} / {o['bytes']} "
                     f"({100 * (o['bytes'] / u['bytes'] - 1):+.1f} %) | {u['roi_psnr']:.2f} → {o['roi_psnr']:.2f} "
                     f"(**{o['roi_psnr'] - u['roi_psnr']:+.2f} dB**) | {u['roi_msssim']:.4f} → {o['roi_msssim']:.4f} | "
                     f"{u['psnr']:.2f} → {o['psnr']:.2f} ({o['psnr'] - u['psnr']:+.2f} dB) | "
                     f"{u['msssim']:.4f} → {o['msssim']:.4f} |")
    (args.out / f"{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.picture:
        side_by_side(*pictures[args.picture], args.out / f"roi-{args.model}.jpg")


def side_by_side(rgb, uniform, roi, boxes, path: Path, margin: int = 48) -> None:
    """Uniform | ROI around the region (its boxes outlined), labelled; JPEG at quality 92."""
    from PIL import Image, ImageDraw
    x0, y0 = max(0, min(b[0] for b in boxes) - margin), max(0, min(b[1] for b in boxes) - margin)
    x1 = min(rgb.shape[1], max(b[0] + b[2] for b in boxes) + margin)
    y1 = min(rgb.shape[0], max(b[1] + b[3] for b in boxes) + margin)
    panels = []
    for label, img in (("uniform", uniform), ("ROI", roi)):
        im = Image.fromarray(np.ascontiguousarray(img[y0:y1, x0:x1]))
        d = ImageDraw.Draw(im)
        for x, y, w, h in boxes:
            d.rectangle([x - x0, y - y0, x - x0 + w - 1, y - y0 + h - 1], outline=(255, 255, 0), width=2)
        d.text((8, 8), label, fill=(255, 255, 0))
        panels.append(im)
    sheet = Image.new("RGB", (2 * panels[0].width + 8, panels[0].height), "white")
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width + 8, 0))
    sheet.save(path, quality=92)


if __name__ == "__main__":
    main()
