from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "datasets" / "samples"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def sample_rgb() -> np.ndarray:
    from codec.io import load_image
    return load_image(SAMPLES / "unsplash-jacob-aguilar-256.png")


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    path = SHARED / "datasets" / "kodak"
    if not path.is_dir():
        pytest.skip("../shared/datasets/kodak is not here (a user's clone)")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA; CI and this project's CPU machines skip them."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def decoded_or_error(call):
    """call()'s result, or the BitstreamError it raised (any other exception propagates)."""
    from bitstream import BitstreamError
    try:
        return call()
    except BitstreamError as e:
        return e
