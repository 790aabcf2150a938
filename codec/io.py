"""Pixels in and out: the single loader and writer of images for the CLI, the tools and training."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


class ImageReadError(ValueError):
    """The input is not an image we can read (missing, empty, or not a picture)."""


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
