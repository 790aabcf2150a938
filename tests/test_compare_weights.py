"""tools/compare_weights.py and the stills it reads (datasets/prepare.py frames)."""
import subprocess
import sys

import pytest

from codec import zoo
from tests.conftest import ROOT, SAMPLES, SHARED
from tests.test_prepare import _prepare
from training import hp


@pytest.mark.parametrize("model", ["hp", "vq"])
def test_a_weights_file_against_itself_changes_nothing_at_any_point(model):
    path = str(zoo.weights_path(model))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_weights.py"), path, path,
                          "--images", str(SAMPLES)], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "point" not in line]
    points = len(zoo.read_meta(path)["lambdas"]) if model == "hp" else 5
    assert out.startswith("2 images") and len(rows) == points
    cells = [c for r in rows for c in r.strip("| ").split(" | ")[1:] if c]
    assert cells and all("(+0.0 %)" in c or "(+0.0000)" in c for c in cells), out
    assert ("BD-rate" in out) == (model == "hp")
    if model == "hp":
        assert out.rstrip().endswith(": +0.00 %"), out


def test_hp_levels_are_matched_by_lambda_not_by_index(tmp_path):
    # The shipped weights trained at other levels, their per-level tables interpolated in log lambda
    # (training.hp.load_parameters, as --init with --lambdas does). What matters is which rows pair up:
    # the old file's level 1 (0.013) is the new file's level 2, and the new file's level 1 (0.0035)
    # has no partner.
    shipped, meta = zoo.load_file(zoo.weights_path("hp"))
    for name, lambdas in (("old", [0.0009, 0.013]), ("new", [0.0009, 0.0035, 0.013])):
        config = dict(meta, model_id=name, lambdas=lambdas)
        model = zoo.build("hp", config)
        hp.load_parameters(shipped, model)
        zoo.export(model, tmp_path / f"{name}.safetensors", config)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_weights.py"), str(tmp_path / "old.safetensors"),
                          str(tmp_path / "new.safetensors"), "--images", str(SAMPLES)],
                         capture_output=True, text=True, check=True).stdout
    rows = {r.split(" | ")[0].strip("| "): r for r in out.splitlines() if r.startswith("| lambda")}
    assert list(rows) == ["lambda 0.0009", "lambda 0.013", "lambda 0.0035"], out
    assert "- -> " in rows["lambda 0.0035"] and "- -> " not in rows["lambda 0.013"], out
    # The shared levels are the same weights: nothing changes there, so neither does the curve.
    assert "(+0.0 %)" in rows["lambda 0.013"] and "(+0.0000)" in rows["lambda 0.013"], out
    assert "BD-rate new.safetensors vs old.safetensors" in out


def test_frames_are_every_nth_still_of_each_clip(tmp_path):
    if not (SHARED / "datasets" / "video").is_dir():
        pytest.skip("../shared/datasets/video is not here (a user's clone)")
    pytest.importorskip("av")
    _prepare().prepare_frames(tmp_path, every=16)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    # 48 and 32 frames: 0, 16, 32 and 0, 16.
    assert [n.rsplit("-", 1)[1] for n in names] == ["000.png", "016.png", "032.png", "000.png", "016.png"]
