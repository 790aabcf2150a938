"""Fit the post-filter of a checkerboard-post hp model with every other weight frozen: a training run
sized for a CPU.

    python -m codec.train_post --data .data/train .data/train-rest --init codec/weights/hp-cbc2-v7.safetensors \\
        --out runs/post --samples 3000 --minutes 40

With the analysis, the entropy model and the synthesis frozen, what the filter is given is fixed:
each sample (a random crop of a training image at a random rate level, drawn as codec.train draws
them) is analysed, rounded as the coder rounds it and synthesised once, and its half-resolution
synthesis features and picture are kept (float16). The filter then trains epoch after epoch on that
cache, without running the 13 M frozen parameters again. Loss: lambda * 255^2 * MSE of the clamped
picture (the bits do not depend on the filter). Held-out crops at every trained level, cached the same
way, are validated before training and after each epoch (val-log.csv: the PSNR and its gain over the
unfiltered picture); train-log.csv gets a row every --log-every steps. The epoch with the lowest
validation loss is exported as --weights-name, its metadata extended with a record of this fit.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from codec import train, zoo

ARCH = "checkerboard-post"


def post_model(init: Path) -> tuple[torch.nn.Module, dict]:
    """--init weights -> (a checkerboard-post model, its metadata): the filter trained on if they have
    one, else grown from them (the filter starting as the identity)."""
    shipped, meta = zoo.load_file(init)
    if meta.get("arch") == ARCH:
        return shipped, meta
    meta = {**meta, "arch": ARCH}
    model = zoo.build("hp", meta)
    train.grow_parameters(shipped, model)
    return model.eval(), meta


@torch.no_grad()
def cache(model, x: torch.Tensor, level: torch.Tensor) -> dict:
    """Crops x (B, 3, S, S) at levels (B,) -> what the filter is given and must approach, as the
    decoder will have it: the half-resolution features, g_s's picture, the original, the level."""
    y, z = model.analyse(x, level)
    _, _, _, y_hat = model.decoded_latents(y, z, level)
    features = model.synthesis_features(y_hat * model.gains(level)[1], level)
    return {"features": features.half(), "x_hat": model.g_s[6:](features).half(), "x": x.half(), "level": level}


def build_cache(model, images: torch.Tensor, levels: torch.Tensor, crop: int, gen: torch.Generator,
                batch: int, what: str, random_crops: bool = True) -> dict:
    """One cached sample per entry of `levels`: a random crop (or, without random_crops, the centre crop
    of image i % N) at that level."""
    out, start = {}, time.time()
    for i in range(0, len(levels), batch):
        lv = levels[i:i + batch]
        if random_crops:
            x = train.random_batch(images, len(lv), crop, gen)
        else:
            top = (images.shape[2] - crop) // 2
            pick = torch.arange(i, i + len(lv)) % len(images)
            x = images[pick, :, top:top + crop, top:top + crop].float().div(255)
        for k, v in cache(model, x.contiguous(), lv).items():  # filled in place: the cache is gigabytes
            if k not in out:
                out[k] = v.new_empty((len(levels),) + v.shape[1:])
            out[k][i:i + len(lv)] = v
        print(f"\rcaching {what}: {i + len(lv)}/{len(levels)}, {time.time() - start:.0f}s", end="", flush=True)
    print(flush=True)
    return out


def filtered(model, data: dict, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (per-sample MSE of the filtered picture, of the unfiltered one, the samples' lambdas)."""
    x, x_hat, level = data["x"][index].float(), data["x_hat"][index].float(), data["level"][index]
    out = model.post(x_hat, data["features"][index].float(), level).clamp(0, 1)
    mse = lambda a: (a - x).pow(2).mean(dim=(1, 2, 3))  # noqa: E731
    return mse(out), mse(x_hat.clamp(0, 1)), model.lambda_at(level)


@torch.no_grad()
def validate(model, val: dict, batch: int) -> tuple[float, list[dict]]:
    """-> (the training loss over the held-out samples, per level: PSNR and its gain from the filter)."""
    mse, base, lam = (torch.cat(t) for t in zip(*(filtered(model, val, torch.arange(i, min(i + batch, len(val["x"]))))
                                                 for i in range(0, len(val["x"]), batch))))
    rows = []
    for level in sorted(set(val["level"].tolist())):
        at = val["level"] == level
        psnr, psnr_base = (10 * torch.log10(1 / m[at]).mean().item() for m in (mse, base))
        rows.append({"level": int(level), "psnr": round(psnr, 3), "gain": round(psnr - psnr_base, 4)})
    return (lam * 255 ** 2 * mse).mean().item(), rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="folders of training images (searched recursively)")
    ap.add_argument("--init", type=Path, required=True,
                    help="hp weights: checkerboard-cond2 (a filter is grown onto them) or checkerboard-post")
    ap.add_argument("--out", type=Path, required=True, help="where the weights and the logs are written")
    ap.add_argument("--weights-name", default="hp-post.safetensors")
    ap.add_argument("--samples", type=int, default=3000, help="cached training samples (crop, level)")
    ap.add_argument("--crop", type=int, default=128, help="crop side, a multiple of 64")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-final", type=float, default=2e-5, help="reached linearly over the last half of the budget")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget, after caching")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.crop % 64:
        raise SystemExit(f"--crop must be a multiple of 64, not {args.crop}")
    args.out.mkdir(parents=True, exist_ok=True)

    model, meta = post_model(args.init)
    data, paths = train.load_dataset(args.data, args.workers)
    held = train.held_out(paths)
    train_images, val_images = torch.from_numpy(data[~held]), torch.from_numpy(data[held])
    print(f"data: {len(train_images)} train, {len(val_images)} held out", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    n_levels = model.n_levels
    levels = torch.rand(args.samples, generator=gen) * (n_levels - 1)
    samples = build_cache(model, train_images, levels, args.crop, gen, args.batch, "training crops")
    val_levels = torch.arange(n_levels, dtype=torch.float32).repeat_interleave(len(val_images))
    val = build_cache(model, val_images, val_levels, args.crop, gen, args.batch, "held-out crops", random_crops=False)

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("post_"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    log = train.TrainLog(args.out / "train-log.csv", ["loss", "psnr", "gain"])
    val_file = args.out / "val-log.csv"
    new_val = not val_file.exists()
    with open(val_file, "a", newline="") as f:
        if new_val:
            csv.writer(f).writerow(["step", "cpu_seconds", "level", "psnr", "gain"])

    def validation(step: int, seconds: float) -> float:
        loss, rows = validate(model, val, args.batch)
        with open(val_file, "a", newline="") as f:
            csv.writer(f).writerows([step, round(seconds, 1), r["level"], r["psnr"], r["gain"]] for r in rows)
        print(f"validation at step {step}: loss {loss:.4f}, gain by level (dB) "
              + " ".join(f"{r['gain']:+.3f}" for r in rows), flush=True)
        return loss

    best_loss, best, step = validation(0, 0.0), None, 0
    budget, t0 = args.minutes * 60, time.time()
    while time.time() - t0 < budget:
        for index in torch.randperm(args.samples, generator=gen).split(args.batch):
            elapsed = time.time() - t0
            if elapsed >= budget:
                break
            lr = train.scheduled_lr(args.lr, args.lr_final, 0.5, elapsed, budget)
            for g in opt.param_groups:
                g["lr"] = lr
            mse, base, lam = filtered(model, samples, index)
            loss = (lam * 255 ** 2 * mse).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.add(loss=loss, psnr=(10 * torch.log10(1 / mse.detach())).mean(),
                    gain=(10 * torch.log10(base / mse.detach())).mean())
            if step % args.log_every == 0:
                log.write(step, time.time() - t0, lr)
        loss = validation(step, time.time() - t0)  # after each epoch (and the budget's last part of one)
        if loss < best_loss:
            best_loss, best = loss, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    log.close()
    if best is None:
        raise SystemExit("the filter never beat its starting point on the held-out crops: nothing exported")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best:
                p.copy_(best[n])
    meta["post_fit"] = {"init": args.init.name, "samples": args.samples, "crop": args.crop, "batch": args.batch,
                        "steps": step, "cpu_seconds": round(time.time() - t0, 1), "val_loss": round(best_loss, 5)}
    zoo.export(model, args.out / args.weights_name, meta)
    print(f"done: {step} steps, best validation loss {best_loss:.4f}, {args.out / args.weights_name}", flush=True)


if __name__ == "__main__":
    main()
