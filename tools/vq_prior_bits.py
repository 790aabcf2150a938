"""Bits an index of the vq model's transformer prior against uniform coding (log2 K), per codebook size.

    python tools/vq_prior_bits.py results/kodak/per_image.csv --dataset ../shared/datasets/kodak --format 1

Reads the vq rows of a sweep (one file per image and operating point), takes the index packet's
payload out of each whole file (header and packet framing are reconstructed exactly for the same
image size and payload length), and prints a markdown table: K, bits an index with the prior,
log2 K, the saving, and the mean whole-file bpp.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bitstream  # noqa: E402
from bitstream import Container, Header, Packet, PacketKind  # noqa: E402
from bitstream.container import VERSION  # noqa: E402
from codec import zoo  # noqa: E402


def payload_bytes(total: int, width: int, height: int, quality: float, k: int, count: int, version: int = VERSION
                  ) -> int:
    """The index payload length of a one-packet vq file of `total` bytes written in format `version`
    by this release (the header's varints depend on its fields, so they are the file's own)."""
    model_id = zoo.DEFAULT_MODEL["vq"] if version >= 2 else "vq"  # format 1 recorded the family name
    header = Header(family="vq", model_id=model_id, weights_hash=b"\0" * 4, width=width, height=height,
                    quality=quality, codebook=k, depth=1, version=version, release=(0, 0, 0))
    length = total
    for _ in range(8):  # the framing's varints depend on the length: settle in a few steps
        size = len(bitstream.write(Container(header, [Packet(PacketKind.INDICES, 0, count, b"\0" * length)])))
        if size == total:
            return length
        length += total - size
    raise ValueError(f"cannot split a {total}-byte file into header and payload")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path, help="per_image.csv of a sweep that ran vq")
    ap.add_argument("--dataset", type=Path, required=True, help="the images of that sweep (for their sizes)")
    ap.add_argument("--format", type=int, default=VERSION, choices=(1, 2),
                    help="the container format the sweep's files were written in (results/kodak: 1)")
    args = ap.parse_args()
    net = zoo.load("vq")[0]
    by_k: dict[int, list[tuple[float, float]]] = {}
    for r in csv.DictReader(open(args.csv)):
        if r["codec"] != "vq":
            continue
        quality = float(r["quality"])
        _, k, depth = net.operating_point(quality, None, None)
        if depth != 1:
            continue
        w, h = Image.open(args.dataset / r["image"]).size
        count = -(-w // net.stride) * -(-h // net.stride)
        bits = 8 * payload_bytes(int(r["bytes"]), w, h, quality, k, count, args.format) / count
        by_k.setdefault(k, []).append((bits, float(r["bpp"])))
    print("| K | images | prior bits/index | uniform log2 K | saving | mean bpp |")
    print("|---|---|---|---|---|---|")
    for k in sorted(by_k):
        bits = np.mean([b for b, _ in by_k[k]])
        print(f"| {k} | {len(by_k[k])} | {bits:.3f} | {math.log2(k):.0f} | {100 * (1 - bits / math.log2(k)):.1f} % "
              f"| {np.mean([p for _, p in by_k[k]]):.4f} |")


if __name__ == "__main__":
    main()
