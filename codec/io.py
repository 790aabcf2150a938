"""Pixels in and out: the single loader and writer of images and videos for the CLI, the tools and
training. Videos go through PyAV (FFmpeg)."""
from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".y4m", ".mov", ".webm")
# What a decoded video is written as, by the output's suffix: lossless FFV1 (8-bit RGB) in
# Matroska, or raw 4:4:4 YUV in a y4m file; a name with a %d pattern gets one PNG per frame.
VIDEO_WRITERS = {".mkv": ("matroska", "ffv1", "bgr0"), ".y4m": ("yuv4mpegpipe", "rawvideo", "yuv444p")}


class ImageReadError(ValueError):
    """The input is not an image or video we can read (missing, empty, or not a picture)."""


def load_image(source: str | Path | bytes) -> np.ndarray:
    """A path or encoded bytes -> (H, W, 3) uint8 RGB. Alpha is dropped, grey is expanded."""
    try:
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except OSError as e:
        raise ImageReadError(f"cannot open {source}: {e.strerror}") from None
    with stream:
        try:
            with Image.open(stream) as im:
                im.load()
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            name = "input" if isinstance(source, (bytes, bytearray)) else str(source)
            raise ImageReadError(f"{name} is not a readable image ({e})") from None


def image_format(suffix: str) -> str:
    """A file suffix -> the Pillow format that writes it ("" means PNG); ValueError if none does."""
    fmt = Image.registered_extensions().get(suffix.lower() or ".png")
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"unknown image format {suffix!r}")
    return fmt


def encode_image(rgb: np.ndarray, suffix: str = ".png") -> bytes:
    """(H, W, 3) uint8 -> the bytes of an image file in the format its suffix names (PNG by default)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format=image_format(suffix))
    return buf.getvalue()


def find_images(root: str | Path) -> list[Path]:
    """Every image file under root, recursively, in a stable order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video(path: str | Path) -> tuple[Iterator[np.ndarray], Fraction, int]:
    """A video file -> (its frames as (H, W, 3) uint8 RGB, read as they are used; its frame rate;
    its frame count as the container states it, 0 when it does not)."""
    import av
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError, OSError) as e:
        raise ImageReadError(f"{path} is not a readable video ({e})") from None
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)

    def frames() -> Iterator[np.ndarray]:
        with container:
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except av.FFmpegError as e:
                raise ImageReadError(f"{path}: a frame cannot be decoded ({e})") from None

    return frames(), Fraction(rate), stream.frames or 0


def video_writer(name: str) -> tuple[str, str, str] | None:
    """The (container format, codec, pixel format) an output name asks for; None for a PNG pattern;
    ValueError for anything else."""
    if "%" in name and Path(name).suffix.lower() == ".png":
        try:
            name % 0
        except (TypeError, ValueError):
            raise ValueError(f"{name!r} is not a frame pattern like frame%04d.png") from None
        return None
    try:
        return VIDEO_WRITERS[Path(name).suffix.lower()]
    except KeyError:
        raise ValueError(f"a video decodes to .mkv (lossless FFV1), .y4m or PNG frames (a name like "
                         f"frame%04d.png), not {name!r}") from None


def write_video(path: str | Path, frames: Iterable[np.ndarray], rate: Fraction, writer: tuple[str, str, str]) -> None:
    """RGB frames -> a video file (`writer` from video_writer), written beside `path` and renamed
    into place when complete: memory stays one frame's, and a failure leaves nothing behind."""
    import av
    fmt, codec, pix_fmt = writer
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w", format=fmt) as out:
            stream = None
            for rgb in frames:
                if stream is None:
                    stream = out.add_stream(codec, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
                out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)))
            if stream is not None:
                out.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
