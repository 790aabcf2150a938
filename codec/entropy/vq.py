"""Entropy coding of the vq family: index maps -> INDICES packets, one per quantizer stage.

Stage 1 (the main codebook or a clustered one) is coded with the transformer prior
(codec.entropy.transformer), its distribution marginalised onto the codebook in use. Residual stages
are coded with one static table each: the index frequencies measured over the training set.
"""
from __future__ import annotations

import numpy as np
import torch

from bitstream import BitstreamError, Packet, PacketKind
from bitstream import coder
from codec.entropy import transformer


def _static_table(pmf: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One indexed table in the coder's layout (its last symbol is the escape, never used here)."""
    cdf = coder.pmf_to_cdf(np.append(pmf.cpu().numpy(), 0.0))[None]
    return cdf, np.array([cdf.shape[1]], np.int32), np.zeros(1, np.int32)


@torch.no_grad()
def compress(model, maps: list[torch.Tensor], k: int) -> list[Packet]:
    """maps: (h, w) index maps, stage 1 into the size-k codebook -> packets."""
    codes, mapping = model.codebook(k)
    packets = [Packet(PacketKind.INDICES, 0, maps[0].numel(), transformer.encode(model.prior, maps[0], codes, mapping))]
    for stage, m in enumerate(maps[1:], start=1):
        symbols = m.flatten().cpu().numpy()
        payload = coder.encode_indexed(symbols, np.zeros_like(symbols), *_static_table(model.residual_pmf(stage)))
        packets.append(Packet(PacketKind.INDICES, stage, m.numel(), payload))
    return packets


@torch.no_grad()
def decompress(model, packets: list[Packet], hw: tuple[int, int], k: int, depth: int) -> list[torch.Tensor]:
    """packets -> `depth` index maps (h, w)."""
    h, w = hw
    codes, mapping = model.codebook(k)
    by_stage = {p.first: p for p in packets if p.kind == PacketKind.INDICES}
    maps = []
    for stage in range(depth):
        p = by_stage.get(stage)
        if p is None or p.damaged:
            raise BitstreamError(f"the index packet of quantizer stage {stage + 1} is missing or corrupt")
        if p.count != h * w:
            raise BitstreamError(f"index packet {stage + 1} covers {p.count} indices, the image needs {h * w}")
        if stage == 0:
            maps.append(transformer.decode(model.prior, p.payload, h, w, codes, mapping))
            continue
        pmf = model.residual_pmf(stage)
        symbols = coder.decode_indexed(p.payload, np.zeros(h * w, np.int32), *_static_table(pmf))
        maps.append(torch.from_numpy(symbols).long().view(h, w).to(codes.device))
    return maps
