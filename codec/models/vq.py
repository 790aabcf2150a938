"""The `vq` family's transforms: a VQGAN-style autoencoder with 16x downsampling.

x: (B, 3, H, W) in [0, 1], H and W multiples of 16 -> index map (B, H/16, W/16) -> x_hat.
GroupNorm residual blocks, as in VQGAN; the quantizer is codec.quantizers.vq.VectorQuantizer.
"""
from __future__ import annotations

import torch
from torch import nn

from codec.quantizers.vq import VectorQuantizer


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  nn.GroupNorm(32, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class VQAutoencoder(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (64, 96, 128, 160, 192), dim: int = 192,
                 codebook_size: int = 8192, code_dim: int = 16):
        super().__init__()
        c = list(channels)
        enc: list[nn.Module] = [nn.Conv2d(3, c[0], 3, padding=1)]
        for a, b in zip(c[:-1], c[1:]):  # four stride-2 stages: 16x
            enc += [ResBlock(a, b), nn.Conv2d(b, b, 4, stride=2, padding=1)]
        enc += [ResBlock(c[-1], c[-1]), nn.GroupNorm(32, c[-1]), nn.SiLU(), nn.Conv2d(c[-1], dim, 1)]
        self.g_a = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(dim, c[-1], 3, padding=1), ResBlock(c[-1], c[-1])]
        for a, b in zip(c[::-1][:-1], c[::-1][1:]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, a, 3, padding=1), ResBlock(a, b)]
        dec += [nn.GroupNorm(32, c[0]), nn.SiLU(), nn.Conv2d(c[0], 3, 3, padding=1)]
        self.g_s = nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(dim, codebook_size, code_dim)

    def forward(self, x: torch.Tensor) -> dict:
        """Training path -> {"x_hat", "indices", "vq_loss"}."""
        z_q, indices, vq_loss = self.quantizer(self.g_a(x))
        return {"x_hat": self.g_s(z_q), "indices": indices, "vq_loss": vq_loss}

    @torch.no_grad()
    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        """x -> index map (B, H/16, W/16)."""
        return self.quantizer.indices(self.g_a(x))

    @torch.no_grad()
    def synthesise(self, indices: torch.Tensor) -> torch.Tensor:
        return self.g_s(self.quantizer.lookup(indices)).clamp(0, 1)

