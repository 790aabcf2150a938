"""tools/compare_weights.py and the stills it reads (datasets/prepare.py frames)."""
import subprocess
import sys

import pytest

from codec import zoo
from tests.conftest import ROOT, SAMPLES, SHARED
from tests.test_prepare import _prepare


@pytest.mark.parametrize("model", ["hp", "vq"])
def test_a_weights_file_against_itself_changes_nothing_at_any_point(model):
    path = str(zoo.weights_path(model))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_weights.py"), path, path,
                          "--images", str(SAMPLES)], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "point" not in line]
    assert out.startswith("2 images") and len(rows) == (12 if model == "hp" else 5)
    cells = [c for r in rows for c in r.strip("| ").split(" | ")[1:] if c]
    assert cells and all("(+0.0 %)" in c or "(+0.0000)" in c for c in cells), out
    assert ("BD-rate" in out) == (model == "hp")
    if model == "hp":
        assert out.rstrip().endswith(": +0.00 %"), out


def test_frames_are_every_nth_still_of_each_clip(tmp_path):
    if not (SHARED / "datasets" / "video").is_dir():
        pytest.skip("../shared/datasets/video is not here (a user's clone)")
    pytest.importorskip("av")
    _prepare().prepare_frames(tmp_path, every=16)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    # 48 and 32 frames: 0, 16, 32 and 0, 16.
    assert [n.rsplit("-", 1)[1] for n in names] == ["000.png", "016.png", "032.png", "000.png", "016.png"]
