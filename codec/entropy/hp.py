"""Entropy coding of the hp family: a factorized prior for z, a Gaussian mean-scale prior for y.

Both priors are CompressAI entropy models whose integer tables (loaded from the weights file) go to
our range coder unchanged, in its indexed-table layout. The decoder repeats the encoder's path from
z_hat to CDF-table indexes exactly: z_hat -> h_s -> for each coding pass of the model, (scales, means)
from the hyper features and the latents of earlier passes -> indexes.
"""
from __future__ import annotations

import numpy as np
import torch

from bitstream import BitstreamError, Packet, PacketKind
from bitstream import coder
from codec.quantizers import scalar


def _tables(entropy_model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (entropy_model._quantized_cdf.cpu().numpy(), entropy_model._cdf_length.cpu().numpy(),
            entropy_model._offset.cpu().numpy())


def _scale_indexes(gaussian_conditional, scales: torch.Tensor) -> np.ndarray:
    """Scales -> the index of each one's CDF table, exactly as GaussianConditional.build_indexes
    (the count of table scales below it), in one binary search: build_indexes compares the whole
    tensor with each of the 64 table scales in turn, ~190 small ops a pass that stall when other
    processes share the CPU's cores."""
    table = gaussian_conditional.scale_table[:-1].to(scales.device)
    return torch.searchsorted(table, gaussian_conditional.lower_bound_scale(scales)).to(torch.int32).cpu().numpy()


def _z_medians_and_indexes(model, shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """The factorized prior codes channel c of z with table c, around that channel's median."""
    eb = model.entropy_bottleneck
    medians = eb.quantiles[:, 0, 1].detach().view(1, -1, 1, 1).expand(shape)
    indexes = torch.arange(shape[1], dtype=torch.int32).view(1, -1, 1, 1).expand(shape)
    return medians, indexes.numpy()


@torch.no_grad()
def compress(model, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor) -> tuple[list[Packet], torch.Tensor]:
    """The gained latents (y, z) of an image (GainedMeanScaleHyperprior.analyse, perhaps refined)
    -> (packets [z, y], y_hat as the decoder will see it)."""
    z_medians, z_indexes = _z_medians_and_indexes(model, tuple(z.shape))
    z_symbols = scalar.quantize(z, z_medians)
    z_hat = scalar.dequantize(z_symbols, z_medians)
    z_payload = coder.encode_indexed(z_symbols.cpu().numpy(), z_indexes, *_tables(model.entropy_bottleneck))
    hyper = model.hyper_features(z_hat, level)
    # One range-coder stream for y, pass after pass: a pass's prior may depend on earlier passes.
    enc = coder.Encoder()
    y_hat, memo = torch.zeros_like(y), {}
    for step, mask in enumerate(model.latent_masks(y)):
        scales, means = model.latent_params(hyper, y_hat, step, memo)
        symbols = scalar.quantize(y, means)
        m = mask.expand_as(y)
        indexes = _scale_indexes(model.gaussian_conditional, scales[m])
        enc.encode_indexed(symbols[m].cpu().numpy(), indexes, *_tables(model.gaussian_conditional))
        y_hat = torch.where(m, scalar.dequantize(symbols, means), y_hat)
    packets = [Packet(PacketKind.HYPER, 0, z.shape[1], z_payload),
               Packet(PacketKind.LATENT, 0, y.shape[1], enc.finish())]
    return packets, y_hat


@torch.no_grad()
def decompress(model, packets: list[Packet], latent_hw: tuple[int, int], level: torch.Tensor,
               conceal: bool = False) -> torch.Tensor:
    """packets -> y_hat: (1, M, h, w) for the latent grid latent_hw = (H/16, W/16).

    conceal: a damaged or missing latent packet decodes as the prior's means, the most likely
    latent given z; without z there is nothing to predict from, so a lost hyper packet still fails."""
    hyper_packets = [p for p in packets if p.kind == PacketKind.HYPER and not p.damaged]
    latent = [p for p in packets if p.kind == PacketKind.LATENT and not p.damaged]
    if not hyper_packets:
        raise BitstreamError("the hyper-latent packet is missing or corrupt: the image cannot be decoded")
    if not latent and not conceal:
        raise BitstreamError("the latent packet is missing or corrupt")
    h, w = latent_hw
    z_shape = (1, model.N, (h + 3) // 4, (w + 3) // 4)
    z_medians, z_indexes = _z_medians_and_indexes(model, z_shape)
    z_symbols = coder.decode_indexed(hyper_packets[0].payload, z_indexes, *_tables(model.entropy_bottleneck))
    z_hat = scalar.dequantize(torch.from_numpy(z_symbols).view(z_shape).to(z_medians.device), z_medians)
    hyper = model.hyper_features(z_hat, level)
    if hyper.shape[2:] != (h, w):
        raise BitstreamError("latent size does not match the image size in the header")
    y_hat = torch.zeros((1, model.M, h, w), dtype=torch.float32, device=hyper.device)
    dec = coder.Decoder(latent[0].payload) if latent else None
    memo = {}
    for step, mask in enumerate(model.latent_masks(y_hat)):
        scales, means = model.latent_params(hyper, y_hat, step, memo)
        m = mask.expand_as(y_hat)
        if dec is None:
            y_hat = torch.where(m, means, y_hat)
            continue
        symbols = torch.zeros(y_hat.shape, dtype=torch.int32, device=y_hat.device)
        indexes = _scale_indexes(model.gaussian_conditional, scales[m])
        symbols[m] = torch.from_numpy(dec.decode_indexed(indexes, *_tables(model.gaussian_conditional))).to(y_hat.device)
        y_hat = torch.where(m, scalar.dequantize(symbols, means), y_hat)
    return y_hat
