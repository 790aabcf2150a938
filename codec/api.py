"""The Python API, and the one code path the CLI calls:

    data = codec.encode("kodim23.png", model="hp", quality=50)   # -> bytes of a .bin
    image = codec.decode(data)                                   # -> PIL.Image

Bad data raises bitstream.BitstreamError; a bad image raises codec.io.ImageReadError; bad arguments
raise ValueError.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import bitstream
from bitstream import BitstreamError, Container, Header
from codec import zoo
from codec.entropy import hp as hp_entropy
from codec.entropy import vq as vq_entropy
from codec.io import ImageReadError, load_image

PAD = 64  # the hp transforms downsample by 64 in all (16 for y, 4 more for z)
VQ_PAD = 16  # the vq transforms downsample by 16
# The networks run on a whole image at once: about 0.55 KB of memory a pixel on CPU (4.1 GB peak
# for 6.3 M pixels), so larger images are refused rather than left to exhaust memory.
MAX_PIXELS = 1 << 25
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


def level_of(model, quality: float) -> torch.Tensor:
    """quality 0..100 (stored to 0.01) -> continuous rate level over the trained lambdas."""
    return torch.tensor([quality / 100 * (model.n_levels - 1)], dtype=torch.float32)


def _check_quality(quality: float) -> float:
    if not (isinstance(quality, (int, float)) and math.isfinite(quality)):
        raise ValueError(f"quality must be a number, got {quality!r}")
    if not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise ValueError(f"quality must be in 0..100, got {quality}")
    return round(float(quality), 2)  # the header stores hundredths; encode with what decode will see


def to_tensor(rgb: np.ndarray, device: str, pad: int = PAD) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    h, w = x.shape[2:]
    # Replicate-pad to whole blocks: an edge copy costs fewer bits than a black border.
    return F.pad(x, (0, -w % pad, 0, -h % pad), mode="replicate") if (h % pad or w % pad) else x


def to_rgb(x: torch.Tensor, h: int, w: int) -> np.ndarray:
    x = x[0, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def vq_points(meta: dict) -> list[tuple[int, int]]:
    """A vq model's operating points (codebook size K, depth D) from its metadata, in increasing
    rate: every codebook at depth 1, then the main codebook with each further residual stage."""
    main = meta["codebook_size"]
    return ([(k, 1) for k in (*meta["level_sizes"], main)]
            + [(main, d) for d in range(2, len(meta["residual_sizes"]) + 2)])


def model_qualities(model: str) -> list[float]:
    """The qualities at which a shipped model's operating points lie: one per trained rate level (hp)
    or per (codebook, depth) point (vq), evenly spaced over 0..100. A sweep measures these."""
    meta = zoo.read_meta(zoo.weights_path(model))
    n = len(meta["lambdas"]) if meta["family"] == "hp" else len(vq_points(meta))
    return [point_quality(i, n) for i in range(n)]


def point_quality(i: int, n: int) -> float:
    """Operating point i of n, evenly spaced over qualities 0..100 (in the header's hundredths)."""
    return round(100 * i / (n - 1), 2)


def vq_point_index(points: list, quality: float) -> int:
    """quality 0..100 -> index of the vq operating point it selects (the inverse of point_quality)."""
    return round(quality / 100 * (len(points) - 1))


def encode(image, model: str = "hp", quality: float = 50, bpp: float | None = None, size: int | None = None,
           codebook: int | None = None, depth: int | None = None, refine: int = 0, device: str = "cpu",
           refine_device: str | None = None) -> bytes:
    """Compress an image to the bytes of a .bin file.

    With `bpp` or `size` (bytes of the whole file), the quality is searched instead: the highest
    quality whose file fits the budget. If even quality 0 does not fit, quality 0 is used.
    `codebook` and `depth` (vq only) pick the codebook size K and the residual depth D directly.
    `refine`: steps of encoder-side search for latents that code better (hp: lower rate-distortion
    loss at the quality's lambda; vq, depth-1 points: indices that decode closer to the image). Each
    step costs about two decodes; decoding is unchanged. `refine_device`: where that search runs
    (default: `device`); the file is still coded on `device`, so a GPU can search for a CPU's file."""
    if bpp is not None and size is not None:
        raise ValueError("give at most one of bpp and size")
    model_id = zoo.DEFAULT_MODEL.get(model, model)
    net, meta, whash = zoo.load(model_id, device)
    searcher = zoo.load(model_id, refine_device or device)[0] if refine else net  # zoo.load caches: net if alike
    if meta["family"] != "vq" and (codebook is not None or depth is not None):
        raise ValueError("codebook and depth apply to the vq model only")
    if refine < 0:
        raise ValueError(f"refine must be >= 0 steps, not {refine}")
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    if h * w > MAX_PIXELS:
        raise ImageReadError(f"a {w}x{h} image has {h * w / 1e6:.1f} M pixels; this version codes at most "
                             f"{MAX_PIXELS / 1e6:.1f} M in one piece")
    header = Header(family=meta["family"], model_id=meta["model_id"], weights_hash=whash, width=w, height=h)
    bitstream.container.header_bytes(header)  # validates the size before any model work
    budget = budget_bytes(bpp, size, w, h)
    if meta["family"] == "vq":
        return _encode_vq(net, meta, to_tensor(rgb, device, VQ_PAD), header, quality, codebook, depth, budget, refine,
                          searcher)
    x = to_tensor(rgb, device)
    with torch.no_grad():
        features = net.analysis(x)  # the same at every quality: computed once for a rate search

    def at(q: float) -> bytes:
        header.quality = _check_quality(q)
        level = level_of(net, header.quality).to(device)
        y, z = net.analyse(x, level, features)
        if refine:
            on = _device_of(searcher)
            y, z = searcher.refine(x.to(on), y.to(on), z.to(on), level.to(on), refine, size=(h, w))
            y, z = y.to(device), z.to(device)
        packets, _ = hp_entropy.compress(net, y, z, level)
        return bitstream.write(Container(header, packets))

    return at(quality) if budget is None else search_quality(at, budget)


def _encode_vq(net, meta: dict, x: torch.Tensor, header: Header, quality: float, codebook: int | None, depth: int | None,
               budget: float | None, refine: int, searcher) -> bytes:
    points = vq_points(meta)
    with torch.no_grad():
        features = net.autoencoder.g_a(x)

    def at(i: int) -> bytes:
        header.codebook, header.depth = points[i]
        header.quality = point_quality(i, len(points))
        codes, _ = net.codebook(header.codebook)
        z = features
        if refine and header.depth == 1:
            on = _device_of(searcher)
            z = searcher.autoencoder.refine(x.to(on), features.to(on), searcher.codebook(header.codebook)[0], refine,
                                            size=(header.height, header.width)).to(x.device)
        maps = net.autoencoder.quantizer.indices(z, header.depth, codes)
        return bitstream.write(Container(header, vq_entropy.compress(net, [m[0] for m in maps], header.codebook)))

    if budget is not None:
        if codebook is not None or depth is not None:
            raise ValueError("give a rate target (bpp or size) or a codebook and depth, not both")
        return search_point(at, len(points), budget)
    if codebook is None and depth is None:
        return at(vq_point_index(points, _check_quality(quality)))
    point = (codebook or net.autoencoder.quantizer.codebook_size, depth or 1)
    if point not in points:
        raise ValueError(f"no operating point with codebook {point[0]} and depth {point[1]} (this model has: "
                         + ", ".join(f"{k}" if d == 1 else f"{k}x{d}" for k, d in points) + ")")
    return at(points.index(point))


def _device_of(net) -> torch.device:
    return next(net.parameters()).device


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


def search_quality(at, budget: float, iterations: int = 10) -> bytes:
    """The file at the highest quality (to 0.01) whose size is <= budget bytes.

    Size grows smoothly and monotonically with quality, close to exponentially, so the search
    interpolates log(size) between the bracketing qualities (regula falsi) instead of halving."""
    lo_q, hi_q = 0.0, 100.0
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


def decode_rgb(data: bytes, device: str = "cpu", conceal: bool = False) -> np.ndarray:
    """The bytes of a .bin file -> (H, W, 3) uint8.

    conceal: damaged or missing latent packets are replaced by the prior's prediction instead of
    failing (the hyper-latent packet cannot be concealed)."""
    container = bitstream.read(data, strict=not conceal)
    header = container.header
    if header.width * header.height > MAX_PIXELS:
        raise BitstreamError(f"a {header.width}x{header.height} image is larger than this version decodes "
                             f"({MAX_PIXELS / 1e6:.1f} M pixels)")
    try:
        net, meta, whash = zoo.load(header.model_id, device)
    except zoo.ModelNotFound as e:
        raise BitstreamError(f"this file needs model {header.model_id!r}, which is not installed ({e})") from None
    if whash != header.weights_hash:
        raise BitstreamError(f"this file was made with other weights for model {header.model_id!r} "
                             f"({header.weights_hash.hex()} here {whash.hex()})")
    if header.family == "vq":
        return _decode_vq(net, meta, container, header, device)
    hp, wp = -(-header.height // PAD) * PAD, -(-header.width // PAD) * PAD
    level = level_of(net, header.quality).to(device)
    y_hat = hp_entropy.decompress(net, container.packets, (hp // 16, wp // 16), level, conceal=conceal)
    return to_rgb(net.synthesise(y_hat.to(device), level), header.height, header.width)


def _decode_vq(net, meta: dict, container: Container, header: Header, device: str) -> np.ndarray:
    if (header.codebook, header.depth) not in vq_points(meta):
        raise BitstreamError(f"the header asks for codebook {header.codebook} at depth {header.depth}, "
                             f"which model {header.model_id!r} does not have")
    hw = (-(-header.height // VQ_PAD), -(-header.width // VQ_PAD))
    maps = vq_entropy.decompress(net, container.packets, hw, header.codebook, header.depth)
    codes, _ = net.codebook(header.codebook)
    x_hat = net.autoencoder.synthesise([m[None].to(device) for m in maps], codes)
    return to_rgb(x_hat, header.height, header.width)


def decode(data: bytes, device: str = "cpu") -> Image.Image:
    """The bytes of a .bin file -> PIL image (RGB)."""
    return Image.fromarray(decode_rgb(data, device), "RGB")
