"""Decompression bombs: tiny files whose header claims a large image (forged from a small file, and
the genuine file of a flat 1024x1024 image at vq's lowest rate), and the file of a flat 2048x2048
image at hp's lowest quality. `make` writes them with the codec of the tree it runs from; `measure`
decodes each in a fresh process and reports wall time and peak RSS.

    python tools/bombs.py make tests/data/bombs
    python tools/bombs.py measure tests/data/bombs [--json out.json]

Run `measure` from an older checkout (with that tree's files, made by its own `make`) for the
figures before a change.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (model, side coded, side claimed): a flat grey image at the family's lowest rate; a
# claimed side larger than the coded one is a forged header (CRC made valid again).
BOMBS = {
    "hp-16-flat.bin": ("hp", 16, 16),  # the floor: a process that starts Python, torch and the models
    "hp-1024-forged.bin": ("hp", 16, 1024),
    "vq-1024-forged.bin": ("vq", 48, 1024),
    "vq-1024-flat.bin": ("vq", 1024, 1024),
    "hp-2048-flat.bin": ("hp", 2048, 2048),
}

DECODE = ("import sys; sys.path.insert(0, sys.argv[1]); from codec import api; "
          "api.decode_rgb(open(sys.argv[2], 'rb').read())")


def make(folder: Path) -> None:
    import numpy as np
    sys.path.insert(0, str(ROOT))
    import bitstream
    import codec
    folder.mkdir(parents=True, exist_ok=True)
    for name, (model, side, claimed) in BOMBS.items():
        data = codec.encode(np.full((side, side, 3), 128, np.uint8), model=model, quality=0)
        if claimed != side:
            c = bitstream.read(data)
            c.header.width = c.header.height = claimed
            for p in c.packets:
                if p.kind == bitstream.PacketKind.INDICES:  # as many indices as the claimed size has
                    p.count = (claimed // 16) ** 2
            data = bitstream.write(c)
        (folder / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, claims {claimed}x{claimed}", file=sys.stderr)


def measure_one(path: Path) -> dict:
    """Decode in a fresh interpreter (this tree's codec) -> seconds, peak RSS of that process (the
    only child of this one, so the children's maximum RSS is its own)."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", DECODE, str(ROOT), str(path)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    outcome = "decoded" if run.returncode == 0 else "failed: " + (run.stderr.strip().splitlines() or ["?"])[-1]
    return {"file": path.name, "bytes": path.stat().st_size, "outcome": outcome, "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["make", "measure", "measure-one"])
    p.add_argument("path", type=Path, help="folder of bomb files (measure-one: one file)")
    p.add_argument("--json", type=Path, help="measure: also write the rows here")
    args = p.parse_args()
    if args.action == "make":
        make(args.path)
        return 0
    if args.action == "measure-one":
        print(json.dumps(measure_one(args.path)))
        return 0
    rows = []
    for name in BOMBS:
        # One process per file, so that each peak RSS is that file's alone.
        out = subprocess.run([sys.executable, __file__, "measure-one", str(args.path / name)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
        print(rows[-1], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
