"""The one place that measures: bpp, PSNR-RGB and MS-SSIM, as ../shared/anchors/README.md defines them,
and HaarPSI (piq), a non-learned perceptual similarity for the extreme low rates."""
from __future__ import annotations

import numpy as np


def bpp(num_bytes: int, width: int, height: int) -> float:
    """Bits per pixel of a whole file, container and header included."""
    return 8 * num_bytes / (width * height)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR-RGB in dB of two (H, W, 3) uint8 images: MSE over all pixels and the 3 channels."""
    if reference.shape != decoded.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {decoded.shape}")
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _tensor(a: np.ndarray):
    import torch
    return torch.from_numpy(np.array(a, np.float32)).permute(2, 0, 1)[None]


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM of two (H, W, 3) uint8 images, pytorch_msssim with data_range 255."""
    from pytorch_msssim import ms_ssim as _ms_ssim
    return float(_ms_ssim(_tensor(reference), _tensor(decoded), data_range=255))


def haarpsi(reference: np.ndarray, decoded: np.ndarray) -> float:
    """HaarPSI (Reisenhofer et al. 2018) of two (H, W, 3) uint8 images, piq with data_range 255:
    1 for identical images, lower is worse."""
    import piq
    return float(piq.haarpsi(_tensor(reference), _tensor(decoded), data_range=255.0))
