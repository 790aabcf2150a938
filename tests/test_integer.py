"""The integer entropy path (codec/models/integer.py and the hp model's IntegerPrior): close to the
float networks it is derived from, and the same integers however the arithmetic is scheduled."""
import math

import pytest
import torch
from torch import nn

from codec import api, zoo
from codec.models.integer import (FRAC, IntLayer, IntSequential, exp_fixed, interpolate_rows, ln_fixed, log_fixed,
                                  to_fixed)


@pytest.mark.parametrize("layer", [nn.Conv2d(48, 40, 5, 1, 2), nn.Conv2d(64, 32, 1), nn.ConvTranspose2d(32, 24, 5, 2, 2, 1)])
def test_an_integer_layer_follows_its_float_layer_and_ignores_the_thread_count(layer):
    torch.manual_seed(0)
    x = torch.randn(1, layer.in_channels, 9, 11) * 4
    ref = layer(x).detach()
    int_layer = IntLayer(layer)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = int_layer(to_fixed(x))
        torch.set_num_threads(2)
        two = int_layer(to_fixed(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert (one.double() / (1 << FRAC) - ref).abs().max() < 1e-3 * ref.abs().max()


def test_an_integer_sequence_applies_leaky_relu_as_the_float_one_does():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.LeakyReLU(), nn.Conv2d(16, 4, 1))
    x = torch.randn(1, 8, 6, 6)
    out = IntSequential(seq)(to_fixed(x)).double() / (1 << FRAC)
    assert (out - seq(x).detach()).abs().max() < 1e-3


def test_fixed_point_log_and_exp_are_correctly_rounded_tables():
    assert ln_fixed(2.0) == round(math.log(2) * (1 << FRAC))
    v = torch.tensor([1, 7, 1 << FRAC, 3 << FRAC, 123456789], dtype=torch.long)
    expected = torch.tensor([math.log(int(x) / (1 << FRAC)) for x in v], dtype=torch.float64)
    assert (log_fixed(v).double() / (1 << FRAC) - expected).abs().max() < 2 ** -9
    assert log_fixed(torch.tensor([1 << FRAC])).item() == 0  # ln 1, exactly
    x = torch.tensor([-3 << 16, 0, 1 << 15, 5 << 16])
    assert exp_fixed(x).tolist() == [round(math.exp(v / 65536) * 65536) for v in x.tolist()]


def test_interpolated_rows_land_on_the_trained_rows_at_their_qualities():
    table = torch.tensor([[0.5, -1.0], [1.5, 2.0], [3.0, 0.25]])
    assert interpolate_rows(table, 0.0).tolist() == to_fixed(table[0], 16).tolist()
    assert interpolate_rows(table, 100.0).tolist() == to_fixed(table[2], 16).tolist()
    assert interpolate_rows(table, 25.0).tolist() == to_fixed((table[0] + table[1]) / 2, 16).tolist()


@pytest.fixture(scope="module")
def hp():
    return zoo.load("hp")[0]


def test_the_integer_prior_codes_close_to_the_float_priors_estimate(hp, sample_rgb):
    """The coder's bytes with the integer prior against what the float prior says the same latents
    cost (coded_terms, with exact rather than tabled scales): within 3 %, as the float coder was.
    The integer path's own cost, against the float coder, is measured on Kodak (README)."""
    x = api.to_tensor(sample_rgb, "cpu", hp.stride)
    for quality in (10.0, 50.0, 90.0):
        level = hp.level_of(quality)
        y, z = hp.analyse(x, level)
        packets, _ = hp.code_latents(y, z, quality)
        estimate, _ = hp.coded_terms(y, z, level)
        assert 8 * sum(len(p.payload) for p in packets) == pytest.approx(estimate.item(), rel=0.03), quality


def test_the_integer_prior_is_the_same_with_one_thread_or_two(hp, sample_rgb):
    x = api.to_tensor(sample_rgb, "cpu", hp.stride)
    y, z = hp.analyse(x, hp.level_of(70.0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = hp.code_latents(y, z, 70.0)
        torch.set_num_threads(2)
        two = hp.code_latents(y, z, 70.0)
    finally:
        torch.set_num_threads(threads)
    assert [p.payload for p in one[0]] == [p.payload for p in two[0]] and torch.equal(one[1], two[1])
