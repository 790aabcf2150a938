"""Resumable, time-budgeted training of the variable-rate hp model.

    python -m codec.train --data .data/train --ckpt .ckpt --minutes 8 --out OUTDIR

Each call trains until its time budget is spent, then writes a full checkpoint (model, optimizers,
step, GPU seconds) to --ckpt, the fp16 safetensors weights ready to ship to --out (over 16 MiB they
come back from a device command in `split` parts), and appends one row per logging window to
train-log.csv: step, seconds, loss, bpp, PSNR. The next call resumes from --ckpt while the machine
still holds it, or else from --init, the shipped fp16 weights, with fresh optimizer state: fp16
rounding moves a weight by far less than one Adam step, so nothing is lost but the optimizer's
moments.

A rate level is drawn per sample, uniformly over the continuous range [0, n_levels - 1], with
lambda interpolated geometrically between the trained lambdas, so every quality in between is
trained and the rate is smooth in the level.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
import zlib
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codec import zoo
from codec.io import find_images, load_image
from codec.models.hp import LAMBDAS

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


def hard_terms(model, coded_terms, x: torch.Tensor, level: torch.Tensor,
               bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (bpp, mse) of what the coder will really code (--hard, validation): the analysis's
    latents, rounded, their bits from the discrete priors and the picture decoded from them
    (`coded_terms`, the model's or its compiled twin). `bf16` runs the analysis in bf16 on a GPU,
    for training speed; validation keeps float32 so that its logs compare across runs."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16 and x.is_cuda):
        y, z = model.analyse(x, level)
    bits, x_hat = coded_terms(y.float(), z.float(), level)
    return bits / (x.shape[2] * x.shape[3]), (x_hat - x).pow(2).mean(dim=(1, 2, 3))


def rd_terms(out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (bpp, mse) from a forward pass."""
    pixels = x.shape[2] * x.shape[3]
    bits = sum(torch.log(l).sum(dim=(1, 2, 3)) for l in out["likelihoods"].values()) / -math.log(2)
    mse = (out["x_hat"] - x).pow(2).mean(dim=(1, 2, 3))
    return bits / pixels, mse


@torch.no_grad()
def transfer_level_tables(src, dst) -> None:
    """Copy the per-level tables of `src` (the log-gains, and any other of dst's LEVEL_TABLES src has)
    to `dst`, whose lambdas may differ: each of dst's levels takes src's rows interpolated
    (extrapolated beyond its ends) linearly in log lambda, the relation the gains start from (a
    quantizer step going as 1/sqrt(lambda)). Channels only dst has (a wider latent) start from the
    mean of the level's row; tables only dst has keep their fresh values."""
    src_l = np.log(src.lambdas)
    for i, x in enumerate(np.log(dst.lambdas)):
        lo = min(max(int(np.searchsorted(src_l, x)), 1), len(src_l) - 1) - 1
        t = float((x - src_l[lo]) / (src_l[lo + 1] - src_l[lo]))
        for name in (n for n in dst.LEVEL_TABLES if hasattr(src, n)):
            table = getattr(src, name)
            row = (1 - t) * table[lo] + t * table[lo + 1]
            getattr(dst, name)[i] = torch.cat([row, row.mean().expand(getattr(dst, name).shape[1] - len(row))])


@torch.no_grad()
def grow_parameters(src, dst) -> None:
    """Copy src's parameters into dst, a model of the same or a grown architecture: parameters dst
    lacks are dropped, new ones keep their fresh initialisation, and a parameter that grew (more
    channels) takes src's values in its leading block, its new channels left as initialised except
    where they enter an old channel: those weights are zeroed, so the old channels compute what they
    did. Gains and the other per-level tables are carried over by transfer_level_tables."""
    src_params = dict(src.named_parameters())
    modules = dict(dst.named_modules())
    for name, p in dst.named_parameters():
        old = src_params.get(name)
        if old is None or name in dst.LEVEL_TABLES:
            continue
        # Only an architecture whose grown channels are plain extra channels of the same layers (no
        # concatenation that the leading block would misalign) may take a smaller parameter.
        fits = old.dim() == p.dim() and all(a <= b for a, b in zip(old.shape, p.shape))
        if old.shape != p.shape and not (fits and getattr(dst, "GROWS", False)):
            raise SystemExit(f"--init: {name} {tuple(old.shape)} does not fit {tuple(p.shape)}")
        p[tuple(slice(0, n) for n in old.shape)] = old
        if old.shape != p.shape and p.dim() >= 2:  # a weight (or GDN's gamma) from inputs to outputs
            # Conv2d and GDN's gamma are (out, in, ...); ConvTranspose2d is (in, out, ...).
            out_dim, in_dim = (1, 0) if isinstance(modules[name.rpartition(".")[0]], nn.ConvTranspose2d) else (0, 1)
            index = [slice(None)] * p.dim()
            index[out_dim], index[in_dim] = slice(0, old.shape[out_dim]), slice(old.shape[in_dim], None)
            p[tuple(index)] = 0
    transfer_level_tables(src, dst)


@torch.no_grad()
def transplant_parameters(src, dst) -> tuple[int, int]:
    """Copy src's transforms into dst, a model of another latent layout: every layer of g_a, g_s and
    their blocks and per-level tables that matches in name and shape. What depends on the latent's
    channels starts fresh: the layers facing the latent, the gains, the hyperprior and the latent's
    prior, so all latent channels start on equal terms (grown channels beside trained ones stayed
    dead, results/training/hp-cbc2-v8/RECIPE.md). The lambdas must be src's.
    -> (values copied, values fresh)."""
    if tuple(src.lambdas) != tuple(dst.lambdas):
        raise SystemExit("--transplant: the new model must keep the --init weights' lambdas")
    src_params = dict(src.named_parameters())

    def layer(name: str) -> str:
        return name.rpartition(".")[0] or name

    def transform(name: str) -> bool:
        return name.split(".")[0] in ("g_a", "g_s") or name.startswith(("analysis_", "synthesis_"))

    # A layer is taken whole or not at all: a bias whose weight starts fresh would mean nothing.
    misfits = {layer(n) for n, p in dst.named_parameters()
               if not transform(n) or n not in src_params or src_params[n].shape != p.shape}
    copied = fresh = 0
    for name, p in dst.named_parameters():
        if layer(name) in misfits:
            fresh += p.numel()
        else:
            p.copy_(src_params[name])
            copied += p.numel()
    return copied, fresh


@torch.no_grad()
def validate(model, images: torch.Tensor) -> list[dict]:
    """Rounded (not noisy) latents on held-out crops: estimated bpp and PSNR at each trained level."""
    model.eval()
    x = images.float().div(255)
    rows = []
    for level in range(model.n_levels):
        lv = torch.full((x.shape[0],), float(level), device=x.device)
        bpp, mse = hard_terms(model, model.coded_terms, x, lv, bf16=False)
        psnr = (10 * torch.log10(1 / mse)).mean().item()
        rows.append({"level": level, "bpp": round(bpp.mean().item(), 4), "psnr": round(psnr, 3)})
    model.train()
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True,
                    help="folders of training images (searched recursively)")
    ap.add_argument("--ckpt", type=Path, default=Path(".ckpt"), help="full checkpoint folder (resumed if present)")
    ap.add_argument("--init", type=Path, help="shipped .safetensors weights to start from if --ckpt is empty")
    ap.add_argument("--out", type=Path, required=True, help="where the exported weights and the logs are written")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget of this call")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--scale-min", type=float, default=1.0,
                    help="augmentation: crop regions up to --crop / this and resize them to --crop (1: off)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-final", type=float, default=None,
                    help="decay the lr linearly to this value over the last --decay-fraction of the budget")
    ap.add_argument("--decay-fraction", type=float, default=0.3)
    ap.add_argument("--arch", choices=zoo.ARCHITECTURES, default="mean-scale",
                    help="hp architecture, in the order each grew from the one before it (from weights given "
                         "to --init); the class docstrings in codec/models/hp.py say what each adds and why. "
                         "checkerboard-wide and later want --M 256")
    ap.add_argument("--weights-name", default=zoo.MODELS["hp"],
                    help="file name of the exported weights (default: the shipped hp model's)")
    ap.add_argument("--lambdas", type=float, nargs="+",
                    help="rate-distortion trade-offs of the trained levels, increasing (default: those of the "
                         f"--init weights, else {' '.join(map(str, LAMBDAS))})")
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--M", type=int, default=192)
    ap.add_argument("--hard", action="store_true",
                    help="soft then hard (Guo et al. 2021): freeze the analysis and train the synthesis and the "
                         "entropy model on rounded latents and their real bits instead of additive noise")
    ap.add_argument("--transplant", action="store_true",
                    help="the --init weights are another architecture's: take only the parameters that match "
                         "in name and shape (the transforms), start the rest fresh (transplant_parameters)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    # A resumed checkpoint says what it is (its metadata beside it): a call that resumes it needs to
    # repeat neither --init nor --lambdas, and one for another architecture is refused.
    ckpt_meta = json.loads((args.ckpt / "meta.json").read_text()) if (args.ckpt / "meta.json").exists() else None
    if ckpt_meta and (ckpt_meta["arch"], ckpt_meta["M"], ckpt_meta["N"]) != (args.arch, args.M, args.N):
        raise SystemExit(f"{args.ckpt} holds a {ckpt_meta['arch']} model (M = {ckpt_meta['M']}, N = "
                         f"{ckpt_meta['N']}), not this call's {args.arch} (M = {args.M}, N = {args.N})")
    if args.lambdas is None:  # training on keeps the rate levels of what it resumes unless told otherwise
        args.lambdas = (ckpt_meta["lambdas"] if ckpt_meta else
                        zoo.read_meta(args.init)["lambdas"] if args.init else list(LAMBDAS))

    start = time.time()
    dev = prepare_run(args.out, args.ckpt)
    data, paths = load_dataset(args.data, args.workers)
    held = held_out(paths)  # for the end-of-call validation
    train_images = torch.from_numpy(data[~held]).to(dev)
    val_images = torch.from_numpy(data[held]).to(dev)
    print(f"data: {len(train_images)} train, {len(val_images)} held out, {time.time() - start:.1f}s", flush=True)

    meta = {"family": "hp", "model_id": "hp", "arch": args.arch, "N": args.N, "M": args.M, "lambdas": args.lambdas}
    model = zoo.build("hp", meta).to(dev).to(memory_format=torch.channels_last)
    # --hard: the analysis is frozen, so the latents the decoder side trains on are the ones it will see.
    main_params = [p for n, p in model.named_parameters()
                   if not n.endswith(".quantiles") and not (args.hard and model.encoder_side(n))]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    step, gpu_seconds = 0, 0.0
    full = args.ckpt / "state.pt"
    if full.exists():
        state = torch.load(full, map_location=dev)
        if state.get("hard", False) != args.hard:
            raise SystemExit(f"{full} was trained {'with' if state.get('hard') else 'without'} --hard: its "
                             "optimizer state does not fit this call; start from --init with a fresh --ckpt")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        step, gpu_seconds = state["step"], state["gpu_seconds"]
        print(f"resumed full checkpoint at step {step}, {gpu_seconds / 60:.1f} GPU-min", flush=True)
    elif args.init:
        shipped, init_meta = zoo.load_file(args.init, dev)
        # Parameters only: buffers (tables, bounds) are export products or constants of the fresh model.
        if args.transplant:
            copied, fresh = transplant_parameters(shipped, model)
            print(f"transplanted {copied / 1e6:.2f} M parameters of {args.init} ({init_meta['arch']}, "
                  f"{init_meta['steps']} steps); {fresh / 1e6:.2f} M fresh", flush=True)
        else:
            grow_parameters(shipped, model)
        # A transplant keeps the count: its transforms carry the --init weights' training.
        step, gpu_seconds = init_meta["steps"], init_meta["gpu_seconds"]
        print(f"resumed {args.init} at step {step}, {gpu_seconds / 60:.1f} GPU-min (fresh optimizer)", flush=True)
    for g in opt.param_groups:
        g["lr"] = args.lr
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)

    fwd = torch.compile(model) if args.compile else model
    coded = torch.compile(model.coded_terms) if args.compile else model.coded_terms

    def rd_step(x: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hard_terms(model, coded, x, level) if args.hard else rd_terms(fwd(x, level), x)

    gen = torch.Generator(device=dev)
    gen.manual_seed(1234 + step)
    log = TrainLog(args.out / "train-log.csv", ["loss", "bpp", "psnr", "aux"])
    # At least one step, also when loading took the whole budget (a smoke run on a busy machine).
    budget = max(args.minutes * 60 - (time.time() - start), 1.0)
    t0 = time.time()
    model.train()
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, args.lr_final, args.decay_fraction, elapsed, budget)
        x = random_batch(train_images, args.batch, args.crop, gen, args.scale_min)
        level = torch.rand(args.batch, generator=gen, device=dev) * (len(args.lambdas) - 1)
        try:
            bpp, mse = rd_step(x, level)
        except Exception as e:  # a compiler failure must not cost the GPU call: fall back to eager
            if fwd is model:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {e}); running eager", flush=True)
            fwd, coded = model, model.coded_terms
            bpp, mse = rd_step(x, level)
        loss = (model.lambda_at(level) * 255 ** 2 * mse + bpp).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        step += 1
        log.add(loss=loss, bpp=bpp.mean(), psnr=(10 * torch.log10(1 / mse.detach())).mean(), aux=aux)
        if step % args.log_every == 0:
            log.write(step, gpu_seconds + (time.time() - t0 if dev == "cuda" else 0), opt.param_groups[0]["lr"])
    if dev == "cuda":  # a CPU smoke run must not count as GPU training
        gpu_seconds += time.time() - t0
    log.close()

    state = {"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
             "step": step, "gpu_seconds": gpu_seconds, "hard": args.hard}
    torch.save(state, args.ckpt / "state.tmp")
    os.replace(args.ckpt / "state.tmp", full)
    (args.ckpt / "meta.json").write_text(json.dumps(meta))

    rows = validate(model, val_images)
    with open(args.out / "val-log.csv", "a", newline="") as f:
        w = csv.writer(f)
        for r in rows:
            w.writerow([step, round(gpu_seconds, 1), r["level"], r["bpp"], r["psnr"]])
    print("validation (held-out crops, rounded latents):", rows, flush=True)
    meta.update(steps=step, gpu_seconds=round(gpu_seconds, 1), batch=args.batch, crop=args.crop)
    zoo.export(model, args.out / args.weights_name, meta)
    print(f"done: step {step}, {gpu_seconds / 60:.1f} GPU-min, wall {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
