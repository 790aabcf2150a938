"""Scalar quantization around a predicted mean: the symbol is round(y - mean), so the coder sees a
distribution centred at zero and the decoder adds the same mean back."""
import torch


def quantize(y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """y, means: (B, C, H, W) float -> symbols: (B, C, H, W) int32."""
    return torch.round(y - means).to(torch.int32)


def dequantize(symbols: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return symbols.to(means.dtype) + means


def round_straight_through(y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The coder's rounding, round(y - means) + means, passing y's gradient through unchanged."""
    return y + (torch.round(y - means) + means - y).detach()


def annealed_round(y: torch.Tensor, means: torch.Tensor, temperature: float, generator: torch.Generator
                   ) -> torch.Tensor:
    """Stochastic Gumbel annealing (Yang et al. 2020): y - means is rounded down or up at random, the
    nearer integer the likelier (log-odds atanh of the distances over `temperature`), as a Gumbel-softmax
    blend of the two with a gradient. As the temperature falls to 0 it becomes the coder's rounding."""
    u = y - means
    floor = torch.floor(u).detach()
    frac = (u - floor).clamp(1e-6, 1 - 1e-6)  # atanh is finite inside (0, 1)
    logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)]) / temperature
    uniform = torch.rand(logits.shape, generator=generator, device=y.device).clamp(1e-10, 1 - 1e-10)
    up = torch.softmax((logits - torch.log(-torch.log(uniform))) / temperature, dim=0)[1]
    return means + floor + up
