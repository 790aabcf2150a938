"""What `pip install .` installs: the codec and the byte side, never the training code."""
import runpy

import setuptools

from tests.conftest import ROOT


def _setup_arguments(monkeypatch) -> dict:
    """The keyword arguments setup.py hands to setuptools.setup, without building anything."""
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: seen.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return seen


def test_the_installed_packages_are_codec_and_bitstream_only(monkeypatch):
    setup = _setup_arguments(monkeypatch)
    packages = setup["packages"]
    assert "codec" in packages and "bitstream" in packages
    assert all(p.split(".")[0] in ("codec", "bitstream") for p in packages), packages
    assert not any("train" in p for p in packages), packages
    assert set(setup.get("package_data", {})) <= {"codec", "bitstream"}
    assert not any("train" in script for script in setup.get("entry_points", {}).get("console_scripts", []))


def test_codec_holds_no_training_module():
    # Training lives in the top-level training/ folder: a module of codec/ with training in its name
    # would ship in the wheel.
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "codec").rglob("*.py")]
    assert modules and not [m for m in modules if "train" in m.rsplit("/", 1)[-1]], modules
    assert (ROOT / "training" / "hp.py").is_file() and (ROOT / "training" / "vq.py").is_file()
