"""Video files, intra only: every frame coded as an image, nested in a FRAME packet (CPU)."""
import json
from fractions import Fraction

import numpy as np
import pytest

import bitstream
import codec
from bitstream import BitstreamError, Packet, PacketKind
from bitstream.container import pack, unpack
from codec import api
from codec.cli import main
from codec.io import read_video, write_video
from codec.metrics import psnr


@pytest.fixture(scope="module")
def clip(tmp_path_factory, sample_rgb):
    """Three 96x64 frames panning across the sample image, at 25 fps, as lossless FFV1 in .mkv."""
    frames = [np.ascontiguousarray(sample_rgb[40:104, 8 * i:8 * i + 96]) for i in range(3)]
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    write_video(path, frames, Fraction(25), ("matroska", "ffv1", "bgr0"))
    return path, frames


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_clip_codes_frame_by_frame_and_decodes_to_lossless_ffv1_png_frames_and_y4m(tmp_path, capsys, clip):
    path, frames = clip
    code, out, _ = _run(capsys, "encode", path, tmp_path / "clip.bin", "--quality", 60, "--json")
    assert code == 0 and json.loads(out)["frames"] == 3
    code, out, _ = _run(capsys, "info", tmp_path / "clip.bin", "--json")
    info = json.loads(out)
    assert (info["mode"], info["fps"], info["width"], info["height"]) == ("video", "25/1", 96, 64)
    assert [f["index"] for f in info["frames"]] == [0, 1, 2]
    assert [p["kind"] for p in info["packets"]] == ["video", "frame", "frame", "frame"]
    for name in ("out.mkv", "f%02d.png", "out.y4m"):
        code, _, err = _run(capsys, "decode", tmp_path / "clip.bin", tmp_path / name)
        assert code == 0, err
    decoded, rate, _ = read_video(tmp_path / "out.mkv")
    decoded = list(decoded)
    assert rate == 25 and len(decoded) == 3
    for i, (source, frame) in enumerate(zip(frames, decoded)):
        assert psnr(source, frame) > 27  # each frame as the hp model codes the image
        assert np.array_equal(frame, np.asarray(codec.decode(_frame_file(tmp_path / "clip.bin", i))))
        assert np.array_equal(frame, codec.io.load_image(tmp_path / f"f{i:02d}.png"))  # FFV1 is lossless
    y4m, rate, _ = read_video(tmp_path / "out.y4m")
    assert rate == 25 and [f.shape for f in y4m] == [(64, 96, 3)] * 3


def _frame_file(path, i) -> bytes:
    """Frame i of a video .bin as an image .bin: its header with mode image and the frame's packets."""
    c = bitstream.read(path.read_bytes())
    c.header.mode = "image"
    return bitstream.write(bitstream.Container(c.header, unpack(c.packets[1 + i].payload, "frame")))


def test_a_damaged_frame_is_named_or_concealed_by_the_frame_before(tmp_path, clip):
    path, frames = clip
    data = bytearray(api.encode_video(frames, Fraction(25), quality=40))
    frame = bitstream.read(bytes(data)).packets[2]
    data[frame.offset + frame.length // 2] ^= 0xFF
    with pytest.raises(BitstreamError, match=r"packet 2 is corrupt.*the frame packet 2 \(covering 1\.\.1\) is missing"):
        api.decode_video(bytes(data))
    with pytest.warns(bitstream.container.ConcealedWarning, match="frame packet 2 .* missing or corrupt"):
        header, rate, count, decoded = api.decode_video(bytes(data), conceal=True)
        decoded = list(decoded)
    assert (count, rate, len(decoded)) == (3, 25, 3)
    assert np.array_equal(decoded[1], decoded[0]) and not np.array_equal(decoded[2], decoded[0])


def test_videos_and_images_go_only_where_they_belong(tmp_path, capsys, clip):
    path, frames = clip
    video = api.encode_video(frames, Fraction(25), quality=20)
    with pytest.raises(BitstreamError, match="holds a video"):
        api.decode_rgb(video)
    with pytest.raises(BitstreamError, match="holds an image"):
        api.decode_video(codec.encode(frames[0], quality=20))
    (tmp_path / "v.bin").write_bytes(video)
    for argv, code, message in [
            (("decode", tmp_path / "v.bin", tmp_path / "out.png"), 2, "a video decodes to .mkv"),
            (("decode", tmp_path / "v.bin", tmp_path / "f%q.png"), 2, "not a frame pattern"),
            (("encode", path, tmp_path / "x.bin", "--bpp", "0.1"), 2, "--bpp / --size is for images"),
            (("encode", tmp_path / "v.bin.mp4", tmp_path / "x.bin"), 1, "not a readable video")]:
        if argv[1].suffix == ".mp4":
            argv[1].write_bytes(b"not a video at all")
        got, _, err = _run(capsys, *argv)
        assert got == code and message in err and err.count("\n") == 1, err
    with pytest.raises(codec.io.ImageReadError, match="frame 1 is 32x32"):
        api.encode_video([frames[0], frames[0][:32, :32]], Fraction(25))


def test_nested_packets_round_trip_and_garbage_is_refused():
    packets = [Packet(PacketKind.HYPER, 0, 128, b"abc"), Packet(PacketKind.LATENT, 0, 256, b"\x00" * 300)]
    again = unpack(pack(packets), "frame 0")
    assert [(p.kind, p.first, p.count, p.payload) for p in again] == [
        (p.kind, p.first, p.count, p.payload) for p in packets]
    for bad in (pack(packets)[:-1], pack(packets) + b"\x00", b"\x01\x06\x00\x00\x00", b"\x01\x63"):
        with pytest.raises(BitstreamError):
            unpack(bad, "frame 0")


def test_an_unreadable_frame_is_concealed_and_a_failed_decode_leaves_no_frames(tmp_path, capsys, clip):
    path, frames = clip
    c = bitstream.read(api.encode_video(frames, Fraction(25), quality=20))
    c.packets[3].payload = b"\x01\x63"  # frame 2 nests a packet of unknown kind (its CRC made valid)
    (tmp_path / "v.bin").write_bytes(bitstream.write(c))
    code, _, err = _run(capsys, "decode", tmp_path / "v.bin", tmp_path / "f%02d.png")
    assert code == 1 and "unknown kind 99" in err and list(tmp_path.glob("f*.png")) == [], err
    with pytest.warns(bitstream.container.ConcealedWarning, match="frame 2: .*the frame before repeated"):
        decoded = list(api.decode_video(bitstream.write(c), conceal=True)[3])
    assert np.array_equal(decoded[2], decoded[1])
    with pytest.raises(ValueError, match="frame rate must be positive"):
        api.encode_video(frames, Fraction(0))
