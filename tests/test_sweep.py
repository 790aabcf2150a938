import csv
import json

import numpy as np
import pytest

from codec import sweep
from tests.conftest import SAMPLES


def test_ycbcr_conversion_round_trips_within_the_8_bit_truncation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    back = sweep.ycbcr444_to_rgb(sweep.rgb_to_ycbcr444(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 3
    grey = np.full((2, 2, 3), 128, np.uint8)
    assert np.array_equal(sweep.rgb_to_ycbcr444(grey)[1:], np.full((2, 2, 2), 127))  # truncation, not rounding


def test_missing_programs_are_named_with_their_environment_variable(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("BPGENC", "/nonexistent/bpgenc")
    monkeypatch.delenv("VTM_CFG", raising=False)
    assert "(set BPGENC)" in " ".join(sweep.CODECS["bpg444"].missing())
    assert any("VTM_CFG" in m for m in sweep.CODECS["vtm"].missing())
    sweep.run(SAMPLES, ["bpg444"], tmp_path, qualities=[30])
    assert "skipping bpg444" in capsys.readouterr().err


def test_sweep_writes_csv_json_bdrate_and_plots_and_resumes(tmp_path, capsys):
    sweep.run(SAMPLES, ["jpeg444"], tmp_path, qualities=[20, 60, 90])
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    assert len(rows) == 2 * 3
    curve = json.loads((tmp_path / "jpeg444.json").read_text())["results"]
    assert curve["n_images"] == [2, 2, 2] and curve["bpp"] == sorted(curve["bpp"])
    assert (tmp_path / "rd.png").stat().st_size > 0 and (tmp_path / "rd-msssim.png").exists()
    assert "jpeg444" in (tmp_path / "bdrate.md").read_text()
    capsys.readouterr()
    sweep.run(SAMPLES, ["jpeg444"], tmp_path, qualities=[20, 60, 90])
    assert "0 encodes to run" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(tmp_path / "per_image.csv")))) == 6


def test_unknown_codec_names_are_refused():
    with pytest.raises(ValueError, match="unknown codec"):
        sweep.expand("hp,nonsense")
    assert sweep.expand("jpeg,avif") == ["jpeg444", "jpeg420", "avif444", "avif420"]
