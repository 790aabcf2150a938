"""Versioned model ids (container format 2): files name the model, its weights and the release that
wrote them; files from models this release does not ship, and format-1 files (before 0.2.0, whose
float entropy model was not portable), are refused in one line that says so."""
import subprocess
import sys

import numpy as np
import pytest

import bitstream
import codec
from codec import api, zoo
from tests.conftest import ROOT

FORMAT1 = ROOT / "tests" / "data" / "format1"  # written by codec 0.1.0 (commit 92e4e61) from a sample image


def test_a_file_records_the_versioned_model_id_its_weights_and_the_release(sample_rgb):
    for family, model_id in (("hp", "hp-cbc2-v8"), ("vq", "vq-t16-v3")):
        header = bitstream.read(codec.encode(sample_rgb, model=family, quality=30)).header
        assert (header.version, header.family, header.model_id) == (2, family, model_id)
        assert header.weights_hash == zoo.weights_hash(zoo.weights_path(model_id))
        assert header.release == tuple(int(v) for v in codec.__version__.split("."))


@pytest.mark.parametrize("name", ["hp-q40.bin", "vq-k256.bin"])
def test_format1_files_are_refused_in_one_line_naming_the_release_that_reads_them(name):
    data = (FORMAT1 / name).read_bytes()
    header = bitstream.read(data).header
    assert header.version == 1 and header.release is None and header.model_id in ("hp", "vq")
    with pytest.raises(bitstream.BitstreamError, match=r"before 0\.2\.0 in format 1.*codec 0\.1\.x"):
        api.decode_rgb(data)


def test_a_model_this_release_does_not_ship_is_refused_naming_it_and_the_writer(sample_rgb):
    c = bitstream.read(codec.encode(sample_rgb[:64, :64], quality=5))
    c.header.model_id, c.header.release = "hp-cbc2-v9", (0, 3, 1)
    with pytest.raises(bitstream.BitstreamError, match=r"needs model 'hp-cbc2-v9'.*does not ship.*codec 0\.3\.1"):
        api.decode_rgb(bitstream.write(c))


def test_other_weights_under_a_shipped_id_are_refused_naming_the_writer(sample_rgb):
    c = bitstream.read(codec.encode(sample_rgb[:64, :64], quality=5))
    c.header.weights_hash, c.header.release = b"\0\1\2\3", (0, 1, 9)
    with pytest.raises(bitstream.BitstreamError, match=r"weights 00010203, but .*codec 0\.1\.9, which wrote it"):
        api.decode_rgb(bitstream.write(c))


def test_the_cli_refuses_an_unshipped_model_in_one_line_and_info_shows_the_id(tmp_path, sample_rgb):
    c = bitstream.read(codec.encode(sample_rgb[:64, :64], quality=5))
    c.header.model_id = "vq-v9"
    c.header.family = "vq"
    path = tmp_path / "future.bin"
    path.write_bytes(bitstream.write(c))
    out = subprocess.run([sys.executable, "-m", "codec.cli", "decode", str(path), str(tmp_path / "o.png")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("codec: error: this file needs model 'vq-v9'")
    assert not (tmp_path / "o.png").exists()
    info = subprocess.run([sys.executable, "-m", "codec.cli", "info", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert info.returncode == 0
    assert "model_id        vq-v9" in info.stdout and f"codec {codec.__version__}" in info.stdout


def test_the_shipped_model_ids_are_family_architecture_and_version():
    for model_id, file in zoo.MODELS.items():
        net, meta, _ = zoo.load(model_id)
        # The id names the family and the weights version of its file (vq-t16-v3: vq-v3's weights,
        # its prior coded in 16 x 16 tiles).
        weights = file.removesuffix(".safetensors").split("-")
        assert model_id.startswith(net.family + "-") and weights[0] == net.family
        assert model_id.split("-")[-1] == weights[-1]
    assert np.all([zoo.DEFAULT_MODEL[f] in zoo.MODELS for f in ("hp", "vq")])
