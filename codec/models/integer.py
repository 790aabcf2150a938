"""Integer inference for the networks that decide symbol probabilities (Ballé, Johnston and Minnen
2019, "Integer networks for data compression"): encoder and decoder must compute them bit for bit
alike on every CPU and GPU, and float arithmetic does not (vector widths, FMA and library kernels
round differently).

Values are int64 tensors in fixed point with FRAC fractional bits. A layer's weights are rounded to
integers of at most WEIGHT_BITS bits with a power-of-two scale per output channel (taken from the
shipped float weights at load time: no extra file), its bias to the accumulator's scale, and its
output is shifted back to FRAC bits with rounding. Convolutions run in float64 on integer values:
every product and partial sum is an integer below 2^53, exactly representable, so the result is
exact in any order of summation, on any device. `IntLayer` clamps its input to keep that bound.

Transcendentals (the log of a scale, the exp of a log-gain) come from tables computed once with
Python's `decimal`, whose ln and exp are correctly rounded: the same integers everywhere.
"""
from __future__ import annotations

import decimal
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

FRAC = 16          # fractional bits of every activation, mean and log-scale
WEIGHT_BITS = 14   # |integer weight| < 2^WEIGHT_BITS
EXACT = 1 << 53    # integers below this are exact in float64
LEAKY_SLOPE = round(0.01 * (1 << 16))  # nn.LeakyReLU's 0.01, in Q16
LOG_TABLE_BITS = 10                    # mantissa bits of the log table


def to_fixed(x: torch.Tensor, frac: int = FRAC) -> torch.Tensor:
    """Float -> int64 at `frac` fractional bits. Exact for float values that are multiples of 2^-frac
    and deterministic for all others (a power-of-two scaling is exact, rounding is exact)."""
    return torch.round(x.double() * (1 << frac)).long()


def pow2(exponents: torch.Tensor) -> torch.Tensor:
    """2^e as float64, exactly (math.ldexp; a vectorised pow need not be exact)."""
    return torch.tensor([math.ldexp(1.0, int(e)) for e in exponents.flatten().tolist()],
                        dtype=torch.float64).view(exponents.shape)


def shift_round(x: torch.Tensor, shift: torch.Tensor | int) -> torch.Tensor:
    """x / 2^shift rounded half up, in integers (shift >= 1, per channel when a (1, C, 1, 1) tensor)."""
    return (x + (torch.ones_like(x) << (shift - 1))) >> shift


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, (x * LEAKY_SLOPE) >> 16)


class IntLayer(nn.Module):
    """A frozen integer copy of an nn.Conv2d or nn.ConvTranspose2d: int64 at FRAC bits in and out."""

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__()
        w = layer.weight.detach().cpu().double()  # built on the CPU (pow2 is), then moved with .to()
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        out_dim = 1 if self.transposed else 0
        reduce = [d for d in range(w.dim()) if d != out_dim]
        peak = w.abs().amax(dim=reduce).clamp(min=2.0 ** -30)
        # Per output channel, the largest power-of-two scale that keeps |w| * 2^s below 2^WEIGHT_BITS.
        exponent = torch.frexp(peak.float()).exponent.long()  # peak < 2^exponent, exactly
        shift = (WEIGHT_BITS - exponent).clamp(min=FRAC + 1, max=40)
        view = [1] * w.dim()
        view[out_dim] = -1
        weight = torch.round(w * pow2(shift).view(view))
        self.register_buffer("weight", weight)  # integers, stored as float64 for the exact convolution
        self.register_buffer("shift", shift.view(1, -1, 1, 1))  # accumulator bits above FRAC
        self.register_buffer("bias", torch.round(layer.bias.detach().cpu().double()
                                                 * pow2(shift + FRAC)).long().view(1, -1, 1, 1))
        self.stride, self.padding = layer.stride, layer.padding
        self.output_padding = getattr(layer, "output_padding", 0)
        # Fan-in bound: |input| * 2^WEIGHT_BITS * taps < 2^53 keeps every partial sum exact.
        taps = w[0].numel() if not self.transposed else w[:, 0].numel()
        self.limit = EXACT // ((1 << WEIGHT_BITS) * taps) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-self.limit, self.limit).double()
        with torch.backends.cudnn.flags(enabled=False):  # im2col + GEMM: no FFT or Winograd transforms
            if self.transposed:
                acc = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding)
            else:
                acc = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return shift_round(acc.long() + self.bias, self.shift)


class IntSequential(nn.Module):
    """An nn.Sequential of convolutions and LeakyReLUs, in integers."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.layers = nn.ModuleList(IntLayer(m) for m in seq if not isinstance(m, nn.LeakyReLU))
        self.leaky = [isinstance(m, nn.LeakyReLU) for m in seq]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = iter(self.layers)
        for leaky in self.leaky:
            x = leaky_relu(x) if leaky else next(layers)(x)
        return x


def tiled(fn, inputs: list[torch.Tensor], tile: int, halo: int, scale: int = 1) -> torch.Tensor:
    """fn(*inputs) computed tile by tile: inputs (B, C_i, h, w), each tile `tile` positions a side
    with `halo` more on each side where the map has them, outputs (B, C, scale h, scale w) stitched,
    in the memory of one tile. Exactly fn(*inputs) for an integer network whose output at a position
    depends on inputs at most `halo` positions away (integer arithmetic rounds nowhere); a float
    network (hp's synthesis) gets it to float rounding once the halo covers its reach."""
    h, w = inputs[0].shape[2:]
    if h <= tile and w <= tile:
        return fn(*inputs)
    out = None
    for i in range(0, h, tile):
        for j in range(0, w, tile):
            i0, j0 = max(i - halo, 0), max(j - halo, 0)
            part = fn(*(x[..., i0:min(i + tile + halo, h), j0:min(j + tile + halo, w)] for x in inputs))
            if out is None:
                out = part.new_empty(part.shape[:2] + (scale * h, scale * w))
            th, tw = min(tile, h - i), min(tile, w - j)
            out[..., scale * i:scale * (i + th), scale * j:scale * (j + tw)] = \
                part[..., scale * (i - i0):scale * (i - i0 + th), scale * (j - j0):scale * (j - j0 + tw)]
    return out


@functools.lru_cache(maxsize=None)
def _log_table(device: str) -> torch.Tensor:
    """round(ln(1 + i / 2^LOG_TABLE_BITS) * 2^FRAC) for i < 2^LOG_TABLE_BITS, correctly rounded."""
    with decimal.localcontext(decimal.Context(prec=40)):
        values = [int((decimal.Decimal(1 + i / (1 << LOG_TABLE_BITS)).ln() * (1 << FRAC))
                      .to_integral_value(decimal.ROUND_HALF_EVEN)) for i in range(1 << LOG_TABLE_BITS)]
    return torch.tensor(values, dtype=torch.long, device=device)


def ln_fixed(x: float) -> int:
    """round(ln(x) * 2^FRAC) for a float x > 0, correctly rounded."""
    with decimal.localcontext(decimal.Context(prec=40)):
        # Decimal(float) is exact: a float is a dyadic rational.
        return int((decimal.Decimal(x).ln() * (1 << FRAC)).to_integral_value(decimal.ROUND_HALF_EVEN))


def log_fixed(v: torch.Tensor) -> torch.Tensor:
    """v: int64 > 0 at FRAC bits -> ln(v / 2^FRAC) at FRAC bits: the exponent times ln 2 plus a
    table of the mantissa's top LOG_TABLE_BITS bits (error under 2^-10)."""
    e = torch.floor(torch.log2(v.double())).long()  # exact for v < 2^53 but for rounding at powers of two:
    e = e - (v < (torch.ones_like(v) << e)).long() + (v >= (torch.ones_like(v) << (e + 1))).long()  # fix it
    mantissa = torch.where(e >= LOG_TABLE_BITS, v >> (e - LOG_TABLE_BITS).clamp(min=0),
                           v << (LOG_TABLE_BITS - e).clamp(min=0)) - (1 << LOG_TABLE_BITS)
    return (e - FRAC) * LN2 + _log_table(str(v.device))[mantissa]


LN2 = ln_fixed(2.0)


def exp_fixed(x: torch.Tensor, frac_out: int = 16) -> torch.Tensor:
    """x: int64 at 16 fractional bits (a row of log-gains) -> exp(x / 2^16) at `frac_out` bits, each
    correctly rounded. For small tensors: it runs in Python."""
    with decimal.localcontext(decimal.Context(prec=40)):
        scale = decimal.Decimal(1 << frac_out)
        values = [int(((decimal.Decimal(v) / (1 << 16)).exp() * scale).to_integral_value(decimal.ROUND_HALF_EVEN))
                  for v in x.flatten().tolist()]
    return torch.tensor(values, dtype=torch.long, device=x.device).view(x.shape)


def interpolate_rows(table: torch.Tensor, quality: float, frac: int = 16) -> torch.Tensor:
    """A per-level table (n_levels, C) and a quality 0..100 (to 0.01) -> the row at level
    quality / 100 * (n_levels - 1), interpolated linearly, at `frac` bits, in integers."""
    n = table.shape[0]
    position = round(quality * 100) * (n - 1)  # level * 10000, exactly
    lo = min(position // 10000, n - 2)
    t = position - lo * 10000
    rows = to_fixed(table, frac)
    return (rows[lo] * (10000 - t) + rows[lo + 1] * t + 5000) // 10000


def scale_thresholds(table_scales: torch.Tensor) -> torch.Tensor:
    """The Gaussian tables' scales (float32, increasing; all but the last) -> their logs at FRAC bits:
    a log-scale L picks table count(thresholds < L)."""
    return torch.tensor([ln_fixed(float(s)) for s in table_scales], dtype=torch.long)

