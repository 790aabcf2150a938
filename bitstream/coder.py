"""Python face of the C++ range coder: argument checks, dtype conversion, one error type.

Probabilities come in one of two layouts (both with 16-bit CDFs, total 1 << 16):
  * indexed tables, CompressAI's layout: symbols (N,), indexes (N,) naming a row of cdfs (T, L),
    cdf_lengths (T,), offsets (T,); values off a table's support are escaped, never clipped;
  * per-symbol rows: symbols (N,) in [0, K), cdf_rows (N, K + 1).
An encoder or decoder is a stream: several calls append to / read from the same bytes, so a prior
that needs decoded symbols to predict the next ones (a context model) can interleave with it.
"""
from __future__ import annotations

import numpy as np

from bitstream import _rangecoder
from bitstream.errors import BitstreamError

PRECISION = _rangecoder.PRECISION


def _i32(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and a.size:
        raise TypeError(f"expected an integer array, got {a.dtype}")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.int32)


def _cdfs(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise TypeError(f"expected a 2-D integer CDF array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a, dtype=np.uint32)


class Encoder:
    def __init__(self) -> None:
        self._enc = _rangecoder.RangeEncoder()

    def encode_indexed(self, symbols, indexes, cdfs, cdf_lengths, offsets) -> None:
        self._enc.encode_indexed(_i32(symbols), _i32(indexes), _cdfs(cdfs), _i32(cdf_lengths), _i32(offsets))

    def encode_rows(self, symbols, cdf_rows) -> None:
        self._enc.encode_rows(_i32(symbols), _cdfs(cdf_rows))

    def finish(self) -> bytes:
        return self._enc.finish()


class Decoder:
    def __init__(self, data: bytes) -> None:
        self._dec = _rangecoder.RangeDecoder(bytes(data))

    def decode_indexed(self, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
        try:
            return self._dec.decode_indexed(_i32(indexes), _cdfs(cdfs), _i32(cdf_lengths), _i32(offsets))
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None

    def decode_rows(self, cdf_rows) -> np.ndarray:
        try:
            return self._dec.decode_rows(_cdfs(cdf_rows))
        except _rangecoder.DecodeError as e:
            raise BitstreamError(str(e)) from None


def encode_indexed(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes:
    enc = Encoder()
    enc.encode_indexed(symbols, indexes, cdfs, cdf_lengths, offsets)
    return enc.finish()


def decode_indexed(data: bytes, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
    return Decoder(data).decode_indexed(indexes, cdfs, cdf_lengths, offsets)


def encode_rows(symbols, cdf_rows) -> bytes:
    enc = Encoder()
    enc.encode_rows(symbols, cdf_rows)
    return enc.finish()


def decode_rows(data: bytes, cdf_rows) -> np.ndarray:
    return Decoder(data).decode_rows(cdf_rows)


def pmf_to_cdf(pmf: np.ndarray) -> np.ndarray:
    """(..., K) probabilities -> (..., K + 1) uint32 CDFs, total 1 << PRECISION, every frequency >= 1.

    Frequencies are floor(p * (total - K)) + 1, and the rounding remainder goes to each row's most
    probable symbol, so the sum is exact and no symbol is impossible."""
    pmf = np.asarray(pmf, dtype=np.float64)
    k = pmf.shape[-1]
    total = 1 << PRECISION
    if k < 1 or k > total // 2:
        raise ValueError(f"alphabet size {k} out of range")
    pmf = np.clip(pmf, 0, None)
    pmf = pmf / np.maximum(pmf.sum(-1, keepdims=True), 1e-300)
    freq = np.floor(pmf * (total - k)).astype(np.int64) + 1
    rest = total - freq.sum(-1)
    np.put_along_axis(freq, pmf.argmax(-1)[..., None],
                      np.take_along_axis(freq, pmf.argmax(-1)[..., None], -1) + rest[..., None], -1)
    cdf = np.zeros(pmf.shape[:-1] + (k + 1,), np.uint32)
    cdf[..., 1:] = np.cumsum(freq, -1)
    return cdf
