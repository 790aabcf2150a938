"""Resumable, time-budgeted training of the variable-rate hp model (checkerboard-cond2, the one that ships).

    python -m training.hp --data .data/train --ckpt .ckpt --minutes 8 --out OUTDIR

Each call trains until its time budget is spent, then writes a full checkpoint (model, optimizers,
step, GPU seconds) to --ckpt, the fp16 safetensors weights ready to ship to --out (over 16 MiB they
come back from a device command in `split` parts), and appends one row per logging window to
train-log.csv: step, seconds, loss, bpp, PSNR. The next call resumes from --ckpt while the machine
still holds it, or else from --init, exported weights (the shipped ones, say), with fresh optimizer
state: fp16 rounding moves a weight by far less than one Adam step, so nothing is lost but the
optimizer's moments.

The defaults build the shipped model (its weights' metadata: N, M, lambdas, batch, crop); without
--init they train it from scratch. --hard is the second stage, soft then hard (Guo et al. 2021).

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
from pathlib import Path

import numpy as np
import torch

from codec import zoo
from codec.models.hp import LAMBDAS, ConditionedCheckerboard
from training.data import TrainLog, held_out, load_dataset, prepare_run, random_batch, scheduled_lr

# The one hp architecture, the shipped model's. Earlier architectures, and how the shipped weights
# grew through them, are in CHANGELOG.md and docs/training.md.
ARCH = ConditionedCheckerboard.arch


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
    """Copy the per-level tables of `src` (LEVEL_TABLES: the log-gains, the transforms' scales and
    shifts) to `dst`, whose lambdas may differ: each of dst's levels takes src's rows interpolated
    (extrapolated beyond its ends) linearly in log lambda, the relation the gains start from (a
    quantizer step going as 1/sqrt(lambda)). A level both have keeps its rows exactly."""
    src_l = np.log(src.lambdas)
    for i, x in enumerate(np.log(dst.lambdas)):
        lo = min(max(int(np.searchsorted(src_l, x)), 1), len(src_l) - 1) - 1
        t = float((x - src_l[lo]) / (src_l[lo + 1] - src_l[lo]))
        for name in dst.LEVEL_TABLES:
            table = getattr(src, name)
            getattr(dst, name)[i] = (1 - t) * table[lo] + t * table[lo + 1]


@torch.no_grad()
def load_parameters(src, dst) -> None:
    """Copy the parameters of `src` (exported weights) into `dst`, a fresh model of the same
    architecture and size; the per-level tables through transfer_level_tables, so dst may train other
    lambdas. Buffers (CDF tables, bounds) are export products or constants of the fresh model."""
    src_params = dict(src.named_parameters())
    for name, p in dst.named_parameters():
        if name in dst.LEVEL_TABLES:
            continue
        if src_params[name].shape != p.shape:
            raise SystemExit(f"--init: {name} {tuple(src_params[name].shape)} does not fit {tuple(p.shape)}")
        p.copy_(src_params[name])
    transfer_level_tables(src, dst)


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


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.hp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True,
                    help="folders of training images (searched recursively)")
    ap.add_argument("--ckpt", type=Path, default=Path(".ckpt"), help="full checkpoint folder (resumed if present)")
    ap.add_argument("--init", type=Path, help="exported .safetensors weights to start from if --ckpt is empty")
    ap.add_argument("--out", type=Path, required=True, help="where the exported weights and the logs are written")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget of this call")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--scale-min", type=float, default=0.75,
                    help="augmentation: crop regions up to --crop / this and resize them to --crop (1: off)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-final", type=float, default=None,
                    help="decay the lr linearly to this value over the last --decay-fraction of the budget")
    ap.add_argument("--decay-fraction", type=float, default=0.3)
    ap.add_argument("--weights-name", default=zoo.weights_path("hp").name,
                    help="file name of the exported weights, whose stem is their model id "
                         "(default: the shipped hp model's)")
    ap.add_argument("--lambdas", type=float, nargs="+",
                    help="rate-distortion trade-offs of the trained levels, increasing (default: those of the "
                         f"resumed checkpoint or the --init weights, else the shipped {' '.join(map(str, LAMBDAS))})")
    ap.add_argument("--N", type=int, default=128, help="channels of the hyperprior (the transforms have 3N/2)")
    ap.add_argument("--M", type=int, default=256, help="channels of the latent")
    ap.add_argument("--hard", action="store_true",
                    help="soft then hard (Guo et al. 2021): freeze the analysis and train the synthesis and the "
                         "entropy model on rounded latents and their real bits instead of additive noise")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return ap


def model_meta(args: argparse.Namespace, ckpt_meta: dict | None, init_meta: dict | None) -> dict:
    """What zoo.build needs, from the arguments: training on keeps the rate levels of what it resumes
    (the checkpoint, else the --init weights) unless --lambdas names others."""
    lambdas = args.lambdas or (ckpt_meta or init_meta or {}).get("lambdas") or list(LAMBDAS)
    return {"family": "hp", "model_id": Path(args.weights_name).stem, "arch": ARCH,
            "N": args.N, "M": args.M, "lambdas": list(lambdas)}


def main(argv=None) -> None:
    args = arguments().parse_args(argv)
    # A resumed checkpoint says what it is (its metadata beside it): a call that resumes it needs to
    # repeat neither --init nor --lambdas, and one for another model is refused.
    ckpt_meta = json.loads((args.ckpt / "meta.json").read_text()) if (args.ckpt / "meta.json").exists() else None
    if ckpt_meta and (ckpt_meta["arch"], ckpt_meta["M"], ckpt_meta["N"]) != (ARCH, args.M, args.N):
        raise SystemExit(f"{args.ckpt} holds a {ckpt_meta['arch']} model (M = {ckpt_meta['M']}, N = "
                         f"{ckpt_meta['N']}), not this call's {ARCH} (M = {args.M}, N = {args.N})")
    init_meta = zoo.read_meta(args.init) if args.init else None
    if init_meta and (init_meta["family"], init_meta.get("arch")) != ("hp", ARCH):
        raise SystemExit(f"--init: {args.init} holds a {init_meta['family']} {init_meta.get('arch', '')} model; "
                         f"this trainer trains {ARCH} (earlier architectures: CHANGELOG.md)")
    meta = model_meta(args, ckpt_meta, init_meta)
    if ckpt_meta and meta["lambdas"] != ckpt_meta["lambdas"]:
        raise SystemExit(f"{args.ckpt} trains the lambdas {ckpt_meta['lambdas']}: to train others, start from "
                         "its exported weights (--init) with a fresh --ckpt")

    start = time.time()
    dev = prepare_run(args.out, args.ckpt)
    data, paths = load_dataset(args.data, args.workers)
    held = held_out(paths)  # for the end-of-call validation
    train_images = torch.from_numpy(data[~held]).to(dev)
    val_images = torch.from_numpy(data[held]).to(dev)
    print(f"data: {len(train_images)} train, {len(val_images)} held out, {time.time() - start:.1f}s", flush=True)

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
        shipped, _ = zoo.load_file(args.init, dev)
        load_parameters(shipped, model)
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
        level = torch.rand(args.batch, generator=gen, device=dev) * (len(meta["lambdas"]) - 1)
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
