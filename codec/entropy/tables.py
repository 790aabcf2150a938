"""Integer CDF tables in the range coder's indexed layout (CompressAI's: cdfs (T, L), cdf_lengths (T,),
offsets (T,)) and the rules that pick a table for each symbol. Plain numpy arrays in, symbols and
bytes out: nothing here knows a network. A model computes its priors' parameters and hands them over.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the coder's C++ build is needed to code, not to train
    from bitstream import coder


@dataclass(frozen=True)
class Tables:
    """T integer CDFs; symbol i is coded with row indexes[i], values off a row's support escaped."""
    cdfs: np.ndarray
    cdf_lengths: np.ndarray
    offsets: np.ndarray

    def encode(self, encoder: coder.Encoder, symbols: np.ndarray, indexes: np.ndarray) -> None:
        encoder.encode_indexed(symbols, indexes, self.cdfs, self.cdf_lengths, self.offsets)

    def decode(self, decoder: coder.Decoder, indexes: np.ndarray) -> np.ndarray:
        return decoder.decode_indexed(indexes, self.cdfs, self.cdf_lengths, self.offsets)


def channel_indexes(shape: tuple[int, ...]) -> np.ndarray:
    """(B, C, h, w) -> int32 of that shape: each value's channel, the table of a factorized prior."""
    return np.broadcast_to(np.arange(shape[1], dtype=np.int32).reshape(1, -1, 1, 1), shape)


def scale_indexes(log_scales: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Gaussian log-scales (int64 fixed point) -> the index of each one's CDF table: how many of the
    tables' log-scales (`thresholds`, increasing, the same fixed point) lie below it. Integers only,
    so encoder and decoder pick the same table on every machine."""
    return np.searchsorted(thresholds, log_scales, side="left").astype(np.int32)


def static_table(counts: np.ndarray) -> Tables:
    """Symbol counts (K,) -> a one-row table of 16-bit frequencies in proportion, every symbol at
    least 1, in integers (its last symbol, the escape, is never used here)."""
    counts = np.append(np.asarray(counts, dtype=np.int64), 0)
    total = 1 << 16
    k = len(counts)
    freq = counts * (total - k) // max(int(counts.sum()), 1) + 1
    freq[np.argmax(counts)] += total - freq.sum()  # the rounding remainder to the commonest symbol
    cdf = np.concatenate([[0], np.cumsum(freq)])[None]
    return Tables(cdf, np.array([cdf.shape[1]], np.int32), np.zeros(1, np.int32))
