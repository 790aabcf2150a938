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


def scale_indexes(scales: np.ndarray, table_scales: np.ndarray, lower_bound: np.float32) -> np.ndarray:
    """Gaussian scales (float32) -> the index of each one's CDF table: how many of the table's scales
    (all but the last, increasing) lie below it, once raised to the lower bound. The same rule as
    CompressAI's GaussianConditional.build_indexes, in one binary search."""
    return np.searchsorted(table_scales, np.maximum(scales, lower_bound), side="left").astype(np.int32)


def static_table(pmf: np.ndarray) -> Tables:
    """One fixed distribution (K,) -> a one-row table (its last symbol, the escape, is never used)."""
    from bitstream import coder
    cdf = coder.pmf_to_cdf(np.append(pmf, 0.0))[None]
    return Tables(cdf, np.array([cdf.shape[1]], np.int32), np.zeros(1, np.int32))
