"""Write tests/golden_hashes.json: SHA-256 of the .bin files that fixed commands write on the sample
images and of their packets (the file less its header), and the PSNR of the pixels they decode to.

    python tools/golden_hashes.py            # rewrite the table (only when a change of the format or
                                             # of the weights is meant to change the bytes: say so)

tests/test_golden.py runs the same commands and compares. The encoder's analysis transform is a float
network (a latent on a rounding boundary may round otherwise on other kernels), so the table holds
for the CPU kind that wrote it: it records torch's CPU capability, and the test skips where that
differs. Decoding is portable (the integer entropy path).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bitstream.container import read_header  # noqa: E402
from codec import api  # noqa: E402
from codec.io import load_image  # noqa: E402
from codec.metrics import psnr  # noqa: E402

TABLE = ROOT / "tests" / "golden_hashes.json"
SAMPLES = ROOT / "datasets" / "samples"

# (sample image, keyword arguments of codec.encode)
CASES = [
    *[("unsplash-jacob-aguilar-256.png", {"model": "hp", "quality": q}) for q in (0, 33.33, 50, 81.5, 100)],
    ("unsplash-alberto-montalesi-256.png", {"model": "hp", "quality": 60}),
    ("unsplash-alberto-montalesi-256.png", {"model": "hp", "bpp": 0.5}),
    ("unsplash-jacob-aguilar-256.png", {"model": "hp", "quality": 50, "refine": 3}),
    ("unsplash-jacob-aguilar-256.png", {"model": "vq", "quality": 50}),
    *[("unsplash-alberto-montalesi-256.png", {"model": "vq", "codebook": k}) for k in (16, 1024, 8192)],
    ("unsplash-alberto-montalesi-256.png", {"model": "vq", "depth": 2}),
    ("unsplash-jacob-aguilar-256.png", {"model": "vq", "size": 300}),
    ("unsplash-jacob-aguilar-256.png", {"model": "vq", "codebook": 256, "refine": 3}),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(image: str, kwargs: dict) -> dict:
    """One case -> the hashes of its file and its packets, and the PSNR of its decoded pixels (two
    threads, as CI has: a float reduction split otherwise may round otherwise). The pixels come from
    the float synthesis, which rounds a level apart on another CPU of the same capability (an AMD
    and an Intel AVX-512 machine): their PSNR, not their hash, is what a table can hold."""
    torch.set_num_threads(2)
    rgb = load_image(SAMPLES / image)
    data = api.encode(rgb, **kwargs)
    _, _, first_packet = read_header(data)
    return {"file": sha256(data), "packets": sha256(data[first_packet:]), "psnr": round(psnr(rgb, api.decode_rgb(data)), 3)}


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def main() -> None:
    rows = [{"image": image, "encode": kwargs, **run(image, kwargs)} for image, kwargs in CASES]
    TABLE.write_text(json.dumps({"cpu_capability": cpu_capability(), "torch": torch.__version__,
                                 "cases": rows}, indent=1) + "\n")
    print(f"{len(rows)} cases -> {TABLE}")


if __name__ == "__main__":
    main()
