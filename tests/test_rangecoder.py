import numpy as np
import pytest

from bitstream import BitstreamError, coder


def gaussian_tables(scales=(0.2, 1.0, 4.0, 20.0)):
    """Discretised Gaussians in CompressAI's layout: symbols offset..offset+L-2, the last one escapes."""
    from scipy.stats import norm
    cdfs, lengths, offsets = [], [], []
    for s in scales:
        half = int(np.ceil(4 * s)) + 1
        values = np.arange(-half, half + 1)
        pmf = norm.cdf(values + 0.5, scale=s) - norm.cdf(values - 0.5, scale=s)
        pmf = np.append(pmf, 1e-6)  # escape mass
        cdfs.append(coder.pmf_to_cdf(pmf))
        lengths.append(len(pmf) + 1)
        offsets.append(-half)
    table = np.zeros((len(cdfs), max(lengths)), np.int32)
    for i, c in enumerate(cdfs):
        table[i, :len(c)] = c
    return table, np.array(lengths, np.int32), np.array(offsets, np.int32)


def ideal_bits_indexed(symbols, indexes, cdfs, lengths, offsets):
    bits = 0.0
    for s, t in zip(symbols, indexes):
        v = s - offsets[t]
        assert 0 <= v < lengths[t] - 2
        bits -= np.log2((cdfs[t, v + 1] - cdfs[t, v]) / 65536)
    return bits


@pytest.fixture(scope="module")
def tables():
    return gaussian_tables()


def test_indexed_round_trip_including_escapes_far_outside_the_support(tables):
    rng = np.random.default_rng(1)
    n = 20000
    idx = rng.integers(0, 4, n).astype(np.int32)
    sym = np.round(rng.normal(size=n) * np.array([0.2, 1, 4, 20])[idx]).astype(np.int32)
    sym[:6] = [2**31 - 1, -(2**31), 1000, -1000, 10**6, -(10**6)]
    data = coder.encode_indexed(sym, idx, *tables)
    assert np.array_equal(coder.decode_indexed(data, idx, *tables), sym)


def test_indexed_size_is_within_a_tenth_of_a_percent_of_the_ideal(tables):
    rng = np.random.default_rng(2)
    n = 200000
    idx = rng.integers(0, 4, n).astype(np.int32)
    cdfs, lengths, offsets = tables
    # Draw symbols from the tables' own distributions so the ideal is their entropy.
    sym = np.empty(n, np.int32)
    for t in range(4):
        m = idx == t
        freq = np.diff(cdfs[t, :lengths[t] - 1].astype(np.int64))  # without the escape
        sym[m] = rng.choice(len(freq), m.sum(), p=freq / freq.sum()) + offsets[t]
    data = coder.encode_indexed(sym, idx, *tables)
    ideal = ideal_bits_indexed(sym, idx, *tables) / 8
    assert len(data) <= ideal * 1.001 + 8, (len(data), ideal)
    assert np.array_equal(coder.decode_indexed(data, idx, *tables), sym)


def test_rows_round_trip_with_a_1024_way_alphabet():
    rng = np.random.default_rng(3)
    pmf = rng.dirichlet(np.full(1024, 0.1), size=3000)
    rows = coder.pmf_to_cdf(pmf)
    sym = np.array([rng.choice(1024, p=p) for p in pmf], np.int32)
    data = coder.encode_rows(sym, rows)
    ideal = -np.log2(np.diff(rows.astype(np.int64), axis=1)[np.arange(3000), sym] / 65536).sum() / 8
    assert len(data) <= ideal * 1.001 + 8
    assert np.array_equal(coder.decode_rows(data, rows), sym)


def test_one_stream_carries_several_calls_in_order(tables):
    rng = np.random.default_rng(4)
    rows = coder.pmf_to_cdf(rng.dirichlet(np.ones(16), size=50))
    a_sym, a_idx = rng.integers(-3, 4, 100).astype(np.int32), rng.integers(0, 4, 100).astype(np.int32)
    b_sym = rng.integers(0, 16, 50).astype(np.int32)
    enc = coder.Encoder()
    enc.encode_indexed(a_sym, a_idx, *tables)
    enc.encode_rows(b_sym, rows)
    dec = coder.Decoder(enc.finish())
    assert np.array_equal(dec.decode_indexed(a_idx, *tables), a_sym)
    assert np.array_equal(dec.decode_rows(rows), b_sym)


def test_empty_input_codes_to_empty_bytes(tables):
    empty = np.zeros(0, np.int32)
    assert coder.encode_indexed(empty, empty, *tables) == b""
    assert coder.decode_indexed(b"", empty, *tables).size == 0


# Integer tables and symbols that any machine builds alike, and the SHA-256 of the bytes they gave
# when the coder's format was fixed: a change of the coder that changes them orphans every file.
PINNED_STREAM_SHA256 = "15808c98d91cf25287354e8bc462dbf09e03ffb752bb5ac9336af9fb21ed8a35"


def pinned_stream() -> bytes:
    cdfs = np.array([[0, 8192, 40960, 57344, 65535, 65536]], np.uint32)  # values -2 .. 1, then the escape
    rng = np.random.default_rng(7)
    symbols = rng.integers(-2, 2, 500).astype(np.int32)
    symbols[::50] = [-300, 1000, 77, -5, 2, 3, 65536, -70000, 9, -9]  # escapes, far and near
    rows = np.cumsum(np.concatenate([np.zeros((300, 1)), rng.integers(1, 4000, (300, 9))], 1), 1)
    rows = np.concatenate([rows[:, :-1], np.full((300, 1), 65536)], 1).astype(np.uint32)
    row_symbols = rng.integers(0, 9, 300).astype(np.int32)
    enc = coder.Encoder()
    enc.encode_indexed(symbols, np.zeros(500, np.int32), cdfs, np.array([6], np.int32), np.array([-2], np.int32))
    enc.encode_rows(row_symbols, rows)
    data = enc.finish()
    dec = coder.Decoder(data)
    assert np.array_equal(dec.decode_indexed(np.zeros(500, np.int32), cdfs, np.array([6], np.int32),
                                             np.array([-2], np.int32)), symbols)
    assert np.array_equal(dec.decode_rows(rows), row_symbols)
    return data


def test_fixed_symbols_give_the_bytes_the_format_was_fixed_with():
    import hashlib
    assert hashlib.sha256(pinned_stream()).hexdigest() == PINNED_STREAM_SHA256


def test_garbage_bytes_decode_to_symbols_or_a_bitstream_error_never_a_crash(tables):
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 4, 3000).astype(np.int32)
    rows = coder.pmf_to_cdf(rng.dirichlet(np.ones(256), size=500))
    errors = 0
    for trial in range(300):
        garbage = rng.bytes(int(rng.integers(0, 200)))
        try:
            out = coder.decode_indexed(garbage, idx, *tables)
            assert out.shape == idx.shape
        except BitstreamError:
            errors += 1
        out = coder.decode_rows(garbage, rows)
        assert ((out >= 0) & (out < 256)).all()
    assert errors < 300


@pytest.mark.parametrize("breakage", ["not_increasing", "wrong_total", "bad_length", "bad_index"])
def test_invalid_tables_are_refused_before_coding(tables, breakage):
    cdfs, lengths, offsets = (t.copy() for t in tables)
    idx = np.zeros(4, np.int32)
    if breakage == "not_increasing":
        cdfs[0, 2] = cdfs[0, 1]
    elif breakage == "wrong_total":
        cdfs[0, lengths[0] - 1] = 60000
    elif breakage == "bad_length":
        lengths[0] = cdfs.shape[1] + 1
    else:
        idx[2] = 9
    with pytest.raises(ValueError):
        coder.encode_indexed(np.zeros(4, np.int32), idx, cdfs, lengths, offsets)


def test_row_symbols_outside_the_alphabet_are_refused():
    rows = coder.pmf_to_cdf(np.ones((2, 8)))
    with pytest.raises(ValueError):
        coder.encode_rows(np.array([0, 8], np.int32), rows)


def test_pmf_to_cdf_gives_every_symbol_a_nonzero_frequency_and_exact_total():
    pmf = np.array([[1.0, 0.0, 0.0, 1e-12], [0.25, 0.25, 0.25, 0.25]])
    cdf = coder.pmf_to_cdf(pmf)
    assert (cdf[:, 0] == 0).all() and (cdf[:, -1] == 65536).all()
    assert (np.diff(cdf.astype(np.int64), axis=1) >= 1).all()
    assert np.array_equal(cdf[1], [0, 16384, 32768, 49152, 65536])
