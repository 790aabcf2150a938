import numpy as np
import pytest

from codec.bdrate import bd_psnr, bd_rate
from codec.metrics import bpp, ms_ssim, psnr


def test_psnr_matches_a_hand_computed_value():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 12  # one error of 12 over 12 values: MSE = 144 / 12 = 12
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 12), abs=1e-12)
    assert psnr(a, a) == float("inf")


def test_bpp_counts_bits_of_the_whole_file_per_pixel():
    assert bpp(1000, 100, 80) == pytest.approx(1.0)
    assert bpp(6144, 768, 512) == pytest.approx(0.125)


def test_ms_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
    noisy = np.clip(img.astype(int) + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    assert 0.5 < ms_ssim(img, noisy) < 0.99


def test_bd_rate_of_a_curve_at_half_the_bits_is_minus_fifty_percent():
    r = np.array([0.1, 0.2, 0.4, 0.8])
    q = np.array([28.0, 30.5, 33.0, 35.0])
    assert bd_rate(r, q, r / 2, q) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(r, q, r, q) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(r, q, r, q + 1.0) == pytest.approx(1.0, abs=1e-12)


def test_bd_rate_reproduces_the_anchor_table(kodak_dir):
    from codec.bdrate import load_curve
    anchors = kodak_dir.parent.parent / "anchors" / "kodak"
    _, rb, qb = load_curve(anchors / "bpg444.json")
    _, rv, qv = load_curve(anchors / "vtm.json")
    assert bd_rate(rb, qb, rv, qv) == pytest.approx(-17.2, abs=0.05)  # anchors/README.md
