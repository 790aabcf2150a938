"""The `hp` family: scalar quantization with a Gaussian mean-scale hyperprior, a grouped checkerboard
context, and one network for every rate.

`ConditionedCheckerboard` is the architecture that ships (`checkerboard-cond2`); how it came to be
is in CHANGELOG.md and results/training/hp-cbc2-v8/RECIPE.md.

* Rate: a learned per-channel gain scales the latent before rounding (a larger gain is a finer
  quantizer) and an inverse gain undoes it before synthesis (Cui et al. 2021). Gains, and the
  channel scales and shifts that tell the transforms the rate (Choi et al. 2019), are tables with
  one row per trained lambda; between rows they are interpolated, so `level` is a float in
  [0, n_levels - 1] and the rate is continuous.
* Latent prior: the latent's first B channels are coded in two checkerboard halves (He et al.
  2021), each half in four uneven channel groups (ELIC, He et al. 2022); the last M - B channels in
  a ninth pass from a channel context. Every pass sees the hyperprior and the passes before it.

Two paths, kept apart: `forward` (training: additive-noise likelihoods) and `compress` /
`decompress` (integer symbols and packets; the entropy layer gets plain arrays).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # CompressAI's import-time torch.jit deprecation notice is not ours
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import GDN

from bitstream import BitstreamError, Header, Packet, PacketKind
from bitstream.container import expect_packets
from codec import roi as regions
from codec.entropy.tables import Tables, channel_indexes, scale_indexes
from codec.models.integer import (FRAC, IntLayer, IntSequential, exp_fixed, interpolate_rows, ln_fixed, log_fixed,
                                  scale_thresholds, shift_round, tiled, to_fixed)
from codec.quantizers.scalar import annealed_round, quantize, round_straight_through

# Rate-distortion trade-offs of the shipped model's levels (MSE on 8-bit pixels, as in CompressAI).
LAMBDAS = (0.00013, 0.00035, 0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.2, 0.45, 0.9)

# Scale table shared by encoder and decoder: scales are snapped to these before CDF lookup.
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64

# --refine's search: Adam's step, the annealing's temperatures at the first and last step, and how
# often the real coded loss is measured.
REFINE_LR, REFINE_TEMPERATURES, REFINE_CHECK_EVERY = 0.01, (0.5, 0.05), 10


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(torch.log(torch.tensor(SCALE_MIN)),
                                    torch.log(torch.tensor(SCALE_MAX)), SCALE_LEVELS))


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class ResidualBlock(nn.Module):
    """x + body(x): conv 3x3, leaky ReLU, conv 3x3; or, as a `bottleneck`, ELIC's 1x1 down to half
    the channels, 3x3, 1x1 back (cheap enough for half resolution). The last convolution starts at
    zero, so a fresh block is the identity."""

    def __init__(self, channels: int, bottleneck: bool = False):
        super().__init__()
        if bottleneck:
            hidden = channels // 2
            layers = [conv(channels, hidden, 1, 1), nn.LeakyReLU(inplace=True), conv(hidden, hidden, 3, 1),
                      nn.LeakyReLU(inplace=True), conv(hidden, channels, 1, 1)]
        else:
            layers = [conv(channels, channels, 3, 1), nn.LeakyReLU(inplace=True), conv(channels, channels, 3, 1)]
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def group_head(seen: int, size: int) -> nn.ModuleDict:
    """The prior correction of one channel group: a 3x3 context over the `seen` channels decoded
    before it, then 1x1 layers from that context and the group's uncorrected (log-scale, mean) to a
    log-scale factor and a mean shift. The last layer starts at zero: a fresh head corrects nothing."""
    width = max(64, seen + size)
    out = nn.Conv2d(width, 2 * size, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.ModuleDict({"context": conv(seen, width, 3, 1), "params": nn.Sequential(
        nn.Conv2d(width + 2 * size, width, 1), nn.LeakyReLU(inplace=True), out)})


class ConditionedCheckerboard(nn.Module):
    """x: (B, 3, H, W) in [0, 1], H and W multiples of 64 -> y: (B, M, H/16, W/16), z: (B, N, H/64, W/64).

    N: hyperprior channels; M: latent channels, the first B = 3M/4 coded in the checkerboard passes;
    the transforms are T = 3N/2 wide."""

    family, arch, stride = "hp", "checkerboard-cond2", 64
    cell = 16  # pixels a side of one latent position
    SLICE = 8  # latent rows (128 pixels) in each packet of a resilient file
    continuous_quality = True  # any quality in 0..100 is a rate of its own
    # Tables with one row per trained level, interpolated between levels (level_rows).
    GAIN_TABLES = ("log_gain", "log_inv_gain", "log_hyper_gain", "log_hyper_inv_gain")
    LEVEL_TABLES = GAIN_TABLES + ("synthesis_log_scale", "synthesis_shift", "analysis_log_scale", "analysis_shift")
    CHANNEL_CONTEXT = 128
    SYNTHESIS_MARGIN = 4  # latents; from 3 up tiles match the whole-image synthesis to float rounding (2e-6)

    def __init__(self, N: int = 128, M: int = 256, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__()
        self.N, self.M, self.lambdas, self.n_levels = N, M, tuple(lambdas), len(lambdas)
        T = self.T = 3 * N // 2
        B = self.B = 3 * M // 4
        # Analysis, in resolution stages; the rate is told after the quarter and the eighth stages.
        # The half and quarter stages are rate-free (two thirds of the arithmetic): a rate search
        # computes them once.
        self.analysis_half = nn.Sequential(conv(3, T), GDN(T), ResidualBlock(T, True), ResidualBlock(T, True))
        self.analysis_quarter = nn.Sequential(conv(T, T), GDN(T))
        self.analysis_eighth = nn.Sequential(ResidualBlock(T), conv(T, T), GDN(T))
        self.analysis_latent = conv(T, M)
        # Synthesis, mirrored; the rate is told after the eighth, quarter and half stages.
        self.synthesis_eighth = nn.Sequential(deconv(M, T), GDN(T, inverse=True))
        self.synthesis_quarter = nn.Sequential(deconv(T, T), GDN(T, inverse=True))
        self.synthesis_half = nn.Sequential(ResidualBlock(T), deconv(T, T), GDN(T, inverse=True))
        self.synthesis_full = nn.Sequential(ResidualBlock(T, True), ResidualBlock(T, True), deconv(T, 3))
        self.hyper_analysis = nn.Sequential(conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N),
                                            nn.LeakyReLU(inplace=True), conv(N, N))
        # (scale, mean) features of every latent channel: 2B for the checkerboard, 2(M - B) for the rest.
        self.hyper_synthesis = nn.Sequential(deconv(N, N), nn.LeakyReLU(inplace=True), deconv(N, N),
                                             nn.LeakyReLU(inplace=True), conv(N, 2 * M, 3, 1))
        # The checkerboard prior: anchors ((i + j) even) from the hyperprior alone, the other half also
        # from a 5x5 context over the decoded anchors (B context channels: its largest layer).
        self.checkerboard_context = conv(B, B, 5, 1)
        self.checkerboard_parameters = nn.Sequential(
            nn.Conv2d(3 * B, 10 * B // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(10 * B // 3, 8 * B // 3, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(8 * B // 3, 2 * B, 1))
        # Each half's groups after the first correct the checkerboard prior from the groups before them.
        sizes = (B // 12, B // 12, B // 6, B - B // 3)
        self.group_starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]
        self.group_heads = nn.ModuleList(group_head(self.group_starts[g], sizes[g])
                                         for _half in range(2) for g in range(1, len(sizes)))
        # The last M - B channels: hyperprior + a 3x3 channel context over all B decoded ones.
        E, C = M - B, self.CHANNEL_CONTEXT
        self.extra_context = conv(B, C, 3, 1)
        self.extra_parameters = nn.Sequential(nn.Conv2d(2 * E + C, 3 * E, 1), nn.LeakyReLU(inplace=True),
                                              nn.Conv2d(3 * E, 2 * E, 1))
        # Log-gains per level and channel. The best uniform quantizer step goes as 1/sqrt(lambda)
        # for MSE, so the gains start at sqrt(lambda / lambda_mid).
        log_l = torch.log(torch.tensor(lambdas, dtype=torch.float32))
        init = (0.5 * (log_l - log_l.mean()))[:, None]
        self.log_gain = nn.Parameter(init.repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init.repeat(1, M))
        self.log_hyper_gain = nn.Parameter(init.repeat(1, N))
        self.log_hyper_inv_gain = nn.Parameter(-init.repeat(1, N))
        # The transforms told the rate: per-level channel scales and shifts, starting at the identity.
        self.synthesis_log_scale = nn.Parameter(torch.zeros(self.n_levels, 3 * T))
        self.synthesis_shift = nn.Parameter(torch.zeros(self.n_levels, 3 * T))
        self.analysis_log_scale = nn.Parameter(torch.zeros(self.n_levels, 2 * T))
        self.analysis_shift = nn.Parameter(torch.zeros(self.n_levels, 2 * T))
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_MIN)

    # hp-cbc2-v8's parameter names (a chain of subclasses once grew this model) -> this class's.
    # Read at load time, so the shipped file stays as it is until its weights are replaced.
    SHIPPED_NAMES = {
        "g_a.0.": "analysis_half.0.", "g_a.1.": "analysis_half.1.",
        "analysis_fine.0.": "analysis_half.2.", "analysis_fine.1.": "analysis_half.3.",
        "g_a.2.": "analysis_quarter.0.", "g_a.3.": "analysis_quarter.1.",
        "analysis_block.": "analysis_eighth.0.", "g_a.4.": "analysis_eighth.1.", "g_a.5.": "analysis_eighth.2.",
        "g_a.6.": "analysis_latent.",
        "g_s.0.": "synthesis_eighth.0.", "g_s.1.": "synthesis_eighth.1.",
        "g_s.2.": "synthesis_quarter.0.", "g_s.3.": "synthesis_quarter.1.",
        "synthesis_block.": "synthesis_half.0.", "g_s.4.": "synthesis_half.1.", "g_s.5.": "synthesis_half.2.",
        "synthesis_fine.0.": "synthesis_full.0.", "synthesis_fine.1.": "synthesis_full.1.",
        "g_s.6.": "synthesis_full.2.",
        "h_a.": "hyper_analysis.", "h_s.": "hyper_synthesis.",
        "context.": "checkerboard_context.", "entropy_parameters.": "checkerboard_parameters.",
        "channel_context.": "extra_context.",
    }

    @staticmethod
    def encoder_side(name: str) -> bool:
        """Whether parameter `name` serves the encoder alone (the analysis transforms and the gains into
        y and z), so that the decoder and the entropy model can train on with it frozen."""
        return name.startswith(("analysis_", "hyper_analysis.")) or name in ("log_gain", "log_hyper_gain")

    # --- rates ---

    def level_rows(self, table: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """table: (n_levels, C), level: (B,) floats in [0, n_levels-1] -> (B, C), or a level map
        (B, 1, h, w) -> (B, C, h, w); interpolated linearly between the two nearest trained levels."""
        level = level.clamp(0, self.n_levels - 1)
        lo = level.floor().long().clamp(max=self.n_levels - 2)
        t = level - lo.to(level.dtype)
        if level.dim() == 1:
            return (1 - t[:, None]) * table[lo] + t[:, None] * table[lo + 1]
        return ((1 - t) * table[lo[:, 0]].permute(0, 3, 1, 2)  # a map: rows gathered per position
                + t * table[lo[:, 0] + 1].permute(0, 3, 1, 2))

    def gains(self, level: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """level (B,) -> the four gains (B, C, 1, 1); log-gains interpolate linearly, so the rate moves
        smoothly. A level map (B, 1, h, w) over the latent (regions of interest) -> gains per position,
        the hyper gains at the hyper-latent's resolution, from the map's mean over each 4 x 4 cell."""
        if level.dim() == 1:
            return tuple(torch.exp(self.level_rows(getattr(self, name), level))[:, :, None, None]
                         for name in self.GAIN_TABLES)
        hyper_level = F.avg_pool2d(level, 4)
        return tuple(torch.exp(self.level_rows(getattr(self, name), hyper_level if "hyper" in name else level))
                     for name in self.GAIN_TABLES)

    def lambda_at(self, level: torch.Tensor) -> torch.Tensor:
        """(B,) continuous levels -> the lambda each was trained for, interpolated geometrically."""
        log_l = torch.log(torch.tensor(self.lambdas, device=level.device))
        level = level.clamp(0, self.n_levels - 1)
        lo = level.floor().long().clamp(max=self.n_levels - 2)
        t = level - lo
        return torch.exp((1 - t) * log_l[lo] + t * log_l[lo + 1])

    def level_of(self, quality) -> torch.Tensor:
        """quality 0..100 -> the continuous level (1,) over the trained lambdas; a map (h, w) of
        qualities in hundredths over the latent (regions of interest) -> a level map (1, 1, h, w)."""
        if isinstance(quality, np.ndarray):  # hundredths, as codec.roi.qualities gives them
            return torch.from_numpy(quality.astype(np.float32) / 10000 * (self.n_levels - 1))[None, None]
        return torch.tensor([quality / 100 * (self.n_levels - 1)], dtype=torch.float32)

    def qualities(self) -> list[float]:
        """The qualities of the trained levels, evenly spaced over 0..100: where a sweep measures."""
        return [round(100 * i / (self.n_levels - 1), 2) for i in range(self.n_levels)]

    @staticmethod
    def search_top(roi: tuple[np.ndarray, float | None] | None) -> float:
        """The highest quality a rate search tries: with a region of interest, the region's (the
        background is never coded better than the region)."""
        return 100.0 if roi is None else regions.region_quality(roi[1])

    def operating_point(self, quality: float, codebook: int | None, depth: int | None) -> tuple[float, int, int]:
        """The user's rate knobs -> the header's (quality, codebook, depth)."""
        if codebook is not None or depth is not None:
            raise ValueError("codebook and depth apply to the vq model only")
        return quality, 0, 0

    def told(self, transform: str, level: torch.Tensor):
        """-> a function (h, i) scaling and shifting h by chunk i of `transform`'s per-level tables."""
        scales = torch.exp(self.level_rows(getattr(self, f"{transform}_log_scale"), level))
        shifts = self.level_rows(getattr(self, f"{transform}_shift"), level)
        T = self.T
        if level.dim() == 1:
            return lambda h, i: (h * scales[:, i * T:(i + 1) * T, None, None].to(h.dtype)
                                 + shifts[:, i * T:(i + 1) * T, None, None].to(h.dtype))

        def told_map(h, i):  # a level map: each latent's rows over the pixels it covers at h's resolution
            size = h.shape[2:]
            return (h * F.interpolate(scales[:, i * T:(i + 1) * T], size=size, mode="nearest").to(h.dtype)
                    + F.interpolate(shifts[:, i * T:(i + 1) * T], size=size, mode="nearest").to(h.dtype))
        return told_map

    # --- transforms ---

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """The rate-free part of the analysis: computed once, it serves every level of a rate search."""
        return self.analysis_quarter(self.analysis_half(x))

    def analysis_head(self, features: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """analysis(x) -> y before its gain, at rates `level` (B,)."""
        told = self.told("analysis", level)
        return self.analysis_latent(told(self.analysis_eighth(told(features, 0)), 1))

    def synthesis(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """y with its gain undone -> x_hat, unclamped."""
        told = self.told("synthesis", level)
        h = told(self.synthesis_quarter(told(self.synthesis_eighth(y), 0)), 1)
        return self.synthesis_full(told(self.synthesis_half(h), 2))

    def hyper_features(self, z_hat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Decoded z (gained) at rate `level` -> the features the latent prior is computed from."""
        return self.hyper_synthesis(z_hat * self.gains(level)[3])

    # --- the latent prior: 9 passes ---

    @staticmethod
    def anchors(y: torch.Tensor) -> torch.Tensor:
        """y: (B, C, h, w) -> the anchor positions, (i + j) even, as a bool mask (1, 1, h, w)."""
        i = torch.arange(y.shape[2], device=y.device)[:, None]
        j = torch.arange(y.shape[3], device=y.device)[None, :]
        return ((i + j) % 2 == 0)[None, None]

    def latent_masks(self, y: torch.Tensor) -> list[torch.Tensor]:
        """y: (B, M, h, w) -> one bool mask (1, M, h, w) per coding pass; together they cover y once:
        anchors group by group, then the other half group by group, then the extra channels."""
        anchor = self.anchors(y)
        c = torch.arange(self.M, device=y.device)[None, :, None, None]
        s = self.group_starts
        groups = [(c >= s[g]) & (c < s[g + 1]) for g in range(len(s) - 1)]
        return [half & group for half in (anchor, ~anchor) for group in groups] + [c >= self.B]

    def checkerboard_prior(self, hyper: torch.Tensor, anchors_hat: torch.Tensor, half: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scales, means) of the B checkerboard channels for a half, padded to M channels with
        zeros: anchors from the hyperprior alone, the other half also from the decoded anchors."""
        B = self.B
        ctx = hyper.new_zeros((hyper.shape[0], B) + hyper.shape[2:]) if half == 0 else \
            self.checkerboard_context(anchors_hat[:, :B].to(hyper.dtype))
        scales, means = self.checkerboard_parameters(torch.cat([hyper[:, :2 * B], ctx], 1)).float().chunk(2, 1)
        pad = scales.new_zeros((scales.shape[0], self.M - B) + scales.shape[2:])
        return torch.cat([scales, pad], 1), torch.cat([means, pad], 1)

    def latent_params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 (scales, means) of every latent for pass `step`; y_hat holds the latents decoded so
        far (zero elsewhere); memo: a dict the caller keeps over one image's passes."""
        n_groups = len(self.group_starts) - 1
        B = self.B
        if step == 2 * n_groups:  # the extra channels, after every checkerboard channel
            ctx = self.extra_context(y_hat[:, :B].to(hyper.dtype))
            scales, means = self.extra_parameters(torch.cat([hyper[:, 2 * B:], ctx], 1)).float().chunk(2, 1)
            pad = scales.new_zeros((scales.shape[0], B) + scales.shape[2:])
            return torch.cat([pad, scales], 1), torch.cat([pad, means], 1)
        half, g = divmod(step, n_groups)
        # The checkerboard prior is the same for every group of a half: its context sees the
        # anchors only, all of them decoded before the second half's first group.
        if half not in memo:
            anchors_hat = torch.where(self.anchors(y_hat), y_hat, torch.zeros_like(y_hat))
            memo[half] = self.checkerboard_prior(hyper, anchors_hat, half)
        scales, means = memo[half]
        if g == 0:
            return scales, means
        lo, hi = self.group_starts[g], self.group_starts[g + 1]
        head = self.group_heads[half * (n_groups - 1) + g - 1]
        seen = head["context"](y_hat[:, :lo].to(hyper.dtype))
        prior = torch.cat([torch.log(scales[:, lo:hi].clamp(min=SCALE_MIN)), means[:, lo:hi]], 1)
        log_factor, shift = head["params"](torch.cat([seen, prior.to(seen.dtype)], 1)).float().chunk(2, 1)
        scales = torch.cat([scales[:, :lo], scales[:, lo:hi] * torch.exp(log_factor), scales[:, hi:]], 1)
        means = torch.cat([means[:, :lo], means[:, lo:hi] + shift, means[:, hi:]], 1)
        return scales, means

    def latent_prior(self, y: torch.Tensor, hyper: torch.Tensor, quantize=round_straight_through
                     ) -> tuple[torch.Tensor, ...]:
        """All passes at once, as the decoder will run them -> (scales, means, y_hat), where y_hat is
        quantize(y, means): by default the coder's rounding with a straight-through gradient."""
        scales, means, y_hat, memo = torch.zeros_like(y), torch.zeros_like(y), torch.zeros_like(y), {}
        for step, mask in enumerate(self.latent_masks(y)):
            with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=y.is_cuda):
                s, m = self.latent_params(hyper, y_hat, step, memo)
            rounded = quantize(y, m)
            scales, means = torch.where(mask, s, scales), torch.where(mask, m, means)
            y_hat = torch.where(mask, rounded, y_hat)
        return scales, means, y_hat

    # --- training path ---

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> dict:
        gain, inv_gain, hgain, _ = self.gains(level)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            y = self.analysis_head(self.analysis(x), level)
        y = y.float() * gain
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            z = self.hyper_analysis(y)
        # Likelihoods stay in float32: bf16 would blur the rate term.
        z_hat, z_likelihoods = self.entropy_bottleneck(z.float() * hgain)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            hyper = self.hyper_features(z_hat, level)
        # The synthesis sees the rounded latent (straight-through), as the decoder will; the rate
        # term sees additive noise.
        scales, means, y_hat = self.latent_prior(y, hyper)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            x_hat = self.synthesis(y_hat * inv_gain, level)
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()

    # --- the real coder's view: gained latents, their rounding, their bits ---

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, level: torch.Tensor, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (gained y, gained z) ready for quantization; `features` = analysis(x) when known."""
        gain, _, hgain, _ = self.gains(level)
        y = self.analysis_head(self.analysis(x) if features is None else features, level) * gain
        z = self.hyper_analysis(y) * hgain
        return y, z

    @torch.no_grad()
    def synthesise(self, y_hat: torch.Tensor, level: torch.Tensor, tile: int = 32) -> torch.Tensor:
        """The decoder's synthesis, tile by tile: `tile` latents a side (512 pixels) with a margin of
        SYNTHESIS_MARGIN latents around each, cropped away. The margin is wider than the synthesis'
        reach, so tiles join without seams, and memory stays that of one tile whatever the image."""
        _, inv_gain, _, _ = self.gains(level)
        y, s = y_hat * inv_gain, self.stride // 4  # pixels a latent
        if level.dim() == 1:
            x = tiled(lambda y: self.synthesis(y, level), [y], tile, self.SYNTHESIS_MARGIN, scale=s)
        else:  # a level map (a region of interest) is cut into the same tiles
            x = tiled(self.synthesis, [y, level], tile, self.SYNTHESIS_MARGIN, scale=s)
        return x.clamp_(0, 1)

    def z_medians(self) -> torch.Tensor:
        """(1, N, 1, 1): z is coded around each channel's median."""
        return self.entropy_bottleneck.quantiles[:, 0, 1].view(1, -1, 1, 1)

    def rounded_latents(self, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                        quantize=round_straight_through) -> tuple[torch.Tensor, ...]:
        """The gained latents (y, z) as the coder rounds them -> (z_hat, the latent prior's scales and
        means, y_hat); quantize(values, offsets) rounds, by default as the coder does, straight-through."""
        z_hat = quantize(z, self.z_medians())
        return (z_hat, *self.latent_prior(y, self.hyper_features(z_hat, level), quantize))

    def coded_terms(self, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                    quantize=round_straight_through) -> tuple[torch.Tensor, torch.Tensor]:
        """What the coder will make of the gained latents (y, z) of a batch -> (bits of each image
        under the discrete priors the coder's tables come from; the decoded picture, padded as y is)."""
        _, inv_gain, _, _ = self.gains(level)
        eb = self.entropy_bottleneck
        z_hat, scales, means, y_hat = self.rounded_latents(y, z, level, quantize)
        b, c = z.shape[:2]
        # The factorized prior takes (channels, 1, values): each channel's values of every image.
        z_lik, _, _ = eb._likelihood(z_hat.transpose(0, 1).reshape(c, 1, -1))
        bits = (-torch.log2(eb.likelihood_lower_bound(z_lik)).view(c, b, -1).sum(dim=(0, 2))
                + self.latent_channel_bits(y_hat, scales, means).sum(dim=1))
        return bits, self.synthesis(y_hat * inv_gain, level).clamp(0, 1)

    def latent_channel_bits(self, y_values: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """Bits of y_values (B, M, h, w) under the Gaussian prior (scales, means) -> (B, M), by channel."""
        gc = self.gaussian_conditional
        return -torch.log2(gc.likelihood_lower_bound(gc._likelihood(y_values, scales, means))).sum(dim=(2, 3))

    def coded_loss(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                   quantize=round_straight_through) -> torch.Tensor:
        """lambda * 255^2 * MSE + bpp of the gained latents (y, z) of image x (1, 3, h, w; unpadded)
        as the coder will code them, as in training."""
        h, w = x.shape[-2:]
        bits, x_hat = self.coded_terms(y, z, level, quantize)
        distortion = self.lambda_at(level) * 255 ** 2 * (x_hat[..., :h, :w] - x).pow(2).mean()
        return distortion + bits.sum() / (h * w)

    def refine(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor, steps: int,
               lr: float = REFINE_LR, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-side search: move the gained latents (y, z) of x to lower the coded loss over the
        top-left `size` pixels (the image without its padding). Adam follows the loss of a random soft
        rounding (stochastic Gumbel annealing, Yang et al. 2020) whose temperature falls geometrically,
        so the search ends on the coder's own rounding; the real coded loss is measured every
        REFINE_CHECK_EVERY steps and at the end. Returns the (y, z) measured lowest: never worse than
        the start. It needs a long cooling (results/stills/hp-refine.md): 120 steps saved 2.6-9.3 % of
        the bits on stills no weights trained on. The decoder needs nothing of this."""
        h, w = size or x.shape[-2:]
        x = x[..., :h, :w]
        hot, cold = REFINE_TEMPERATURES
        noise = torch.Generator(device=y.device).manual_seed(0)  # the same draws each run
        best, best_loss = (y, z), float("inf")
        y, z = y.detach().clone().requires_grad_(True), z.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([y, z], lr=lr)
        for step in range(steps + 1):
            if step % REFINE_CHECK_EVERY == 0 or step == steps:
                with torch.no_grad():
                    loss = self.coded_loss(x, y, z, level).item()
                if loss < best_loss:
                    best, best_loss = (y.detach().clone(), z.detach().clone()), loss
            if step == steps:
                break
            temperature = hot * (cold / hot) ** (step / max(steps - 1, 1))
            with torch.enable_grad():
                soft = self.coded_loss(x, y, z, level, lambda v, m: annealed_round(v, m, temperature, noise))
                y.grad, z.grad = torch.autograd.grad(soft, (y, z))  # the latents' gradients, not the weights'
            opt.step()
        return best

    # --- the coding seam: image <-> packets ---

    def tables(self) -> tuple[Tables, Tables]:
        """The integer CDF tables of z's prior (one per channel) and y's (one per table scale), as the
        weights file holds them."""
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        return tuple(Tables(m._quantized_cdf.cpu().numpy(), m._cdf_length.cpu().numpy(), m._offset.cpu().numpy())
                     for m in (eb, gc))

    @functools.cached_property
    def integer_prior(self) -> IntegerPrior:
        """The coder's view of the latent prior, in integers (built once, from the weights as loaded)."""
        return IntegerPrior(self)

    @torch.no_grad()
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The rate-free part of compress: computed once for a rate search."""
        return self.analysis(x)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, features: torch.Tensor, header: Header, refine: int = 0,
                 searcher: ConditionedCheckerboard | None = None, roi: tuple[np.ndarray, float] | None = None
                 ) -> list[Packet]:
        """x (1, 3, H, W) padded, features = prepare(x), at header.quality -> packets [z, y] (resilient:
        one per slice, see `slices`).
        refine: steps of encoder-side search, run by `searcher` (this model on another device).
        roi: (share of region per latent position (h, w) uint8, the region's quality or None for
        codec.roi.DEFAULT_QUALITY): each latent is coded at its own quality between the header's and
        the region's (an ROI packet first)."""
        if roi is not None:
            roi = (roi[0], regions.region_quality(roi[1]))
        qualities = None if roi is None else regions.qualities(roi[0], header.quality, roi[1])
        level = self.level_of(header.quality if roi is None else qualities).to(x.device)
        y, z = self.analyse(x, level, features)
        if refine and roi is not None:
            raise ValueError("--refine does not work with a region of interest yet")
        if refine:
            net = searcher or self
            on = next(net.parameters()).device
            y, z = net.refine(x.to(on), y.to(on), z.to(on), level.to(on), refine, size=(header.height, header.width))
            y, z = y.to(x.device), z.to(x.device)
        if roi is None:
            return self.code_latents(y, z, header.quality, header.resilient)[0]
        packets = self.code_latents(y, z, torch.from_numpy(self.hyper_qualities(qualities)), header.resilient)[0]
        return [regions.packet(roi[0], round(roi[1] * 100)), *packets]

    @staticmethod
    def hyper_qualities(qualities: np.ndarray) -> np.ndarray:
        """Per-latent qualities (h, w) in hundredths -> per hyper-latent (h/4, w/4): each 4 x 4 cell's
        mean, rounded, in integers."""
        h, w = qualities.shape
        return (qualities.reshape(h // 4, 4, w // 4, 4).sum((1, 3)) + 8) // 16

    @torch.no_grad()
    def code_latents(self, y: torch.Tensor, z: torch.Tensor, quality, resilient: bool = False
                     ) -> tuple[list[Packet], torch.Tensor]:
        """The gained latents (y, z) of an image -> (packets, y_hat as the decoder will see it): [z, y],
        or, resilient, one LATENT packet per SLICE rows of y holding its own z rows (see `slices`).
        Symbols round the float latents around the integer prior's means; the tables they are coded
        with are the integer prior's, so any machine decodes them."""
        from bitstream.coder import Encoder  # here: a training machine may lack the coder's build
        if not resilient:
            z_stream, y_stream = Encoder(), Encoder()
            y_hat = self._code_slice(y, z, quality, z_stream, y_stream)
            return [Packet(PacketKind.HYPER, 0, z.shape[1], z_stream.finish()),
                    Packet(PacketKind.LATENT, 0, y.shape[1], y_stream.finish())], y_hat
        packets, rows = [], []
        for r0, r1 in self.slices(y.shape[2]):
            stream = Encoder()
            rows.append(self._code_slice(y[:, :, r0:r1], z[:, :, r0 // 4:r1 // 4], _rows(quality, r0, r1), stream, stream))
            packets.append(Packet(PacketKind.LATENT, r0, r1 - r0, stream.finish()))
        return packets, torch.cat(rows, 2)

    def slices(self, h: int) -> list[tuple[int, int]]:
        """A resilient file's packets, as latent rows [r0, r1) of y (and rows r0/4 .. r1/4 of z): every
        network of the entropy model sees its slice alone, zero-padded at the slice's edges as at the
        image's, so a lost packet takes nothing from the others (the price: context across slices)."""
        return [(r0, min(r0 + self.SLICE, h)) for r0 in range(0, h, self.SLICE)]

    def layout(self, header: Header) -> list[tuple[PacketKind, int, int]]:
        """The packets a file holds after any ROI packet, (kind, first, count) each: [z, y], or,
        resilient, one per slice."""
        if header.resilient:
            return [(PacketKind.LATENT, r0, r1 - r0) for r0, r1 in self.slices(-(-header.height // self.stride) * 4)]
        return [(PacketKind.HYPER, 0, self.N), (PacketKind.LATENT, 0, self.M)]

    def _code_slice(self, y: torch.Tensor, z: torch.Tensor, quality, z_stream, y_stream) -> torch.Tensor:
        """Code z's symbols into z_stream, then y's pass after pass into y_stream (a pass's prior
        depends on earlier passes) -> y_hat as the decoder will see it."""
        hyper_tables, latent_tables = self.tables()
        prior = self.integer_prior
        z_symbols = quantize(z, self.z_medians().detach())
        hyper_tables.encode(z_stream, z_symbols.cpu().numpy(), channel_indexes(tuple(z.shape)))
        hyper = prior.hyper(z_symbols, quality)
        y_hat, memo = torch.zeros(y.shape, dtype=torch.long, device=y.device), {}
        for step, mask in enumerate(self.latent_masks(y)):
            log_scales, means = prior.params(hyper, y_hat, step, memo)
            symbols = torch.round(y.double() - means.double() / (1 << FRAC)).long()
            m = mask.expand_as(y)
            latent_tables.encode(y_stream, symbols[m].cpu().numpy(), prior.indexes(log_scales[m]))
            y_hat = torch.where(m, (symbols << FRAC) + means, y_hat)
        return y_hat.float() / (1 << FRAC)

    @torch.no_grad()
    def decompress(self, packets: list[Packet], header: Header, conceal: bool = False) -> torch.Tensor:
        """packets -> x_hat (1, 3, H, W), padded to the stride."""
        return self.reconstruct(*self.decode(packets, header, conceal))

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor, header: Header, qualities: np.ndarray | None = None) -> torch.Tensor:
        """decode_latents' y_hat -> x_hat (1, 3, H, W), padded to the stride (the float synthesis);
        qualities: the per-latent qualities of a file with a region of interest."""
        return self.synthesise(y_hat, self.level_of(header.quality if qualities is None else qualities).to(y_hat.device))

    def decode_latents(self, packets: list[Packet], header: Header, conceal: bool = False) -> torch.Tensor:
        """packets -> y_hat (1, M, H/16, W/16) of the padded image: the symbols plus their integer means,
        exact in float32 (see decode)."""
        return self.decode(packets, header, conceal)[0]

    def regions(self, packets: list[Packet], header: Header) -> tuple[np.ndarray | None, list[Packet]]:
        """A file's leading ROI packet, if any -> (per-latent qualities in hundredths or None, the
        packets after it). A damaged one is fatal, also under conceal: the entropy model reads it."""
        grid = regions.grid(header, self)
        roi, packets = regions.read_packet(packets, header, grid, "the entropy model needs its qualities, so the image "
                                                          "cannot be decoded")
        if roi is None:
            return None, packets
        if roi[1] > 10000:
            raise BitstreamError(f"corrupt ROI packet: region quality {roi[1] / 100} is over 100")
        return regions.qualities(roi[0], header.quality, roi[1] / 100), packets

    @torch.no_grad()
    def decode(self, packets: list[Packet], header: Header, conceal: bool = False
               ) -> tuple[torch.Tensor, Header, np.ndarray | None]:
        """packets -> (y_hat, header, per-latent qualities or None): reconstruct's arguments. conceal:
        a damaged or missing latent packet decodes as the prior's means, the most likely latent given
        z; a resilient file's lost slice (z lost with it) as the latents interpolated between the
        slices above and below. Without z there is nothing to predict from: a lost hyper packet of a
        file that is not resilient still fails."""
        if header.codebook or header.depth:
            raise BitstreamError(f"corrupt header: codebook {header.codebook} and depth {header.depth} "
                                 f"for model {header.model_id!r}, which has neither")
        qualities, packets = self.regions(packets, header)
        h, w = -(-header.height // self.stride) * 4, -(-header.width // self.stride) * 4
        quality = header.quality if qualities is None else torch.from_numpy(self.hyper_qualities(qualities))
        from bitstream.coder import Decoder
        if header.resilient:
            slices = self.slices(h)
            slots = expect_packets(packets, self.layout(header), conceal)
            if not any(slots):
                raise BitstreamError("no slice of the image was received: there is nothing to conceal from")
            rows = []
            for p, (r0, r1) in zip(slots, slices):
                if p is None:
                    rows.append(None)
                    continue
                stream = Decoder(p.payload)  # z's rows, then y's: one stream
                rows.append(self._decode_slice(stream, stream, (r1 - r0, w), _rows(quality, r0, r1)))
            return interpolate_lost(rows, slices, self.M, w), header, qualities
        hyper_packet, latent = expect_packets(packets, self.layout(header), conceal)
        if hyper_packet is None:
            raise BitstreamError("the hyper-latent packet is missing or corrupt: the image cannot be decoded")
        y_hat = self._decode_slice(Decoder(hyper_packet.payload), Decoder(latent.payload) if latent else None, (h, w),
                                   quality)
        return y_hat, header, qualities

    def _decode_slice(self, z_stream, y_stream, size: tuple[int, int], quality) -> torch.Tensor:
        """_code_slice's inverse -> y_hat (1, M, h, w); both streams may be one. y_stream None (a
        latent packet lost, conceal): the prior's means stand for y."""
        device = self.z_medians().device
        h, w = size
        hyper_tables, latent_tables = self.tables()
        prior = self.integer_prior
        z_shape = (1, self.N, (h + 3) // 4, (w + 3) // 4)
        z_symbols = hyper_tables.decode(z_stream, channel_indexes(z_shape))
        if y_stream is not z_stream:
            z_stream.end()
        hyper = prior.hyper(torch.from_numpy(z_symbols).view(z_shape).to(device), quality)
        if hyper.shape[2:] != (h, w):
            raise BitstreamError("latent size does not match the image size in the header")
        y_hat = torch.zeros((1, self.M, h, w), dtype=torch.long, device=device)
        memo = {}
        for step, mask in enumerate(self.latent_masks(y_hat)):
            log_scales, means = prior.params(hyper, y_hat, step, memo)
            m = mask.expand_as(y_hat)
            if y_stream is None:
                y_hat = torch.where(m, means, y_hat)
                continue
            symbols = torch.zeros(y_hat.shape, dtype=torch.long, device=device)
            symbols[m] = torch.from_numpy(latent_tables.decode(y_stream, prior.indexes(log_scales[m]))).long().to(device)
            y_hat = torch.where(m, (symbols << FRAC) + means, y_hat)
        if y_stream is not None:
            y_stream.end()
        return y_hat.float() / (1 << FRAC)


def _rows(quality, r0: int, r1: int):
    """A quality (a number, or a map per hyper-latent) for latent rows r0..r1."""
    return quality[r0 // 4:r1 // 4] if isinstance(quality, torch.Tensor) else quality


def interpolate_lost(rows: list[torch.Tensor | None], slices: list[tuple[int, int]], channels: int, w: int
                     ) -> torch.Tensor:
    """Slices of y_hat (None where lost) and their rows -> the whole y_hat (1, C, h, w): a lost row
    linearly interpolated between the nearest rows received above and below (copied when only one
    side was); at least one slice must have been received."""
    device = next(r.device for r in rows if r is not None)
    y_hat = torch.zeros((1, channels, slices[-1][1], w), device=device)
    received = torch.zeros(slices[-1][1], dtype=torch.bool)
    for r, (r0, r1) in zip(rows, slices):
        if r is not None:
            y_hat[:, :, r0:r1], received[r0:r1] = r, True
    known = received.nonzero().flatten().tolist()
    for i in (~received).nonzero().flatten().tolist() if known else []:
        above = max((k for k in known if k < i), default=None)
        below = min((k for k in known if k > i), default=None)
        if above is None or below is None:
            y_hat[:, :, i] = y_hat[:, :, above if below is None else below]
        else:
            t = (i - above) / (below - above)
            y_hat[:, :, i] = (1 - t) * y_hat[:, :, above] + t * y_hat[:, :, below]
    return y_hat


class IntegerPrior(nn.Module):
    """ConditionedCheckerboard's latent prior as the coder computes it, in integers
    (codec.models.integer): from z's symbols and a quality to each latent's log-scale and mean at
    FRAC fractional bits, pass by pass as `latent_params` computes them in float. Built from the
    float weights; encoder and decoder get the same integers on any CPU or GPU.

    A Gaussian's table is picked in the log domain: a group head's scale factor exp(f) becomes a
    sum, and the table is the count of the tables' log-scales below the latent's.

    Every network runs in tiles of TILE latents (`integer.tiled`, with a halo of its reach): the
    same integers as over the whole map, in the working memory of one tile."""

    TILE = 32  # latents a side (512 pixels), as the synthesis's tiles

    def __init__(self, net: ConditionedCheckerboard):
        super().__init__()
        self.M, self.B, self.group_starts = net.M, net.B, net.group_starts
        self.hyper_synthesis = IntSequential(net.hyper_synthesis)
        self.checkerboard_context = IntLayer(net.checkerboard_context)
        self.checkerboard_parameters = IntSequential(net.checkerboard_parameters)
        self.head_contexts = nn.ModuleList(IntLayer(head["context"]) for head in net.group_heads)
        self.head_parameters = nn.ModuleList(IntSequential(head["params"]) for head in net.group_heads)
        self.extra_context = IntLayer(net.extra_context)
        self.extra_parameters = IntSequential(net.extra_parameters)
        self.register_buffer("z_medians", to_fixed(net.z_medians().detach()))
        self.register_buffer("log_hyper_inv_gain", net.log_hyper_inv_gain.detach().clone())
        gc = net.gaussian_conditional
        self.thresholds = scale_thresholds(gc.scale_table[:-1].cpu()).numpy()
        self.log_bound = ln_fixed(float(gc.lower_bound_scale.bound))  # the smallest scale, 0.11
        self.to(net.z_medians().device)

    def hyper(self, z_symbols: torch.Tensor, quality) -> torch.Tensor:
        """z's symbols (1, N, h/4, w/4) at a quality -> the hyper features (1, 2M, h, w). quality: 0..100,
        or a map (h/4, w/4) of qualities in hundredths (int64; regions of interest)."""
        if isinstance(quality, torch.Tensor):  # a gain row per quality that occurs, gathered per position
            values, where = torch.unique(quality, return_inverse=True)
            rows = torch.stack([exp_fixed(interpolate_rows(self.log_hyper_inv_gain, v / 100)) for v in values.tolist()])
            gain = rows.to(z_symbols.device)[where.to(z_symbols.device)].permute(2, 0, 1)[None]  # Q16
        else:
            gain = exp_fixed(interpolate_rows(self.log_hyper_inv_gain, quality)).view(1, -1, 1, 1)  # Q16
        z_hat = (z_symbols.long() << FRAC) + self.z_medians
        # Two transposed convolutions (x4) and a 3x3: a latent depends on z within 2 positions.
        return tiled(self.hyper_synthesis, [shift_round(z_hat * gain, 16)], self.TILE // 4, 2, scale=4)

    def log_scales(self, scales: torch.Tensor) -> torch.Tensor:
        """Raw scales at FRAC bits -> log(max(scale, 0.11)) at FRAC bits."""
        return log_fixed(scales.clamp(min=1)).clamp(min=self.log_bound)

    def indexes(self, log_scales: torch.Tensor):
        """Log-scales of the coded latents (at least log 0.11 once a head's factor is added) -> table indexes."""
        return scale_indexes(log_scales.clamp(min=self.log_bound).cpu().numpy(), self.thresholds)

    def checkerboard_prior(self, hyper: torch.Tensor, anchors_hat: torch.Tensor, half: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.B

        def net(hyper, anchors_hat):  # a 5x5 context, then 1x1 layers: reach 2
            ctx = hyper.new_zeros((1, B) + hyper.shape[2:]) if half == 0 else self.checkerboard_context(anchors_hat)
            return self.checkerboard_parameters(torch.cat([hyper, ctx], 1))

        scales, means = tiled(net, [hyper[:, :2 * B], anchors_hat[:, :B]], self.TILE, 2).chunk(2, 1)
        pad = scales.new_zeros((1, self.M - B) + scales.shape[2:])
        return torch.cat([self.log_scales(scales), pad], 1), torch.cat([means, pad], 1)

    def params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-scales, means) of every latent for pass `step`, all int64 at FRAC bits; y_hat: the
        latents decoded so far, int64 at FRAC bits (zero elsewhere); memo: kept over one image's passes."""
        n_groups = len(self.group_starts) - 1
        B = self.B
        if step == 2 * n_groups:  # the extra channels, after every checkerboard channel
            scales, means = tiled(lambda hyper, seen: self.extra_parameters(torch.cat([hyper, self.extra_context(seen)], 1)),
                                  [hyper[:, 2 * B:], y_hat[:, :B]], self.TILE, 1).chunk(2, 1)  # 3x3, then 1x1
            pad = scales.new_zeros((1, B) + scales.shape[2:])
            return torch.cat([pad, self.log_scales(scales)], 1), torch.cat([pad, means], 1)
        half, g = divmod(step, n_groups)
        if half not in memo:
            anchors_hat = torch.where(ConditionedCheckerboard.anchors(y_hat), y_hat, torch.zeros_like(y_hat))
            memo.pop(half - 1, None)  # the first half's prior is done with: its memory back
            memo[half] = self.checkerboard_prior(hyper, anchors_hat, half)
        log_scales, means = memo[half]
        if g == 0:
            return log_scales, means
        lo, hi = self.group_starts[g], self.group_starts[g + 1]
        i = half * (n_groups - 1) + g - 1
        log_factor, shift = tiled(lambda seen, *prior: self.head_parameters[i](torch.cat([self.head_contexts[i](seen), *prior], 1)),
                                  [y_hat[:, :lo], log_scales[:, lo:hi], means[:, lo:hi]], self.TILE, 1).chunk(2, 1)
        log_scales = torch.cat([log_scales[:, :lo], log_scales[:, lo:hi] + log_factor, log_scales[:, hi:]], 1)
        means = torch.cat([means[:, :lo], means[:, lo:hi] + shift, means[:, hi:]], 1)
        return log_scales, means
