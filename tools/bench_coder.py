"""Our range coder vs constriction's range coder and CompressAI's rANS, on the same symbols, in one run.

(a) Gaussian-quantized latents with indexed tables as CompressAI's GaussianConditional builds them
    (64 scales, 16-bit CDFs); constriction codes the same symbols with its QuantizedGaussian at the
    same scales.
(b) A 1024-way categorical with one CDF row per symbol (the layout of a transformer prior);
    constriction uses Categorical with per-symbol probabilities, CompressAI one table per symbol.

Prints Msymbols/s for encode and decode (best of --repeat, one thread) and bytes beside the ideal
sum of -log2 p under our own 16-bit CDFs.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from bitstream import coder


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def gaussian_scenario(n: int, repeat: int, rng) -> list[tuple]:
    import constriction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import torch
        from compressai import ans
        from compressai.entropy_models import GaussianConditional
    from codec.models.hp import scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(scale_table())
    gc.update()
    cdfs, lengths, offsets = (t.numpy() for t in (gc._quantized_cdf, gc._cdf_length, gc._offset))
    scales = np.exp(rng.uniform(np.log(0.11), np.log(16.0), n)).astype(np.float32)
    indexes = gc.build_indexes(torch.from_numpy(scales)).numpy().astype(np.int32)
    table_scale = gc.scale_table.numpy()[indexes]  # the scale each table was built for
    symbols = np.round(rng.normal(size=n) * table_scale).astype(np.int32)
    lo, hi = offsets[indexes], offsets[indexes] + lengths[indexes] - 3
    symbols = np.clip(symbols, lo, hi)  # inside the tables' support: no escapes, so the ideal is exact
    v = symbols - offsets[indexes]
    freq = cdfs[indexes, v + 1].astype(np.int64) - cdfs[indexes, v]
    ideal = -np.log2(freq / 65536).sum() / 8

    rows = []
    te, data = best_time(lambda: coder.encode_indexed(symbols, indexes, cdfs, lengths, offsets), repeat)
    td, out = best_time(lambda: coder.decode_indexed(data, indexes, cdfs, lengths, offsets), repeat)
    assert np.array_equal(out, symbols)
    rows.append(("ours (range, C++)", te, td, len(data)))

    s_list, i_list = symbols.tolist(), indexes.tolist()
    c_list, l_list, o_list = cdfs.tolist(), lengths.tolist(), offsets.tolist()
    te, data = best_time(lambda: ans.RansEncoder().encode_with_indexes(s_list, i_list, c_list, l_list, o_list), repeat)
    td, out = best_time(lambda: ans.RansDecoder().decode_with_indexes(data, i_list, c_list, l_list, o_list), repeat)
    assert out == s_list
    rows.append(("CompressAI rANS", te, td, len(data)))

    family = constriction.stream.model.QuantizedGaussian(int(symbols.min()), int(symbols.max()))
    means = np.zeros(n, np.float64)
    stds = table_scale.astype(np.float64)

    def c_encode():
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(symbols, family, means, stds)
        return enc.get_compressed()

    te, compressed = best_time(c_encode, repeat)
    td, out = best_time(lambda: constriction.stream.queue.RangeDecoder(compressed).decode(family, means, stds), repeat)
    assert np.array_equal(out, symbols)
    rows.append(("constriction range", te, td, compressed.nbytes))
    return [(name, n / te / 1e6, n / td / 1e6, nbytes, ideal) for name, te, td, nbytes in rows]


def categorical_scenario(n: int, k: int, repeat: int, rng) -> list[tuple]:
    import constriction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from compressai import ans

    pmf = rng.dirichlet(np.full(k, 0.05), size=n)
    cdf_rows = coder.pmf_to_cdf(pmf)
    freq = np.diff(cdf_rows.astype(np.int64), axis=1)
    symbols = np.array([rng.choice(k, p=f / f.sum()) for f in freq], np.int32)
    ideal = -np.log2(freq[np.arange(n), symbols] / 65536).sum() / 8

    rows = []
    te, data = best_time(lambda: coder.encode_rows(symbols, cdf_rows), repeat)
    td, out = best_time(lambda: coder.decode_rows(data, cdf_rows), repeat)
    assert np.array_equal(out, symbols)
    rows.append(("ours (range, C++)", te, td, len(data)))

    # CompressAI has no per-symbol API: one table per symbol, with its escape slot appended.
    c_list = coder.pmf_to_cdf(np.concatenate([pmf, np.full((n, 1), 1e-9)], 1)).astype(np.int32).tolist()
    l_list, o_list, i_list, s_list = [k + 2] * n, [0] * n, list(range(n)), symbols.tolist()
    te, data_c = best_time(lambda: ans.RansEncoder().encode_with_indexes(s_list, i_list, c_list, l_list, o_list), repeat)
    td, out = best_time(lambda: ans.RansDecoder().decode_with_indexes(data_c, i_list, c_list, l_list, o_list), repeat)
    assert out == s_list
    rows.append(("CompressAI rANS", te, td, len(data_c)))

    family = constriction.stream.model.Categorical(perfect=False)
    probs = pmf.astype(np.float64)

    def c_encode():
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(symbols, family, probs)
        return enc.get_compressed()

    te, compressed = best_time(c_encode, repeat)
    td, out = best_time(lambda: constriction.stream.queue.RangeDecoder(compressed).decode(family, probs), repeat)
    assert np.array_equal(out, symbols)
    rows.append(("constriction range", te, td, compressed.nbytes))
    return [(name, n / te / 1e6, n / td / 1e6, nbytes, ideal) for name, te, td, nbytes in rows]


def show(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'coder':22s} {'enc Msym/s':>10s} {'dec Msym/s':>10s} {'bytes':>10s} {'vs ideal':>9s}")
    for name, enc, dec, nbytes, ideal in rows:
        print(f"{name:22s} {enc:10.2f} {dec:10.2f} {nbytes:10d} {100 * (nbytes / ideal - 1):+8.3f}%")
    ours = rows[0]
    for name, enc, dec, *_ in rows[1:]:
        print(f"  ours / {name}: encode {ours[1] / enc:.1f}x, decode {ours[2] / dec:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussian-symbols", type=int, default=2_000_000)
    ap.add_argument("--categorical-symbols", type=int, default=20_000)
    ap.add_argument("--alphabet", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    show(f"(a) Gaussian latents, indexed tables, {args.gaussian_symbols:,} symbols",
         gaussian_scenario(args.gaussian_symbols, args.repeat, rng))
    show(f"(b) {args.alphabet}-way categorical, per-symbol CDF rows, {args.categorical_symbols:,} symbols",
         categorical_scenario(args.categorical_symbols, args.alphabet, args.repeat, rng))


if __name__ == "__main__":
    main()
