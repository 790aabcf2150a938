"""Regions of interest: where the user wants more bits, as a quality map over the latent grid.

A region comes as a mask image (white = region, any size, resized to the image), boxes (x, y, w, h in
pixels) or "auto" (a cheap saliency estimate: skin tones, edges and local contrast, no learned
model). It becomes a share of region per latent position (`cell` pixels a side), blended over a cell
or two at the edge so the picture has no seam. hp codes each position at a quality between the
background's (the header's quality) and the region's; vq codes the positions mostly inside with a
larger codebook. The ROI packet holds the region's value (hp: its quality; vq: its codebook size)
and the deflated shares (a byte a position); hp's qualities are computed from them in integers,
alike in encoder and decoder.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from bitstream import BitstreamError, Packet, PacketKind
from bitstream.container import expect_packets

AUTO_SHARE = 0.15     # "auto": the most salient share of the image becomes the region
DEFAULT_QUALITY = 80  # hp: the region's quality unless the caller gives one
INSIDE = 128          # vq: a position whose share of region is at least this takes the region's codebook


def region_quality(quality: float | None) -> float:
    """hp: the region's quality, DEFAULT_QUALITY unless given."""
    return DEFAULT_QUALITY if quality is None else quality


def inside(share: np.ndarray) -> np.ndarray:
    """vq: the positions (bool) that take the region's codebook."""
    return share >= INSIDE


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' (pixels) -> a box; ValueError otherwise."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"a box is x,y,w,h in pixels, got {text!r}")
    return check_box(box)


def check_box(box) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"a box needs x, y >= 0 and w, h > 0, got {x},{y},{w},{h}")
    return x, y, w, h


def region_mask(roi, rgb: np.ndarray) -> np.ndarray:
    """The user's region -> (H, W) float mask in [0, 1]. roi: "auto", a list of boxes (x, y, w, h),
    or a mask (a path, a PIL image or a 2-D array of any size; white / nonzero = region)."""
    h, w = rgb.shape[:2]
    if isinstance(roi, str) and roi == "auto":
        return saliency_mask(rgb)
    if isinstance(roi, (list, tuple)):
        if not roi or not all(np.ndim(b) == 1 and len(b) == 4 for b in roi):
            raise ValueError("boxes are a list of (x, y, w, h) in pixels")
        mask = np.zeros((h, w), np.float32)
        for x, y, bw, bh in map(check_box, roi):
            if x >= w or y >= h:
                raise ValueError(f"box {x},{y},{bw},{bh} lies outside the {w}x{h} image")
            mask[y:y + bh, x:x + bw] = 1
        return mask
    try:
        if isinstance(roi, (str, Path)):
            roi = Image.open(roi)
        if isinstance(roi, Image.Image):  # decoded here: a truncated file fails inside the try
            roi = np.asarray(roi.convert("L").resize((w, h), Image.BILINEAR), np.float32) / 255
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the ROI mask: {e}") from None
    mask = np.asarray(roi, np.float32)
    if mask.ndim == 3:
        mask = mask.mean(2)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"an ROI mask is a 2-D image, got shape {mask.shape}")
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.BILINEAR))
    return np.clip(mask / max(float(mask.max()), 1e-9), 0, 1)


def saliency_mask(rgb: np.ndarray) -> np.ndarray:
    """A cheap saliency estimate (H, W) in {0, 1}, at an eighth of the resolution: skin tones first
    (Chai and Ngan's Cb/Cr box, red above green above blue, not black), then edge energy and local
    contrast (each by its rank, so neither's scale decides); the top AUTO_SHARE of the image kept."""
    if min(rgb.shape[:2]) < 16:  # too small to rank anything: the whole image
        return np.ones(rgb.shape[:2], np.float32)
    small = np.asarray(Image.fromarray(rgb).reduce(8), np.float32) / 255
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    grey = 0.299 * r + 0.587 * g + 0.114 * b
    gy, gx = np.gradient(grey)
    cb = 0.5 - 0.169 * r - 0.331 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.419 * g - 0.081 * b
    skin = (cb > 0.30) & (cb < 0.50) & (cr > 0.52) & (cr < 0.68) & (r > g) & (g > b) & (r - g < 0.3) & (grey > 0.08)
    score = _rank(np.hypot(gx, gy)) + _rank(np.abs(grey - _box_blur(grey, 3))) + 2 * _box_blur(skin.astype(np.float32), 1)
    score = _box_blur(score, 2)
    keep = (score >= np.quantile(score, 1 - AUTO_SHARE)).astype(np.uint8) * 255
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(keep).resize((w, h), Image.NEAREST), np.float32) / 255


def _rank(x: np.ndarray) -> np.ndarray:
    """Each value's rank among all, scaled to 0..1."""
    return np.argsort(np.argsort(x, axis=None)).reshape(x.shape) / max(x.size - 1, 1)


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated."""
    p = np.pad(x, r, mode="edge")
    c = np.cumsum(np.cumsum(np.pad(p, ((1, 0), (1, 0))), 0), 1)
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def share_map(mask: np.ndarray, grid: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) mask, a latent grid (h, w) of `cell`-pixel cells over the padded image -> (h, w) uint8
    share of region, 0..255: each cell's mean of the mask, widened by one cell and blended (the
    region's own cells stay whole), so the quality moves over a cell or two at the region's edge."""
    h, w = grid
    padded = np.zeros((h * cell, w * cell), np.float32)
    padded[:mask.shape[0], :mask.shape[1]] = mask[:h * cell, :w * cell]
    share = padded.reshape(h, cell, w, cell).mean((1, 3))
    share = np.maximum(share, _box_blur(share, 1))
    return np.rint(share * 255).astype(np.uint8)


def qualities(share: np.ndarray, background: float, region: float) -> np.ndarray:
    """Share map and the two qualities -> (h, w) int64 qualities in hundredths, in integers (the
    decoder computes the same): background + share / 255 of the way to the region's."""
    bg, rq = round(background * 100), round(region * 100)
    return bg + (share.astype(np.int64) * (rq - bg) + 127) // 255


def packet(share: np.ndarray, region: int) -> Packet:
    """The ROI packet: `region` (2 bytes, little-endian: hp, the region's quality in hundredths; vq,
    the region's codebook size), then the share map deflated (raw, RFC 1951), a byte a position,
    row-major."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the packet's CRC guards it already
    payload = region.to_bytes(2, "little") + deflate.compress(np.ascontiguousarray(share, np.uint8).tobytes()) + deflate.flush()
    return Packet(PacketKind.ROI, 0, share.size, payload)


def grid(header, net) -> tuple[int, int]:
    """The positions (h, w) of a header's ROI map: one per `net.cell` pixels of the padded image."""
    return tuple(-(-n // net.stride) * net.stride // net.cell for n in (header.height, header.width))


def read_packet(packets: list[Packet], header, grid: tuple[int, int], needed: str
                ) -> tuple[tuple[np.ndarray, int] | None, list[Packet]]:
    """The ROI packet a header announces (flag `roi`) -> ((share map, region value), the packets
    after it); (None, packets) for a file without a region. A missing or damaged one fails, with
    `needed` saying why the rest cannot be decoded without it."""
    if not header.roi:
        return None, packets
    try:
        (roi,) = expect_packets(packets[:1], [(PacketKind.ROI, 0, grid[0] * grid[1])])
        return unpack(roi.payload, grid), packets[1:]
    except BitstreamError as e:
        raise BitstreamError(f"{e}: {needed}") from None


def unpack(payload: bytes, grid: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The ROI packet's payload, checked -> (share map (h, w) uint8, the region value)."""
    h, w = grid
    region = int.from_bytes(payload[:2], "little")
    if len(payload) < 3:
        raise BitstreamError("corrupt ROI packet: too short")
    try:
        d = zlib.decompressobj(-15)
        raw = d.decompress(payload[2:], h * w + 1)
    except zlib.error:
        raise BitstreamError("corrupt ROI packet: not a deflate stream") from None
    if len(raw) != h * w or not d.eof or d.unused_data:
        raise BitstreamError(f"corrupt ROI packet: it does not hold exactly {h}x{w} positions")
    return np.frombuffer(raw, np.uint8).reshape(h, w), region
