"""The CLI contract: one-line errors, exit 1 for bad data, 2 for bad usage, nothing half-written."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from codec.cli import main
from tests.conftest import SAMPLES

SAMPLE = SAMPLES / "unsplash-jacob-aguilar-256.png"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def good_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("bins") / "good.bin"
    assert main(["encode", str(SAMPLE), str(path), "--quality", "40"]) == 0
    return path


def test_encode_decode_info_round_trip_with_json(tmp_path, capsys, good_bin):
    code, out, _ = run(capsys, "encode", SAMPLE, tmp_path / "a.bin", "--quality", "40", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["bytes"] == (tmp_path / "a.bin").stat().st_size
    assert report["bpp"] == pytest.approx(8 * report["bytes"] / 256 ** 2, abs=1e-4)
    assert report["psnr"] > 24
    assert (tmp_path / "a.bin").read_bytes() == good_bin.read_bytes()
    code, out, _ = run(capsys, "decode", tmp_path / "a.bin", tmp_path / "a.png", "--json")
    assert code == 0 and json.loads(out)["width"] == 256
    code, out, _ = run(capsys, "info", tmp_path / "a.bin", "--json")
    info = json.loads(out)
    assert code == 0 and info["model_id"] == "hp-cbc2-v8" and info["quality"] == 40.0
    assert [p["kind"] for p in info["packets"]] == ["hyper", "latent"]
    assert info["packets"][-1]["offset"] + info["packets"][-1]["length"] == info["bytes"]


def _bad_inputs(tmp_path, good: bytes) -> dict:
    truncated = good[: len(good) // 2]
    flipped = bytearray(good)
    flipped[len(good) - 10] ^= 0xFF
    cases = {
        "empty": b"",
        "wrong_magic": b"GIF89a" + good[6:],
        "truncated": truncated,
        "flipped": bytes(flipped),
        "an_image_not_a_bin": SAMPLE.read_bytes(),
    }
    paths = {}
    for name, data in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        paths[name] = p
    paths["missing"] = tmp_path / "no-such-file.bin"
    return paths


@pytest.mark.parametrize("case", ["empty", "wrong_magic", "truncated", "flipped", "an_image_not_a_bin", "missing"])
def test_bad_bin_gives_one_error_line_exit_1_and_no_output(tmp_path, capsys, good_bin, case):
    bad = _bad_inputs(tmp_path, good_bin.read_bytes())[case]
    out_png = tmp_path / "out.png"
    code, out, err = run(capsys, "decode", bad, out_png)
    assert code == 1
    assert err.startswith("codec: error: ") and err.count("\n") == 1, err
    assert not out_png.exists()
    assert list(tmp_path.glob("*.part")) == [] and list(tmp_path.glob(".*")) == []


def test_absurd_header_dimensions_are_refused(tmp_path, capsys, good_bin):
    import bitstream
    c = bitstream.read(good_bin.read_bytes())
    raw = bytearray(bitstream.write(c))
    # Rewrite width/height varints to 65536 x 65536 and fix the header CRC, so only the bound can stop it.
    import zlib
    from bitstream.container import read_header
    _, _, first_packet = read_header(bytes(raw))
    id_end = 9 + raw[8] + 4 + 3  # magic and 5 bytes, the model id, its weights hash, the release
    header = bytes(raw[:id_end]) + b"\xff\xff\x03\xff\xff\x03" + bytes(raw[id_end + 4:first_packet - 4])
    forged = header + zlib.crc32(header).to_bytes(4, "little") + bytes(raw[first_packet:])
    (tmp_path / "absurd.bin").write_bytes(forged)
    code, _, err = run(capsys, "decode", tmp_path / "absurd.bin", tmp_path / "o.png")
    assert code == 1 and "absurd image size" in err


@pytest.mark.parametrize("case", ["missing", "not_an_image", "empty"])
def test_bad_image_input_to_encode_gives_exit_1_and_no_output(tmp_path, capsys, case):
    src = tmp_path / "in.png"
    if case == "not_an_image":
        src.write_text("hello, I am text")
    elif case == "empty":
        src.write_bytes(b"")
    code, _, err = run(capsys, "encode", src, tmp_path / "out.bin")
    assert code == 1 and err.startswith("codec: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("argv", [["encode", str(SAMPLE), "x.bin", "--quality", "150"],
                                  ["encode", str(SAMPLE)], ["frobnicate"], ["decode", "a.bin", "b.xyz"],
                                  ["encode", str(SAMPLE), "-", "--json"], ["encode", str(SAMPLE), "x.bin", "--bpp", "0"],
                                  ["encode", str(SAMPLE), "x.bin", "--model", "vq", "--codebook", "100"],
                                  ["encode", str(SAMPLE), "x.bin", "--codebook", "64"],
                                  ["encode", str(SAMPLE), "x.bin", "--refine", "-2"],
                                  ["encode", str(SAMPLE), "x.bin", "--model", "vq", "--refine", "-1"]])
def test_bad_usage_gives_exit_2(tmp_path, capsys, argv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("codec: error: ") and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU to search on")
def test_a_search_on_a_missing_gpu_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "encode", str(SAMPLE), str(tmp_path / "x.bin"), "--refine", "2", "--refine-device", "cuda")
    assert code == 2 and "no CUDA device" in err and err.count("\n") == 1
    assert not (tmp_path / "x.bin").exists()


def test_console_script_streams_through_stdin_and_stdout_without_traceback(tmp_path):
    exe = shutil.which("codec", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the codec console script is not installed"
    enc = subprocess.run([exe, "encode", "-", "-", "--quality", "30"], input=SAMPLE.read_bytes(),
                         capture_output=True, timeout=300)
    assert enc.returncode == 0 and enc.stdout[:4] == b"LIC\x1a"
    dec = subprocess.run([exe, "decode", "-", "-"], input=enc.stdout, capture_output=True, timeout=300)
    assert dec.returncode == 0 and dec.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([exe, "decode", "-", str(tmp_path / "o.png")], input=enc.stdout[:20],
                         capture_output=True, timeout=300)
    assert bad.returncode == 1 and b"Traceback" not in bad.stderr
    assert bad.stderr.decode().startswith("codec: error: ")
    help_ = subprocess.run([exe, "--help"], capture_output=True, timeout=300)
    assert help_.returncode == 0 and b"encode" in help_.stdout and b"decode" in help_.stdout


def test_encode_to_a_size_target_reports_the_quality_it_chose(tmp_path, capsys):
    code, out, _ = run(capsys, "encode", SAMPLE, tmp_path / "s.bin", "--size", "6000", "--json")
    report = json.loads(out)
    assert code == 0 and 0.97 * 6000 <= report["bytes"] <= 6000 and 0 < report["quality"] < 100


def test_decode_conceal_survives_a_corrupt_latent_packet(tmp_path, capsys, good_bin):
    data = bytearray(good_bin.read_bytes())
    data[-10] ^= 0xFF  # inside the last (latent) packet's payload
    (tmp_path / "hurt.bin").write_bytes(bytes(data))
    assert run(capsys, "decode", tmp_path / "hurt.bin", tmp_path / "a.png")[0] == 1
    code, _, _ = run(capsys, "decode", tmp_path / "hurt.bin", tmp_path / "b.png", "--conceal")
    assert code == 0 and (tmp_path / "b.png").stat().st_size > 0


def test_vq_encode_reports_its_operating_point_and_decodes(tmp_path, capsys):
    code, out, _ = run(capsys, "encode", SAMPLE, tmp_path / "v.bin", "--model", "vq", "--codebook", "64", "--json")
    report = json.loads(out)
    assert code == 0 and (report["codebook"], report["depth"]) == (64, 1) and report["bpp"] < 0.05
    code, out, _ = run(capsys, "info", tmp_path / "v.bin", "--json")
    assert code == 0 and json.loads(out)["family"] == "vq"
    assert run(capsys, "decode", tmp_path / "v.bin", tmp_path / "v.png")[0] == 0
