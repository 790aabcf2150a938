"""Fuzz the decoder with hostile files: mutated, truncated, spliced and header-forged versions of
valid hp and vq files, each decoded in a child process under a time and a memory limit.

    python tools/fuzz.py --cases 100000 --workers 2 --out results/fuzz

Every case ends in one of: ok (decoded to an image of the header's size), refused (a
BitstreamError: the typed error), untyped (any other exception: a bug), crash (the child died),
hang (over --hang-s) or memory (over --memory-mb). Files that were not ok or refused are kept in
--out/cases/ with the summary (--out/summary.json) so that each can be replayed:

    python tools/fuzz.py --replay results/fuzz/cases/<name>.bin

The seed files are coded from a 64x48 crop of a sample image (not a multiple of the stride, so the
padding paths run); decoding runs with max_pixels = --max-pixels so that a forged size stays small
(a file may legally claim any size up to the limit and take time in proportion: the bomb tests
measure that, not this harness).
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import sys
import time
import warnings
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bitstream  # noqa: E402  (after the path, so a clone runs it without installing)
from bitstream import BitstreamError, PacketKind  # noqa: E402

SAMPLE = ROOT / "datasets" / "samples" / "unsplash-jacob-aguilar-256.png"
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def make_seeds() -> dict[str, bytes]:
    """Valid files of both families at low, middle and high rates (vq: a clustered codebook, the
    main one, and two residual stages), and one of each with a region of interest."""
    import codec
    from codec.io import load_image
    rgb = load_image(SAMPLE)[100:148, 80:144]
    seeds = {f"hp-q{q}": codec.encode(rgb, model="hp", quality=q) for q in (0, 50, 100)}
    for k, d in ((16, 1), (8192, 1), (8192, 2)):
        seeds[f"vq-k{k}-d{d}"] = codec.encode(rgb, model="vq", codebook=k, depth=d)
    box = [(8, 8, 30, 24)]  # a region of interest: an ROI packet first
    seeds["hp-q30-roi"] = codec.encode(rgb, model="hp", quality=30, roi=box, roi_quality=70)
    seeds["vq-k64-roi"] = codec.encode(rgb, model="vq", codebook=64, roi=box)
    seeds["hp-q40-resilient"] = codec.encode(rgb, model="hp", quality=40, resilient=True)
    seeds["vq-k8192-d2-resilient"] = codec.encode(rgb, model="vq", codebook=8192, depth=2, resilient=True)
    return seeds


# --- mutators: (rng, data, seeds) -> bytes; the CRC-fixed ones rewrite the container ---

def flip_bits(rng, data, seeds):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_bytes(rng, data, seeds):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(b)


def insert_delete(rng, data, seeds):
    i = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    return data[:i] + data[i + rng.randint(1, 16):]


def truncate(rng, data, seeds):
    return data[:rng.randrange(len(data))]


def extend(rng, data, seeds):
    return data + (bytes(rng.randint(1, 64)) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64)))


def splice(rng, data, seeds):
    other = rng.choice(list(seeds.values()))
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def _payload(rng, payload: bytes) -> bytes:
    action = rng.randrange(6)
    if action == 0:
        return flip_bits(rng, payload, None)
    if action == 1:
        return payload[:rng.randrange(len(payload))]
    if action == 2:
        return payload + rng.randbytes(rng.randint(1, 8))
    if action == 3:
        return bytes(len(payload))
    if action == 4:
        return rng.randbytes(rng.randint(1, 2 * len(payload)))
    return b""


def forge_payload(rng, data, seeds):
    """A damaged payload under a valid CRC: what reaches the range decoder."""
    c = bitstream.read(data)
    p = rng.choice(c.packets)
    p.payload = _payload(rng, p.payload)
    return bitstream.write(c)


def forge_header(rng, data, seeds, max_side: int = 110):
    """Header and packet-table fields changed, the CRCs made valid again."""
    from codec import zoo
    c = bitstream.read(data)
    h = c.header
    field = rng.randrange(11)
    if field == 0:
        h.width, h.height = rng.randint(1, max_side), rng.randint(1, max_side)
        if h.family == "vq" and rng.random() < 0.8:  # keep the packet table consistent with the size
            for p in c.packets:
                p.count = -(-h.width // 16) * -(-h.height // 16)
    elif field == 1:
        h.quality = rng.choice((0.0, 100.0, round(rng.uniform(0, 100), 2), 7.69, 38.46))
    elif field == 2:
        h.codebook = rng.choice((0, 1, 2, 3, 16, 256, 8192, 16384, rng.randrange(1 << 20)))
    elif field == 3:
        h.depth = rng.randrange(5)
    elif field == 4:
        h.model_id = rng.choice((*zoo.MODELS, "hp", "vq", "x" * 32))
        if rng.random() < 0.5:
            h.family = rng.choice(bitstream.container.FAMILIES)
    elif field == 5:
        h.mode = rng.choice(bitstream.container.MODES)
    elif field == 6:
        action = rng.randrange(3)
        i = rng.randrange(len(c.packets))
        if action == 0:
            del c.packets[i]
        elif action == 1:
            c.packets.insert(i, c.packets[rng.randrange(len(c.packets))])
        else:
            rng.shuffle(c.packets)
    elif field == 7:
        p = rng.choice(c.packets)
        p.kind = rng.choice(list(PacketKind))
    elif field == 9:
        h.roi = not h.roi
    elif field == 10:
        h.resilient = not h.resilient
    else:
        p = rng.choice(c.packets)
        p.first, p.count = rng.choice((0, 1, 2, rng.randrange(1 << 16))), rng.choice((0, 1, 4, 320, rng.randrange(1 << 16)))
    return bitstream.write(c)


MUTATORS = {f.__name__: f for f in (flip_bits, set_bytes, insert_delete, truncate, extend, splice,
                                     forge_payload, forge_header)}


def mutate(rng: random.Random, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """-> (mutation names joined by '+', file): one to three mutations of a random seed."""
    data = seeds[rng.choice(sorted(seeds))]
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(sorted(MUTATORS))
        try:
            out = MUTATORS[name](rng, data, seeds)
        except (BitstreamError, ValueError, IndexError):
            continue  # the file is no longer parseable (or the forged field is outside the format)
        if out:
            data = out
            names.append(name)
    return "+".join(names) or "none", data


# --- the child: decodes what it is sent ---

def decode_case(data: bytes, conceal: bool, max_pixels: int) -> tuple[str, str]:
    from codec import api
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bitstream.container.ConcealedWarning)
        try:
            rgb = api.decode_rgb(data, conceal=conceal, max_pixels=max_pixels)
        except BitstreamError as e:
            return "refused", str(e)[:200]
        except Exception as e:  # what the harness is looking for
            return "untyped", f"{type(e).__name__}: {str(e)[:200]}"
    header = bitstream.container.read_header(data)[0]
    if rgb.shape != (header.height, header.width, 3):
        return "untyped", f"decoded shape {rgb.shape} for a {header.width}x{header.height} header"
    return "ok", ""


def child(conn, max_pixels: int) -> None:
    import resource

    import torch
    torch.set_num_threads(1)
    from codec import zoo
    for model_id in zoo.MODELS:  # load before the first case: its time is not the case's
        zoo.load(model_id)
    conn.send(("ready", "", 0))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        outcome, detail = decode_case(*msg, max_pixels)
        conn.send((outcome, detail, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))


def rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    except OSError:
        return 0


class Worker:
    def __init__(self, ctx, max_pixels: int):
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=child, args=(theirs, max_pixels), daemon=True)
        self.proc.start()
        theirs.close()
        self.conn.recv()  # ready
        self.case, self.started = None, 0.0

    def send(self, case) -> None:
        self.case, self.started = case, time.perf_counter()
        self.conn.send((case[2], case[3]))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()


def fuzz(cases: int, workers: int = 2, seed: int = 0, hang_s: float = 2.0, memory_mb: int = 3000,
         max_pixels: int = 110 * 110, out: Path | None = None, progress: bool = False) -> dict:
    """Run `cases` fuzzed files -> the summary (also written to out/summary.json with the bad cases)."""
    t_start = time.perf_counter()
    rng = random.Random(seed)
    seeds = make_seeds()
    ctx = mp.get_context("spawn")
    pool = [Worker(ctx, max_pixels) for _ in range(workers)]
    outcomes: collections.Counter = collections.Counter()
    by_mutator: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    bad: list[dict] = []
    peak_rss = slowest = 0.0
    queued = done = 0

    def record(case, outcome, detail, seconds):
        nonlocal done, slowest
        done += 1
        slowest = max(slowest, seconds)
        outcomes[outcome] += 1
        for name in case[1].split("+"):
            by_mutator[name][outcome] += 1
        if outcome not in ("ok", "refused"):
            entry = {"case": case[0], "mutations": case[1], "conceal": case[3], "outcome": outcome,
                     "detail": detail, "seconds": round(seconds, 3)}
            if out is not None:
                (out / "cases").mkdir(parents=True, exist_ok=True)
                path = out / "cases" / f"{case[0]:07d}-{outcome}.bin"
                path.write_bytes(case[2])
                entry["file"] = str(path.relative_to(out))
            bad.append(entry)
        if progress and done % 1000 == 0:
            print(f"fuzz: {done}/{cases} cases, {dict(outcomes)}, {time.perf_counter() - t_start:.0f} s",
                  file=sys.stderr, flush=True)

    idle = list(pool)
    while done < cases:
        while idle and queued < cases:
            names, data = mutate(rng, seeds)
            idle.pop().send((queued, names, data, rng.random() < 0.25))
            queued += 1
        ready = wait([w.conn for w in pool if w.case is not None], timeout=0.05)
        now = time.perf_counter()
        for i, w in enumerate(pool):
            if w.case is None:
                continue
            if w.conn in ready:
                try:
                    outcome, detail, maxrss = w.conn.recv()
                except EOFError:  # the child died mid-case
                    w.proc.join()
                    record(w.case, "crash", f"exit code {w.proc.exitcode}", now - w.started)
                    pool[i] = w = Worker(ctx, max_pixels)
                else:
                    peak_rss = max(peak_rss, maxrss)
                    record(w.case, outcome, detail, now - w.started)
                    w.case = None
                idle.append(w)
                continue
            rss = rss_mb(w.proc.pid)
            peak_rss = max(peak_rss, rss)
            outcome = "hang" if now - w.started > hang_s else "memory" if rss > memory_mb else None
            if outcome:
                w.kill()
                record(w.case, outcome, f"{now - w.started:.1f} s, {rss} MB", now - w.started)
                pool[i] = w = Worker(ctx, max_pixels)
                idle.append(w)
    for w in pool:
        w.conn.send(None)
        w.proc.join(timeout=10)
    summary = {
        "cases": done, "seed": seed, "workers": workers, "hang_s": hang_s, "memory_mb": memory_mb,
        "max_pixels": max_pixels, "seeds": {k: len(v) for k, v in seeds.items()},
        "outcomes": dict(outcomes), "by_mutator": {k: dict(v) for k, v in sorted(by_mutator.items())},
        "peak_rss_mb": round(peak_rss), "slowest_case_s": round(slowest, 3),
        "seconds": round(time.perf_counter() - t_start, 1), "bad": bad,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2, help="child processes decoding at once")
    p.add_argument("--seed", type=int, default=0, help="the mutations' random seed")
    p.add_argument("--hang-s", type=float, default=2.0, help="a case over this many seconds is a hang")
    p.add_argument("--memory-mb", type=int, default=3000, help="a child over this RSS is killed")
    p.add_argument("--max-pixels", type=int, default=110 * 110, help="the decoder's limit on a claimed size")
    p.add_argument("--out", type=Path, help="folder for summary.json and the bad cases")
    p.add_argument("--replay", type=Path, help="decode one saved case here, showing any traceback")
    p.add_argument("--conceal", action="store_true", help="--replay: decode as a concealing decoder (the "
                   "summary's 'conceal' of the case)")
    args = p.parse_args()
    if args.replay:
        from codec import api
        api.decode_rgb(args.replay.read_bytes(), conceal=args.conceal, max_pixels=args.max_pixels)
        print("decoded", file=sys.stderr)
        return 0
    s = fuzz(args.cases, args.workers, args.seed, args.hang_s, args.memory_mb, args.max_pixels, args.out, progress=True)
    print(json.dumps({k: v for k, v in s.items() if k != "bad"}, indent=1))
    for entry in s["bad"][:20]:
        print(entry, file=sys.stderr)
    return 1 if len(s["bad"]) else 0


if __name__ == "__main__":
    sys.exit(main())
