"""The byte side of the codec (numpy only): container format, packets, CRC, and the range coder."""
from bitstream.container import Container, Header, Packet, PacketKind, describe, read, write
from bitstream.errors import BitstreamError

__all__ = ["BitstreamError", "Container", "Header", "Packet", "PacketKind", "describe", "read", "write"]
