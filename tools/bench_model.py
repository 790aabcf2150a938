"""Encode and decode time per image: our hp model vs CompressAI's mbt2018-mean, in one run.

The peer has the same architecture class (mean-scale hyperprior), built untrained (its weights
cannot be downloaded here), which is enough for timing. Both run their whole path: analysis,
entropy coding to bytes, decoding, synthesis. `--device cuda` times on a GPU (synchronised).
`--vq K` adds the vq model at codebook size K (its whole path through codec.api, container included).
"""
import argparse
import time
import warnings
from pathlib import Path

import torch

from bitstream import Header
from codec import api, zoo
from codec.io import find_images, load_image


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--images", type=int, default=4, help="how many images (the first N)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quality", type=float, default=50)
    ap.add_argument("--vq", type=int, metavar="K", help="also time the vq model with codebook size K")
    ap.add_argument("--hp-weights", type=Path, help="time these hp weights instead of the shipped ones")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressai.zoo import mbt2018_mean
    dev = args.device
    peer = mbt2018_mean(quality=4, pretrained=False).to(dev).eval()
    peer.update(force=True)
    zoo.deterministic_kernels(dev)  # as codec.api codes on a GPU, for the peer too
    net = zoo.load_file(args.hp_weights, dev)[0] if args.hp_weights else zoo.load("hp", dev)[0]
    level = net.level_of(args.quality).to(dev)
    rows = {"hp (ours)": [0.0, 0.0], "mbt2018-mean (CompressAI)": [0.0, 0.0]}
    if args.vq:
        rows[f"vq K={args.vq} (ours)"] = [0.0, 0.0]
    paths = find_images(args.dataset)[: args.images]
    for i, path in enumerate([paths[0]] + paths):  # the first image once more, untimed, to warm up
        x = api.to_tensor(load_image(path), dev, net.stride)
        te, (packets, _) = timed(lambda: net.code_latents(*net.analyse(x, level), args.quality), dev)
        header = Header("hp", "hp", b"0000", x.shape[3], x.shape[2], args.quality, release=(0, 0, 0))
        td, _ = timed(lambda: net.synthesise(net.decode_latents(packets, header), level), dev)
        with torch.no_grad():
            pe, out = timed(lambda: peer.compress(x), dev)
            pd, _ = timed(lambda: peer.decompress(out["strings"], out["shape"]), dev)
        times = {"hp (ours)": (te, td), "mbt2018-mean (CompressAI)": (pe, pd)}
        if args.vq:
            rgb = load_image(path)
            ve, data = timed(lambda: api.encode(rgb, model="vq", codebook=args.vq, device=dev), dev)
            vd, _ = timed(lambda: api.decode_rgb(data, device=dev), dev)
            times[f"vq K={args.vq} (ours)"] = (ve, vd)
        if i:
            for name, (e, d) in times.items():
                rows[name][0] += e / len(paths)
                rows[name][1] += d / len(paths)
    print(f"{len(paths)} images from {args.dataset}, device {dev}, torch threads {torch.get_num_threads()}")
    print(f"{'model':28s} {'encode s':>9s} {'decode s':>9s}")
    for name, (e, d) in rows.items():
        print(f"{name:28s} {e:9.3f} {d:9.3f}")
    (oe, od), (pe, pd) = list(rows.values())[:2]
    print(f"ours / peer time: encode {oe / pe:.2f}x, decode {od / pd:.2f}x")


if __name__ == "__main__":
    main()
