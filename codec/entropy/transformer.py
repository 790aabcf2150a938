"""Entropy model of the vq family: a bidirectional transformer over the index map.

The map is coded in a fixed number of parallel steps (MaskGIT-style). Positions are split into
`lattice`^2 groups by their place in a lattice x lattice tile; step g codes group g with a
distribution predicted from every index of the groups before it (the rest masked), so a decoder
runs the network `lattice`^2 times whatever the image size. The same network, trained with random
masking ratios, can later predict indices lost from a damaged packet.

Shapes: indices (B, h, w) int64 in [0, K); logits (B, h, w, K).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitstream import coder


class IndexPrior(nn.Module):
    def __init__(self, codebook_size: int, dim: int = 256, depth: int = 4, heads: int = 4, max_side: int = 64,
                 lattice: int = 3):
        super().__init__()
        self.codebook_size, self.lattice, self.max_side = codebook_size, lattice, max_side
        self.mask_token = codebook_size
        self.token = nn.Embedding(codebook_size + 1, dim)
        self.row = nn.Embedding(max_side, dim)
        self.col = nn.Embedding(max_side, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)

    def forward(self, indices: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w), known (B, h, w) bool -> logits (B, h, w, K); unknown indices are ignored."""
        b, h, w = indices.shape
        if h > self.max_side or w > self.max_side:
            raise ValueError(f"index map {h}x{w} exceeds the prior's {self.max_side}x{self.max_side}")
        tokens = torch.where(known, indices, torch.full_like(indices, self.mask_token))
        pos = self.row.weight[:h, None, :] + self.col.weight[None, :w, :]
        x = (self.token(tokens) + pos).reshape(b, h * w, -1)
        return self.head(self.norm(self.blocks(x))).view(b, h, w, self.codebook_size)

    def groups(self, h: int, w: int, device=None) -> list[torch.Tensor]:
        """Bool masks (h, w), one per coding step, partitioning the map. Groups are taken in an order
        that spreads the early ones over the tile (every other row and column first)."""
        s = self.lattice
        i = torch.arange(h, device=device)[:, None] % s
        j = torch.arange(w, device=device)[None, :] % s
        order = sorted(range(s * s), key=lambda g: (_spread(g // s, s), _spread(g % s, s)))
        return [(i == g // s) & (j == g % s) for g in order]

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Training: hide a random share of each map (cosine schedule, as MaskGIT) and predict it.
        Returns cross-entropy in bits per hidden index."""
        b, h, w = indices.shape
        ratio = torch.cos(torch.rand(b, 1, 1, device=indices.device) * math.pi / 2)  # share hidden
        hidden = torch.rand(b, h, w, device=indices.device) < ratio
        # At least one hidden index a map, so the loss is never a mean over nothing.
        one = F.one_hot(torch.randint(h * w, (b,), device=indices.device), h * w).view(b, h, w).bool()
        hidden |= one
        logits = self(indices, ~hidden)
        return F.cross_entropy(logits[hidden], indices[hidden]) / math.log(2)


def _spread(r: int, s: int) -> int:
    """Rank of tile row/column r when even ones come first: 0, 2, 4, ..., 1, 3, ..."""
    return r // 2 if r % 2 == 0 else (s + 1) // 2 + r // 2


def _cdf_rows(logits: torch.Tensor) -> np.ndarray:
    """(N, K) logits -> (N, K + 1) uint32 CDF rows (float64 softmax, then 16-bit integers)."""
    return coder.pmf_to_cdf(torch.softmax(logits.double(), -1).cpu().numpy())


@torch.no_grad()
def encode(prior: IndexPrior, indices: torch.Tensor) -> bytes:
    """indices (h, w) -> bytes: one range-coder stream, one batch of CDF rows per group."""
    indices = indices[None]
    known = torch.zeros_like(indices, dtype=torch.bool)
    enc = coder.Encoder()
    for group in prior.groups(*indices.shape[1:], device=indices.device):
        logits = prior(indices, known)[0][group]
        enc.encode_rows(indices[0][group].cpu().numpy(), _cdf_rows(logits))
        known[0] |= group
    return enc.finish()


@torch.no_grad()
def decode(prior: IndexPrior, data: bytes, h: int, w: int, device: str = "cpu") -> torch.Tensor:
    """bytes -> indices (h, w), running the prior once per group as the encoder did."""
    indices = torch.zeros((1, h, w), dtype=torch.long, device=device)
    known = torch.zeros_like(indices, dtype=torch.bool)
    dec = coder.Decoder(data)
    for group in prior.groups(h, w, device=device):
        logits = prior(indices, known)[0][group]
        indices[0][group] = torch.from_numpy(dec.decode_rows(_cdf_rows(logits))).long().to(device)
        known[0] |= group
    return indices[0]
