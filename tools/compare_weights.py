"""Two weights files of one family, side by side on images neither trained on.

    python datasets/prepare.py frames            # stills from the shared test clips -> .data/frames
    python tools/compare_weights.py OLD.safetensors NEW.safetensors --images .data/frames datasets/samples

Held-out training crops cannot judge weights trained before they were held out (they may have
trained on them), and Kodak is for reporting, not for choosing; this is what chooses. Each image is
cropped to whole latent blocks and measured on its own; the table gives the mean over images at
each operating point:
  hp: each trained level's estimated bpp (rounded latents) and PSNR (training.hp.validate), named
      by its lambda, and the BD-rate of NEW against OLD over all their levels (a lambda only one
      file trained is listed with a dash on the other side);
  vq: PSNR, MS-SSIM and the prior's coded bits an index at the validation points (training.vq.validate).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from codec import zoo  # noqa: E402
from codec.bdrate import bd_rate  # noqa: E402
from codec.io import find_images, load_image  # noqa: E402
from training import hp, vq  # noqa: E402

# Metrics per family: (the validation function, the multiple an image is cropped to, the name of a
# row's operating point, the metrics compared). hp levels are named by their lambda: two files may
# train different lambdas, and level i of one is then not level i of the other.
FAMILIES = {"hp": (hp.validate, 64, lambda model, r: f"lambda {model.lambdas[r['level']]:g}", ("bpp", "psnr")),
            "vq": (vq.validate, 16, lambda model, r: f"{r['codebook']} x {r['depth']}",
                   ("psnr", "ms_ssim", "bits"))}


def measure(path: Path, images: list[np.ndarray], device: str = "cpu") -> tuple[str, dict]:
    """Weights file -> (family, {operating point: {metric: mean over images}})."""
    model, meta = zoo.load_file(path, device)
    validate, block, point, metrics = FAMILIES[meta["family"]]
    rows: dict[str, list[dict]] = {}
    with torch.no_grad():
        for im in images:
            h, w = im.shape[0] // block * block, im.shape[1] // block * block
            x = torch.from_numpy(np.ascontiguousarray(im[:h, :w].transpose(2, 0, 1)))[None].to(device)
            for r in validate(model, x):
                rows.setdefault(point(model, r), []).append(r)
    return meta["family"], {p: {m: float(np.mean([r[m] for r in rs])) for m in metrics if m in rs[0]}
                            for p, rs in rows.items()}


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"  # a dash: the point or metric is not in that file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--images", type=Path, nargs="+", required=True, help="folders of images neither model trained on")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the models run (cuda: a quick check inside a GPU call; choose weights on the CPU's figures)")
    args = ap.parse_args()
    images = [load_image(p) for root in args.images for p in find_images(root)]
    if not images:
        raise SystemExit(f"no images under {', '.join(map(str, args.images))}")
    (fam_a, old), (fam_b, new) = measure(args.old, images, args.device), measure(args.new, images, args.device)
    if fam_a != fam_b or not old.keys() & new.keys():
        raise SystemExit(f"{args.old} and {args.new} share no operating point: not one family's weights")
    metrics = list(next(iter(old.values())))
    print(f"{len(images)} images; {args.old.name} -> {args.new.name}\n")
    print("| point | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for p in {**old, **new}:  # old's points in order, then those only new has
        cells = []
        for m in metrics:
            a, b = old.get(p, {}).get(m), new.get(p, {}).get(m)
            cell = "" if a is None and b is None else f"{_value(a)} -> {_value(b)}"
            if a is not None and b is not None:
                cell += f" ({100 * (b / a - 1):+.1f} %)" if m in ("bpp", "bits") else f" ({b - a:+.4f})"
            cells.append(cell)
        print(f"| {p} | " + " | ".join(cells) + " |")
    if {"bpp", "psnr"} <= set(metrics):  # one figure to choose by: the curves' Bjontegaard rate change
        bpp_old, psnr_old, bpp_new, psnr_new = ([c[m] for c in v.values()] for v in (old, new) for m in ("bpp", "psnr"))
        print(f"\nBD-rate {args.new.name} vs {args.old.name}: {bd_rate(bpp_old, psnr_old, bpp_new, psnr_new):+.2f} %")


if __name__ == "__main__":
    main()
