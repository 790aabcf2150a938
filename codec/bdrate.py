"""Bjøntegaard delta rate and PSNR with PCHIP interpolation over the overlapping quality range."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator


def _delta(x1, y1, x2, y2) -> float:
    """Mean of (curve 2 - curve 1) as functions y(x) over the overlap of their x ranges."""
    x1, y1, x2, y2 = (np.asarray(a, np.float64) for a in (x1, y1, x2, y2))
    o1, o2 = np.argsort(x1), np.argsort(x2)
    x1, y1, x2, y2 = x1[o1], y1[o1], x2[o2], y2[o2]
    lo, hi = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if hi <= lo:
        raise ValueError("the two curves do not overlap")
    i1 = PchipInterpolator(x1, y1).integrate(lo, hi)
    i2 = PchipInterpolator(x2, y2).integrate(lo, hi)
    return (i2 - i1) / (hi - lo)


def bd_rate(bpp_ref, psnr_ref, bpp_test, psnr_test) -> float:
    """Average bitrate change of test vs reference at equal quality, in percent (negative = fewer bits)."""
    return float((np.exp(_delta(psnr_ref, np.log(bpp_ref), psnr_test, np.log(bpp_test))) - 1) * 100)


def bd_psnr(bpp_ref, psnr_ref, bpp_test, psnr_test) -> float:
    """Average quality change of test vs reference at equal bitrate, in dB."""
    return float(_delta(np.log(bpp_ref), psnr_ref, np.log(bpp_test), psnr_test))


def load_curve(path: str | Path, metric: str = "psnr-rgb") -> tuple[str, np.ndarray, np.ndarray]:
    """A CompressAI-layout results JSON -> (name, bpp, metric)."""
    d = json.loads(Path(path).read_text())
    r = d["results"]
    return d.get("name", Path(path).stem), np.asarray(r["bpp"], float), np.asarray(r[metric], float)


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description="BD-rate and BD-PSNR of TEST against REFERENCE "
                                 "(CompressAI-layout results JSON files).")
    ap.add_argument("reference")
    ap.add_argument("test")
    ap.add_argument("--metric", default="psnr-rgb", help="quality key in the JSON (default psnr-rgb)")
    args = ap.parse_args(argv)
    ref_name, rb, rq = load_curve(args.reference, args.metric)
    test_name, tb, tq = load_curve(args.test, args.metric)
    print(f"{test_name} vs {ref_name} ({args.metric}): BD-rate {bd_rate(rb, rq, tb, tq):+.2f} %, "
          f"BD-{args.metric} {bd_psnr(rb, rq, tb, tq):+.3f}")


if __name__ == "__main__":
    main()
