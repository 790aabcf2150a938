"""The vq index prior's integer-only path (codec.models.integer_prior): lossless, exact, the same
integers whatever the thread count, batch or order of positions, and within 0.5 % of the float
path's rate with the shipped weights."""
import decimal
import math

import numpy as np
import pytest
import torch

from codec.models.index_prior import IndexPrior
from codec.models.integer_prior import (ATTN_BITS, CDF_BITS, EXP_STEP, FRAC_A, IntegerPrior, IntLayerNorm,
                                        IntLinear, div_round, exp_table, isqrt, unit_codes)
from tests.conftest import SAMPLES

# Measured with the shipped vq weights (tools: this file's _bits): integer rows vs float rows, ideal
# code length over both samples, -0.001 % to +0.004 % per sample and codebook. The bound is the goal.
RATE_BOUND = 1.005


def _codebook(k: int, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.functional.normalize(torch.randn(k, dim), dim=-1), torch.arange(k)


def _prior(k=64, seed=0, **kw) -> IndexPrior:
    torch.manual_seed(seed)
    args = dict(code_dim=4, dim=32, depth=2, heads=2, head_rank=16) | kw
    return IndexPrior(k, **args).eval()


# --- primitives ---

def test_isqrt_is_the_exact_floor_root_also_next_to_perfect_squares():
    r = torch.cat([torch.randint(0, 1 << 26, (2000,)), torch.tensor([0, 1, 2, 3, 4, (1 << 26) - 1])])
    x = torch.cat([r * r - 1, r * r, r * r + 1, r * r + 2 * r]).clamp(min=0)
    x = torch.cat([x, torch.randint(0, 1 << 53, (4000,))])
    expected = torch.tensor([math.isqrt(v) for v in x.tolist()])
    assert torch.equal(isqrt(x), expected)


def test_div_round_rounds_half_up_for_both_signs():
    num = torch.arange(-50, 51)
    den = torch.full_like(num, 4)
    expected = torch.tensor([math.floor(n / 4 + 0.5) for n in num.tolist()])
    assert torch.equal(div_round(num, den), expected)


def test_exp_tables_are_correctly_rounded_down_to_their_first_zero():
    for bits in (ATTN_BITS, 30):
        table = exp_table(bits)
        assert table[0] == 1 << bits and table[-1] == 0 and all(v > 0 for v in table[:-1])
        with decimal.localcontext(decimal.Context(prec=60)):
            for i in list(range(0, len(table), 97)) + [len(table) - 2, len(table) - 1]:
                exact = (-decimal.Decimal(i) / (1 << EXP_STEP)).exp() * (1 << bits)
                assert table[i] == int(exact.to_integral_value(decimal.ROUND_HALF_EVEN)), i


def test_unit_codes_normalise_like_f_normalize_in_fixed_point():
    torch.manual_seed(0)
    raw = torch.randn(300, 16) * 3
    fixed = unit_codes(raw)
    expected = torch.nn.functional.normalize(raw.double(), dim=-1) * 2 ** 15
    assert (fixed - expected).abs().max() <= 0.5 + 1e-6
    # Already unit-norm codes (a clustered codebook) come through as they are, up to rounding.
    assert (unit_codes(torch.nn.functional.normalize(raw, dim=-1)) - fixed).abs().max() <= 1


def test_int_linear_is_the_exact_integer_product_and_close_to_the_float_layer():
    torch.manual_seed(1)
    lin = torch.nn.Linear(768, 40)
    layer = IntLinear(lin.weight, lin.bias)
    x = torch.randint(-(1 << 20), 1 << 20, (50, 768))
    out = layer(x)
    # The same integers by int64 arithmetic (no float anywhere): the float64 matmul was exact.
    acc = x @ layer.weight.long() + layer.bias.long()
    assert torch.equal(out, acc >> layer.shift)
    # Close to the float layer: each weight is off by at most half its step 2^-(shift + FRAC_A) (a
    # per-channel power of two), the bias by half of 2^-(shift + FRAC_A), the output by half a unit.
    real = (x.double() @ lin.weight.detach().double().T + lin.bias.detach().double() * 2 ** FRAC_A)
    bound = x.abs().double().sum(1, keepdim=True) * 2.0 ** -(layer.shift + 1.0) + 1
    assert ((out - real).abs() <= bound).all()
    assert (out - real).abs().max() > 0.5  # (the bound is not vacuous: the weights were rounded)


def test_int_layernorm_matches_the_float_layernorm():
    torch.manual_seed(2)
    norm = torch.nn.LayerNorm(192)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    # Small, ordinary and large rows (the shipped prior's smallest LayerNorm input variance is 0.4,
    # its largest value 44). The mean is rounded to 2^-14: rows with a std of a few units would lose.
    for scale in (0.05, 1.0, 40.0):
        x = torch.randn(64, 192, dtype=torch.float64) * scale + 0.3 * scale
        fixed = torch.round(x * 2 ** FRAC_A).long()
        out = IntLayerNorm(norm)(fixed).double() / 2 ** FRAC_A
        expected = torch.nn.functional.layer_norm(fixed.double() / 2 ** FRAC_A, (192,), norm.weight.double(),
                                                  norm.bias.double(), norm.eps)
        assert (out - expected).abs().max() < 2e-3, scale


# --- the coding path ---

def test_integer_path_codes_losslessly_for_the_main_and_a_clustered_codebook():
    prior = _prior()
    codes, identity = _codebook(64)
    indices = torch.randint(64, (6, 9))
    data = prior.compress(indices, codes, identity)
    assert torch.equal(prior.decompress(data, 6, 9, codes, identity), indices)
    assert len(data) * 8 / indices.numel() < math.log2(64) + 1
    small, mapping = _codebook(8)[0], torch.arange(64) % 8
    indices = torch.randint(8, (5, 7))
    data = prior.compress(indices, small, mapping)
    assert torch.equal(prior.decompress(data, 5, 7, small, mapping), indices)
    # The integer copy is cached out of the module's children: the weights file does not change.
    assert not any("_integer" in key for key in prior.state_dict())
    assert prior.integer() is prior.integer()


def _all_rows(net: IntegerPrior, prior: IndexPrior, maps, codes, mapping, **kw) -> list[torch.Tensor]:
    """The integer frequencies of every coding step of maps (B, h, w)."""
    known = torch.zeros_like(maps, dtype=torch.bool)
    rows = []
    for group in prior.groups(*maps.shape[1:]):
        rows.append(net.rows(maps, known, codes, mapping, group.expand_as(maps), **kw))
        known |= group
    return rows


def test_frequencies_sum_to_the_coder_total_with_every_symbol_possible_also_when_peaked():
    from bitstream.coder import PRECISION
    assert CDF_BITS == PRECISION
    prior = _prior()
    with torch.no_grad():  # a sharp prior: most of the mass on few codes, most frequencies at the floor
        prior.head[1].bias.mul_(0).add_(torch.linspace(-30, 30, 64) ** 3 / 900)
    top = 0
    for codes, mapping in (_codebook(64), (_codebook(8)[0], torch.arange(64) // 8), (_codebook(2)[0], torch.arange(64) % 2)):
        maps = torch.randint(len(codes), (2, 7, 6))
        for freq in _all_rows(prior.integer(), prior, maps, codes, mapping):
            assert freq.dtype == torch.int64 and freq.shape[1] == len(codes)
            assert (freq >= 1).all() and (freq.sum(1) == 1 << CDF_BITS).all()
            top = max(top, int(freq.max()))
    assert top > (1 << CDF_BITS) - 64  # peaked indeed: the floor of 1 a symbol mattered


def test_rows_are_the_same_integers_whatever_the_threads_batch_and_order_of_positions():
    prior = _prior(k=128, seed=3, dim=48, depth=2, heads=4)
    net = prior.integer()
    codes, identity = _codebook(128)
    torch.manual_seed(4)
    maps = torch.randint(128, (3, 11, 13))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _all_rows(net, prior, maps[:1], codes, identity)
        torch.set_num_threads(2)
        two = _all_rows(net, prior, maps[:1], codes, identity)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    # The map among others in a batch (the rows of the other maps come first and last).
    batched = _all_rows(net, prior, maps[[1, 0, 2]], codes, identity)
    per_map = [r.shape[0] // 3 for r in batched]
    assert all(torch.equal(a, b[n:2 * n]) for a, b, n in zip(one, batched, per_map))
    # The transformer fed the positions in another order: every sum is exact, so nothing changes.
    order = torch.randperm(11 * 13, generator=torch.Generator().manual_seed(5))
    shuffled = _all_rows(net, prior, maps[:1], codes, identity, order=order)
    assert all(torch.equal(a, b) for a, b in zip(one, shuffled))
    # One position at a time instead of a whole group (a batch of different selections).
    known = prior.groups(11, 13)[0][None]
    group = prior.groups(11, 13)[1]
    rows = net.rows(maps[:1], known, codes, identity, group[None])
    where = group.flatten().nonzero().flatten()
    for i in (0, len(where) // 2, len(where) - 1):
        alone = torch.zeros(1, 11 * 13, dtype=torch.bool)
        alone[0, where[i]] = True
        pair = torch.cat([alone, group.flatten()[None]]).view(2, 11, 13)  # selections differ
        both = net.rows(maps[:1].expand(2, -1, -1), known.expand(2, -1, -1), codes, identity, pair)
        assert torch.equal(both[0], rows[i]) and torch.equal(both[1:], rows)


def test_integer_logits_stay_close_to_the_float_network():
    prior = _prior(k=64, seed=6)
    net = prior.integer()
    codes, identity = _codebook(64)
    maps = torch.randint(64, (1, 8, 8))
    known = torch.rand(1, 8, 8) < 0.5
    select = ~known
    with torch.no_grad():
        expected = prior(maps, known, codes, select).double()
    got = net.logits(net.features(maps, known, net.tokens(codes), select)).double() / 2 ** FRAC_A
    assert (got - expected).abs().max() < 0.01


# --- with the shipped weights ---

@pytest.fixture(scope="module")
def shipped():
    from codec import zoo
    from codec.io import load_image
    net, _, _ = zoo.load("vq")
    maps = {}
    for path in sorted(SAMPLES.glob("*.png")):
        x = torch.from_numpy(load_image(path).copy()).permute(2, 0, 1)[None].float() / 255
        x = x[..., :x.shape[-2] // 16 * 16, :x.shape[-1] // 16 * 16]
        features = net.prepare(x)
        for k in (16, 256, 8192):
            maps[path.name, k] = net.autoencoder.quantizer.indices(features, 1, net.codebook(k)[0])[0]
    return net, maps


def _bits(prior: IndexPrior, maps: torch.Tensor, codes, mapping) -> tuple[float, float]:
    """Ideal code length (bits) of maps (1, h, w) under the float path's CDF rows (as coded before
    the integer path: float logits, float64 softmax, pmf_to_cdf) and under the integer rows."""
    from bitstream.coder import pmf_to_cdf
    net = prior.integer()
    known = torch.zeros_like(maps, dtype=torch.bool)
    float_bits = int_bits = 0.0
    for group in prior.groups(*maps.shape[1:]):
        target = maps[0][group].numpy()
        with torch.no_grad():
            logits = prior(maps, known, codes, group[None])
        freq = np.diff(pmf_to_cdf(prior.pmf(logits, mapping, len(codes))).astype(np.int64), axis=1)
        float_bits -= np.log2(freq[np.arange(len(target)), target] / (1 << CDF_BITS)).sum()
        freq = net.rows(maps, known, codes, mapping, group[None]).numpy()
        int_bits -= np.log2(freq[np.arange(len(target)), target] / (1 << CDF_BITS)).sum()
        known |= group
    return float_bits, int_bits


def test_shipped_prior_rate_is_within_half_a_percent_of_the_float_path_on_the_samples(shipped):
    net, maps = shipped
    for k in (16, 256, 8192):
        codes, mapping = net.codebook(k)
        float_bits = int_bits = 0.0
        for name in sorted({n for n, kk in maps if kk == k}):
            m = maps[name, k]
            f, i = _bits(net.prior, m, codes, mapping)
            float_bits, int_bits = float_bits + f, int_bits + i
            # The coded bytes: the ideal length plus the coder's few bytes of termination.
            data = net.prior.compress(m[0], codes, mapping)
            assert len(data) * 8 <= i + 40
            assert torch.equal(net.prior.decompress(data, *m.shape[1:], codes, mapping), m[0])
        assert int_bits <= RATE_BOUND * float_bits, (k, int_bits, float_bits)
        assert int_bits >= 0.95 * float_bits  # the comparison measures something


_ROWS_SCRIPT = """
import hashlib, sys, torch
sys.path.insert(0, {root!r})
from tests.test_integer_prior import _all_rows, _prior
prior = _prior(k=128, seed=3, dim=48, depth=2, heads=4)
state, codes, maps = torch.load({data!r})
prior.load_state_dict(state)
digest = hashlib.sha256()
for rows in _all_rows(prior.integer(), prior, maps, codes, torch.arange(128)):
    digest.update(rows.numpy().tobytes())
print(digest.hexdigest())
"""


def test_rows_are_the_same_integers_with_older_cpu_kernels(tmp_path):
    """Another machine, as far as one CPU can stand in for it: a process whose ATen, oneDNN and MKL
    kernels are held to the SSE era computes the same integers as one with this CPU's widest. (The
    weights and codes travel in a file: even random initialisation differs between the two.)"""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    prior = _prior(k=128, seed=3, dim=48, depth=2, heads=4)
    codes, _ = _codebook(128)
    torch.manual_seed(4)
    torch.save((prior.state_dict(), codes, torch.randint(128, (1, 11, 13))), tmp_path / "prior.pt")
    script = _ROWS_SCRIPT.format(root=str(ROOT), data=str(tmp_path / "prior.pt"))
    old = dict(os.environ, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41", MKL_ENABLE_INSTRUCTIONS="SSE4_2")
    native, older = (subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                    env=env).stdout.strip() for env in (dict(os.environ), old))
    assert len(native) == 64 and native == older
