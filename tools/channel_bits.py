"""How a weights file's latent channels share the bits of one rate level, on images it did not train on.

    python tools/channel_bits.py WEIGHTS --images .data/frames datasets/samples --level 12

A channel whose symbols are all zero carries no information of its own: the synthesis then sees
only its prior's mean. Such dead channels capped hp-cbc2-v7's top rates
(results/training/hp-cbc2-v8/RECIPE.md); this counts them. Each image is cropped to whole latent
blocks and coded as the encoder codes it (rounded latents, the discrete priors); the shares are of
the latent's bits summed over the images. It also decodes each image twice, as coded and with the
channels under 0.1 % of the bits flattened to their mean over the image: if the PSNR falls, the
synthesis reads those channels' prior means (computed from the other channels) as features.
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


def coded_latents(model, images: list[np.ndarray], level: float):
    """-> per image: (x cropped to whole latent blocks, the decoded latent y_hat, its prior's scales and
    means), as the coder codes them."""
    lv = torch.tensor([level])
    for im in images:
        h, w = im.shape[0] // 64 * 64, im.shape[1] // 64 * 64
        x = torch.from_numpy(np.ascontiguousarray(im[:h, :w].transpose(2, 0, 1)))[None].float() / 255
        _, scales, means, y_hat = model.rounded_latents(*model.analyse(x, lv), lv)
        yield x, y_hat, scales, means


@torch.no_grad()
def channel_bits(model, images: list[np.ndarray], level: float) -> tuple[np.ndarray, int]:
    """-> (bits of each latent channel summed over the images, the images' pixels)."""
    total, pixels = torch.zeros(model.M, dtype=torch.float64), 0
    for x, y_hat, scales, means in coded_latents(model, images, level):
        total += model.latent_channel_bits(y_hat, scales, means)[0].double()
        pixels += x.shape[2] * x.shape[3]
    return total.numpy(), pixels


@torch.no_grad()
def flattened_psnr(model, images: list[np.ndarray], level: float, channels: torch.Tensor) -> tuple[float, float]:
    """-> mean PSNR over the images decoded as coded, and with `channels` (a bool mask over M) each set
    to its mean over the image."""
    lv, coded, flat = torch.tensor([level]), [], []
    for x, y_hat, _, _ in coded_latents(model, images, level):
        flattened = y_hat.clone()
        flattened[:, channels] = y_hat[:, channels].mean(dim=(2, 3), keepdim=True)
        for psnrs, latent in ((coded, y_hat), (flat, flattened)):
            psnrs.append(float(-10 * torch.log10((model.synthesise(latent, lv) - x).pow(2).mean())))
    return float(np.mean(coded)), float(np.mean(flat))


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
    dead = torch.from_numpy(share < 1e-3)
    if dead.any():
        coded, flat = flattened_psnr(model, images, level, dead)
        print(f"  PSNR {coded:.2f} dB as coded, {flat:.2f} dB with those under 0.001 flattened to their mean")


if __name__ == "__main__":
    main()
