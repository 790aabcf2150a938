import warnings
import zlib

import pytest

import bitstream
from bitstream import BitstreamError, Container, Header, Packet, PacketKind
from bitstream.container import MAGIC


def sample_container() -> Container:
    header = Header(family="hp", model_id="hp-cbc2-v8", weights_hash=b"\x01\x02\x03\x04", width=768, height=512,
                    quality=42.5, release=(0, 2, 0))
    return Container(header, [Packet(PacketKind.HYPER, 0, 128, b"z" * 40),
                              Packet(PacketKind.LATENT, 0, 192, bytes(range(256)) * 3)])


def test_header_and_packets_round_trip():
    data = bitstream.write(sample_container())
    c = bitstream.read(data)
    assert c.header == sample_container().header
    assert [(p.kind, p.first, p.count, p.payload) for p in c.packets] == \
        [(p.kind, p.first, p.count, p.payload) for p in sample_container().packets]
    # Packet offsets and lengths tile the file after the header.
    assert c.packets[0].offset + c.packets[0].length == c.packets[1].offset
    assert c.packets[1].offset + c.packets[1].length == len(data)


def test_describe_lists_packets_with_file_offsets():
    data = bitstream.write(sample_container())
    info = bitstream.describe(data)
    assert info["width"] == 768 and info["quality"] == 42.5
    assert [p["kind"] for p in info["packets"]] == ["hyper", "latent"]
    assert info["packets"][1]["offset"] + info["packets"][1]["length"] == len(data)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"PNG\x00" + bytes(40), "magic"),
    (MAGIC, "truncated"),
])
def test_unreadable_files_raise_one_error_type_with_a_reason(data, message):
    with pytest.raises(BitstreamError, match=message):
        bitstream.read(data)


def test_every_truncation_is_reported_not_crashed():
    data = bitstream.write(sample_container())
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            bitstream.read(data[:cut])


def test_every_single_flipped_byte_is_detected():
    data = bitstream.write(sample_container())
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 0x5A
        with pytest.raises(BitstreamError):
            bitstream.read(bytes(broken))


def _with_fixed_crc(header: bytes) -> bytes:
    return header + zlib.crc32(header).to_bytes(4, "little")


def test_absurd_dimensions_are_refused_before_allocation():
    # A valid CRC over a header that claims 65536 x 65536 pixels (past the 2^28 pixel bound).
    h = MAGIC + bytes([1, 0, 0, 0, 2]) + b"hp" + b"\0\0\0\0" + b"\xff\xff\x03" * 2 + b"\0\0\0\0"
    with pytest.raises(BitstreamError, match="absurd"):
        bitstream.read(_with_fixed_crc(h))


def test_absurd_packet_count_is_refused():
    h = MAGIC + bytes([1, 0, 0, 0, 2]) + b"hp" + b"\0\0\0\0" + b"\x01\x01\x00\x00\x00" + b"\xff\xff\x7f"
    with pytest.raises(BitstreamError, match="packet count"):
        bitstream.read(_with_fixed_crc(h))


def test_lenient_read_skips_a_corrupt_packet_and_keeps_the_rest():
    data = bytearray(bitstream.write(sample_container()))
    c = bitstream.read(bytes(data))
    data[c.packets[0].offset + 5] ^= 0xFF  # inside the first packet's payload
    lenient = bitstream.read(bytes(data), strict=False)
    assert lenient.packets[0].damaged
    assert lenient.packets[1].payload == c.packets[1].payload


def test_trailing_bytes_are_an_error_or_under_lenient_reading_a_warning():
    data = bitstream.write(sample_container()) + b"junk"
    with pytest.raises(BitstreamError, match="4 unexpected bytes after the last packet"):
        bitstream.read(data)
    with pytest.warns(bitstream.container.ConcealedWarning, match="4 unexpected bytes after the last packet; ignored"):
        assert len(bitstream.read(data, strict=False).packets) == len(sample_container().packets)
    # A truncated last frame loses that packet, and is not reported as trailing bytes.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cut = bitstream.read(data[:-10], strict=False)
    assert len(cut.packets) == len(sample_container().packets) - 1


def test_writer_refuses_sizes_the_format_cannot_hold():
    c = sample_container()
    c.header.width = 70000
    with pytest.raises(ValueError):
        bitstream.write(c)
