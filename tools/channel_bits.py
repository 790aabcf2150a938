"""How a weights file's latent channels share the bits of one rate level, on images it did not train on.

    python tools/channel_bits.py WEIGHTS --images .data/frames datasets/samples --level 12

A channel whose symbols are all zero carries no information of its own: the synthesis then sees
only its prior's mean. Such dead channels capped hp-cbc2-v7's top rates
(results/training/hp-cbc2-v8/RECIPE.md); this counts them. Each image is cropped to whole latent
blocks and coded as the encoder codes it (rounded latents, the discrete priors); the shares are of
the latent's bits summed over the images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from codec import zoo  # noqa: E402
from codec.io import find_images, load_image  # noqa: E402


@torch.no_grad()
def channel_bits(model, images: list[np.ndarray], level: float) -> tuple[np.ndarray, int]:
    """-> (bits of each latent channel summed over the images, the images' pixels)."""
    total, pixels = torch.zeros(model.M, dtype=torch.float64), 0
    lv = torch.tensor([level])
    medians = model.entropy_bottleneck.quantiles[:, 0, 1].view(1, -1, 1, 1)
    for im in images:
        h, w = im.shape[0] // 64 * 64, im.shape[1] // 64 * 64
        x = torch.from_numpy(np.ascontiguousarray(im[:h, :w].transpose(2, 0, 1)))[None].float() / 255
        y, z = model.analyse(x, lv)
        z_hat = torch.round(z - medians) + medians
        scales, means, y_hat = model.latent_prior(y, model.hyper_features(z_hat, lv))
        total += model.latent_channel_bits(y_hat, scales, means)[0].double()
        pixels += h * w
    return total.numpy(), pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path, help="an hp weights file")
    ap.add_argument("--images", type=Path, nargs="+", required=True, help="folders of images it did not train on")
    ap.add_argument("--level", type=float, default=None, help="rate level, 0 .. n_levels - 1 (default: the top)")
    args = ap.parse_args()
    model, meta = zoo.load_file(args.weights)
    if meta["family"] != "hp":
        raise SystemExit(f"{args.weights} is a {meta['family']} model; channel bits are the hp family's")
    level = model.n_levels - 1 if args.level is None else args.level
    if not 0 <= level <= model.n_levels - 1:
        raise SystemExit(f"--level must lie in 0 .. {model.n_levels - 1}")
    images = [load_image(p) for root in args.images for p in find_images(root)]
    if not images:
        raise SystemExit(f"no images under {', '.join(map(str, args.images))}")
    bits, pixels = channel_bits(model, images, level)
    share = bits / bits.sum()
    ranked = np.sort(share)[::-1]
    print(f"{args.weights.name} ({meta['arch']}, M = {model.M}), level {level:g}, {len(images)} images: "
          f"latent {bits.sum() / pixels:.4f} bpp")
    for floor in (1e-4, 5e-4, 1e-3):
        print(f"  channels under {floor:g} of the bits: {int((share < floor).sum())}")
    for part in (0.9, 0.99):
        print(f"  channels holding {part:.0%} of the bits: {int(np.searchsorted(np.cumsum(ranked), part) + 1)}")


if __name__ == "__main__":
    main()
