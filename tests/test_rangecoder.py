import collections

import numpy as np
import pytest

from bitstream import BitstreamError, coder
from tests.conftest import decoded_or_error as outcome


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


def test_no_symbols_code_to_one_zero_byte_and_an_empty_payload_is_refused(tables):
    empty = np.zeros(0, np.int32)
    assert coder.encode_indexed(empty, empty, *tables) == b"\0"  # never empty: b"" is no encoder's output
    assert coder.decode_indexed(b"\0", empty, *tables).size == 0
    with pytest.raises(BitstreamError, match="empty payload"):
        coder.Decoder(b"")


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
    outcomes = collections.Counter()
    for trial in range(300):
        garbage = rng.bytes(int(rng.integers(0, 200)))
        dec = outcome(lambda: coder.Decoder(garbage))  # refuses b"" and payloads ending in a zero byte
        if isinstance(dec, BitstreamError):
            assert garbage == b"" or garbage[-1] == 0
            continue
        out = outcome(lambda: dec.decode_indexed(idx, *tables))
        if isinstance(out, BitstreamError):
            outcomes["indexed: error"] += 1
        else:
            assert out.shape == idx.shape
            outcomes["indexed: symbols"] += 1
        dec = coder.Decoder(garbage)
        out = dec.decode_rows(rows)
        assert ((out >= 0) & (out < 256)).all()
        if isinstance(outcome(dec.end), BitstreamError):
            outcomes["end: refused"] += 1
        else:  # end() passes only for an encoder's exact output
            assert coder.encode_rows(out, rows) == garbage
    # Garbage went both ways out of decode_indexed, and end() refused what no encoder wrote.
    assert outcomes["indexed: symbols"] and outcomes["indexed: error"] and outcomes["end: refused"], outcomes



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


# --- Payload ends -------------------------------------------------------------------------------------------

def random_stream(rng, tables):
    """An encoder's payload of 1-3 calls mixing both layouts, and the calls to decode it with."""
    enc, calls = coder.Encoder(), []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.choice([0, 1, 5, 50, 500]))
        if rng.random() < 0.5:
            idx = rng.integers(0, 4, n).astype(np.int32)
            sym = np.round(rng.normal(size=n) * np.array([0.2, 1, 4, 20])[idx]).astype(np.int32)
            if rng.random() < 0.1:
                sym = tables[2][idx].copy()  # every symbol at its table's start 0: a stream of zero bytes
            enc.encode_indexed(sym, idx, *tables)
            calls.append(("indexed", sym, idx))
        else:
            rows = coder.pmf_to_cdf(rng.dirichlet(np.full(int(rng.choice([2, 16, 300])), 0.3), size=n))
            sym = (rows[:, 1:-1] <= rng.integers(0, 65536, n)[:, None]).sum(1).astype(np.int32)
            enc.encode_rows(sym, rows)
            calls.append(("rows", sym, rows))
    return enc.finish(), calls


def decode_calls(data, calls, tables):
    dec = coder.Decoder(data)
    out = [dec.decode_indexed(c[2], *tables) if c[0] == "indexed" else dec.decode_rows(c[2]) for c in calls]
    return dec, out


def encode_calls(symbols, calls, tables):
    enc = coder.Encoder()
    for sym, c in zip(symbols, calls):
        enc.encode_indexed(sym, c[2], *tables) if c[0] == "indexed" else enc.encode_rows(sym, c[2])
    return enc.finish()


def test_the_decoder_reads_past_every_valid_payload_and_end_accepts_it(tables):
    """The decoder asks for 4 + S bytes (S bytes shifted out); finish() emits those 4 + S bytes with the
    last three always zero (its value has >= 24 trailing zero bits) and strips trailing zeros, so a valid
    payload is at least 3 bytes shorter than what the decoder reads: the read position alone cannot see
    up to 3 appended bytes, and end() also checks that the last bytes read are finish()'s choice."""
    rng = np.random.default_rng(11)
    for _ in range(400):
        data, calls = random_stream(rng, tables)
        assert len(data) >= 1 and (len(data) == 1 or data[-1] != 0)
        dec, out = decode_calls(data, calls, tables)
        assert all(np.array_equal(o, c[1]) for o, c in zip(out, calls))
        assert dec._dec.bytes_read >= len(data) + 3
        dec.end()


def test_end_passes_exactly_when_the_payload_is_the_encoders_output_for_the_symbols_decoded(tables):
    """Junk appended, the last byte cut, or random bytes: end() raises BitstreamError, or the payload
    is, byte for byte, what the encoder writes for the symbols decoded (such a payload is valid: no
    check can tell it from a real one). Appended zero bytes are refused when the decoder is made."""
    rng = np.random.default_rng(12)
    outcomes = {"refused": 0, "valid for other symbols": 0}
    for _ in range(300):
        data, calls = random_stream(rng, tables)
        with pytest.raises(BitstreamError, match="zero byte"):
            coder.Decoder(data + b"\0")
        variants = [data + bytes([int(b)]) for b in rng.integers(1, 256, 2)]
        variants += [data + rng.bytes(3) + b"\x01", data[:-1].rstrip(b"\0") or b"\0"]
        for d in variants:
            try:
                dec, out = decode_calls(d, calls, tables)
                dec.end()
            except BitstreamError:
                outcomes["refused"] += 1
                continue
            outcomes["valid for other symbols"] += 1
            assert encode_calls(out, calls, tables) == d
    assert outcomes["refused"] > outcomes["valid for other symbols"], outcomes


def test_junk_after_a_payload_is_refused_by_the_one_shot_decoders(tables):
    rng = np.random.default_rng(13)
    idx = rng.integers(0, 4, 2000).astype(np.int32)
    sym = np.round(rng.normal(size=2000) * 4).astype(np.int32)
    data = coder.encode_indexed(sym, idx, *tables)
    assert np.array_equal(coder.decode_indexed(data, idx, *tables), sym)
    for junk in (b"\x07" * 4, b"junk", b"\x00\x01\x00\x00\x00\x09"):
        with pytest.raises(BitstreamError, match="corrupt data"):
            coder.decode_indexed(data + junk, idx, *tables)
    with pytest.raises(BitstreamError, match="zero byte"):
        coder.decode_indexed(data + b"\0\0", idx, *tables)
    rows = coder.pmf_to_cdf(rng.dirichlet(np.ones(8), size=100))
    data = coder.encode_rows(np.zeros(100, np.int32) + 3, rows)
    with pytest.raises(BitstreamError, match="corrupt data"):
        coder.decode_rows(data + b"\x01\x02\x03\x04", rows)


# --- Caller misuse: typed errors, never a crash or a wrapped value ------------------------------------------

def rows8(n=4):
    return coder.pmf_to_cdf(np.ones((n, 8)))


def test_a_row_that_decreases_anywhere_is_refused_even_off_the_coded_symbol():
    rows = rows8()
    rows[1, 6], rows[1, 7] = rows[1, 7], rows[1, 6]  # symbol 1 of row 1 is fine, the row is not a CDF
    with pytest.raises(coder.CoderError, match="never decrease"):
        coder.encode_rows(np.array([0, 1, 2, 3], np.int32), rows)
    rows = rows8()
    rows[2, -1] = 65535
    with pytest.raises(coder.CoderError, match="from 0 to 65536"):
        coder.encode_rows(np.zeros(4, np.int32), rows)


def test_a_coded_symbol_of_zero_frequency_is_refused_and_zero_width_symbols_elsewhere_are_fine():
    rows = rows8()
    rows[:, 3] = rows[:, 4]  # symbol 3 has zero width in every row
    with pytest.raises(coder.CoderError, match="zero frequency"):
        coder.encode_rows(np.array([0, 1, 3, 2], np.int32), rows)
    sym = np.array([0, 4, 2, 7], np.int32)
    assert np.array_equal(coder.decode_rows(coder.encode_rows(sym, rows), rows), sym)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.25])
def test_pmf_to_cdf_refuses_nan_infinite_and_negative_probabilities(bad):
    pmf = np.full((3, 4), 0.25)
    pmf[1, 2] = bad
    with pytest.raises(ValueError):
        coder.pmf_to_cdf(pmf)
    with pytest.raises(ValueError):
        coder.pmf_to_cdf(np.full(4, 1e308))  # sums to inf


def test_an_encoder_refuses_calls_after_finish_and_a_decoder_after_end(tables):
    enc = coder.Encoder()
    enc.encode_rows(np.array([1], np.int32), rows8(1))
    data = enc.finish()
    with pytest.raises(coder.CoderError, match="finished"):
        enc.encode_rows(np.array([1], np.int32), rows8(1))
    with pytest.raises(coder.CoderError, match="finished"):
        enc.encode_indexed(np.zeros(3, np.int32), np.zeros(3, np.int32), *tables)
    with pytest.raises(coder.CoderError, match="finished"):
        enc.finish()
    dec = coder.Decoder(data)
    assert dec.decode_rows(rows8(1)).tolist() == [1]
    dec.end()
    with pytest.raises(coder.CoderError, match="ended"):
        dec.decode_rows(rows8(1))
    with pytest.raises(coder.CoderError, match="ended"):
        dec.end()


@pytest.mark.parametrize("symbol", [-1, 8, 2**31 - 1, -(2**31)])
def test_row_symbols_out_of_range_are_refused(symbol):
    with pytest.raises(coder.CoderError, match="outside"):
        coder.encode_rows(np.array([0, symbol], np.int32), rows8(2))


@pytest.mark.parametrize("which", ["symbols", "indexes", "offsets", "lengths"])
def test_int64_values_past_int32_are_refused_not_wrapped(tables, which):
    cdfs, lengths, offsets = tables
    sym, idx = np.zeros(3, np.int64), np.zeros(3, np.int64)
    args = {"symbols": sym, "indexes": idx, "offsets": offsets.astype(np.int64), "lengths": lengths.astype(np.int64)}
    args[which] = args[which].copy()
    args[which][0] = 2**32 + int(args[which][0])  # wraps to the same int32 value
    with pytest.raises(coder.CoderError, match="do not fit int32"):
        coder.encode_indexed(args["symbols"], args["indexes"], cdfs, args["lengths"], args["offsets"])
    args[which][0] -= 2**32  # int64 that fits: accepted
    coder.encode_indexed(args["symbols"], args["indexes"], cdfs, args["lengths"], args["offsets"])
    with pytest.raises(coder.CoderError, match="do not fit int32"):
        coder.encode_rows(np.array([2**31], np.uint32), rows8(1))


def test_negative_cdf_values_and_values_past_uint32_are_refused_not_wrapped(tables):
    cdfs, lengths, offsets = tables
    wrapped = cdfs.astype(np.int64)
    wrapped[0, 1] -= 2**32  # would wrap to the same uint32 value
    with pytest.raises(coder.CoderError, match="negative"):
        coder.encode_indexed(np.zeros(2, np.int32), np.zeros(2, np.int32), wrapped, lengths, offsets)
    wrapped[0, 1] += 2**33
    with pytest.raises(coder.CoderError, match="does not fit uint32"):
        coder.encode_indexed(np.zeros(2, np.int32), np.zeros(2, np.int32), wrapped, lengths, offsets)
    rows = rows8(2).astype(np.int32)
    rows[1, 0] = -1
    with pytest.raises(coder.CoderError, match="negative"):
        coder.decode_rows(b"\x12", rows)


def test_float_arrays_and_non_bytes_payloads_are_type_errors(tables):
    with pytest.raises(TypeError):
        coder.encode_rows(np.array([0.0, 1.0]), rows8(2))
    with pytest.raises(TypeError):
        coder.encode_rows(np.array([0, 1], np.int32), rows8(2).astype(np.float64))
    with pytest.raises(TypeError):
        coder.Decoder(5)  # bytes(5) would be five zero bytes
    from bitstream import _rangecoder
    with pytest.raises(TypeError):  # the binding itself casts only safely: int64 does not wrap into int32
        _rangecoder.RangeEncoder().encode_rows(np.array([2**32], np.int64), rows8(1))


def test_a_call_that_fails_part_way_leaves_the_coder_as_it_was(tables):
    rng = np.random.default_rng(14)
    rows = coder.pmf_to_cdf(rng.dirichlet(np.ones(8), size=100))
    sym = rng.integers(0, 8, 100).astype(np.int32)
    broken = rows.copy()
    broken[60, 2] = broken[60, 5]  # non-monotone at row 60: 60 symbols are coded before the error
    enc = coder.Encoder()
    assert enc.encode_rows(sym, rows) == 0
    with pytest.raises(coder.CoderError):
        enc.encode_rows(sym, broken)
    with pytest.raises(coder.CoderError):
        enc.encode_indexed(np.zeros(10, np.int32), np.arange(10, dtype=np.int32), *tables)  # index 4 names no table
    assert enc.encode_rows(sym[::-1], rows[::-1]) == 1  # calls count in the stream only when coded
    data = enc.finish()
    assert data == coder.encode_rows(np.concatenate([sym, sym[::-1]]), np.concatenate([rows, rows[::-1]]))
    dec = coder.Decoder(data)
    bad = rows.copy()
    bad[:, -1] = 65535
    with pytest.raises(coder.CoderError):
        dec.decode_rows(bad)
    assert np.array_equal(dec.decode_rows(rows), sym)
    assert np.array_equal(dec.decode_rows(rows[::-1]), sym[::-1])
    dec.end()
