"""hp training (training/hp.py) on CPU for a few seconds: the log, the export and the resume are what a
GPU run relies on, and its defaults are the shipped model."""
import csv
import math

import pytest
import torch

from codec import zoo
from tests.conftest import SAMPLES
from training import data, hp


def _run(tmp_path, *extra):
    # M = 32: the smallest latent whose checkerboard channels (3M/4) split into the four channel groups.
    hp.main(["--data", str(SAMPLES), "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
             "--minutes", "0.1", "--batch", "2", "--crop", "64", "--N", "16", "--M", "32",
             "--workers", "1", "--log-every", "2", "--weights-name", "t.safetensors", *extra])
    return [r for r in csv.DictReader(open(tmp_path / "out" / "train-log.csv"))]


def test_the_defaults_build_the_shipped_hp_model():
    shipped_path = zoo.weights_path("hp")
    shipped = zoo.read_meta(shipped_path)
    args = hp.arguments().parse_args(["--data", "d", "--out", "o"])
    meta = hp.model_meta(args, None, None)
    assert meta["model_id"] == shipped_path.name.split(".")[0]
    for key in ("family", "arch", "N", "M", "lambdas"):
        assert meta[key] == shipped[key], key
    assert (args.batch, args.crop) == (shipped["batch"], shipped["crop"])
    built = zoo.build("hp", meta).state_dict()
    loaded = zoo.load_file(shipped_path)[0].state_dict()
    assert {k: v.shape for k, v in built.items() if not zoo.is_table(k)} == \
           {k: v.shape for k, v in loaded.items() if not zoo.is_table(k)}


def test_a_chunk_logs_exports_loadable_weights_and_the_next_chunk_resumes(tmp_path):
    torch.manual_seed(0)
    first = _run(tmp_path)
    assert first and all(float(r["bpp"]) > 0 and math.isfinite(float(r["psnr"])) for r in first)
    net, meta = zoo.load_file(tmp_path / "out" / "t.safetensors")
    assert (meta["arch"], meta["model_id"]) == (hp.ARCH, "t")
    assert int(first[-1]["step"]) <= meta["steps"] < int(first[-1]["step"]) + 2  # logged every 2 steps
    assert meta["gpu_seconds"] == 0  # CPU seconds are not GPU training
    second = _run(tmp_path, "--scale-min", "1")  # without rescaled crops
    assert int(second[-1]["step"]) > int(first[-1]["step"])  # appended, continuing the step count
    assert all(math.isfinite(float(r["loss"])) for r in second)
    val = list(csv.reader(open(tmp_path / "out" / "val-log.csv")))
    assert len(val) == 2 * net.n_levels


def test_init_from_weights_with_other_lambdas_carries_the_level_tables_over(tmp_path):
    """Widening the rate range warm-starts each new level's rows of every per-level table (gains,
    the transforms' scales and shifts) from the old ones, interpolated (or extrapolated) linearly in
    log lambda; levels the two share keep their rows exactly, and the rest of the model is copied."""
    torch.manual_seed(0)
    _run(tmp_path / "a", "--lambdas", "0.001", "0.01")
    old, _ = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    _run(tmp_path / "b", "--lambdas", "0.0001", "0.001", "0.00316227766", "0.01", "--minutes", "0.01",
         "--lr", "0", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    new, meta = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    assert len(meta["lambdas"]) == 4 and new.LEVEL_TABLES
    tol = dict(atol=2e-3, rtol=0)  # fp16 weights files
    for name in new.LEVEL_TABLES:
        t_old, t_new = getattr(old, name).detach(), getattr(new, name).detach()
        assert t_new.shape == (4, t_old.shape[1]), name
        assert torch.allclose(t_new[1], t_old[0], **tol) and torch.allclose(t_new[3], t_old[1], **tol), name
        assert torch.allclose(t_new[2], (t_old[0] + t_old[1]) / 2, **tol), name
        assert torch.allclose(t_new[0], 2 * t_old[0] - t_old[1], **tol), name
    # lr 0: the one step taken moves nothing but the hyper-latent's quantiles (their own optimizer).
    old_params = dict(old.named_parameters())
    others = [n for n, _ in new.named_parameters() if n not in new.LEVEL_TABLES and not n.endswith(".quantiles")]
    assert others and all(torch.equal(new.get_parameter(n), old_params[n]) for n in others)


def test_init_without_lambdas_keeps_the_levels_of_the_init_weights(tmp_path):
    # Not the trainer's built-in default: that would quietly retrain shipped weights at other rates.
    _run(tmp_path / "a", "--lambdas", "0.001", "0.004", "0.01")
    _run(tmp_path / "b", "--minutes", "0.01", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    assert zoo.read_meta(tmp_path / "b" / "out" / "t.safetensors")["lambdas"] == [0.001, 0.004, 0.01]


def test_weights_of_another_size_or_family_are_refused_as_init(tmp_path):
    _run(tmp_path / "a", "--minutes", "0.01")
    with pytest.raises(SystemExit, match="does not fit"):
        _run(tmp_path / "b", "--M", "64", "--minutes", "0.01", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    with pytest.raises(SystemExit, match="this trainer trains"):
        _run(tmp_path / "c", "--minutes", "0.01", "--init", str(zoo.weights_path("vq")))


def test_the_held_out_images_do_not_depend_on_which_subset_is_loaded():
    from pathlib import Path
    paths = [Path(f"set/{i:04d}.webp") for i in range(1000)]
    full = {p for p, h in zip(paths, data.held_out(paths)) if h}
    subset = paths[::3]
    assert 5 < len(full) < 60
    assert {p for p, h in zip(subset, data.held_out(subset)) if h} == full & set(subset)


def test_random_batch_rescales_regions_only_when_asked():
    ramp = torch.arange(0, 256, 4, dtype=torch.uint8).expand(64, 64)  # +4 a column, the same in every row
    images = ramp.expand(2, 3, 64, 64).contiguous()
    gen = torch.Generator().manual_seed(0)
    step = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean().item() * 255  # noqa: E731
    plain = data.random_batch(images, 4, 32, gen)
    assert plain.shape == (4, 3, 32, 32) and step(plain) == pytest.approx(4, abs=1e-4)
    scaled = [data.random_batch(images, 4, 32, gen, scale_min=0.5) for _ in range(20)]
    assert all(x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in scaled)
    # A region of S > 32 pixels resized to 32: the ramp climbs 4 * S / 32 a column (up to 8).
    steps = [step(x[..., 4:-4]) for x in scaled]
    assert max(steps) > 5 and all(3.9 < s < 8.1 for s in steps)
    assert all(torch.allclose(x, x[..., :1, :].expand_as(x), atol=1e-6) for x in scaled)  # rows stay alike


def test_hard_training_moves_the_decoder_side_only_and_resumes_only_as_hard(tmp_path, sample_rgb):
    """--hard freezes every parameter encoder_side names: the latents of an image stay exactly what
    they were at every level, while the synthesis and the entropy model train on."""
    torch.manual_seed(0)
    _run(tmp_path / "a")
    old, _ = zoo.load_file(tmp_path / "a" / "out" / "t.safetensors")
    rows = _run(tmp_path / "b", "--hard", "--lr", "1e-3", "--init", str(tmp_path / "a" / "out" / "t.safetensors"))
    assert rows and all(float(r["bpp"]) > 0 and math.isfinite(float(r["psnr"])) for r in rows)
    new, _ = zoo.load_file(tmp_path / "b" / "out" / "t.safetensors")
    new_params = dict(new.named_parameters())
    moved = {n for n, p in old.named_parameters() if not torch.equal(p, new_params[n])}
    encoder = {n for n, _ in old.named_parameters() if old.encoder_side(n)}
    assert encoder and not moved & encoder  # the analysis is frozen
    decoder = {n for n, _ in old.named_parameters() if not old.encoder_side(n) and not n.endswith(".quantiles")}
    assert len(moved & decoder) > len(decoder) // 2  # the decoder side trained
    x = torch.tensor(sample_rgb[:64, :64]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        for level in (0.0, 1.5, old.n_levels - 1.0):
            lv = torch.tensor([level])
            for a, b in zip(new.analyse(x, lv), old.analyse(x, lv)):
                assert torch.equal(a, b)
            y_hat = torch.round(old.analyse(x, lv)[0])
            assert not torch.equal(new.synthesise(y_hat, lv), old.synthesise(y_hat, lv))
    with pytest.raises(SystemExit, match="--hard"):  # a hard checkpoint does not resume a soft call
        _run(tmp_path / "b")


def test_a_resumed_checkpoint_keeps_its_levels_without_init_and_refuses_another_model(tmp_path):
    """A call that resumes --ckpt reads the checkpoint's levels from beside it (a GPU call once failed
    by building the default levels instead); one for another size or other levels gets a one-line
    refusal."""
    torch.manual_seed(0)
    _run(tmp_path, "--lambdas", "0.001", "0.004", "0.01")
    second = _run(tmp_path, "--minutes", "0.01")  # neither --init nor --lambdas
    assert int(second[-1]["step"]) > 0
    assert zoo.read_meta(tmp_path / "out" / "t.safetensors")["lambdas"] == [0.001, 0.004, 0.01]
    with pytest.raises(SystemExit, match="M = 32, N = 16"):
        _run(tmp_path, "--M", "64")
    with pytest.raises(SystemExit, match="trains the lambdas"):
        _run(tmp_path, "--lambdas", "0.001", "0.01")
