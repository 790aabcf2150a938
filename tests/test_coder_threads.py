"""The range coder under threads: 8 threads encode and decode at once with separate coder objects, with
one shared Encoder and with one shared Decoder, and their results are compared with serial ones. Calls
are 200k symbols, long enough that the GIL is released while they code (checked below). Each coder
object holds a lock, so a shared one codes each call whole, in the order the calls take the lock."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bitstream import BitstreamError, coder
from tests.test_rangecoder import gaussian_tables

THREADS = 8
N = 200_000


@pytest.fixture(scope="module")
def tables():
    return gaussian_tables()


@pytest.fixture(scope="module")
def jobs(tables):
    """2 calls per thread, alternately indexed tables and per-symbol rows, all different."""
    rng = np.random.default_rng(21)
    out = []
    for j in range(2 * THREADS):
        if j % 2 == 0:
            idx = rng.integers(0, 4, N).astype(np.int32)
            sym = np.round(rng.normal(size=N) * np.array([0.2, 1, 4, 20])[idx]).astype(np.int32)
            sym[::9973] = rng.integers(-10**6, 10**6, sym[::9973].size)  # escapes
            out.append(("indexed", sym, idx))
        else:
            rows = coder.pmf_to_cdf(rng.dirichlet(np.full(16, 0.5), size=N))
            sym = (rows[:, 1:-1] <= rng.integers(0, 65536, N)[:, None]).sum(1).astype(np.int32)
            out.append(("rows", sym, rows))
    return out


def encode(enc, job, tables):
    kind, sym, arg = job
    return enc.encode_indexed(sym, arg, *tables) if kind == "indexed" else enc.encode_rows(sym, arg)


def decode(dec, job, tables):
    kind, _, arg = job
    return dec.decode_indexed(arg, *tables) if kind == "indexed" else dec.decode_rows(arg)


def serial_bytes(jobs, tables):
    enc = coder.Encoder()
    for job in jobs:
        encode(enc, job, tables)
    return enc.finish()


@pytest.fixture(scope="module")
def serial(jobs, tables):
    return [serial_bytes([job], tables) for job in jobs]


def run_threads(fn, count=THREADS):
    """fn(thread number) in `count` threads started together; their results in thread order."""
    barrier = threading.Barrier(count)

    def start(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def test_separate_coder_objects_in_8_threads_match_serial_results(jobs, tables, serial):
    def work(t):
        out = []
        for j in (t, t + THREADS):
            enc = coder.Encoder()
            encode(enc, jobs[j], tables)
            data = enc.finish()
            dec = coder.Decoder(data)
            symbols = decode(dec, jobs[j], tables)
            dec.end()
            out.append((j, data, symbols))
        return out

    for results in run_threads(work):
        for j, data, symbols in results:
            assert data == serial[j]
            assert np.array_equal(symbols, jobs[j][1])


def test_one_encoder_shared_by_8_threads_codes_each_call_whole(jobs, tables):
    enc = coder.Encoder()
    places = run_threads(lambda t: [(encode(enc, jobs[j], tables), j) for j in (t, t + THREADS)])
    order = [j for _, j in sorted(p for thread in places for p in thread)]
    assert sorted(p for thread in places for p, _ in thread) == list(range(2 * THREADS))
    data = enc.finish()
    # The stream is the serial stream of the calls in the order they were coded, byte for byte.
    assert data == serial_bytes([jobs[j] for j in order], tables)
    dec = coder.Decoder(data)
    for j in order:
        assert np.array_equal(decode(dec, jobs[j], tables), jobs[j][1])
    dec.end()


@pytest.mark.parametrize("kind", ["indexed", "rows"])
def test_one_decoder_shared_by_8_threads_decodes_each_call_whole(jobs, tables, kind):
    """16 calls coded with the same indexes (or rows), so any thread can decode any of them: each
    thread's results must be calls of the stream, every call exactly once."""
    rng = np.random.default_rng(22)
    base = next(job for job in jobs if job[0] == kind)
    chunks = [rng.permutation(base[1]) for _ in range(2 * THREADS)]
    enc = coder.Encoder()
    for sym in chunks:
        encode(enc, (kind, sym, base[2]), tables)
    dec = coder.Decoder(enc.finish())
    got = run_threads(lambda t: [decode(dec, base, tables) for _ in range(2)])
    dec.end()
    keys = sorted(out.tobytes() for thread in got for out in thread)
    assert keys == sorted(sym.tobytes() for sym in chunks)


def test_the_gil_is_released_while_coding(jobs, tables):
    """The main thread wakes every 0.2 ms to take a time stamp while another thread is inside one
    decode call of 1.6M symbols: had the call held the GIL, no stamp could fall inside it."""
    import time
    big = [job for job in jobs if job[0] == "indexed"]
    sym, idx = np.concatenate([job[1] for job in big]), np.concatenate([job[2] for job in big])
    data = coder.encode_indexed(sym, idx, *tables)
    window = []

    def code():
        t0 = time.perf_counter()
        out = coder.decode_indexed(data, idx, *tables)
        window.extend([t0, time.perf_counter()])
        assert np.array_equal(out, sym)

    worker = threading.Thread(target=code)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0.0002)
    worker.join()
    t0, t1 = window
    inside = [t0] + [t for t in stamps if t0 < t < t1] + [t1]
    assert max(np.diff(inside)) < 0.5 * (t1 - t0), (max(np.diff(inside)), t1 - t0)


def test_finish_racing_encode_calls_is_one_finish_and_typed_errors(jobs, tables):
    enc = coder.Encoder()
    job = jobs[0]

    def work(t):
        try:
            if t % 2:
                return ("finish", enc.finish())
            return ("encode", encode(enc, job, tables))
        except coder.CoderError as e:
            assert "finished" in str(e)
            return ("refused", None)

    results = run_threads(work)
    finished = [r for kind, r in results if kind == "finish"]
    assert len(finished) == 1
    coded = sum(kind == "encode" for kind, _ in results)
    assert finished[0] == serial_bytes([job] * coded, tables)


def test_arrays_mutated_by_another_thread_during_coding_give_results_or_typed_errors(tables):
    """Tables are copied before the GIL is released; symbols, indexes and CDF rows are read in place,
    each read bounded and each value checked once read: a racing writer gives a stream, a CoderError
    or a BitstreamError, never a crash (tools/sanitize.sh runs this under AddressSanitizer)."""
    rng = np.random.default_rng(23)
    rows = coder.pmf_to_cdf(rng.dirichlet(np.full(64, 0.5), size=N))
    sym = rng.integers(0, 64, N).astype(np.int32)
    idx = rng.integers(0, 4, N).astype(np.int32)
    cdfs = tables[0].astype(np.uint32)
    stop = threading.Event()

    def mutate():  # a wrong value for a moment, then the right one again
        r = np.random.default_rng(24)
        while not stop.is_set():
            i, k, t = int(r.integers(0, N)), int(r.integers(0, 65)), int(r.integers(0, 4))
            c = int(r.integers(0, cdfs.shape[1]))
            saved = rows[i, k], sym[i], idx[i], cdfs[t, c]
            rows[i, k], sym[i] = int(r.integers(0, 2**32)), int(r.integers(-2**31, 2**31))
            idx[i], cdfs[t, c] = int(r.integers(-5, 9)), int(r.integers(0, 70000))
            rows[i, k], sym[i], idx[i], cdfs[t, c] = saved

    outcomes = {"coded": 0, "refused": 0}
    writers = [threading.Thread(target=mutate) for _ in range(2)]
    for w in writers:
        w.start()
    try:
        for _ in range(6):
            for call in (lambda: coder.encode_rows(sym, rows),
                         lambda: coder.decode_rows(b"\x5a" * 1000, rows),
                         lambda: coder.encode_indexed(sym, idx, cdfs, *tables[1:]),
                         lambda: coder.decode_indexed(b"\x5a" * 1000, idx, cdfs, *tables[1:])):
                try:
                    call()
                    outcomes["coded"] += 1
                except (coder.CoderError, BitstreamError):
                    outcomes["refused"] += 1
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert sum(outcomes.values()) == 24, outcomes
