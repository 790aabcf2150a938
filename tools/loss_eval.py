"""Packet loss: every image is coded as a resilient file (`resilient=True`, `--resilient`), then a
share of its packets is lost: that share of the image's packets over its trials, drawn at random, or
(--burst) bursts of consecutive packets at the same mean rate; lost packets are cut out of the file
(or, --corrupt, get a byte flipped). What is left is decoded with conceal=True, the path `codec
decode --conceal` takes. The header is taken as received (in a stream it travels once, out of band).
Reported per loss rate against the original: PSNR-RGB, MS-SSIM and HaarPSI of

* lossless: the file decoded whole;
* recovered: the codec's concealment (vq: IndexPrior.recover's expected codes; hp: lost slices
  interpolated);
* naive fills of the same lost positions: vq the most frequent received index, and the nearest
  received index; hp the latents' centre, zero.

    python tools/loss_eval.py --dataset .data/kodak --out results/loss [--losses 0,5,10,20,30]
        [--trials 5] [--burst] [--corrupt] [--workers 8] [--hp-quality 50 --vq-quality 50] [--picture kodim23.png]

Writes <out>/loss.json (every decode), <out>/loss.md (the table), <out>/loss.png (PSNR against
loss) and, with --picture, <out>/loss-vq.jpg: lossless | naive | recovered with one packet in four lost.
`--merge A.json B.json` writes the table and plot of earlier runs together.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bitstream  # noqa: E402
import codec  # noqa: E402
from bitstream.container import ConcealedWarning  # noqa: E402
from codec.api import model_of, to_rgb  # noqa: E402
from codec.io import load_image  # noqa: E402
from codec.metrics import haarpsi, ms_ssim, psnr  # noqa: E402

FAMILIES = ("hp", "vq")
METHODS = {"hp": ("recovered", "zeros"), "vq": ("recovered", "most frequent", "nearest")}
BURST = 2.0  # mean length of a burst of lost packets (--burst)


def loss_patterns(n: int, trials: int, loss: float, rng: np.random.Generator, burst: bool) -> list[list[int]]:
    """Which of n packets each trial loses. Random: exactly round(loss * n * trials) of the trials'
    packets, drawn without replacement (so that few packets an image still give the rate asked for);
    burst: a two-state Gilbert chain per trial whose bursts last BURST packets on average and whose
    stationary loss rate is `loss`."""
    if not burst:
        chosen = rng.permutation(n * trials)[:round(loss * n * trials)]
        return [sorted(int(c % n) for c in chosen if c // n == t) for t in range(trials)]
    if loss <= 0:
        return [[] for _ in range(trials)]
    leave = 1 / BURST                            # P(lost -> received)
    enter = min(1.0, loss * leave / (1 - loss))  # P(received -> lost), for a stationary rate `loss`
    patterns = []
    for _ in range(trials):
        lost, state = [], rng.random() < loss
        for i in range(n):
            if state:
                lost.append(i)
            state = rng.random() >= leave if state else rng.random() < enter
        patterns.append(lost)
    return patterns


def cut(data: bytes, lost: list[int]) -> bytes:
    """The file with the bytes of the lost packets cut out (the header still counts them)."""
    packets = bitstream.describe(data)["packets"]
    keep, pos = [], 0
    for i in sorted(lost):
        keep.append(data[pos:packets[i]["offset"]])
        pos = packets[i]["offset"] + packets[i]["length"]
    return b"".join(keep) + data[pos:]


def corrupt(data: bytes, lost: list[int]) -> bytes:
    """The file with a byte in the middle of each lost packet's payload flipped (its CRC then fails)."""
    packets = bitstream.describe(data)["packets"]
    out = bytearray(data)
    for i in lost:
        out[packets[i]["offset"] + packets[i]["length"] - 5 - packets[i]["length"] // 4] ^= 0xFF  # before the CRC
    return bytes(out)


def nearest_fill(maps: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """Each lost index (h, w) takes that of a received neighbour (left, up, right, down, then the
    diagonals), ring by ring until none is left."""
    out, have = maps.clone(), received.clone()
    shifts = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    while not have.all() and have.any():
        for dy, dx in shifts:
            src, ok = torch.roll(out, (dy, dx), (0, 1)), torch.roll(have, (dy, dx), (0, 1))
            if dy:  # no wrapping around the map's edges
                ok[0 if dy > 0 else -1] = False
            if dx:
                ok[:, 0 if dx > 0 else -1] = False
            take = ok & ~have
            out[take], have = src[take], have | take
    return out


def lost_mask(net, header, shape, lost_fields: list[int]) -> torch.Tensor:
    """The stage-1 positions (vq) or latent rows (hp) of the lost packets, from their `first` fields."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if net.family == "vq":
        for first, stage, rows, cols in net.parts(*shape, header.depth, True):
            if first in lost_fields and stage == 0:
                mask[rows, cols] = True
    else:
        for first, count in lost_fields:
            mask[first:first + count] = True
    return mask


def decodes(net, data: bytes, lost: list[int], damage=cut) -> dict[str, np.ndarray]:
    """The damaged file's decodes, one per method, as (H, W, 3) uint8. With every packet lost there
    is nothing to decode (an error, also under conceal): a receiver shows mid-grey, scored here."""
    packets = bitstream.describe(data)["packets"]
    if len(lost) == len(packets):
        h = bitstream.read(data).header
        return dict.fromkeys(METHODS[net.family], np.full((h.height, h.width, 3), 128, np.uint8))
    damaged = damage(data, lost)
    container = bitstream.read(damaged, strict=False)
    header = container.header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConcealedWarning)
        decoded = net.decode(container.packets, header, conceal=True)
    latents, extra = decoded[0], decoded[2]
    naive = {}
    if net.family == "vq":  # the naive fills replace the restored indices (and not their expected codes)
        lost_here = lost_mask(net, header, latents.shape[1:], [packets[i]["first"] for i in lost])
        received = ~lost_here
        frequent = latents[0][received].mode().values if received.any() else torch.tensor(0)
        naive["most frequent"] = latents.clone()
        naive["most frequent"][0][lost_here] = frequent
        naive["nearest"] = latents.clone()
        naive["nearest"][0] = nearest_fill(latents[0], received)
    else:
        rows = lost_mask(net, header, latents.shape[2], [(packets[i]["first"], packets[i]["count"]) for i in lost])
        naive["zeros"] = latents.clone()
        naive["zeros"][:, :, rows] = 0
    out = {"recovered": net.reconstruct(*decoded)}
    out.update({name: net.reconstruct(v, header, extra) for name, v in naive.items()})
    return {name: to_rgb(x, header.height, header.width) for name, x in out.items()}


def scores(rgb: np.ndarray, out: np.ndarray) -> dict:
    return {"psnr": round(psnr(rgb, out), 3), "msssim": round(ms_ssim(rgb, out), 4), "haarpsi": round(haarpsi(rgb, out), 4)}


def image_job(args) -> list[dict]:
    """Every (family, loss, trial) of one image -> rows of the results."""
    path, families, qualities, losses, trials, burst, seed, damage = args
    torch.set_num_threads(1)
    rgb = load_image(path)
    rows = []
    for family in families:
        data = codec.encode(rgb, model=family, quality=qualities[family], resilient=True)
        plain = len(codec.encode(rgb, model=family, quality=qualities[family]))  # what resilience costs
        net = model_of(bitstream.read(data).header)
        n = len(bitstream.describe(data)["packets"])
        lossless = scores(rgb, np.asarray(codec.decode(data)))
        for loss in losses:
            rng = np.random.default_rng([seed, int(loss * 1000), sum(map(ord, Path(path).name))])
            for trial, lost in enumerate(loss_patterns(n, trials if loss else 1, loss, rng, burst)):
                row = {"image": Path(path).name, "family": family, "bytes": len(data), "plain_bytes": plain, "packets": n, "loss": loss,
                       "trial": trial, "lost": lost, "lossless": lossless}
                if lost:
                    row.update({name: scores(rgb, out) for name, out in decodes(net, data, lost, damage).items()})
                else:
                    row.update({name: lossless for name in METHODS[family]})
                rows.append(row)
    return rows


def table(rows: list[dict], losses: list[float]) -> str:
    lines = ["| family (rate cost) | loss | packets lost | method | PSNR (dB) | vs lossless | MS-SSIM | vs lossless | HaarPSI |",
             "|---|---|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        for loss in losses:
            sel = [r for r in rows if r["family"] == family and r["loss"] == loss]
            if not sel:
                continue
            share = sum(len(r["lost"]) for r in sel) / sum(r["packets"] for r in sel)
            cost = sum(r["bytes"] for r in sel) / sum(r["plain_bytes"] for r in sel) - 1
            base = {m: np.mean([r["lossless"][m] for r in sel]) for m in ("psnr", "msssim")}
            for method in METHODS[family]:
                mean = {m: np.mean([r[method][m] for r in sel]) for m in ("psnr", "msssim", "haarpsi")}
                lines.append(f"| {family} ({cost:+.1%}) | {loss:.0%} | {share:.1%} | {method} | {mean['psnr']:.2f} | "
                             f"{mean['psnr'] - base['psnr']:+.2f} | {mean['msssim']:.4f} | "
                             f"{mean['msssim'] - base['msssim']:+.4f} | {mean['haarpsi']:.4f} |")
    return "\n".join(lines) + "\n"


def report(rows: list[dict], losses: list[float], out: Path) -> None:
    (out / "loss.md").write_text(table(rows, losses))
    plot(rows, losses, out / "loss.png")
    print(table(rows, losses))


def plot(rows: list[dict], losses: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        for method in METHODS[family]:
            ys = [np.mean([r[method]["psnr"] for r in rows if r["family"] == family and r["loss"] == loss]) for loss in losses]
            ax.plot([100 * v for v in losses], ys, marker="o", label=method)
        ax.set(title=f"{family}, Kodak", xlabel="packets lost (%)", ylabel="PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def picture(path: str, quality: float, out: Path) -> None:
    """lossless | naive (nearest) | recovered, vq with its first packet (a quarter of the indices) lost."""
    from PIL import Image, ImageDraw, ImageFont
    rgb = load_image(path)
    data = codec.encode(rgb, model="vq", quality=quality, resilient=True)
    net = model_of(bitstream.read(data).header)
    d = decodes(net, data, [0])
    panels = [np.asarray(codec.decode(data)), d["nearest"], d["recovered"]]
    image = Image.fromarray(np.concatenate(panels, 1))
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(("lossless", "nearest received index", "recovered by the index prior")):
        draw.text((i * rgb.shape[1] + 8, 6), label, fill="white", stroke_width=2, stroke_fill="black",
                  font=ImageFont.load_default(20))
    image.save(out, quality=88)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=".data/kodak")
    ap.add_argument("--out", default="results/loss")
    ap.add_argument("--losses", default="0,5,10,20,30", help="packet loss rates in per cent")
    ap.add_argument("--trials", type=int, default=5, help="loss patterns per image and rate")
    ap.add_argument("--burst", action="store_true", help="lose packets in bursts (mean length 2)")
    ap.add_argument("--corrupt", action="store_true", help="corrupt the lost packets (a flipped byte) instead of "
                    "cutting them out of the file")
    ap.add_argument("--families", default="hp,vq")
    ap.add_argument("--hp-quality", type=float, default=50)
    ap.add_argument("--vq-quality", type=float, default=50)
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--picture", help="an image of the dataset for the side-by-side picture")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="no coding: write loss.md and loss.png in --out "
                    "from the rows of earlier runs' JSON files (one family each, say)")
    args = ap.parse_args(argv)
    losses = [float(v) / 100 for v in args.losses.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        report([row for path in args.merge for row in json.loads(Path(path).read_text())["rows"]], losses, out)
        return
    images = sorted(Path(args.dataset).glob("*.png"))[:args.limit or None]
    families = args.families.split(",")
    qualities = {"hp": args.hp_quality, "vq": args.vq_quality}
    damage = corrupt if args.corrupt else cut
    jobs = [(str(p), families, qualities, losses, args.trials, args.burst, args.seed, damage) for p in images]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, image_rows in enumerate(pool.map(image_job, jobs), 1):
            rows += image_rows
            print(f"[{i}/{len(jobs)}] {image_rows[0]['image']}", file=sys.stderr, flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("workers", "merge")}
    (out / "loss.json").write_text(json.dumps({"settings": settings, "rows": rows}) + "\n")
    report(rows, losses, out)
    if args.picture:
        picture(str(Path(args.dataset) / args.picture), args.vq_quality, out / "loss-vq.jpg")


if __name__ == "__main__":
    main()
