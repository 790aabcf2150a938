"""Training on CPU for a few seconds: the log, the export and the resume are what a GPU run relies on."""
import csv
import math

import pytest
import torch

from codec import train, zoo
from tests.conftest import SAMPLES


def _run(tmp_path, *extra):
    train.main(["--data", str(SAMPLES), "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
                "--minutes", "0.1", "--batch", "2", "--crop", "64", "--N", "16", "--M", "24",
                "--workers", "1", "--log-every", "2", "--weights-name", "t.safetensors", *extra])
    return [r for r in csv.DictReader(open(tmp_path / "out" / "train-log.csv"))]


def _grow(tmp_path, old_args, new_args):
    """A small model trained briefly with old_args, then one with new_args grown from its weights
    without training (lr 0: the one step taken moves nothing but the hyper-latent's quantiles)
    -> (old model, grown model, the grown one's metadata)."""
    torch.manual_seed(0)
    _run(tmp_path / "a", *old_args)
    old, _ = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    _run(tmp_path / "b", *new_args, "--minutes", "0.01", "--lr", "0",
         "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    new, meta = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    return old, new, meta


def test_a_chunk_logs_exports_loadable_weights_and_the_next_chunk_resumes(tmp_path):
    torch.manual_seed(0)
    first = _run(tmp_path, "--arch", "checkerboard")
    assert first and all(float(r["bpp"]) > 0 and math.isfinite(float(r["psnr"])) for r in first)
    net, meta = zoo.load_file(tmp_path / "out" / "t.safetensors")
    assert meta["arch"] == "checkerboard"
    assert int(first[-1]["step"]) <= meta["steps"] < int(first[-1]["step"]) + 2  # logged every 2 steps
    assert meta["gpu_seconds"] == 0  # CPU seconds are not GPU training
    second = _run(tmp_path, "--arch", "checkerboard", "--scale-min", "0.8")  # with rescaled crops
    assert int(second[-1]["step"]) > int(first[-1]["step"])  # appended, continuing the step count
    assert all(math.isfinite(float(r["loss"])) for r in second)
    val = list(csv.reader(open(tmp_path / "out" / "val-log.csv")))
    assert len(val) == 2 * net.n_levels


def test_init_from_weights_with_other_lambdas_carries_the_gains_over(tmp_path):
    """Widening the rate range warm-starts each new level from the old log-gains, interpolated (or
    extrapolated) linearly in log lambda; levels the two share keep their gains exactly."""
    torch.manual_seed(0)
    _run(tmp_path / "a", "--lambdas", "0.001", "0.01")
    old, _ = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    _run(tmp_path / "b", "--lambdas", "0.0001", "0.001", "0.00316227766", "0.01", "--minutes", "0.01",
         "--lr", "0", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    new, meta = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    assert len(meta["lambdas"]) == 4
    g_old, g_new = old.log_gain.detach(), new.log_gain.detach()
    tol = dict(atol=2e-3, rtol=0)  # fp16 weights files
    assert torch.allclose(g_new[1], g_old[0], **tol) and torch.allclose(g_new[3], g_old[1], **tol)
    assert torch.allclose(g_new[2], (g_old[0] + g_old[1]) / 2, **tol)
    assert torch.allclose(g_new[0], 2 * g_old[0] - g_old[1], **tol)


def test_init_without_lambdas_keeps_the_levels_of_the_init_weights(tmp_path):
    # Not the trainer's built-in default: that would quietly retrain shipped weights at other rates.
    _run(tmp_path / "a", "--lambdas", "0.001", "0.004", "0.01")
    _run(tmp_path / "b", "--minutes", "0.01", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    assert zoo.read_meta(tmp_path / "b" / "out" / "t.safetensors")["lambdas"] == [0.001, 0.004, 0.01]


@pytest.mark.parametrize("old_arch, arch, blocks", [
    ("checkerboard", "checkerboard-res", ("analysis_block", "synthesis_block")),
    ("checkerboard-res", "checkerboard-res2", ("analysis_fine.1", "synthesis_fine.0")),
])
def test_a_grown_model_starts_as_the_model_it_grew_from(tmp_path, sample_rgb, old_arch, arch, blocks):
    """A grown architecture initialised from the one it grows: the old layers load under their names
    and the new residual blocks start as the identity, so both transforms compute exactly what the
    old model did."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", old_arch], ["--arch", arch])
    assert meta["arch"] == arch
    assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in old.parameters())
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    level = torch.tensor([2.0])
    with torch.no_grad():
        y = old.analysis(x)
        assert torch.equal(new.analysis(x), y)
        assert torch.equal(new.synthesis(y, level), old.synthesis(y, level))
        for name in blocks:  # and the new blocks are on the path
            new.get_submodule(name).body[-1].bias.add_(0.1)
        assert not torch.equal(new.analysis(x), y)
        assert not torch.equal(new.synthesis(y, level), old.synthesis(y, level))


def test_a_widened_latent_starts_as_the_model_it_grew_from(tmp_path, sample_rgb):
    """checkerboard-wide grown from checkerboard-res2 weights: the old channels keep their values,
    the extra ones enter the synthesis and the hyper analysis through zero weights, so reconstruction,
    z and the checkerboard channels' prior are the old model's (to float rounding: a convolution over
    more input channels sums in another order); the extra channels are coded (a third pass with its
    own prior) and lie on the synthesis path, for training to open."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", "checkerboard-res2"], ["--arch", "checkerboard-wide", "--M", "32"])
    assert (meta["arch"], new.M, new.B) == ("checkerboard-wide", 32, 24)
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    level = torch.tensor([1.5])
    with torch.no_grad():
        (y_old, z_old), (y_new, z_new) = old.analyse(x, level), new.analyse(x, level)
        assert torch.equal(y_new[:, :24], y_old)
        torch.testing.assert_close(z_new, z_old)
        assert y_new[:, 24:].abs().sum() > 0  # the extra channels carry something to code
        z_hat = torch.round(z_old)  # one z for both, so the priors compare
        s_old, m_old, y_hat = old.latent_prior(y_old, old.hyper_features(z_hat, level))
        s_new, m_new, y_hat_new = new.latent_prior(y_new, new.hyper_features(z_hat, level))
        torch.testing.assert_close(s_new[:, :24], s_old)
        torch.testing.assert_close(m_new[:, :24], m_old)
        torch.testing.assert_close(new.synthesise(y_hat_new, level), old.synthesise(y_hat, level))
        new.g_s[0].weight[24:].add_(0.01)  # the extra channels are on the synthesis path
        assert not torch.allclose(new.synthesise(y_hat_new, level), old.synthesise(y_hat, level), atol=1e-3)
    assert len(new.latent_masks(y_new)) == 3


def test_wider_transforms_start_as_the_model_they_grew_from(tmp_path, sample_rgb):
    """checkerboard-wider grown from checkerboard-wide weights: the transforms' new channels reach the
    old ones only through zero weights, so the latent and the reconstruction are the old model's (to
    float rounding), and the new channels lie on both transforms' paths, for training to open."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", "checkerboard-wide", "--M", "32"],
                           ["--arch", "checkerboard-wider", "--M", "32"])
    assert (meta["arch"], old.T, new.T, new.N) == ("checkerboard-wider", 16, 24, 16)
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    level = torch.tensor([2.5])
    with torch.no_grad():
        (y_old, z_old), (y_new, z_new) = old.analyse(x, level), new.analyse(x, level)
        torch.testing.assert_close(y_new, y_old)
        torch.testing.assert_close(z_new, z_old)
        y_hat = torch.round(y_old)
        torch.testing.assert_close(new.synthesise(y_hat, level), old.synthesise(y_hat, level))
        new.g_a[6].weight[:, 16:].add_(0.01)  # the new channels are on both paths
        new.g_s[6].weight[16:].add_(0.01)
        assert not torch.allclose(new.analyse(x, level)[0], y_old, atol=1e-3)
        assert not torch.allclose(new.synthesise(y_hat, level), old.synthesise(y_hat, level), atol=1e-3)


def test_channel_groups_start_as_the_model_they_grew_from(tmp_path, sample_rgb):
    """checkerboard-groups grown from checkerboard-wider weights: coded group by group, each group's
    prior is the old one (to float rounding) until training opens the heads, which lie on its path."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", "checkerboard-wider", "--M", "32"],
                           ["--arch", "checkerboard-groups", "--M", "32"])
    assert (meta["arch"], new.B, new.group_starts) == ("checkerboard-groups", 24, [0, 2, 4, 8, 24])
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    level = torch.tensor([4.5])
    with torch.no_grad():
        y, z = old.analyse(x, level)
        hyper = old.hyper_features(torch.round(z), level)
        s_old, m_old, y_hat = old.latent_prior(y, hyper)
        s_new, m_new, y_hat_new = new.latent_prior(y, hyper)
        torch.testing.assert_close((s_new, m_new, y_hat_new), (s_old, m_old, y_hat))
        new.group_heads[5]["params"][-1].weight.add_(0.01)  # the second half's last group
        s_new, m_new, _ = new.latent_prior(y, hyper)
        assert not torch.allclose(m_new[:, 8:24], m_old[:, 8:24], atol=1e-4)
        torch.testing.assert_close(m_new[:, :8], m_old[:, :8])


def test_a_synthesis_told_the_rate_starts_as_the_model_it_grew_from(tmp_path, sample_rgb):
    """checkerboard-cond grown from checkerboard-groups weights: its per-level tables start at the
    identity, so it decodes what the old model did at every level; a row moved changes the levels
    around it only (the tables are interpolated between neighbouring levels)."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", "checkerboard-groups", "--M", "32"],
                           ["--arch", "checkerboard-cond", "--M", "32"])
    assert meta["arch"] == "checkerboard-cond"
    assert new.synthesis_log_scale.shape == (new.n_levels, 3 * new.T)
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    levels = [torch.tensor([v]) for v in (0.0, 2.5, 5.0, 7.0)]
    with torch.no_grad():
        y_hats = [torch.round(old.analyse(x, level)[0]) for level in levels]
        for level, y_hat in zip(levels, y_hats):
            assert torch.equal(new.synthesise(y_hat, level), old.synthesise(y_hat, level))
        new.synthesis_shift[5, -new.T:].add_(0.05)  # level 5's shift after the last inverse GDN
        moved = [not torch.allclose(new.synthesise(y_hat, level), old.synthesise(y_hat, level), atol=1e-4)
                 for level, y_hat in zip(levels, y_hats)]
    assert moved == [False, False, True, False]


def test_an_analysis_told_the_rate_starts_as_the_model_it_grew_from(tmp_path, sample_rgb):
    """checkerboard-cond2 grown from checkerboard-cond weights: the same latents at every level until
    its tables move; its rate-free part, computed once, serves every level as a rate search uses it."""
    from codec import api
    old, new, meta = _grow(tmp_path, ["--arch", "checkerboard-cond", "--M", "32"],
                           ["--arch", "checkerboard-cond2", "--M", "32"])
    assert meta["arch"] == "checkerboard-cond2"
    x = api.to_tensor(sample_rgb[:64, :64], "cpu")
    levels = [torch.tensor([v]) for v in (0.0, 3.0, 6.5)]
    with torch.no_grad():
        for level in levels:
            torch.testing.assert_close(new.analyse(x, level), old.analyse(x, level), rtol=0, atol=0)
        new.analysis_shift[3, :new.T].add_(0.05)  # level 3's shift after the second GDN
        features = new.analysis(x)
        moved = [not torch.allclose(new.analyse(x, level)[0], old.analyse(x, level)[0], atol=1e-4) for level in levels]
        torch.testing.assert_close(new.analyse(x, levels[1], features), new.analyse(x, levels[1]))
    assert moved == [False, True, False]


def test_other_sizes_of_the_same_architecture_are_refused_as_init(tmp_path):
    # Only the architectures that grow by plain extra channels may; a wider M elsewhere is no growth.
    _run(tmp_path / "a", "--arch", "checkerboard")
    with pytest.raises(SystemExit, match="does not fit"):
        _run(tmp_path / "b", "--arch", "checkerboard", "--M", "32", "--minutes", "0.01",
             "--init", str(tmp_path / "a" / "out" / "t.safetensors"))


def test_the_held_out_images_do_not_depend_on_which_subset_is_loaded():
    from pathlib import Path
    paths = [Path(f"set/{i:04d}.webp") for i in range(1000)]
    full = {p for p, h in zip(paths, train.held_out(paths)) if h}
    subset = paths[::3]
    assert 5 < len(full) < 60
    assert {p for p, h in zip(subset, train.held_out(subset)) if h} == full & set(subset)


def test_random_batch_rescales_regions_only_when_asked():
    ramp = torch.arange(0, 256, 4, dtype=torch.uint8).expand(64, 64)  # +4 a column, the same in every row
    images = ramp.expand(2, 3, 64, 64).contiguous()
    gen = torch.Generator().manual_seed(0)
    step = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean().item() * 255  # noqa: E731
    plain = train.random_batch(images, 4, 32, gen)
    assert plain.shape == (4, 3, 32, 32) and step(plain) == pytest.approx(4, abs=1e-4)
    scaled = [train.random_batch(images, 4, 32, gen, scale_min=0.5) for _ in range(20)]
    assert all(x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in scaled)
    # A region of S > 32 pixels resized to 32: the ramp climbs 4 * S / 32 a column (up to 8).
    steps = [step(x[..., 4:-4]) for x in scaled]
    assert max(steps) > 5 and all(3.9 < s < 8.1 for s in steps)
    assert all(torch.allclose(x, x[..., :1, :].expand_as(x), atol=1e-6) for x in scaled)  # rows stay alike


def test_hard_training_moves_the_decoder_side_only_and_resumes_only_as_hard(tmp_path):
    torch.manual_seed(0)
    _run(tmp_path / "a", "--arch", "checkerboard-cond2", "--M", "32")
    old, _ = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    rows = _run(tmp_path / "b", "--arch", "checkerboard-cond2", "--M", "32", "--hard", "--lr", "1e-3",
                "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    assert rows and all(float(r["bpp"]) > 0 and math.isfinite(float(r["psnr"])) for r in rows)
    new, _ = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    new_params = dict(new.named_parameters())
    moved = {n for n, p in old.named_parameters() if not torch.equal(p, new_params[n])}
    encoder = {n for n, _ in old.named_parameters() if old.encoder_side(n)}
    assert encoder and {"g_a.0.weight", "h_a.0.weight", "log_gain", "analysis_shift"} <= encoder
    assert not moved & encoder  # the analysis is frozen
    assert {"g_s.0.weight", "h_s.0.weight", "log_inv_gain"} <= moved  # the decoder side trained
    with pytest.raises(SystemExit, match="--hard"):  # a hard checkpoint does not resume a soft call
        _run(tmp_path / "b", "--arch", "checkerboard-cond2", "--M", "32")


def test_a_transplant_takes_the_transforms_and_starts_the_latent_afresh(tmp_path):
    """--transplant into checkerboard-full (every channel in the checkerboard passes, a wider latent):
    the transforms' layers that fit come over exactly, those facing the latent and the whole entropy
    model start fresh, and the step count carries on; other lambdas are refused."""
    torch.manual_seed(0)
    _run(tmp_path / "a", "--arch", "checkerboard-cond2")
    old, old_meta = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    init = str(tmp_path / "a" / "out" / "t.safetensors")
    _run(tmp_path / "b", "--arch", "checkerboard-full", "--M", "40", "--transplant", "--init", init,
         "--minutes", "0.01", "--lr", "0")
    new, meta = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    assert (meta["arch"], new.M, new.B, len(new.latent_masks(torch.zeros(1, 40, 2, 2)))) == ("checkerboard-full", 40, 40, 10)
    assert meta["steps"] > old_meta["steps"]
    for name in ("g_a.0.weight", "g_a.5.gamma", "g_s.6.weight", "synthesis_fine.1.body.4.weight",
                 "analysis_log_scale", "synthesis_shift"):
        assert torch.equal(new.get_parameter(name), old.get_parameter(name)), name
    assert new.g_a[6].weight.shape[0] == 40 and new.g_s[0].weight.shape[0] == 40
    # The hyperprior has the same shape in both but codes another latent: it starts fresh.
    assert not torch.equal(new.h_a[2].weight, old.h_a[2].weight)
    with pytest.raises(SystemExit, match="lambdas"):
        _run(tmp_path / "c", "--arch", "checkerboard-full", "--M", "40", "--transplant", "--init", init,
             "--lambdas", "0.001", "0.01")


def test_a_resumed_checkpoint_keeps_its_levels_without_init_and_refuses_another_architecture(tmp_path):
    """A call that resumes --ckpt reads the checkpoint's levels from beside it (a GPU call once failed
    by building the default levels instead); one for another architecture gets a one-line refusal."""
    torch.manual_seed(0)
    _run(tmp_path, "--lambdas", "0.001", "0.004", "0.01")
    second = _run(tmp_path, "--minutes", "0.01")  # neither --init nor --lambdas
    assert int(second[-1]["step"]) > 0
    assert zoo.read_meta(tmp_path / "out" / "t.safetensors")["lambdas"] == [0.001, 0.004, 0.01]
    with pytest.raises(SystemExit, match="holds a mean-scale model"):
        _run(tmp_path, "--arch", "checkerboard")
