"""Scalar quantization around a predicted mean: the symbol is round(y - mean), so the coder sees a
distribution centred at zero and the decoder adds the same mean back."""
import torch


def quantize(y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """y, means: (B, C, H, W) float -> symbols: (B, C, H, W) int32."""
    return torch.round(y - means).to(torch.int32)


def dequantize(symbols: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return symbols.to(means.dtype) + means
