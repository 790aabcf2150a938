"""The vq family's two training stages on CPU for a few seconds each."""
import csv

import torch

from codec import train_vq, zoo
from tests.conftest import SAMPLES


def _stage(tmp_path, stage):
    train_vq.main(["--stage", stage, "--data", str(SAMPLES), "--ckpt", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "out"), "--minutes", "0.1", "--batch", "2", "--crop", "64",
                   "--small", "--codebook-size", "64", "--log-every", "2", "--workers", "1"])
    return zoo.load_file(tmp_path / "out" / "vq-v1.safetensors")


def test_autoencoder_then_prior_stage_log_export_and_keep_the_autoencoder_frozen(tmp_path):
    torch.manual_seed(0)
    net, meta = _stage(tmp_path, "autoencoder")
    rows = list(csv.DictReader(open(tmp_path / "out" / "train-log-autoencoder.csv")))
    assert rows and float(rows[-1]["perplexity"]) >= 1 and meta["steps"]["autoencoder"] > 0
    frozen = {k: v.clone() for k, v in net.autoencoder.state_dict().items()}
    net, meta = _stage(tmp_path, "prior")
    assert meta["steps"]["prior"] > 0
    assert int(rows[-1]["step"]) <= meta["steps"]["autoencoder"] < int(rows[-1]["step"]) + 2  # logged every 2
    assert all(torch.equal(frozen[k], v) for k, v in net.autoencoder.state_dict().items())
    bits = [float(r["bits_per_index"]) for r in csv.DictReader(open(tmp_path / "out" / "train-log-prior.csv"))]
    assert bits and all(0 < b < 20 for b in bits)  # finite, positive bits an index
