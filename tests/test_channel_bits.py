"""tools/channel_bits.py: each latent channel's share of the bits, as the coder spends them."""
import subprocess
import sys

import pytest
import torch

from codec import api, zoo
from tests.conftest import ROOT, SAMPLES

sys.path.insert(0, str(ROOT / "tools"))
from channel_bits import channel_bits, flattened_psnr  # noqa: E402


def test_the_channels_bits_add_up_to_the_latent_packet_the_coder_writes(sample_rgb):
    net, _, _ = zoo.load("hp")
    im = sample_rgb[:128, :192]
    quality = 54.17  # level 6.5
    level = net.level_of(quality)
    bits, pixels = channel_bits(net, [im], float(level))
    assert pixels == 128 * 192 and bits.shape == (net.M,)
    packets, _ = net.code_latents(*net.analyse(api.to_tensor(im, "cpu", net.stride), level), quality)
    coded = 8 * len(packets[1].payload)
    assert bits.sum() == pytest.approx(coded, rel=0.02)


def test_the_command_reports_the_counts_it_computes_and_refuses_a_level_out_of_range():
    """The command's figures are channel_bits' on the same images (the shipped model, top level), and
    it decodes with the channels under 0.1 % flattened exactly when there are any."""
    from channel_bits import find_images, load_image
    weights = zoo.weights_path("hp")
    run = [sys.executable, str(ROOT / "tools" / "channel_bits.py"), str(weights), "--images", str(SAMPLES)]
    out = subprocess.run(run + ["--level", "12"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    net, _, _ = zoo.load("hp")
    bits, _ = channel_bits(net, [load_image(p) for p in find_images(SAMPLES)], 12)
    share = bits / bits.sum()
    for floor in (1e-4, 5e-4, 1e-3):
        assert f"channels under {floor:g} of the bits: {int((share < floor).sum())}\n" in out.stdout
    assert ("flattened to their mean" in out.stdout) == bool((share < 1e-3).any())
    bad = subprocess.run(run + ["--level", "99"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "--level must lie in" in bad.stderr


def test_flattening_no_channel_changes_nothing_and_flattening_all_of_them_loses_the_picture(sample_rgb):
    net, _, _ = zoo.load("hp")
    im = sample_rgb[:128, :192]
    coded, same = flattened_psnr(net, [im], 3.5, torch.zeros(net.M, dtype=torch.bool))
    assert same == coded
    _, flat = flattened_psnr(net, [im], 3.5, torch.ones(net.M, dtype=torch.bool))
    assert flat < coded
