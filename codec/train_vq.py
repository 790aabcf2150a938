"""Resumable, time-budgeted training of the vq family, in two stages.

    python -m codec.train_vq --stage autoencoder --data .data/train --ckpt .ckpt-vq --out OUT --minutes 8
    python -m codec.train_vq --stage prior       --data .data/train --ckpt .ckpt-vq --out OUT --minutes 8

autoencoder: encoder, vector quantizer and decoder, on MSE + (1 - MS-SSIM) + the quantizer loss.
prior: the transformer entropy model over the frozen encoder's index maps, on masked-index
cross-entropy (bits per index). Both stages share one checkpoint (--ckpt/state.pt) and one
weights file; --init starts from exported weights on a fresh machine. Logs: train-log-<stage>.csv.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from codec import zoo
from codec.train import TrainLog, load_dataset, random_batch, scheduled_lr

DEFAULTS = {"family": "vq", "model_id": "vq", "channels": [64, 96, 128, 160, 192], "dim": 192,
            "codebook_size": 8192, "code_dim": 16, "prior_dim": 256, "prior_depth": 4}


def perplexity(indices: torch.Tensor, k: int) -> torch.Tensor:
    """exp(entropy) of the batch's index histogram: how many codes are effectively in use."""
    p = torch.bincount(indices.flatten(), minlength=k).float()
    p = p / p.sum()
    return torch.exp(-(p[p > 0] * p[p > 0].log()).sum())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["autoencoder", "prior"], required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, default=Path(".ckpt-vq"))
    ap.add_argument("--init", type=Path, help="exported vq weights to start from if --ckpt is empty")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-final", type=float, default=None)
    ap.add_argument("--decay-fraction", type=float, default=0.3)
    ap.add_argument("--msssim-weight", type=float, default=0.2, help="weight of 1 - MS-SSIM (crops >= 161 px)")
    ap.add_argument("--codebook-size", type=int, default=DEFAULTS["codebook_size"])
    ap.add_argument("--small", action="store_true", help="a tiny model, for smoke tests on CPU")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--weights-name", default="vq-v1.safetensors")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    start = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    args.ckpt.mkdir(parents=True, exist_ok=True)
    images = torch.from_numpy(load_dataset(args.data, args.workers)).to(dev)

    meta = dict(DEFAULTS, codebook_size=args.codebook_size)
    if args.small:
        meta.update(channels=[32, 32, 32, 32, 32], dim=32, prior_dim=32, prior_depth=1)
    model = zoo.build("vq", meta).to(dev)
    step, gpu_seconds = {"autoencoder": 0, "prior": 0}, 0.0
    full = args.ckpt / "state.pt"
    if full.exists():
        state = torch.load(full, map_location=dev)
        model.load_state_dict(state["model"])
        step, gpu_seconds = state["steps"], state["gpu_seconds"]
    elif args.init:
        shipped, init_meta = zoo.load_file(args.init, dev)
        model.load_state_dict(shipped.state_dict())
        step, gpu_seconds = init_meta["steps"], init_meta["gpu_seconds"]
    stage = model.autoencoder if args.stage == "autoencoder" else model.prior
    opt = torch.optim.AdamW(stage.parameters(), lr=args.lr, weight_decay=0.0 if args.stage == "autoencoder" else 0.01)
    if full.exists() and args.stage in state.get("opt", {}):
        opt.load_state_dict(state["opt"][args.stage])
    model.autoencoder.train(args.stage == "autoencoder")
    model.prior.train(args.stage == "prior")
    print(f"{args.stage}: {sum(p.numel() for p in stage.parameters()) / 1e6:.2f} M parameters, step "
          f"{step[args.stage]}, {gpu_seconds / 60:.1f} GPU-min so far", flush=True)

    use_msssim = args.msssim_weight > 0 and args.crop > 160
    names = (["loss", "psnr"] + ["ms_ssim"] * use_msssim + ["perplexity"] if args.stage == "autoencoder"
             else ["bits_per_index"])
    log = TrainLog(args.out / f"train-log-{args.stage}.csv", names)
    gen = torch.Generator(device=dev)
    gen.manual_seed(4321 + step[args.stage])
    if use_msssim:
        from pytorch_msssim import ms_ssim
    budget = args.minutes * 60 - (time.time() - start)
    t0 = time.time()
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, args.lr_final, args.decay_fraction, elapsed, budget)
        x = random_batch(images, args.batch, args.crop, gen)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            if args.stage == "autoencoder":
                out = model.autoencoder(x)
                x_hat = out["x_hat"].float()
                mse = (x_hat - x).pow(2).mean()
                loss = mse + out["vq_loss"]
                values = {"psnr": -10 * torch.log10(mse.detach()),
                          "perplexity": perplexity(out["indices"], model.autoencoder.quantizer.codebook_size)}
                if use_msssim:
                    values["ms_ssim"] = ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0)
                    loss = loss + args.msssim_weight * (1 - values["ms_ssim"])
                values["loss"] = loss
            else:
                loss = model.prior.loss(model.autoencoder.analyse(x))
                values = {"bits_per_index": loss}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 1.0)
        opt.step()
        step[args.stage] += 1
        log.add(**values)
        if step[args.stage] % args.log_every == 0:
            log.write(step[args.stage], gpu_seconds + time.time() - t0, opt.param_groups[0]["lr"])
    if dev == "cuda":  # a CPU smoke run must not count as GPU training
        gpu_seconds += time.time() - t0
    log.close()

    opts = state.get("opt", {}) if full.exists() else {}
    opts[args.stage] = opt.state_dict()
    torch.save({"model": model.state_dict(), "opt": opts, "steps": step, "gpu_seconds": gpu_seconds},
               args.ckpt / "state.tmp")
    os.replace(args.ckpt / "state.tmp", full)
    meta.update(steps=step, gpu_seconds=round(gpu_seconds, 1), batch=args.batch, crop=args.crop)
    zoo.export(model, args.out / args.weights_name, meta)
    uniform = math.log2(model.autoencoder.quantizer.codebook_size)
    print(f"done: {args.stage} step {step[args.stage]}, {gpu_seconds / 60:.1f} GPU-min "
          f"(uniform coding: {uniform:.1f} bits/index), wall {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
