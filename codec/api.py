"""The Python API, and the one code path the CLI calls:

    data = codec.encode("kodim23.png", model="hp", quality=50)   # -> bytes of a .bin
    image = codec.decode(data)                                   # -> PIL.Image

Bad data raises bitstream.BitstreamError; a bad image raises codec.io.ImageReadError; bad arguments
raise ValueError.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import bitstream
from bitstream import BitstreamError, Container, Header, Packet, PacketKind
from bitstream.container import (MAX_PACKETS, ConcealedWarning, expect_packets, match_packets, pack, read_varints,
                                 unpack, varints)
from codec import __version__, zoo
from codec import roi as regions
from codec.io import ImageReadError, load_image

RELEASE = tuple(int(v) for v in __version__.split("."))  # recorded in every file written

# The default limit on an image's size, for encoding and decoding: a file's header is checked
# against it before anything is allocated, so a small file cannot claim a huge image unasked.
MAX_PIXELS = 1 << 25
MAX_RATE_DENOMINATOR = 1 << 16  # a video's frame rate is kept as a fraction with at most this denominator
QUALITY_RANGE = (0.0, 100.0)


def as_rgb(image) -> np.ndarray:
    """A path, encoded bytes, a PIL image or an (H, W, 3) uint8 array -> (H, W, 3) uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return image
    return load_image(image)


def _check_quality(quality: float) -> float:
    if not (isinstance(quality, (int, float)) and math.isfinite(quality)):
        raise ValueError(f"quality must be a number, got {quality!r}")
    if not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise ValueError(f"quality must be in 0..100, got {quality}")
    return round(float(quality), 2)  # the header stores hundredths; encode with what decode will see


def to_tensor(rgb: np.ndarray, device: str, pad: int) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    h, w = x.shape[2:]
    # Replicate-pad to whole blocks: an edge copy costs fewer bits than a black border.
    return F.pad(x, (0, -w % pad, 0, -h % pad), mode="replicate") if (h % pad or w % pad) else x


def to_rgb(x: torch.Tensor, h: int, w: int) -> np.ndarray:
    x = x[0, :, :h, :w].mul(255).clamp_(0, 255).round_().to(torch.uint8)  # in place: one float copy
    return x.permute(1, 2, 0).cpu().numpy()


def model_qualities(model: str) -> list[float]:
    """The qualities at which a shipped model's operating points lie: one per trained rate level (hp)
    or per (codebook, depth) point (vq), evenly spaced over 0..100. A sweep measures these."""
    return zoo.load(zoo.DEFAULT_MODEL.get(model, model))[0].qualities()


def encode(image, model: str = "hp", quality: float = 50, bpp: float | None = None, size: int | None = None,
           codebook: int | None = None, depth: int | None = None, refine: int = 0, device: str = "cpu",
           refine_device: str | None = None, max_pixels: int | None = None, roi=None,
           roi_quality: float | None = None, resilient: bool = False) -> bytes:
    """Compress an image to the bytes of a .bin file.

    With `bpp` or `size` (bytes of the whole file), the quality is searched instead: the highest
    quality whose file fits the budget. If even quality 0 does not fit, quality 0 is used.
    `codebook` and `depth` (vq only) pick the codebook size K and the residual depth D directly.
    `refine`: steps of encoder-side search for latents that code better (hp: lower rate-distortion
    loss at the quality's lambda; vq, depth-1 points: indices that decode closer to the image). Each
    step costs about two decodes; decoding is unchanged. `refine_device`: where that search runs
    (default: `device`); the file is still coded on `device`, so a GPU can search for a CPU's file.
    `max_pixels`: larger images are refused (default MAX_PIXELS).
    `roi`: a region of interest, a mask (path, PIL image or array, any size; white = region), a list
    of boxes (x, y, w, h) in pixels, or "auto" (a saliency estimate). hp codes it at `roi_quality`
    (default codec.roi.DEFAULT_QUALITY) while `quality` (or the quality a bpp / size target finds)
    holds for the rest (searched up to the region's with a bpp / size target); vq codes the region with
    the larger codebook of the point nearest `roi_quality` (default: the main codebook).
    `resilient`: packets that decode each on its own, so that `decode(..., conceal=True)` mends a lost
    one from the rest (hp: slices of 128 pixel rows; vq: four interleaved quarters of the index map),
    at a cost in rate (see the README)."""
    if bpp is not None and size is not None:
        raise ValueError("give at most one of bpp and size")
    model_id = zoo.DEFAULT_MODEL.get(model, model)
    net, meta, whash = zoo.load(model_id, device)
    searcher = zoo.load(model_id, refine_device or device)[0] if refine else net  # zoo.load caches: net if alike
    net.operating_point(0.0, codebook, depth)  # the knobs' validity, before any image work
    if (bpp is not None or size is not None) and (codebook is not None or depth is not None):
        raise ValueError("give a rate target (bpp or size) or a codebook and depth, not both")
    if refine < 0:
        raise ValueError(f"refine must be >= 0 steps, not {refine}")
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if h * w > limit:
        raise ImageReadError(f"a {w}x{h} image has {h * w / 1e6:.1f} M pixels, over the limit of {limit} "
                             "(max_pixels, --max-pixels)")
    header = Header(family=net.family, model_id=model_id, weights_hash=whash, width=w, height=h, release=RELEASE)
    bitstream.container.header_bytes(header)  # validates the size before any model work
    budget = budget_bytes(bpp, size, w, h)
    x = to_tensor(rgb, device, net.stride)
    region = None
    if roi is not None:
        cell = net.cell
        region = (regions.share_map(regions.region_mask(roi, rgb), (x.shape[2] // cell, x.shape[3] // cell), cell),
                  None if roi_quality is None else _check_quality(roi_quality))
    features = net.prepare(x)  # the same at every rate: computed once for a rate search

    header.roi, header.resilient = region is not None, bool(resilient)

    def at(q: float) -> bytes:
        header.quality, header.codebook, header.depth = net.operating_point(_check_quality(q), codebook, depth)
        packets = net.compress(x, features, header, refine, searcher, roi=region)
        return bitstream.write(Container(header, packets))

    if budget is None:
        return at(quality)
    if net.continuous_quality:  # with a region, the background's quality stays at or below the region's
        return search_quality(at, budget, top=net.search_top(region))
    qualities = net.qualities(region)  # the points in increasing rate (with a region, those below it)
    return search_point(lambda i: at(qualities[i]), len(qualities), budget)


def search_point(at, n: int, budget: float) -> bytes:
    """The file at the highest of n discrete operating points (rate increasing) that fits the budget,
    by bisection; the lowest point when none fits."""
    lo, hi, best = 0, n - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = at(mid)
        if len(data) <= budget:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    return best if best is not None else at(0)


def budget_bytes(bpp: float | None, size: int | None, width: int, height: int) -> float | None:
    """A rate target (bits per pixel or whole-file bytes) -> a byte budget; None when there is none."""
    if bpp is None and size is None:
        return None
    budget = size if size is not None else bpp * width * height / 8
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"the rate target must be a positive number, got {bpp if size is None else size}")
    return budget


def search_quality(at, budget: float, iterations: int = 10, top: float = 100.0) -> bytes:
    """The file at the highest quality up to `top` (to 0.01) whose size is <= budget bytes.

    Size grows smoothly and monotonically with quality, close to exponentially, so the search
    interpolates log(size) between the bracketing qualities (regula falsi) instead of halving."""
    lo_q, hi_q = 0.0, top
    lo, hi = at(lo_q), at(hi_q)
    if len(hi) <= budget:
        return hi
    if len(lo) > budget:
        return lo
    for _ in range(iterations):
        if hi_q - lo_q <= 0.01 or len(lo) >= 0.995 * budget:
            break
        t = (math.log(budget) - math.log(len(lo))) / (math.log(len(hi)) - math.log(len(lo)))
        q = round(lo_q + min(max(t, 0.05), 0.95) * (hi_q - lo_q), 2)
        if q in (lo_q, hi_q):
            break
        data = at(q)
        if len(data) <= budget:
            lo_q, lo = q, data
        else:
            hi_q, hi = q, data
    return lo


def read_file(data: bytes, mode: str, conceal: bool = False, max_pixels: int | None = None) -> Container:
    """The bytes of a .bin holding an image or a video (`mode`), read and checked before any decoding;
    a strict read's error names the damaged packets."""
    try:
        container = bitstream.read(data, strict=not conceal)
    except BitstreamError as e:
        raise BitstreamError(f"{e}{damaged_packets(data)}") from None
    header = container.header
    if header.version < 2:
        raise BitstreamError(f"this file was written by {header.release_name} in format {header.version}, whose "
                             "float entropy model decodes only on the kind of machine that wrote it; decode it "
                             "there with codec 0.1.x (this release writes and reads format 2, portable files)")
    if header.mode != mode:
        raise BitstreamError(f"this file holds {'a video' if header.mode == 'video' else 'an image'}: decode it "
                             + ("to a video file (.mkv, .y4m or frame%04d.png) or with codec.decode_video"
                                if header.mode == "video" else "to an image file or with codec.decode"))
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if header.width * header.height > limit:
        raise BitstreamError(f"the file claims a {header.width}x{header.height} image, over the limit of {limit} "
                             "pixels (max_pixels, --max-pixels)")
    return container


def decode_rgb(data: bytes, device: str = "cpu", conceal: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """The bytes of a .bin file -> (H, W, 3) uint8.

    conceal: damaged or missing packets are replaced by the prior's prediction where the model can
    predict them, instead of failing, each reported as a bitstream.ConcealedWarning. max_pixels: a
    file whose header claims a larger image is refused before any decoding (default MAX_PIXELS)."""
    container = read_file(data, "image", conceal, max_pixels)
    header = container.header
    net = model_of(header, device)
    return to_rgb(net.decompress(container.packets, header, conceal), header.height, header.width)


def encode_video(frames, rate: Fraction, model: str = "hp", quality: float = 50, codebook: int | None = None,
                 depth: int | None = None, device: str = "cpu", max_pixels: int | None = None,
                 progress=None) -> bytes:
    """RGB frames (an iterable of (H, W, 3) uint8, all one size) at `rate` frames a second -> the
    bytes of a video .bin. Intra only: every frame is coded as an image (encode's arguments), each
    decodable on its own; its packets are nested in one FRAME packet, after a VIDEO packet that holds
    the frame rate. progress(i) is called after frame i."""
    rate = Fraction(rate).limit_denominator(MAX_RATE_DENOMINATOR)
    if not 0 < rate.numerator < 1 << 31:
        raise ValueError(f"the frame rate must be positive and under 2^31 frames a second, not {rate}")
    header, packets = None, []
    for i, rgb in enumerate(frames):
        if len(packets) == MAX_PACKETS - 1:
            raise ValueError(f"a video holds at most {MAX_PACKETS - 1} frames")
        frame = bitstream.read(encode(rgb, model, quality, codebook=codebook, depth=depth, device=device,
                                      max_pixels=max_pixels))
        if header is None:
            header = frame.header
        elif (frame.header.width, frame.header.height) != (header.width, header.height):
            raise ImageReadError(f"frame {i} is {frame.header.width}x{frame.header.height}, the video "
                                 f"{header.width}x{header.height}")
        packets.append(Packet(PacketKind.FRAME, i, 1, pack(frame.packets)))
        if progress:
            progress(i)
    if header is None:
        raise ImageReadError("the video has no frames")
    header.mode = "video"
    video = Packet(PacketKind.VIDEO, 0, len(packets), varints(rate.numerator, rate.denominator))
    return bitstream.write(Container(header, [video, *packets]))


def video_packet(container: Container) -> Packet | None:
    """A video file's first packet if it is an intact video packet of 1 .. MAX_PACKETS - 1 frames."""
    video = container.packets[0] if container.packets else None
    ok = video is not None and not video.damaged and (video.kind, video.first) == (PacketKind.VIDEO, 0)
    return video if ok and 1 <= video.count < MAX_PACKETS else None


def video_layout(frames: int) -> list[tuple[PacketKind, int, int]]:
    """The packets of a video of n frames: the video packet, then a frame packet each."""
    return [(PacketKind.VIDEO, 0, frames)] + [(PacketKind.FRAME, i, 1) for i in range(frames)]


def decode_video(data: bytes, device: str = "cpu", conceal: bool = False, max_pixels: int | None = None
                 ) -> tuple[Header, Fraction, int, Iterator[np.ndarray]]:
    """The bytes of a video .bin -> (its header, its frame rate, its frame count, its frames as
    (H, W, 3) uint8, each decoded as it is used). conceal: as decode_rgb's within a frame; a lost
    frame repeats the frame before it (mid-grey for a first frame)."""
    container = read_file(data, "video", conceal, max_pixels)
    header = container.header
    video = video_packet(container)
    if video is None:
        raise BitstreamError("the video packet (the frame rate) is missing or corrupt: the video cannot be decoded")
    numerator, denominator = read_varints(video.payload, 2, "the video packet")
    if not (1 <= numerator < 1 << 31 and 1 <= denominator <= MAX_RATE_DENOMINATOR):
        raise BitstreamError(f"corrupt video packet: {video.count} frames at {numerator}/{denominator} a second")
    slots = expect_packets(container.packets, video_layout(video.count), conceal)[1:]
    net = model_of(header, device)
    image = dataclasses.replace(header, mode="image")

    def frames() -> Iterator[np.ndarray]:
        previous = np.full((header.height, header.width, 3), 128, np.uint8)
        for i, p in enumerate(slots):
            try:
                if p is not None:
                    previous = to_rgb(net.decompress(unpack(p.payload, f"frame {i}"), image, conceal),
                                      header.height, header.width)
            except BitstreamError as e:
                if not conceal:
                    raise
                warnings.warn(ConcealedWarning(f"frame {i}: {e}; the frame before repeated"), stacklevel=2)
            yield previous

    return header, Fraction(numerator, denominator), video.count, frames()


def damaged_packets(data: bytes) -> str:
    """For a file a strict read refused: "; " and the packets it lacks or holds damaged, each named as
    the model that wrote it lays them out (what --conceal would go past); "" when that says nothing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConcealedWarning)
            container = bitstream.read(data, strict=False)
        header = container.header
        net = model_of(header)
    except BitstreamError:
        return ""
    if header.mode == "video":
        video = video_packet(container)
        if video is None:
            return ""
        problems = match_packets(container.packets, video_layout(video.count))[1]
        return f"; {'; '.join(problems)} (--conceal repeats the frame before a lost one)" if problems else ""
    layout = net.layout(header)
    if header.roi:
        h, w = regions.grid(header, net)
        layout = [(PacketKind.ROI, 0, h * w), *layout]
    problems = match_packets(container.packets, layout)[1]
    return f"; {'; '.join(problems)} (--conceal goes past what the model can predict)" if problems else ""


def model_of(header: Header, device: str = "cpu"):
    """The network a file's header names, with the very weights that wrote it; otherwise a
    BitstreamError naming the model and the release that wrote the file."""
    model_id = zoo.DEFAULT_MODEL.get(header.model_id, header.model_id)  # format 1 recorded the family
    try:
        net, _, whash = zoo.load(model_id, device)
    except zoo.ModelNotFound:
        raise BitstreamError(f"this file needs model {header.model_id!r}, which this release (codec {__version__}: "
                             f"{', '.join(zoo.MODELS)}) does not ship; decode it with {header.release_name}, "
                             "which wrote it") from None
    if whash != header.weights_hash:
        raise BitstreamError(f"this file needs model {header.model_id!r} with weights {header.weights_hash.hex()}, "
                             f"but this release's {model_id} (codec {__version__}) has weights {whash.hex()}; "
                             f"decode it with {header.release_name}, which wrote it")
    if net.family != header.family:
        raise BitstreamError(f"corrupt header: family {header.family!r}, but model {header.model_id!r} is "
                             f"{net.family!r}")
    return net


def decode(data: bytes, device: str = "cpu", conceal: bool = False, max_pixels: int | None = None) -> Image.Image:
    """The bytes of a .bin file -> PIL image (RGB); the arguments as decode_rgb's."""
    return Image.fromarray(decode_rgb(data, device, conceal, max_pixels), "RGB")
