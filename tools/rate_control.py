"""How close `--bpp` lands over a dataset: achieved bpp vs target for every image and target.

    python tools/rate_control.py ../shared/datasets/kodak --targets 0.1 0.25 0.5 1.0
"""
import argparse
import time
from pathlib import Path

import numpy as np

import codec
from bitstream import describe
from codec.io import find_images, load_image
from codec.metrics import bpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    args = ap.parse_args()
    images = [load_image(p) for p in find_images(args.dataset)]
    print("clamped: the target lies outside the model's range for that image (quality 0 or 100 is used);")
    print("errors are over the other images.")
    print(f"{'target':>7} {'images':>6} {'clamped':>7} {'mean |err| %':>12} {'worst err %':>11} {'s/image':>8}")
    for target in args.targets:
        errors, clamped = [], 0
        t0 = time.perf_counter()
        for rgb in images:
            data = codec.encode(rgb, bpp=target)
            if describe(data)["quality"] in (0.0, 100.0):
                clamped += 1
                continue
            errors.append(100 * (bpp(len(data), rgb.shape[1], rgb.shape[0]) / target - 1))
        seconds = (time.perf_counter() - t0) / len(images)
        mean = f"{np.mean(np.abs(errors)):12.2f}" if errors else f"{'-':>12}"
        worst = f"{max(errors, key=abs):+11.2f}" if errors else f"{'-':>11}"
        print(f"{target:7.3f} {len(images):6d} {clamped:7d} {mean} {worst} {seconds:8.2f}")


if __name__ == "__main__":
    main()
