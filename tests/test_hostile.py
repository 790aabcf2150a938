"""Hostile input through the CLI: every bad file, image or output path gives one line on stderr
starting `codec: error:`, exit code 1 and no output file (nor a leftover temporary); the committed
bomb files (tests/data/bombs, by tools/bombs.py) are refused or decoded within bounds; and a
fuzzing smoke run (tools/fuzz.py) finds no crash, hang or untyped exception."""
import sys

import numpy as np
import pytest

import bitstream
from bitstream import PacketKind
from codec.cli import main
from tests.conftest import ROOT, SAMPLES

SAMPLE = SAMPLES / "unsplash-jacob-aguilar-256.png"
BOMBS = ROOT / "tests" / "data" / "bombs"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small valid hp and vq file."""
    import codec
    from codec.io import load_image
    rgb = load_image(SAMPLE)[:64, :80]
    return {"hp": codec.encode(rgb, quality=20), "vq": codec.encode(rgb, model="vq", depth=2)}


def _forged(data: bytes, edit) -> bytes:
    c = bitstream.read(data)
    edit(c)
    return bitstream.write(c)


def _set(obj, **fields):
    for k, v in fields.items():
        setattr(obj, k, v)


BAD_BINS = {
    "empty": lambda f: b"",
    "not_a_bin": lambda f: SAMPLE.read_bytes(),
    "wrong_magic": lambda f: b"GIF8" + f["hp"][4:],
    "truncated_header": lambda f: f["hp"][:12],
    "truncated_packet": lambda f: f["hp"][:-7],
    "crc_mismatch": lambda f: f["hp"][:-1] + bytes([f["hp"][-1] ^ 1]),
    "trailing_junk": lambda f: f["hp"] + b"\0junk",
    "empty_payload": lambda f: _forged(f["hp"], lambda c: _set(c.packets[1], payload=b"")),
    "payload_cut": lambda f: _forged(f["hp"], lambda c: _set(c.packets[1], payload=c.packets[1].payload[:-3])),
    "payload_extended": lambda f: _forged(f["vq"], lambda c: _set(c.packets[1], payload=c.packets[1].payload + b"\x55" * 4)),
    "lost_packet": lambda f: _forged(f["hp"], lambda c: c.packets.pop()),
    "extra_packet": lambda f: _forged(f["hp"], lambda c: c.packets.append(c.packets[0])),
    "packets_swapped": lambda f: _forged(f["hp"], lambda c: c.packets.reverse()),
    "wrong_packet_kind": lambda f: _forged(f["vq"], lambda c: _set(c.packets[0], kind=PacketKind.ROI)),
    "wrong_index_count": lambda f: _forged(f["vq"], lambda c: _set(c.packets[0], count=7)),
    "unshipped_model": lambda f: _forged(f["hp"], lambda c: _set(c.header, model_id="hp-cbc2-v99")),
    "other_weights": lambda f: _forged(f["hp"], lambda c: _set(c.header, weights_hash=b"\0\0\0\0")),
    "family_mismatch": lambda f: _forged(f["hp"], lambda c: _set(c.header, family="vq")),
    "video_mode": lambda f: _forged(f["hp"], lambda c: _set(c.header, mode="video")),
    "hp_with_codebook": lambda f: _forged(f["hp"], lambda c: _set(c.header, codebook=256, depth=1)),
    "vq_unknown_point": lambda f: _forged(f["vq"], lambda c: _set(c.header, codebook=300)),
    "vq_quality_mismatch": lambda f: _forged(f["vq"], lambda c: _set(c.header, quality=1.0)),
    "vq_depth_without_packet": lambda f: _forged(f["vq"], lambda c: _set(c.header, depth=1)),
    "forged_size": lambda f: (BOMBS / "hp-1024-forged.bin").read_bytes(),
    "vq_forged_size": lambda f: (BOMBS / "vq-1024-forged.bin").read_bytes(),
}


def _decode(capsys, tmp_path, data: bytes, *options):
    src, out = tmp_path / "in.bin", tmp_path / "out.png"
    src.write_bytes(data)
    code = main(["decode", str(src), str(out), *options])
    _, err = capsys.readouterr()
    return code, err, out


def _one_error_line_and_nothing_written(code, err, out):
    assert code == 1, err
    assert err.startswith("codec: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    assert list(out.parent.glob(".*.part")) == []


@pytest.mark.parametrize("case", sorted(BAD_BINS))
def test_a_bad_file_gives_one_error_line_exit_1_and_no_output(tmp_path, capsys, files, case):
    _one_error_line_and_nothing_written(*_decode(capsys, tmp_path, BAD_BINS[case](files)))


@pytest.mark.parametrize("case", ["empty", "not_a_bin", "truncated_header", "crc_mismatch", "trailing_junk"])
def test_info_refuses_a_bad_file_in_one_line(tmp_path, capsys, files, case):
    (tmp_path / "in.bin").write_bytes(BAD_BINS[case](files))
    code = main(["info", str(tmp_path / "in.bin")])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.startswith("codec: error: ") and err.count("\n") == 1


def test_what_conceal_cannot_mend_still_fails_in_one_line(tmp_path, capsys, files):
    # An hp file that is not resilient has one z for the whole image: without it nothing is predicted.
    code, err, out = _decode(capsys, tmp_path, _forged(files["hp"], lambda c: c.packets.pop(0)), "--conceal")
    _one_error_line_and_nothing_written(code, err, out)
    assert "hyper-latent packet is missing" in err
    # Nothing of the image received: no index (vq), no slice (hp resilient) to conceal from.
    lost = _forged(files["vq"], lambda c: c.packets.pop(0))
    code, err, out = _decode(capsys, tmp_path, lost, "--conceal")
    _one_error_line_and_nothing_written(code, err, out)
    assert "no index of the image was received" in err


def test_a_file_over_max_pixels_is_refused_before_decoding(tmp_path, capsys, files):
    code, err, out = _decode(capsys, tmp_path, files["hp"], "--max-pixels", "1000")
    _one_error_line_and_nothing_written(code, err, out)
    assert "over the limit of 1000 pixels" in err


@pytest.mark.parametrize("case", ["output_is_a_folder", "output_folder_missing"])
def test_an_output_that_cannot_be_written_gives_one_line_and_leaves_nothing(tmp_path, capsys, files, case):
    (tmp_path / "in.bin").write_bytes(files["hp"])
    out = tmp_path / "taken.png" if case == "output_is_a_folder" else tmp_path / "nowhere" / "o.png"
    if case == "output_is_a_folder":
        out.mkdir()
    code = main(["decode", str(tmp_path / "in.bin"), str(out)])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("codec: error: cannot write") and err.count("\n") == 1, err
    assert list(tmp_path.rglob("*.part")) == []


@pytest.mark.parametrize("case", ["truncated_png", "a_bin", "folder", "over_max_pixels"])
def test_a_bad_image_to_encode_gives_one_error_line_exit_1_and_no_output(tmp_path, capsys, files, case):
    src = tmp_path / "in.png"
    options = []
    if case == "truncated_png":
        src.write_bytes(SAMPLE.read_bytes()[:2000])
    elif case == "a_bin":
        src.write_bytes(files["hp"])
    elif case == "folder":
        src.mkdir()
    else:
        src.write_bytes(SAMPLE.read_bytes())
        options = ["--max-pixels", "4096"]
    out = tmp_path / "out.bin"
    code = main(["encode", str(src), str(out), *options])
    _, err = capsys.readouterr()
    _one_error_line_and_nothing_written(code, err, out)


def test_bomb_files_are_refused_or_decode_to_what_they_claim():
    from codec import api
    for name in ("hp-1024-forged.bin", "vq-1024-forged.bin"):
        with pytest.raises(bitstream.BitstreamError):
            api.decode_rgb((BOMBS / name).read_bytes())
    # A genuine 47-byte file of a flat 1024x1024 image (vq's lowest rate) decodes: the prior runs
    # in 16x16 tiles, in time linear in the pixels and the memory of one batch of tiles.
    data = (BOMBS / "vq-1024-flat.bin").read_bytes()
    assert len(data) < 64 and api.decode_rgb(data).shape == (1024, 1024, 3)


def test_a_fuzzing_smoke_run_finds_no_crash_hang_or_untyped_exception(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import fuzz
    # A generous hang limit on a shared CI machine; the closing-note runs use 2 s.
    s = fuzz.fuzz(2000, workers=2, seed=1, hang_s=30.0, out=tmp_path)
    assert s["cases"] == 2000 and s["bad"] == [], s["bad"][:5]
    assert s["outcomes"]["ok"] > 20 and s["outcomes"]["refused"] > 1000
    assert set(s["by_mutator"]) >= set(fuzz.MUTATORS)
    assert all("ok" in s["by_mutator"][m] for m in ("forge_header", "forge_payload", "extend"))
