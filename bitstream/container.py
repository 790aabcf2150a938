"""The .bin container: a self-describing header, then CRC32-framed packets. Spec: docs/bitstream.md.

Every size read from a file is bounded before anything is allocated from it, and every failure is a
`BitstreamError` whose message a person can act on.
"""
from __future__ import annotations

import enum
import warnings
import zlib
from dataclasses import dataclass, field

from bitstream.errors import BitstreamError

MAGIC = b"LIC\x1a"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 lacks the writer's release
MAX_SIDE = 1 << 16          # width and height are at most 65536
MAX_PIXELS = 1 << 28        # and together at most 268 M pixels
MAX_MODEL_ID = 32
MAX_PACKETS = 4096
MAX_RANGE = 1 << 32         # packet first/count fields
FAMILIES = ("hp", "vq")
MODES = ("image", "video")
FLAG_ROI = 1                # header flags: a region of interest (an ROI packet first)
FLAG_RESILIENT = 2          # independently decodable packets: a lost one costs only its own part


class PacketKind(enum.IntEnum):
    HYPER = 1     # hyper-latent z of the hp family
    LATENT = 2    # main latent y, or a range of its channels
    INDICES = 3   # vector-quantizer indices
    ROI = 4       # region-of-interest map
    VIDEO = 5     # a video's frame rate (first packet of a video; count = frames)
    FRAME = 6     # one frame's packets, nested (first = the frame's index)


@dataclass
class Header:
    family: str
    model_id: str
    weights_hash: bytes
    width: int
    height: int
    quality: float = 0.0    # stored to 0.01
    codebook: int = 0       # codebook size K (vq), 0 when unused
    depth: int = 0          # residual-VQ depth, 0 when unused
    mode: str = "image"
    version: int = VERSION
    release: tuple[int, int, int] | None = None  # the codec release that wrote the file (None in version 1)
    roi: bool = False       # a region of interest: an ROI packet comes first (flags bit 0)
    resilient: bool = False  # packets decodable each on its own (flags bit 1; see the model's layout)

    @property
    def release_name(self) -> str:
        return "a release before 0.2.0" if self.release is None else "codec " + ".".join(map(str, self.release))


@dataclass
class Packet:
    kind: PacketKind | None  # None only for a damaged packet whose kind byte is unknown
    first: int              # first channel / token / row this packet covers
    count: int              # how many it covers
    payload: bytes | None   # None when the packet was lost or failed its CRC
    offset: int = -1        # byte offset of the packet in the file (set on read)
    length: int = 0         # bytes of the packet in the file, framing included (set on read)

    @property
    def damaged(self) -> bool:
        return self.payload is None


@dataclass
class Container:
    header: Header
    packets: list[Packet] = field(default_factory=list)

    def packet(self, kind: PacketKind) -> list[Packet]:
        return [p for p in self.packets if p.kind == kind]


class ConcealedWarning(UserWarning):
    """A damaged, missing or unexpected packet that a concealing decoder went past."""


# --- varints (LEB128, unsigned) ---

def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


class _Reader:
    def __init__(self, data: bytes, what: str = "header") -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BitstreamError(f"truncated file: the {self.what} ends early (at byte {len(self.data)})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int, name: str) -> int:
        value = shift = 0
        for _ in range(10):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if value > limit:
                    raise BitstreamError(f"absurd {name} in {self.what}: {value} (at most {limit})")
                return value
        raise BitstreamError(f"malformed {name} in {self.what}")


    def frame(self, check_kind=None) -> tuple[int, int, int, bytes]:
        """_frame's fields: (kind, first, count, payload); check_kind(kind) may refuse the kind first."""
        kind = self.u8()
        if check_kind:
            check_kind(kind)
        first, count = self.varint(MAX_RANGE, "packet start"), self.varint(MAX_RANGE, "packet count")
        return kind, first, count, self.take(self.varint(len(self.data), "packet length"))


def header_bytes(h: Header) -> bytes:
    if h.family not in FAMILIES or h.mode not in MODES:
        raise ValueError(f"unknown family {h.family!r} or mode {h.mode!r}")
    mid = h.model_id.encode("ascii")
    if not 1 <= len(mid) <= MAX_MODEL_ID or len(h.weights_hash) != 4:
        raise ValueError("model id must be 1..32 ASCII bytes and the weights hash 4 bytes")
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE and h.width * h.height <= MAX_PIXELS):
        raise ValueError(f"image size {h.width}x{h.height} is outside what the format holds")
    if h.version not in READABLE_VERSIONS:
        raise ValueError(f"unknown format version {h.version}")
    if h.version >= 2 and (h.release is None or len(h.release) != 3 or not all(0 <= v < 256 for v in h.release)):
        raise ValueError("format 2 records the writer's release: three numbers 0..255")
    out = bytearray(MAGIC)
    out += bytes([h.version, FAMILIES.index(h.family), MODES.index(h.mode), flag_bits(h), len(mid)])
    out += mid + h.weights_hash + (bytes(h.release) if h.version >= 2 else b"")
    _put_varint(out, h.width - 1)
    _put_varint(out, h.height - 1)
    _put_varint(out, int(round(h.quality * 100)))
    _put_varint(out, h.codebook)
    _put_varint(out, h.depth)
    return bytes(out)


def flag_bits(h: Header) -> int:
    return (FLAG_ROI if h.roi else 0) | (FLAG_RESILIENT if h.resilient else 0)


def write(c: Container) -> bytes:
    out = bytearray(header_bytes(c.header))
    if len(c.packets) > MAX_PACKETS:
        raise ValueError("too many packets")
    _put_varint(out, len(c.packets))
    out += zlib.crc32(out).to_bytes(4, "little")
    for p in c.packets:
        if p.payload is None:
            raise ValueError("cannot write a lost packet")
        frame = _frame(p)
        out += frame + zlib.crc32(frame).to_bytes(4, "little")
    return bytes(out)


def _frame(p: Packet) -> bytes:
    """A packet's frame without its CRC: kind, first, count, payload length, payload."""
    return bytes([int(p.kind)]) + varints(p.first, p.count, len(p.payload)) + p.payload


def varints(*values: int) -> bytes:
    out = bytearray()
    for v in values:
        _put_varint(out, v)
    return bytes(out)


def read_varints(payload: bytes, n: int, what: str, limit: int = MAX_RANGE) -> list[int]:
    """Exactly n varints, each at most `limit`, and nothing after them -> their values."""
    r = _Reader(payload, what)
    values = [r.varint(limit, "value") for _ in range(n)]
    if r.pos != len(payload):
        raise BitstreamError(f"corrupt {what}: {len(payload) - r.pos} bytes too many")
    return values


def pack(packets: list[Packet]) -> bytes:
    """Packets -> a FRAME packet's payload: their count, then each as a frame without its CRC (the
    outer packet's CRC covers them)."""
    return varints(len(packets)) + b"".join(map(_frame, packets))


def unpack(payload: bytes, what: str) -> list[Packet]:
    """pack's inverse, checked: the packets nested in `what` (a FRAME packet's payload)."""
    def nestable(kind: int) -> None:
        if kind not in PacketKind._value2member_map_ or kind in (PacketKind.VIDEO, PacketKind.FRAME):
            raise BitstreamError(f"corrupt {what}: a nested packet of unknown kind {kind}")

    r = _Reader(payload, what)
    packets = []
    for _ in range(r.varint(MAX_PACKETS, "packet count")):
        kind, first, count, body = r.frame(nestable)
        packets.append(Packet(PacketKind(kind), first, count, body))
    if r.pos != len(payload):
        raise BitstreamError(f"corrupt {what}: {len(payload) - r.pos} bytes after its last packet")
    return packets


def read_header(data: bytes) -> tuple[Header, int, int]:
    """-> (header, packet count, offset of the first packet). Raises BitstreamError."""
    if len(data) == 0:
        raise BitstreamError("empty file: not a codec bitstream")
    r = _Reader(data)
    if r.take(min(4, len(data))) != MAGIC:
        raise BitstreamError("not a codec bitstream (wrong magic bytes)")
    version, family, mode, flags, id_len = (r.u8() for _ in range(5))
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported format version {version} (this reader knows "
                             f"{', '.join(map(str, READABLE_VERSIONS))}): written by a newer codec release?")
    if family >= len(FAMILIES) or mode >= len(MODES) or flags & ~(FLAG_ROI | FLAG_RESILIENT) or (flags and version < 2):
        raise BitstreamError("corrupt header: unknown model family, mode or flags")
    if not 1 <= id_len <= MAX_MODEL_ID:
        raise BitstreamError(f"corrupt header: model id length {id_len}")
    try:
        model_id = r.take(id_len).decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("corrupt header: model id is not ASCII") from None
    weights_hash = r.take(4)
    release = tuple(r.take(3)) if version >= 2 else None
    width = r.varint(MAX_SIDE - 1, "width") + 1
    height = r.varint(MAX_SIDE - 1, "height") + 1
    if width * height > MAX_PIXELS:
        raise BitstreamError(f"absurd image size {width}x{height} in header")
    quality = r.varint(10000, "quality") / 100
    codebook = r.varint(1 << 20, "codebook size")
    depth = r.varint(64, "depth")
    count = r.varint(MAX_PACKETS, "packet count")
    crc = int.from_bytes(r.take(4), "little")
    if crc != zlib.crc32(data[:r.pos - 4]):
        raise BitstreamError("corrupt header (CRC mismatch)")
    header = Header(FAMILIES[family], model_id, weights_hash, width, height, quality, codebook, depth,
                    MODES[mode], version, release, bool(flags & FLAG_ROI), bool(flags & FLAG_RESILIENT))
    return header, count, r.pos


def read(data: bytes, strict: bool = True) -> Container:
    """Parse a .bin. strict: any damaged packet or trailing byte raises; else a damaged packet is
    kept with payload None, a truncated tail loses only the packets it cuts, and bytes after the last
    packet are reported (ConcealedWarning) and ignored."""
    data = bytes(data)
    header, count, pos = read_header(data)
    packets: list[Packet] = []
    for i in range(count):
        start = pos
        r = _Reader(data, f"packet {i}")
        r.pos = pos
        try:
            kind, first, span, payload = r.frame()
            crc = int.from_bytes(r.take(4), "little")
        except BitstreamError:
            if strict:
                raise
            pos = len(data)  # a truncated or garbled frame: the packets from here on are lost
            break
        pos = r.pos
        known = kind in PacketKind._value2member_map_
        ok = crc == zlib.crc32(data[start:pos - 4]) and known
        if not ok and strict:
            raise BitstreamError(f"packet {i} is corrupt (CRC mismatch)")
        # A damaged packet keeps the kind its frame claims, if any: a hint, not to be trusted.
        packets.append(Packet(PacketKind(kind) if known else None, first, span, payload if ok else None,
                              start, pos - start))
    if pos != len(data):
        problem = f"{len(data) - pos} unexpected bytes after the last packet"
        if strict:
            raise BitstreamError(problem)
        warnings.warn(ConcealedWarning(problem + "; ignored"), stacklevel=2)
    return Container(header, packets)


def match_packets(packets: list[Packet], layout: list[tuple[PacketKind, int, int]]
                  ) -> tuple[list[Packet | None], list[str]]:
    """Each slot of a layout ((kind, first, count) each) -> the intact packet that names it, wherever
    it is in the file (a packet cut out of a file moves the rest), or None; and the problems found,
    one line each."""
    intact: dict[tuple, Packet] = {}
    empty = set()
    for p in packets:
        if not p.damaged:
            if p.payload:
                intact.setdefault((p.kind, p.first, p.count), p)
            else:
                empty.add((p.kind, p.first, p.count))
    slots = [intact.pop(tuple(slot), None) for slot in layout]
    problems = [f"the {_slot_name(i, slot)} is {'empty' if tuple(slot) in empty else 'missing or corrupt'}"
                for i, (slot, p) in enumerate(zip(layout, slots)) if p is None]
    extra = max(len(intact), len(packets) - len(layout))
    if extra:
        problems.append(f"{extra} packets more than this model writes")
    return slots, problems


def _slot_name(i: int, slot: tuple[PacketKind, int, int]) -> str:
    kind, first, count = slot
    return f"{kind.name.lower()} packet {i} (covering {first}..{first + count - 1})"


def expect_packets(packets: list[Packet], layout: list[tuple[PacketKind, int, int]],
                   conceal: bool = False) -> list[Packet | None]:
    """The packets a model wrote, checked against the layout it writes ((kind, first, count) each, in
    order) -> one packet per slot. Strict: any packet missing, damaged, out of place or extra raises.
    conceal: as match_packets, each problem reported once as a ConcealedWarning."""
    if conceal:
        slots, problems = match_packets(packets, layout)
        for problem in problems:
            warnings.warn(ConcealedWarning(problem + "; concealed"), stacklevel=2)
        return slots
    for i, slot in enumerate(layout):
        p = packets[i] if i < len(packets) else None
        name = _slot_name(i, slot)
        if p is None:
            raise BitstreamError(f"the {name} is missing")
        if p.damaged:
            raise BitstreamError(f"the {name} is corrupt")
        if (p.kind, p.first, p.count) != tuple(slot):
            raise BitstreamError(f"packet {i} should be the {name}, but is a {p.kind.name.lower()} packet covering "
                                 f"{p.first}..{p.first + p.count - 1}")
        if not p.payload:
            raise BitstreamError(f"the {name} is empty")
    if len(packets) > len(layout):
        raise BitstreamError(f"{len(packets) - len(layout)} packets more than this model writes")
    return list(packets)


def describe(data: bytes) -> dict:
    """Header fields and the packet list ({offset, length, kind, ...} in file bytes) of a .bin."""
    c = read(data)
    h = c.header
    video = {}
    if h.mode == "video" and c.packets and c.packets[0].kind == PacketKind.VIDEO:
        try:
            rate = read_varints(c.packets[0].payload, 2, "the video packet")
        except BitstreamError:
            rate = None
        video = {"fps": None if rate is None or not rate[1] else f"{rate[0]}/{rate[1]}",
                 "frames": [{"index": p.first, "offset": p.offset, "length": p.length}
                            for p in c.packets if p.kind == PacketKind.FRAME]}
    return {
        "format_version": h.version, "family": h.family, "model_id": h.model_id,
        "weights_hash": h.weights_hash.hex(), "written_by": h.release_name, "mode": h.mode, "roi": h.roi,
        "resilient": h.resilient,
        "width": h.width, "height": h.height,
        "quality": h.quality, "codebook": h.codebook, "depth": h.depth, "bytes": len(data),
        **video,
        "packets": [{"offset": p.offset, "length": p.length, "kind": p.kind.name.lower(),
                     "first": p.first, "count": p.count} for p in c.packets],
    }
