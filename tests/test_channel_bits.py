"""tools/channel_bits.py: each latent channel's share of the bits, as the coder spends them."""
import subprocess
import sys

import torch

from codec import api, zoo
from tests.conftest import ROOT, SAMPLES
from tests.test_codec import _untrained

sys.path.insert(0, str(ROOT / "tools"))
from channel_bits import channel_bits, flattened_psnr  # noqa: E402


def test_the_channels_bits_add_up_to_the_coded_latent_and_a_silenced_channel_carries_none(sample_rgb):
    net, _ = _untrained("checkerboard-full")
    im = sample_rgb[:128, :192]
    level = 3.5
    bits, pixels = channel_bits(net, [im], level)
    assert pixels == 128 * 192 and bits.shape == (net.M,)
    with torch.no_grad():  # the coder's own count (z and y) minus the hyper-latent's bits
        y, z = net.analyse(api.to_tensor(im, "cpu", pad=64), torch.tensor([level]))
        total, _ = net.coded_terms(y, z, torch.tensor([level]))
        net.analysis_head = lambda features, lv: features * 0  # every channel silenced: y = 0 everywhere
        silent, _ = channel_bits(net, [im], level)
    assert 0 < bits.sum() < total.item()
    assert silent.sum() < 0.05 * bits.sum()


def test_the_command_reports_the_shipped_model_and_refuses_a_level_out_of_range():
    weights = zoo.weights_path("hp")
    run = [sys.executable, str(ROOT / "tools" / "channel_bits.py"), str(weights), "--images", str(SAMPLES)]
    out = subprocess.run(run + ["--level", "12"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "channels holding 99% of the bits" in out.stdout
    assert "flattened to their mean" in out.stdout  # the shipped model has dead channels at its top level
    bad = subprocess.run(run + ["--level", "99"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "--level must lie in" in bad.stderr


def test_flattening_no_channel_changes_nothing_and_flattening_all_of_them_loses_the_picture(sample_rgb):
    net, _ = _untrained("checkerboard-full")
    im = sample_rgb[:128, :192]
    coded, same = flattened_psnr(net, [im], 3.5, torch.zeros(net.M, dtype=torch.bool))
    assert same == coded
    _, flat = flattened_psnr(net, [im], 3.5, torch.ones(net.M, dtype=torch.bool))
    assert flat < coded
