import csv
import json
from dataclasses import replace

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


def test_a_codec_whose_version_changed_is_measured_again_not_mixed_in(tmp_path, capsys, monkeypatch):
    """Our models' rows depend on the weights: new weights make a resumed sweep measure them again."""
    version = {"now": "a"}
    monkeypatch.setitem(sweep.CODECS, "jpeg444", replace(sweep.CODECS["jpeg444"], version=lambda: version["now"]))
    sweep.run(SAMPLES, ["jpeg444"], tmp_path, qualities=[50])
    sweep.run(SAMPLES, ["jpeg444"], tmp_path, qualities=[50])
    assert "0 encodes to run" in capsys.readouterr().err
    version["now"] = "b"
    sweep.run(SAMPLES, ["jpeg444"], tmp_path, qualities=[50])
    err = capsys.readouterr().err
    assert "jpeg444 changed" in err and "2 encodes to run (0 already" in err
    assert len(list(csv.DictReader(open(tmp_path / "per_image.csv")))) == 2
    assert json.loads((tmp_path / "versions.json").read_text()) == {"jpeg444": "b"}


def test_unknown_codec_names_are_refused():
    with pytest.raises(ValueError, match="unknown codec"):
        sweep.expand("hp,nonsense")
    assert sweep.expand("jpeg,avif") == ["jpeg444", "jpeg420", "avif444", "avif420"]


FAKE = '''#!{python}
# A stand-in for an external codec: copies its input file to its output file, byte for byte.
import shutil, sys
a = sys.argv[1:]
src = a[a.index("{src_flag}") + 1] if "{src_flag}" else a[-1]
shutil.copyfile(src, a[a.index("{dst_flag}") + 1])
'''


def _fake(tmp_path, name, src_flag, dst_flag):
    import sys
    path = tmp_path / name
    path.write_text(FAKE.format(python=sys.executable, src_flag=src_flag, dst_flag=dst_flag))
    path.chmod(0o755)
    return str(path)


def test_external_programs_are_driven_through_files_and_measured(tmp_path, monkeypatch):
    """BPG and VTM cannot be installed here: lossless stand-ins pin the plumbing around them."""
    monkeypatch.setenv("BPGENC", _fake(tmp_path, "bpgenc", "", "-o"))
    monkeypatch.setenv("BPGDEC", _fake(tmp_path, "bpgdec", "", "-o"))
    monkeypatch.setenv("VTM_ENCODER", _fake(tmp_path, "vtmenc", "-i", "-b"))
    monkeypatch.setenv("VTM_DECODER", _fake(tmp_path, "vtmdec", "-b", "-o"))
    cfg = tmp_path / "encoder_intra_vtm.cfg"
    cfg.write_text("")
    monkeypatch.setenv("VTM_CFG", str(cfg))
    out = tmp_path / "out"
    sweep.run(SAMPLES, ["bpg444", "vtm"], out, qualities=[30])
    rows = {r["codec"]: r for r in csv.DictReader(open(out / "per_image.csv"))}
    assert float(rows["bpg444"]["psnr-rgb"]) == float("inf")  # the PNG came back untouched
    assert float(rows["vtm"]["bpp"]) == pytest.approx(24.0)   # raw 4:4:4 8-bit planes: 24 bits a pixel
    assert 40 < float(rows["vtm"]["psnr-rgb"]) < float("inf")  # only the YCbCr truncation is lost


def test_a_failing_external_program_stops_the_sweep_with_its_message_and_keeps_the_rows(tmp_path, monkeypatch):
    failing = tmp_path / "bpgenc"
    failing.write_text("#!/bin/sh\necho 'x265: out of cheese' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setenv("BPGENC", str(failing))
    monkeypatch.setenv("BPGDEC", str(failing))
    with pytest.raises(sweep.ToolError, match="bpg444 at quality 30 on .*: bpgenc exited with 3: x265: out of cheese"):
        sweep.run(SAMPLES, ["jpeg444", "bpg444"], tmp_path / "out", qualities=[30])
    assert len(list(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))) == 2  # jpeg rows kept
