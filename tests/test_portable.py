"""Files decode on every machine: reference files written on a GPU (an H100), on an AVX-512 CPU and on that CPU
held to SSE-era kernels (tests/data/portable/<writer>/, by tools/cross_device.py encode; the GPU's
part by tools/portable_refs.sh) decode here to the very symbols the GPU decoded from them
(symbols.json). The images: a sample, and a 552x296 mosaic of the samples whose vq index map spans
prior tiles of four shapes. The symbols decide the bitstream's meaning; pixels may differ by the
float synthesis."""
import hashlib
import json

import pytest

import bitstream
from codec import api
from tests.conftest import ROOT

PORTABLE = ROOT / "tests" / "data" / "portable"
SYMBOLS = json.loads((PORTABLE / "symbols.json").read_text())


def test_every_writer_and_family_is_covered():
    writers = {key.split("/")[0] for key in SYMBOLS}
    assert writers == {"gpu", "cpu-avx512", "cpu-sse"}
    for writer in writers:
        files = sorted(p.stem for p in (PORTABLE / writer).glob("*.bin"))
        assert files == sorted(k.split("/")[1] for k in SYMBOLS if k.startswith(writer + "/"))
        assert {f.split("-")[-2] for f in files} == {"hp", "vq"}


@pytest.mark.parametrize("key", sorted(SYMBOLS))
def test_reference_file_decodes_to_the_gpus_symbols(key):
    container = bitstream.read((PORTABLE / f"{key}.bin").read_bytes())
    net = api.model_of(container.header)
    symbols = net.decode_latents(container.packets, container.header)
    assert hashlib.sha256(symbols.cpu().numpy().tobytes()).hexdigest() == SYMBOLS[key]
