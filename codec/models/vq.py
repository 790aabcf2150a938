"""The `vq` family: a VQGAN-style autoencoder with 16x downsampling, its clustered codebooks and
its index prior, behind the compress/decompress seam (VQCodec).

x: (B, 3, H, W) in [0, 1], H and W multiples of 16 -> index maps (B, H/16, W/16), one per residual
stage -> x_hat. GroupNorm residual blocks, as in VQGAN. The first and last 2x of the resolution are
a pixel (un)shuffle, so no convolution runs at full resolution: that is most of the cost of a step.

Variable rate: `levels` holds smaller codebooks clustered from the main one (K = 2 ... K_main / 2,
each fine-tuned with the transforms frozen) and, for each, the map from a main-codebook index to its
cluster, which the entropy model uses to marginalise its predictions onto the smaller codebook.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bitstream import BitstreamError, Header, Packet, PacketKind
from bitstream.container import expect_packets
from codec import roi as regions
from codec.entropy.tables import static_table
from codec.models.index_prior import IndexPrior
from codec.quantizers.vq import VectorQuantizer

# MS-SSIM (pytorch_msssim) downsamples four times with an 11-pixel window: images need more than
# 160 pixels a side. Below that the vq losses and measures use MSE alone.
MSSSIM_MIN_SIDE = 160


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQAutoencoder(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (64, 128, 160, 160), dim: int = 192, codebook_size: int = 8192,
                 code_dim: int = 16, residual_sizes: tuple[int, ...] = (4096,), decoder_blocks: int = 2):
        super().__init__()
        c = list(channels)  # widths at 1/2, 1/4, 1/8, 1/16 of the resolution
        enc: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12, c[0], 3, padding=1)]
        for a, b in zip(c[:-1], c[1:]):
            enc += [ResBlock(a), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        enc += [ResBlock(c[-1]), nn.GroupNorm(32, c[-1]), nn.SiLU(), nn.Conv2d(c[-1], dim, 1)]
        self.g_a = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(dim, c[-1], 3, padding=1), ResBlock(c[-1])]
        for a, b in zip(c[::-1][:-1], c[::-1][1:]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
            dec += [ResBlock(b) for _ in range(decoder_blocks)]
        dec += [nn.GroupNorm(32, c[0]), nn.SiLU(), nn.Conv2d(c[0], 12, 3, padding=1), nn.PixelShuffle(2)]
        self.g_s = nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(dim, codebook_size, code_dim, tuple(residual_sizes))

    def forward(self, x: torch.Tensor) -> dict:
        """Training path -> {"x_hat", "indices" (stage 1), "vq_loss"}."""
        z_q, indices, vq_loss = self.quantizer(self.g_a(x))
        return {"x_hat": self.g_s(z_q), "indices": indices, "vq_loss": vq_loss}

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, depth: int = 1, codes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """x -> index maps (B, H/16, W/16), one per stage; codes: a clustered main codebook."""
        return self.quantizer.indices(self.g_a(x), depth, codes)

    @torch.no_grad()
    def synthesise(self, maps: list[torch.Tensor], codes: torch.Tensor | None = None,
                   region: tuple[torch.Tensor, torch.Tensor] | None = None,
                   restored: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Index maps -> x_hat; region: (codebook, where (B, H/16, W/16)) of a region of interest;
        restored: as the quantizer's lookup."""
        return self.g_s(self.quantizer.lookup(maps, codes, region, restored)).clamp(0, 1)

    def refine(self, x: torch.Tensor, z: torch.Tensor, codes: torch.Tensor, steps: int, lr: float = 0.005,
               msssim_weight: float = 1.0, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Encoder-side search: move the latent z (B, dim, H/16, W/16) of x so that its depth-1
        quantization onto `codes` decodes closer to x (MSE + w * (1 - MS-SSIM) over the top-left
        `size` pixels, the image without its padding), gradients passing the nearest-code choice
        straight through. Returns the z, of the steps tried, whose decoded image scored best. The
        decoder needs nothing of this: it reads the indices as always."""
        from pytorch_msssim import ms_ssim
        h, w = size or x.shape[-2:]
        x = x[..., :h, :w]
        weight = msssim_weight if min(h, w) > MSSSIM_MIN_SIDE else 0.0
        b, _, zh, zw = z.shape
        best, best_loss = z, float("inf")
        z = z.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for step in range(steps + 1):
                e = self.quantizer.project(z)
                picked = codes[self.quantizer.stages[0].nearest(e, codes)]  # as indices() will pick
                e = e + (picked - e).detach()
                x_hat = self.g_s(self.quantizer.project_out(e.view(b, zh, zw, -1).permute(0, 3, 1, 2)))
                x_hat = x_hat[..., :h, :w].clamp(0, 1)
                loss = (x_hat - x).pow(2).mean()
                if weight:
                    loss = loss + weight * (1 - ms_ssim(x_hat, x, data_range=1.0))
                if loss.item() < best_loss:
                    best, best_loss = z.detach().clone(), loss.item()
                if step == steps:
                    break
                z.grad, = torch.autograd.grad(loss, z)  # the latent's gradient only, not the weights'
                opt.step()
        return best


class ClusteredCodebooks(nn.Module):
    """Buffers `codes_K` (K, code_dim) and `mapping_K` (K_main,) for each clustered size K."""

    def __init__(self, sizes: tuple[int, ...], code_dim: int, main_size: int):
        super().__init__()
        self.sizes = tuple(sizes)
        for k in self.sizes:
            self.register_buffer(f"codes_{k}", torch.zeros(k, code_dim))
            self.register_buffer(f"mapping_{k}", torch.zeros(main_size, dtype=torch.int32))

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"codes_{k}"), getattr(self, f"mapping_{k}").long()

    def set(self, k: int, codes: torch.Tensor, mapping: torch.Tensor) -> None:
        getattr(self, f"codes_{k}").copy_(codes)
        getattr(self, f"mapping_{k}").copy_(mapping)


class VQCodec(nn.Module):
    """What a vq weights file holds: the autoencoder, its clustered codebooks, the index prior, and
    the frequencies with which residual stages code their indices.

    Operating points (codebook size K, depth D), in increasing rate: every codebook at depth 1, then
    the main codebook with each further residual stage. Quality 0..100 picks one, evenly spaced."""

    family, arch, stride = "vq", "vq-f16", 16
    cell = 16  # pixels a side of one index position
    continuous_quality = False  # a quality selects the nearest of the operating points

    def __init__(self, config: dict):
        super().__init__()
        k, d = config["codebook_size"], config["code_dim"]
        self.autoencoder = VQAutoencoder(tuple(config["channels"]), config["dim"], k, d,
                                         tuple(config["residual_sizes"]), config["decoder_blocks"])
        self.levels = ClusteredCodebooks(tuple(config["level_sizes"]), d, k)
        self.prior = IndexPrior(k, d, config["prior_dim"], config["prior_depth"], config["prior_heads"],
                                config["head_rank"])
        for i, size in enumerate(config["residual_sizes"]):
            self.register_buffer(f"residual_counts_{i + 1}", torch.ones(size))
        main = k
        self.points = ([(size, 1) for size in (*config["level_sizes"], main)]
                       + [(main, depth) for depth in range(2, len(config["residual_sizes"]) + 2)])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every codebook size this model codes with, smallest first."""
        return (*self.levels.sizes, self.autoencoder.quantizer.codebook_size)

    def codebook(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Size K -> (codes (K, code_dim), mapping from main-codebook index to this codebook's)."""
        main = self.autoencoder.quantizer
        if k == main.codebook_size:
            codes = main.codes()
            return codes, torch.arange(k, device=codes.device)
        if k not in self.levels.sizes:
            raise ValueError(f"no codebook of {k} codes (this model has {', '.join(map(str, self.sizes))})")
        return self.levels.get(k)

    def prior_codes(self, k: int) -> torch.Tensor:
        """The code vectors the index prior reads for size K, as stored: the prior normalises them
        itself, deterministically (a float32 normalisation here would round differently elsewhere)."""
        main = self.autoencoder.quantizer
        return main.stages[0].weight if k == main.codebook_size else self.levels.get(k)[0]

    def residual_counts(self, stage: int) -> np.ndarray:
        """How often each index of residual stage `stage` (1, 2, ...) occurred over the training set."""
        return getattr(self, f"residual_counts_{stage}").cpu().numpy().astype(np.int64)

    # --- rates ---

    def qualities(self, roi: tuple[np.ndarray, float | None] | None = None) -> list[float]:
        """The quality of each operating point, evenly spaced over 0..100 (in the header's hundredths);
        with a region of interest, only those of the depth-1 points below the region's codebook."""
        n = len(self.points)
        qualities = [round(100 * i / (n - 1), 2) for i in range(n)]
        if roi is None:
            return qualities
        top = self.region_codebook(roi[1])
        return [q for q, (k, d) in zip(qualities, self.points) if d == 1 and k < top]

    def operating_point(self, quality: float, codebook: int | None, depth: int | None) -> tuple[float, int, int]:
        """The user's rate knobs -> the header's (quality, codebook, depth): a (codebook, depth) pair
        when given (either defaults to the main codebook / depth 1), else the point nearest the quality."""
        if codebook is None and depth is None:
            i = round(quality / 100 * (len(self.points) - 1))
        else:
            point = (codebook or self.autoencoder.quantizer.codebook_size, depth or 1)
            if point not in self.points:
                raise ValueError(f"no operating point with codebook {point[0]} and depth {point[1]} (this model "
                                 "has: " + ", ".join(f"{k}" if d == 1 else f"{k}x{d}" for k, d in self.points) + ")")
            i = self.points.index(point)
        return (self.qualities()[i], *self.points[i])

    # --- the coding seam: image <-> packets ---

    @torch.no_grad()
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The rate-free part of compress (the encoder's features): computed once for a rate search."""
        return self.autoencoder.g_a(x)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, features: torch.Tensor, header: Header, refine: int = 0,
                 searcher: VQCodec | None = None, roi: tuple[np.ndarray, float | None] | None = None
                 ) -> list[Packet]:
        """x (1, 3, H, W) padded, features = prepare(x), at (header.codebook, header.depth) -> INDICES
        packets, one per quantizer stage (resilient: per stage and quarter, see `parts`): stage 1 coded with the index prior, marginalised onto the
        codebook in use; residual stages with one static table each (their training-set frequencies).
        refine: steps of encoder-side search (depth-1 points), run by `searcher` (this model elsewhere).
        roi: (share of region per index position (h, w) uint8, the region's quality or None for the
        main codebook): the positions at least half in the region take their stage-1 index from the
        larger codebook of that quality's point (an ROI packet first records its size)."""
        codes, mapping = self.codebook(header.codebook)
        z = features
        if refine and header.depth == 1:
            net = searcher or self
            on = next(net.parameters()).device
            z = net.autoencoder.refine(x.to(on), features.to(on), net.codebook(header.codebook)[0], refine,
                                       size=(header.height, header.width)).to(x.device)
        maps = [m[0] for m in self.autoencoder.quantizer.indices(z, header.depth, codes)]
        region = None
        if roi is not None:
            k = self.region_codebook(roi[1])
            if header.depth != 1 or k <= header.codebook:
                raise ValueError(f"a region needs a codebook larger than the background's ({header.codebook} at "
                                 f"depth {header.depth}; the region's would be {k}): pick a lower quality"
                                 + (" or a higher region quality" if header.depth == 1 else ""))
            inside = torch.from_numpy(regions.inside(roi[0])).to(maps[0].device)
            region = (self.prior_codes(k), self.codebook(k)[1], inside)
            maps[0] = torch.where(inside, self.autoencoder.quantizer.indices(z, 1, self.codebook(k)[0])[0][0], maps[0])
        from bitstream.coder import Encoder  # here: a training machine may lack the coder's build
        packets = []
        for first, stage, rows, cols in self.parts(*maps[0].shape, header.depth, header.resilient):
            part = maps[stage][rows, cols].contiguous()
            if stage == 0:
                second = None if region is None else (*region[:2], region[2][rows, cols])
                payload = self.prior.compress(part, self.prior_codes(header.codebook), mapping, second)
            else:
                enc = Encoder()
                symbols = part.flatten().cpu().numpy()
                static_table(self.residual_counts(stage)).encode(enc, symbols, np.zeros_like(symbols))
                payload = enc.finish()
            packets.append(Packet(PacketKind.INDICES, first, part.numel(), payload))
        if roi is None:
            return packets
        # Only inside / outside matters here: a two-valued map deflates to a fraction of the bytes.
        return [regions.packet(np.where(regions.inside(roi[0]), 255, 0).astype(np.uint8), k), *packets]

    def region_codebook(self, quality: float | None) -> int:
        """The codebook a region of interest is coded with: that of the depth-1 point nearest
        `quality` (None: the main codebook)."""
        sizes = [k for k, d in self.points if d == 1]
        return sizes[-1] if quality is None else sizes[round(quality / 100 * (len(sizes) - 1))]

    @staticmethod
    def parts(h: int, w: int, depth: int, resilient: bool) -> list[tuple[int, int, slice, slice]]:
        """The INDICES packets of an h x w index map, in file order: (the packet's `first` field, the
        quantizer stage, rows, columns). One packet per stage; resilient, one per stage and quarter
        of the map, the positions (2i + a, 2j + b) (first = 4 stage + 2a + b), each coded as a map of
        its own: a lost quarter leaves every lost index with received neighbours all around."""
        if not resilient:
            return [(stage, stage, slice(None), slice(None)) for stage in range(depth)]
        return [(4 * stage + 2 * a + b, stage, slice(a, None, 2), slice(b, None, 2))
                for stage in range(depth) for a in (0, 1) for b in (0, 1) if a < h and b < w]

    def layout(self, header: Header) -> list[tuple[PacketKind, int, int]]:
        """The packets a file holds after any ROI packet, (kind, first, count) each (see `parts`)."""
        h, w = -(-header.height // self.stride), -(-header.width // self.stride)
        return [(PacketKind.INDICES, first, len(range(h)[rows]) * len(range(w)[cols]))
                for first, _, rows, cols in self.parts(h, w, header.depth, header.resilient)]

    @torch.no_grad()
    def decompress(self, packets: list[Packet], header: Header, conceal: bool = False) -> torch.Tensor:
        """packets -> x_hat (1, 3, H, W), padded to the stride."""
        return self.reconstruct(*self.decode(packets, header, conceal))

    @torch.no_grad()
    def reconstruct(self, maps: torch.Tensor, header: Header, region: tuple[int, torch.Tensor] | None = None,
                    restored: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """decode_latents' index maps -> x_hat (1, 3, H, W), padded to the stride (the float synthesis);
        region: (codebook size, where) of a region of interest; restored: (where (H/16, W/16), vectors)
        of lost indices, the expected codes that stand for them."""
        second = None if region is None else (self.codebook(region[0])[0], region[1][None])
        restored = None if restored is None else (restored[0][None], restored[1][None])
        return self.autoencoder.synthesise(list(maps[:, None]), self.codebook(header.codebook)[0], second, restored)

    def decode_latents(self, packets: list[Packet], header: Header, conceal: bool = False) -> torch.Tensor:
        """packets -> the index maps (depth, H/16, W/16) of the padded image, stage 1 first (see decode)."""
        return self.decode(packets, header, conceal)[0]

    @torch.no_grad()
    def decode(self, packets: list[Packet], header: Header, conceal: bool = False
               ) -> tuple[torch.Tensor, Header, tuple[int, torch.Tensor] | None, tuple | None]:
        """packets -> (index maps, header, region or None, restored or None): reconstruct's arguments. A region's
        stage-1 indices are into its own codebook; its ROI packet is needed to decode them. conceal:
        the indices of damaged or missing packets are restored by the index prior from those received
        (IndexPrior.recover; a resilient file keeps received indices around every lost one)."""
        if (header.codebook, header.depth) not in self.points:
            raise BitstreamError(f"the header asks for codebook {header.codebook} at depth {header.depth}, "
                                 f"which model {header.model_id!r} does not have")
        point_quality = self.qualities()[self.points.index((header.codebook, header.depth))]
        if header.quality != point_quality:
            raise BitstreamError(f"corrupt header: quality {header.quality} for codebook {header.codebook} at depth "
                                 f"{header.depth}, whose quality is {point_quality}")
        from bitstream.coder import Decoder
        h, w = -(-header.height // self.stride), -(-header.width // self.stride)
        codes, mapping = self.codebook(header.codebook)
        roi, packets = regions.read_packet(packets, header, regions.grid(header, self),
                                           "the index prior needs its codebooks, so the image "
                                                            "cannot be decoded")
        region = None
        if roi is not None:
            k = roi[1]
            if header.depth != 1 or k not in self.sizes or k <= header.codebook:
                raise BitstreamError(f"corrupt ROI packet: a region codebook of {k} over {header.codebook} "
                                     f"at depth {header.depth}")
            region = (k, torch.from_numpy(regions.inside(roi[0])).to(codes.device))
        parts = self.parts(h, w, header.depth, header.resilient)
        maps = torch.zeros((header.depth, h, w), dtype=torch.long, device=codes.device)
        received = torch.ones_like(maps, dtype=torch.bool)
        second = None if region is None else (self.prior_codes(region[0]), self.codebook(region[0])[1], region[1])
        for (_, stage, rows, cols), p in zip(parts, expect_packets(packets, self.layout(header), conceal)):
            part = maps[stage, rows, cols]
            if p is None:
                received[stage, rows, cols] = False
            elif stage == 0:
                maps[stage, rows, cols] = self.prior.decompress(p.payload, *part.shape, self.prior_codes(header.codebook),
                                                                mapping, None if second is None else (*second[:2], second[2][rows, cols]))
            else:
                stream = Decoder(p.payload)
                symbols = static_table(self.residual_counts(stage)).decode(stream, np.zeros(part.numel(), np.int32))
                stream.end()
                maps[stage, rows, cols] = torch.from_numpy(symbols).long().view(part.shape).to(codes.device)
        restored = None
        if not received[0].any():
            raise BitstreamError("no index of the image was received: there is nothing to conceal from")
        if not received[0].all():  # conceal: the prior restores the lost stage-1 indices from the rest
            vectors = [codes] + ([] if region is None else [self.codebook(region[0])[0]])
            maps[0], means = self.prior.recover(maps[0], received[0], self.prior_codes(header.codebook), mapping,
                                                vectors, second)
            restored = (~received[0], means)
        for stage in range(1, header.depth):  # a lost residual index: the stage's most frequent one
            maps[stage][~received[stage]] = int(np.argmax(self.residual_counts(stage)))
        return maps, header, region, restored
