"""vq training (training/vq.py): its stages on CPU for a few seconds each, and its defaults are the shipped model."""
import csv
import math

import pytest
import torch

from codec import zoo
from tests.conftest import SAMPLES
from training import vq


def _stage(tmp_path, stage, *extra):
    vq.main(["--stage", stage, "--data", str(SAMPLES), "--ckpt", str(tmp_path / "ckpt"),
             "--out", str(tmp_path / "out"), "--minutes", "0.15", "--batch", "2", "--crop", "64",
             "--small", "--log-every", "1", "--workers", "1", "--weights-name", "t.safetensors", *extra])
    return zoo.load_file(tmp_path / "out" / "t.safetensors")


def test_the_defaults_build_the_shipped_vq_model():
    shipped = zoo.read_meta(zoo.weights_path("vq"))
    assert vq.DEFAULTS == {k: v for k, v in shipped.items() if k not in ("model_id", "steps", "gpu_seconds", "batch", "crop")}
    args = vq.arguments().parse_args(["--stage", "prior", "--data", "d", "--out", "o"])
    assert (args.batch, args.crop, args.weights_name) == (shipped["batch"], shipped["crop"], zoo.weights_path("vq").name)


def _log(tmp_path, stage):
    return list(csv.DictReader(open(tmp_path / "out" / f"train-log-{stage}.csv")))


def test_autoencoder_cluster_prior_stages_log_export_and_keep_the_autoencoder_frozen(tmp_path):
    torch.manual_seed(0)
    net, meta = _stage(tmp_path, "autoencoder", "--adv-weight", "0.1")
    assert meta["model_id"] == "t" and not any("disc" in k for k in net.state_dict())  # the GAN's critic stays out
    rows = _log(tmp_path, "autoencoder")
    assert rows and float(rows[-1]["perplexity"]) >= 1 and meta["steps"]["autoencoder"] > 0
    assert not math.isnan(float(rows[-1]["d_loss"]))  # the discriminator trained alongside
    frozen = {k: v.clone() for k, v in net.autoencoder.state_dict().items()}

    net, meta = _stage(tmp_path, "cluster")
    main_codes = net.autoencoder.quantizer.codes()
    for k in net.levels.sizes:
        codes, mapping = net.codebook(k)
        assert codes.shape == (k, main_codes.shape[1]) and torch.allclose(codes.norm(dim=-1), torch.ones(k), atol=1e-3)
        # The mapping was computed before export rounded the main codes to fp16: a near-tie may
        # have flipped since, but every clustered code keeps a main code.
        assert (mapping == vq.marginal_mapping(main_codes, codes)).float().mean() > 0.95
        assert torch.bincount(mapping, minlength=k).min() > 0
    counts = net.residual_counts(1)
    assert (counts > 0).all()  # every residual index codable (counts start at one)

    net, meta = _stage(tmp_path, "prior")
    assert meta["steps"]["prior"] > 0
    assert all(torch.equal(frozen[k], v) for k, v in net.autoencoder.state_dict().items())
    bits = [float(v) for r in _log(tmp_path, "prior") for k, v in r.items() if k.startswith("bits_") and v != "nan"]
    assert bits and all(0 < b < 20 for b in bits)  # finite, positive bits an index

    before = {k: v.clone() for k, v in net.state_dict().items()}
    net, meta = _stage(tmp_path, "decoder", "--lr", "1e-3", "--scale-min", "0.8")
    assert meta["steps"]["decoder"] > 0 and meta["steps"]["prior"] > 0
    changed = {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}
    # Only the synthesis transform moved: every index map and its coded bits stay the same.
    assert changed and all(k.startswith("autoencoder.g_s.") for k in changed)
    val = list(csv.DictReader(open(tmp_path / "out" / "val-log-decoder.csv")))
    points = [(int(r["codebook"]), int(r["depth"])) for r in val]
    assert [r["when"] for r in val] == ["before"] * 5 + ["after"] * 5 and points[:5] == points[5:]
    assert points[:5] == [(8, 1), (16, 1), (32, 1), (64, 1), (64, 2)]
    for b, a in zip(val[:5], val[5:]):
        assert b["bits"] == a["bits"] and (b["bits"] == "" or 0 < float(b["bits"]) < 20)
        assert b["psnr"] != a["psnr"] and 0 < float(a["ms_ssim"]) <= 1


def test_marginal_mapping_leaves_no_clustered_code_without_a_main_code():
    main = torch.eye(4)
    codes = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0, 0], [1.0, -0.1, 0, 0], [0, 0, 1.0, 0]]), dim=-1)
    # Nearest-code assignment leaves code 1 empty (main codes 0, 1 and 3 all go to code 0 or 2).
    assert 1 not in (main @ codes.T).argmax(1).tolist()
    mapping = vq.marginal_mapping(main, codes)
    assert sorted(set(mapping.tolist())) == [0, 1, 2]
