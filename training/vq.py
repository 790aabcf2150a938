"""Resumable, time-budgeted training of the vq family, stage by stage.

    python -m training.vq --stage autoencoder --data .data/train --ckpt .ckpt-vq --out OUT --minutes 8
    python -m training.vq --stage cluster     --data .data/train --ckpt .ckpt-vq --out OUT --minutes 2
    python -m training.vq --stage prior       --data .data/train --ckpt .ckpt-vq --out OUT --minutes 5
    python -m training.vq --stage decoder     --data .data/train --ckpt .ckpt-vq --out OUT --minutes 8

autoencoder: encoder, vector quantizer (main codebook + residual stages) and decoder, on
  MSE + w * (1 - MS-SSIM) + the quantizer loss, plus a hinge PatchGAN loss from --adv-start on.
cluster: spherical k-means of the main codebook into K = 2, 4, ..., K_main / 2, each clustered
  codebook fine-tuned on the reconstruction loss with the transforms frozen (Mao et al. 2023);
  then the residual stages' index frequencies, which code them.
prior: the transformer entropy model over the frozen encoder's index maps, a codebook size drawn per
  step, on masked-index cross-entropy (bits per index, logged per size); --scheduled of the maps are
  masked as the coder's groups are.
decoder: the synthesis transform alone, on every codebook the model codes with: the encoder and the
  codebooks stay frozen, so every index map, and the prior's rate, stays what it was.
All stages share one checkpoint (--ckpt/state.pt) and one weights file; --init starts from exported
weights on a fresh machine. About one image in 50 is held out (training.data.held_out): before and
after each call, val-log-<stage>.csv gets PSNR, MS-SSIM and the prior's coded bits an index on
those images at a few operating points. Logs: train-log-<stage>.csv.

The defaults (DEFAULTS, --batch, --crop) build the shipped vq model.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codec import zoo
from codec.models.vq import MSSSIM_MIN_SIDE
from codec.quantizers.cluster import cluster_codebook
from training.data import TrainLog, held_out, load_dataset, prepare_run, random_batch, scheduled_lr

# The shipped vq model's configuration (its weights' metadata, less the model id and the counts).
DEFAULTS = {"family": "vq", "channels": [64, 128, 160, 160], "dim": 192, "codebook_size": 8192,
            "code_dim": 16, "residual_sizes": [4096], "decoder_blocks": 2,
            "level_sizes": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
            "prior_dim": 192, "prior_depth": 4, "prior_heads": 6, "head_rank": 96}
SMALL = {"channels": [32, 32, 32, 32], "dim": 32, "codebook_size": 64, "residual_sizes": [16], "decoder_blocks": 1,
         "level_sizes": [8, 16, 32], "prior_dim": 32, "prior_depth": 1, "prior_heads": 2, "head_rank": 16}


def perplexity(indices: torch.Tensor, k: int) -> torch.Tensor:
    """exp(entropy) of the batch's index histogram: how many codes are effectively in use."""
    p = torch.bincount(indices.flatten(), minlength=k).float()
    p = p / p.sum()
    return torch.exp(-(p[p > 0] * p[p > 0].log()).sum())


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per ~70x70 patch, for the autoencoder's adversarial loss
    (--adv-weight). Training only: never exported."""

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GroupNorm(32, 2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GroupNorm(32, 4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) in [0, 1] -> logits (B, 1, H/8, W/8)
        return self.net(x * 2 - 1)


class Distortion:
    """MSE + w * (1 - MS-SSIM), MS-SSIM in float32 (only on crops MS-SSIM's five scales fit)."""

    def __init__(self, msssim_weight: float, crop: int):
        self.weight = msssim_weight if crop > MSSSIM_MIN_SIDE else 0.0
        if self.weight:
            from pytorch_msssim import ms_ssim
            self.ms_ssim = ms_ssim

    def __call__(self, x_hat: torch.Tensor, x: torch.Tensor) -> dict:
        x_hat = x_hat.float()
        mse = (x_hat - x).pow(2).mean()
        out = {"loss": mse, "psnr": -10 * torch.log10(mse.detach())}
        if self.weight:
            with torch.autocast(x.device.type, enabled=False):
                out["ms_ssim"] = self.ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0)
            out["loss"] = mse + self.weight * (1 - out["ms_ssim"])
        return out


def train_autoencoder(model, images, args, step, gen, log, budget, extra) -> int:
    ae = model.autoencoder
    disc = PatchDiscriminator().to(images.device)
    opt = torch.optim.AdamW(ae.parameters(), lr=args.lr, weight_decay=0.0)
    d_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
    if "autoencoder" in extra:
        opt.load_state_dict(extra["autoencoder"]["opt"])
        d_opt.load_state_dict(extra["autoencoder"]["d_opt"])
        disc.load_state_dict(extra["autoencoder"]["disc"])
    distortion = Distortion(args.msssim_weight, args.crop)
    ae.train()
    t0 = time.time()
    while (elapsed := time.time() - t0) < budget:
        for o in (opt, d_opt):
            for g in o.param_groups:
                g["lr"] = scheduled_lr(args.lr, args.lr_final, args.decay_fraction, elapsed, budget)
        x = random_batch(images, args.batch, args.crop, gen, args.scale_min)
        adversarial = args.adv_weight > 0 and step >= args.adv_start
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            out = ae(x)
            d = distortion(out["x_hat"], x)
            loss = d["loss"] + out["vq_loss"]
            values = {"loss": loss, "psnr": d["psnr"], "perplexity": perplexity(out["indices"], ae.quantizer.codebook_size)}
            if "ms_ssim" in d:
                values["ms_ssim"] = d["ms_ssim"]
            if adversarial:
                g_adv = -disc(out["x_hat"]).float().mean()
                loss = loss + args.adv_weight * g_adv
                values["g_adv"] = g_adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        ae.quantizer.restart_dead_codes()
        if adversarial:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
                d_loss = (F.relu(1 - disc(x).float()).mean() + F.relu(1 + disc(out["x_hat"].detach()).float()).mean())
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            values["d_loss"] = d_loss
        step += 1
        log.add(**values)
        if step % args.log_every == 0:
            log.write(step, args.gpu_seconds + time.time() - t0, opt.param_groups[0]["lr"])
    extra["autoencoder"] = {"opt": opt.state_dict(), "d_opt": d_opt.state_dict(), "disc": disc.state_dict()}
    return step


def marginal_mapping(main: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Main code -> its nearest code of a clustered codebook, which the prior's marginalisation
    follows. A clustered code that no main code is nearest to would get no probability at all, so it
    takes over its own nearest main code (when that leaves the code's old cluster non-empty)."""
    mapping = (main @ codes.T).argmax(1)
    counts = torch.bincount(mapping, minlength=len(codes))
    for j in (counts == 0).nonzero().flatten().tolist():
        i = int((main @ codes[j]).argmax())
        if counts[mapping[i]] > 1:
            counts[mapping[i]] -= 1
            mapping[i], counts[j] = j, 1
    return mapping


def train_cluster(model, images, args, step, gen, log, budget, extra) -> int:
    """Cluster the main codebook into each smaller size and fine-tune it; count residual indices."""
    ae = model.autoencoder
    ae.eval().requires_grad_(False)
    q = ae.quantizer
    distortion = Distortion(args.msssim_weight, args.crop)
    sizes = model.levels.sizes
    per_size = budget * 0.9 / len(sizes)
    stage_start = time.time()
    for k in sizes:
        small, _ = cluster_codebook(q.codes().detach(), k)
        weight = torch.nn.Parameter(small.clone())
        opt = torch.optim.Adam([weight], lr=args.cluster_lr)
        t0 = time.time()
        while time.time() - t0 < per_size:
            x = random_batch(images, args.batch, args.crop, gen, args.scale_min)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
                with torch.no_grad():
                    z = ae.g_a(x)
                    e = q.project(z)
                codes = F.normalize(weight, dim=-1)
                idx = q.stages[0].nearest(e, codes.detach())
                b, _, h, w = z.shape
                x_hat = ae.g_s(q.lookup([idx.view(b, h, w)], codes))
                d = distortion(x_hat, x)
                loss = d["loss"] + F.mse_loss(codes[idx], e)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.add(**{f"psnr_{k}": d["psnr"], **({f"ms_ssim_{k}": d["ms_ssim"]} if "ms_ssim" in d else {})})
            if step % args.log_every == 0:
                log.write(step, args.gpu_seconds + time.time() - stage_start, args.cluster_lr)
        codes = F.normalize(weight.detach(), dim=-1)
        model.levels.set(k, codes, marginal_mapping(q.codes().detach(), codes))
        print(f"codebook {k}: fine-tuned {time.time() - t0:.0f}s", flush=True)
    with torch.no_grad():  # residual stages' index frequencies, +1 so that no index is impossible
        counts = [torch.ones(s.size, device=images.device) for s in q.stages[1:]]
        t0 = time.time()
        while time.time() - t0 < budget * 0.1:
            x = random_batch(images, args.batch, args.crop, gen, args.scale_min)
            maps = ae.analyse(x, q.max_depth)
            for c, m in zip(counts, maps[1:]):
                c += torch.bincount(m.flatten(), minlength=len(c))
        for i, c in enumerate(counts):
            getattr(model, f"residual_counts_{i + 1}").copy_(c)
    ae.requires_grad_(True)
    return step


def train_prior(model, images, args, step, gen, log, budget, extra) -> int:
    ae, prior = model.autoencoder, model.prior
    ae.eval()
    prior.train()
    opt = torch.optim.AdamW(prior.parameters(), lr=args.lr, weight_decay=0.01)
    if "prior" in extra:
        opt.load_state_dict(extra["prior"]["opt"])
    sizes = model.sizes
    t0 = time.time()
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, args.lr_final, args.decay_fraction, elapsed, budget)
        k = sizes[int(torch.randint(len(sizes), (1,), generator=gen, device=images.device))]
        codes, mapping = model.codebook(k)
        x = random_batch(images, args.batch, args.crop, gen, args.scale_min)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            indices = ae.analyse(x, 1, codes)[0]
            loss = prior.loss(indices, codes.detach(), mapping, args.scheduled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        step += 1
        log.add(**{f"bits_{k}": loss})
        if step % args.log_every == 0:
            log.write(step, args.gpu_seconds + time.time() - t0, opt.param_groups[0]["lr"])
    extra["prior"] = {"opt": opt.state_dict()}
    return step


def train_decoder(model, images, args, step, gen, log, budget, extra) -> int:
    """The synthesis transform on a codebook drawn per step: half the steps the main codebook (at a
    depth drawn from 1 .. max), half a clustered one, all on reconstructions of frozen indices."""
    ae = model.autoencoder
    ae.eval().requires_grad_(False)
    ae.g_s.requires_grad_(True)
    opt = torch.optim.AdamW(ae.g_s.parameters(), lr=args.lr, weight_decay=0.0)
    if "decoder" in extra:
        opt.load_state_dict(extra["decoder"]["opt"])
    distortion = Distortion(args.msssim_weight, args.crop)
    main, depths, clustered = ae.quantizer.codebook_size, ae.quantizer.max_depth, model.levels.sizes
    t0 = time.time()
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, args.lr_final, args.decay_fraction, elapsed, budget)
        pick = int(torch.randint(2 * len(clustered), (1,), generator=gen, device=images.device))
        k, depth = (main, 1 + pick % depths) if pick < len(clustered) else (clustered[pick - len(clustered)], 1)
        x = random_batch(images, args.batch, args.crop, gen, args.scale_min)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            with torch.no_grad():
                codes = model.codebook(k)[0]
                z_q = ae.quantizer.lookup(ae.analyse(x, depth, codes), codes)
            d = distortion(ae.g_s(z_q), x)
        opt.zero_grad(set_to_none=True)
        d["loss"].backward()
        torch.nn.utils.clip_grad_norm_(ae.g_s.parameters(), 1.0)
        opt.step()
        step += 1
        if k == main:
            log.add(**{f"{m}_d{depth}": d[m] for m in ("psnr", "ms_ssim") if m in d})
        if step % args.log_every == 0:
            log.write(step, args.gpu_seconds + time.time() - t0, opt.param_groups[0]["lr"])
    ae.requires_grad_(True)
    extra["decoder"] = {"opt": opt.state_dict()}
    return step


def validation_points(model) -> list[tuple[int, int]]:
    """(K, depth): the main codebook at every depth and three clustered sizes spread over the range."""
    main, sizes = model.autoencoder.quantizer.codebook_size, model.levels.sizes
    return ([(k, 1) for k in sorted({sizes[0], sizes[len(sizes) // 2], sizes[-1]})]
            + [(main, d) for d in range(1, model.autoencoder.quantizer.max_depth + 1)])


@torch.no_grad()
def validate(model, images: torch.Tensor) -> list[dict]:
    """Held-out images at each validation point: PSNR, MS-SSIM (where the images are big enough)
    and, at depth 1, the bits an index the prior codes the main map with."""
    ae = model.autoencoder
    was_training = model.training
    model.eval()
    x = images.float().div(255)
    rows = []
    for k, depth in validation_points(model):
        codes, mapping = model.codebook(k)
        maps = ae.analyse(x, depth, codes)
        x_hat = ae.synthesise(maps, codes)
        row = {"codebook": k, "depth": depth, "psnr": (-10 * torch.log10((x_hat - x).pow(2).mean((1, 2, 3)))).mean().item()}
        if min(x.shape[-2:]) > MSSSIM_MIN_SIDE:
            from pytorch_msssim import ms_ssim
            row["ms_ssim"] = ms_ssim(x_hat, x, data_range=1.0).item()
        if depth == 1:
            row["bits"] = model.prior.coded_bits(maps[0], codes, mapping)
        rows.append({m: round(v, 4) if isinstance(v, float) else v for m, v in row.items()})
    model.train(was_training)
    return rows


def write_validation(path: Path, step: int, gpu_seconds: float, when: str, rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "gpu_seconds", "when", "codebook", "depth", "psnr", "ms_ssim", "bits"])
        for r in rows:
            w.writerow([step, round(gpu_seconds, 1), when, r["codebook"], r["depth"], r["psnr"],
                        r.get("ms_ssim", ""), r.get("bits", "")])
    print(f"validation {when} (held-out images):", rows, flush=True)


STAGES = {"autoencoder": train_autoencoder, "cluster": train_cluster, "prior": train_prior, "decoder": train_decoder}


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.vq", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=list(STAGES), required=True)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="folders of training images")
    ap.add_argument("--ckpt", type=Path, default=Path(".ckpt-vq"))
    ap.add_argument("--init", type=Path, help="exported vq weights to start from if --ckpt is empty")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--scale-min", type=float, default=1.0,
                    help="augmentation: crop regions up to --crop / this and resize them to --crop (1: off)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--lr-final", type=float, default=None)
    ap.add_argument("--decay-fraction", type=float, default=0.3)
    ap.add_argument("--msssim-weight", type=float, default=1.0, help="weight of 1 - MS-SSIM (crops >= 161 px)")
    ap.add_argument("--adv-weight", type=float, default=0.0, help="weight of the PatchGAN generator loss")
    ap.add_argument("--adv-start", type=int, default=0, help="autoencoder step from which the GAN loss is on")
    ap.add_argument("--cluster-lr", type=float, default=1e-3)
    ap.add_argument("--scheduled", type=float, default=0.5,
                    help="prior: share of the maps masked as the coder's groups are, not at random")
    ap.add_argument("--small", action="store_true", help="a tiny model, for smoke tests on CPU")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--weights-name", default=zoo.weights_path("vq").name,
                    help="file name of the exported weights, whose stem is their model id "
                         "(default: the shipped vq model's)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return ap


def main(argv=None) -> None:
    args = arguments().parse_args(argv)

    start = time.time()
    dev = prepare_run(args.out, args.ckpt)
    data, paths = load_dataset(args.data, args.workers)
    held = held_out(paths)
    images, val_images = torch.from_numpy(data[~held]).to(dev), torch.from_numpy(data[held]).to(dev)
    print(f"data: {len(images)} train, {len(val_images)} held out", flush=True)

    meta = {"family": "vq", "model_id": Path(args.weights_name).stem, **DEFAULTS, **(SMALL if args.small else {})}
    model = zoo.build("vq", meta).to(dev)
    step, gpu_seconds, extra = dict.fromkeys(STAGES, 0), 0.0, {}
    full = args.ckpt / "state.pt"
    if full.exists():
        state = torch.load(full, map_location=dev)
        model.load_state_dict(state["model"])
        step, gpu_seconds, extra = step | state["steps"], state["gpu_seconds"], state["extra"]
    elif args.init:
        shipped, init_meta = zoo.load_file(args.init, dev)
        # Clustered codebooks of sizes the shipped file lacks stay empty until the cluster stage.
        missing, unexpected = model.load_state_dict(shipped.state_dict(), strict=False)
        if unexpected or any(not k.startswith("levels.") for k in missing):
            raise SystemExit(f"{args.init} does not match this model: missing {missing}, unexpected {unexpected}")
        step, gpu_seconds = step | init_meta["steps"], init_meta["gpu_seconds"]
    stage = {"autoencoder": model.autoencoder, "cluster": model.levels, "prior": model.prior,
             "decoder": model.autoencoder.g_s}[args.stage]
    print(f"{args.stage}: model {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"stage {sum(p.numel() for p in stage.parameters()) / 1e6:.2f} M, step {step[args.stage]}, "
          f"{gpu_seconds / 60:.1f} GPU-min so far", flush=True)

    names = {"autoencoder": ["loss", "psnr", "ms_ssim", "perplexity", "g_adv", "d_loss"],
             "cluster": [f"{m}_{k}" for k in model.levels.sizes for m in ("psnr", "ms_ssim")],
             "prior": [f"bits_{k}" for k in model.sizes],
             "decoder": [f"{m}_d{d}" for d in range(1, model.autoencoder.quantizer.max_depth + 1)
                         for m in ("psnr", "ms_ssim")]}[args.stage]
    log = TrainLog(args.out / f"train-log-{args.stage}.csv", names)
    gen = torch.Generator(device=dev)
    gen.manual_seed(4321 + sum(step.values()))
    val_log = args.out / f"val-log-{args.stage}.csv"
    write_validation(val_log, step[args.stage], gpu_seconds, "before", validate(model, val_images))
    # At least one step, also when loading took the whole budget (a smoke run on a busy machine).
    budget = max(args.minutes * 60 - (time.time() - start), 1.0)
    t0 = time.time()
    args.gpu_seconds = gpu_seconds
    step[args.stage] = STAGES[args.stage](model, images, args, step[args.stage], gen, log, budget, extra)
    if dev == "cuda":  # a CPU smoke run must not count as GPU training
        gpu_seconds += time.time() - t0
    log.close()
    write_validation(val_log, step[args.stage], gpu_seconds, "after", validate(model, val_images))

    torch.save({"model": model.state_dict(), "extra": extra, "steps": step, "gpu_seconds": gpu_seconds},
               args.ckpt / "state.tmp")
    os.replace(args.ckpt / "state.tmp", full)
    meta.update(steps=step, gpu_seconds=round(gpu_seconds, 1), batch=args.batch, crop=args.crop)
    zoo.export(model, args.out / args.weights_name, meta)
    print(f"done: {args.stage} step {step[args.stage]}, {gpu_seconds / 60:.1f} GPU-min "
          f"(uniform coding of the main codebook: {math.log2(meta['codebook_size']):.0f} bits/index), "
          f"wall {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
