"""datasets/prepare.py: a subset for one device call, and the rest of it for the next."""
import importlib.util

import pytest

from tests.conftest import ROOT, SHARED


def _prepare():
    spec = importlib.util.spec_from_file_location("prepare", ROOT / "datasets" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_subset_and_its_rest_together_are_the_whole_training_set(tmp_path):
    src = SHARED / "datasets" / "train"
    if not src.is_dir():
        pytest.skip("../shared/datasets/train is not here (a user's clone)")
    prepare = _prepare()
    prepare.prepare_train(tmp_path / "a", max_mib=8)
    prepare.prepare_train(tmp_path / "b", rest_of=tmp_path / "a")
    a = {p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.webp")}
    b = {p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.webp")}
    whole = {p.relative_to(src) for p in src.rglob("*.webp")}
    assert a and b and not (a & b) and a | b == whole
    assert sum(p.stat().st_size for p in (tmp_path / "a").rglob("*") if p.is_file()) <= 8 * 2**20
