"""What both trainers share: the training images on the device, random crops of them, the held-out
set, the per-window CSV log, the device set-up and the learning-rate schedule."""
from __future__ import annotations

import csv
import math
import time
import zlib
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codec.io import find_images, load_image


def load_dataset(roots: list[Path], workers: int) -> tuple[np.ndarray, list[Path]]:
    """Every image under the roots -> ((N, 3, S, S) uint8, centre-cropped to the smallest side S; the N paths)."""
    paths = [p for root in roots for p in find_images(root)]
    if not paths:
        raise SystemExit(f"no images under {', '.join(map(str, roots))}")
    with Pool(workers) as pool:
        images = pool.map(load_image, paths, chunksize=16)
    side = min(min(im.shape[:2]) for im in images)
    out = np.empty((len(images), 3, side, side), np.uint8)
    for i, im in enumerate(images):
        top, left = (im.shape[0] - side) // 2, (im.shape[1] - side) // 2
        out[i] = im[top:top + side, left:left + side].transpose(2, 0, 1)
    return out, paths


def held_out(paths: list[Path]) -> np.ndarray:
    """About one image in 50, chosen by a hash of its file name: the same images stay held out
    whatever subset of the training set a device call carries, so validation rows compare. A set
    too small for that (a smoke run) holds out its first image."""
    held = np.array([zlib.crc32(p.name.encode()) % 50 == 0 for p in paths])
    if not held.any():
        held[0] = True
    return held


def random_batch(images: torch.Tensor, batch: int, crop: int, gen: torch.Generator,
                 scale_min: float = 1.0) -> torch.Tensor:
    """uint8 (N, 3, S, S) on the device -> float (batch, 3, crop, crop) in [0, 1], random crops and flips.
    With scale_min < 1, each batch crops a region of a size drawn from crop .. crop / scale_min (at
    most S) and resizes it to crop: the same photos at other scales, and room to move the crop when
    crop = S."""
    n, _, side, _ = images.shape
    dev = images.device
    size = crop
    if scale_min < 1:
        size = int(torch.randint(crop, min(side, int(crop / scale_min)) + 1, (1,), generator=gen, device=dev))
    pick = torch.randint(n, (batch,), generator=gen, device=dev)
    top = torch.randint(side - size + 1, (batch,), generator=gen, device=dev)
    left = torch.randint(side - size + 1, (batch,), generator=gen, device=dev)
    ar = torch.arange(size, device=dev)
    rows = (top[:, None] + ar)[:, None, :, None]
    cols = (left[:, None] + ar)[:, None, None, :]
    x = images[pick[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    x = x.float().div_(255)
    if size != crop:
        x = F.interpolate(x, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    flip = torch.rand(batch, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last)


class TrainLog:
    """Averages per-step values over a window; one CSV row and one console line per window. A step
    may report only some of the values (each is averaged over the steps that reported it)."""

    def __init__(self, path: Path, names: list[str]):
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.csv = csv.writer(self.file)
        self.names = names
        if new:
            self.csv.writerow(["step", "gpu_seconds", *names, "lr", "steps_per_s"])
        self._reset()

    def _reset(self) -> None:
        self.sums, self.counts = {k: 0.0 for k in self.names}, {k: 0 for k in self.names}
        self.n, self.start = 0, time.time()

    def add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():  # tensors stay on the device until the window is written
            self.sums[k] = self.sums[k] + v.detach()
            self.counts[k] += 1
        self.n += 1

    def write(self, step: int, gpu_seconds: float, lr: float) -> None:
        row = {k: float(v) / self.counts[k] if self.counts[k] else math.nan for k, v in self.sums.items()}
        rate = self.n / (time.time() - self.start)
        self.csv.writerow([step, round(gpu_seconds, 1), *(f"{row[k]:.5g}" for k in self.names), f"{lr:.2e}",
                           f"{rate:.1f}"])
        self.file.flush()
        print(f"step {step} " + " ".join(f"{k} {row[k]:.4g}" for k in self.names) + f" {rate:.1f} it/s", flush=True)
        self._reset()

    def close(self) -> None:
        self.file.close()


def prepare_run(out: Path, ckpt: Path) -> str:
    """The device a training call runs on, with TF32 and cuDNN autotuning on; output folders made."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    return dev


def scheduled_lr(lr: float, lr_final: float | None, decay_fraction: float, elapsed: float, budget: float) -> float:
    """Constant, then (with lr_final) linear decay over the last decay_fraction of the time budget."""
    if lr_final is None:
        return lr
    decay_start = budget * (1 - decay_fraction)
    frac = min(max((elapsed - decay_start) / max(budget - decay_start, 1e-9), 0.0), 1.0)
    return lr + frac * (lr_final - lr)
