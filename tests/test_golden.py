"""The same encode commands give the same bytes and decode to the same picture (PSNR) as when
tests/golden_hashes.json was written (tools/golden_hashes.py): a refactor that changes what is coded
fails here."""
import json

import pytest

from tests.conftest import ROOT

TABLE = json.loads((ROOT / "tests" / "golden_hashes.json").read_text())


@pytest.fixture(scope="module")
def golden():
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    import golden_hashes
    if golden_hashes.cpu_capability() != TABLE["cpu_capability"]:
        pytest.skip(f"the table was written on a {TABLE['cpu_capability']} CPU, this one is "
                    f"{golden_hashes.cpu_capability()}: float networks still decide the symbols")
    return golden_hashes


@pytest.mark.parametrize("case", TABLE["cases"], ids=lambda c: f"{c['image'][9:15]}-" + "-".join(
    f"{k}{v}" for k, v in c["encode"].items()))
def test_encode_gives_the_recorded_bytes_and_pixels(golden, case):
    got = golden.run(case["image"], case["encode"])
    assert (got["file"], got["packets"]) == (case["file"], case["packets"])
    assert got["psnr"] == pytest.approx(case["psnr"], abs=0.01)  # float synthesis: a level apart at most
