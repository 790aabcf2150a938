"""Python face of the C++ range coder: argument checks, checked dtype conversion, typed errors.

Probabilities come in one of two layouts (both with 16-bit CDFs, total 1 << 16):
  * indexed tables, CompressAI's layout: symbols (N,), indexes (N,) naming a row of cdfs (T, L),
    cdf_lengths (T,), offsets (T,); values off a table's support are escaped, never clipped;
  * per-symbol rows: symbols (N,) in [0, K), cdf_rows (N, K + 1), each row from 0 to 1 << 16 and
    never decreasing; a symbol that is coded must have a frequency >= 1.
An encoder or decoder is a stream: several calls append to / read from the same bytes, so a prior
that needs decoded symbols to predict the next ones (a context model) can interleave with it.
A payload is never empty (no symbols code to b"\\0"); after the last call, Decoder.end() checks that
the payload ends exactly where its symbols do (the one-shot decode_* functions call it).

Errors:
  * corrupt data (a payload no encoder wrote: empty, junk appended, truncated, garbage) raises
    bitstream.errors.BitstreamError;
  * caller misuse raises CoderError (a ValueError): invalid CDF tables or rows, symbols or indexes
    out of range, values that do not fit int32 (symbols, indexes) or uint32 (CDFs), negative CDF
    values, use of an encoder after finish() or of a decoder after end(). Non-integer arrays raise
    TypeError; pmf_to_cdf refuses NaN, infinite or negative probabilities with ValueError.
A call that raises leaves the encoder or decoder as it was before the call.

Threads: the C++ coder releases the GIL while it codes, and each Encoder / Decoder holds a lock, so
one object may be shared by threads: each call is coded whole, in the order the calls take the lock
(Encoder.encode_* returns each call's place in the stream). Indexed tables are copied before the GIL
is released; symbols, indexes and CDF rows are read in place, every read bounded and every value
checked once read: mutating them from another thread during a call gives an error or a stream of
the mutated values, never a crash (cpp/bindings.cpp states the one exception: numpy's explicitly
unsafe ndarray.resize(refcheck=False) or ndarray.data assignment during a call).
"""
from __future__ import annotations

import numpy as np

from bitstream import _rangecoder
from bitstream.errors import BitstreamError

PRECISION = _rangecoder.PRECISION
CoderError = _rangecoder.CoderError  # ValueError subclass: caller misuse

_INT32 = np.iinfo(np.int32)
_UINT32 = np.iinfo(np.uint32)


def _i32(a, what: str = "values") -> np.ndarray:
    """Any integer array -> flat C-contiguous int32; values past int32 raise instead of wrapping."""
    a = np.asarray(a)
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected an integer array, got {a.dtype}")
    if not np.can_cast(a.dtype, np.int32):
        lo, hi = int(a.min()), int(a.max())
        if lo < _INT32.min or hi > _INT32.max:
            raise CoderError(f"{what}: values {lo} .. {hi} do not fit int32")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.int32)


def _cdfs(a, what: str = "cdfs") -> np.ndarray:
    """A 2-D integer array -> C-contiguous uint32; negative values or values past uint32 raise."""
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected a 2-D integer CDF array, got {a.dtype} {a.shape}")
    if a.size and not np.can_cast(a.dtype, np.uint32):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise CoderError(f"{what}: negative CDF value {lo}")
        if hi > _UINT32.max:
            raise CoderError(f"{what}: CDF value {hi} does not fit uint32")
    return np.ascontiguousarray(a, dtype=np.uint32)


def _payload(data) -> bytes:
    if isinstance(data, bytes):
        return data
    return bytes(memoryview(data))  # bytes-like only: bytes(5) would be five zero bytes


class Encoder:
    def __init__(self) -> None:
        self._enc = _rangecoder.RangeEncoder()

    def encode_indexed(self, symbols, indexes, cdfs, cdf_lengths, offsets) -> int:
        """Code symbols with tables; returns the call's place in the stream (0 for the first call)."""
        return self._enc.encode_indexed(_i32(symbols, "symbols"), _i32(indexes, "indexes"), _cdfs(cdfs),
                                        _i32(cdf_lengths, "cdf_lengths"), _i32(offsets, "offsets"))

    def encode_rows(self, symbols, cdf_rows) -> int:
        """Code symbols with one CDF row each; returns the call's place in the stream."""
        return self._enc.encode_rows(_i32(symbols, "symbols"), _cdfs(cdf_rows, "cdf_rows"))

    def finish(self) -> bytes:
        """The payload (never empty). The encoder refuses further calls."""
        return self._enc.finish()


class Decoder:
    def __init__(self, data: bytes) -> None:
        try:
            self._dec = _rangecoder.RangeDecoder(_payload(data))
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None

    def decode_indexed(self, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
        try:
            return self._dec.decode_indexed(_i32(indexes, "indexes"), _cdfs(cdfs), _i32(cdf_lengths, "cdf_lengths"),
                                            _i32(offsets, "offsets"))
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None

    def decode_rows(self, cdf_rows) -> np.ndarray:
        try:
            return self._dec.decode_rows(_cdfs(cdf_rows, "cdf_rows"))
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None

    def end(self) -> None:
        """After the last call: raises BitstreamError unless the payload ends exactly where the symbols
        decoded so far do (no byte left over, none missing). The decoder refuses further calls."""
        try:
            self._dec.end()
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None


def encode_indexed(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes:
    enc = Encoder()
    enc.encode_indexed(symbols, indexes, cdfs, cdf_lengths, offsets)
    return enc.finish()


def decode_indexed(data: bytes, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
    dec = Decoder(data)
    out = dec.decode_indexed(indexes, cdfs, cdf_lengths, offsets)
    dec.end()
    return out


def encode_rows(symbols, cdf_rows) -> bytes:
    enc = Encoder()
    enc.encode_rows(symbols, cdf_rows)
    return enc.finish()


def decode_rows(data: bytes, cdf_rows) -> np.ndarray:
    dec = Decoder(data)
    out = dec.decode_rows(cdf_rows)
    dec.end()
    return out


def pmf_to_cdf(pmf: np.ndarray) -> np.ndarray:
    """(..., K) probabilities -> (..., K + 1) uint32 CDFs, total 1 << PRECISION, every frequency >= 1.

    Frequencies are floor(p * (total - K)) + 1, and the rounding remainder goes to each row's most
    probable symbol, so the sum is exact and no symbol is impossible. NaN, infinite or negative
    probabilities raise ValueError; a row of zeros gives symbol 0 the remainder."""
    pmf = np.asarray(pmf, dtype=np.float64)
    k = pmf.shape[-1]
    total = 1 << PRECISION
    if k < 1 or k > total // 2:
        raise ValueError(f"alphabet size {k} out of range")
    if not np.isfinite(pmf).all():
        raise ValueError("probabilities must be finite (NaN or inf given)")
    if (pmf < 0).any():
        raise ValueError(f"probabilities must not be negative (min {pmf.min()})")
    with np.errstate(over="ignore"):
        sums = pmf.sum(-1, keepdims=True)
    if not np.isfinite(sums).all():
        raise ValueError("probabilities too large to sum")
    pmf = pmf / np.maximum(sums, 1e-300)
    freq = np.floor(pmf * (total - k)).astype(np.int64) + 1
    rest = total - freq.sum(-1)
    np.put_along_axis(freq, pmf.argmax(-1)[..., None],
                      np.take_along_axis(freq, pmf.argmax(-1)[..., None], -1) + rest[..., None], -1)
    cdf = np.zeros(pmf.shape[:-1] + (k + 1,), np.uint32)
    cdf[..., 1:] = np.cumsum(freq, -1)
    return cdf
