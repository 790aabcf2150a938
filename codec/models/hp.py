"""The `hp` family: scalar quantization with a Gaussian mean-scale hyperprior and gain units.

One network serves every rate. A learned per-channel gain vector scales the latent before
rounding (a larger gain is a finer quantizer, more bits) and an inverse gain undoes it before
synthesis (Cui et al. 2021, "asymmetric gained" compression). Gains are learned at a few
training levels, one per rate-distortion trade-off lambda; between levels the log-gains are
interpolated, so the rate is continuous in `level`, a float in [0, n_levels - 1].

Two paths, kept apart:
  * `forward(x, level)` is the training path: additive-noise likelihoods and bits per pixel.
  * `analyse` / `synthesise` and the `entropy` helpers are the coding path: integer symbols,
    CDF-table indexes and tables that `codec.entropy.hp` hands to the range coder.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

with warnings.catch_warnings():  # CompressAI's import-time torch.jit deprecation notice is not ours
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import GDN

from codec.quantizers.scalar import annealed_round, round_straight_through

# Training lambdas (MSE scaled to 8-bit pixels, as in CompressAI); level i trades off lambdas[i].
LAMBDAS = (0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932)

# Scale table shared by encoder and decoder: scales are snapped to these before CDF lookup.
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64

# --refine's search (GainedMeanScaleHyperprior.refine): Adam's step, the annealing's temperatures at
# the first and last step, and how often the real coded loss is measured.
REFINE_LR, REFINE_TEMPERATURES, REFINE_CHECK_EVERY = 0.01, (0.5, 0.05), 10


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(torch.log(torch.tensor(SCALE_MIN)),
                                    torch.log(torch.tensor(SCALE_MAX)), SCALE_LEVELS))


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2,
                              output_padding=stride - 1)


class GainedMeanScaleHyperprior(nn.Module):
    """x: (B, 3, H, W) in [0, 1], H and W multiples of 64 -> y: (B, M, H/16, W/16), z: (B, N, H/64, W/64)."""

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__()
        n_levels = len(lambdas)
        self.N, self.M, self.n_levels, self.lambdas = N, M, n_levels, tuple(lambdas)
        T = self.T = self.transform_channels(N)
        self.g_a = nn.Sequential(conv(3, T), GDN(T), conv(T, T), GDN(T), conv(T, T), GDN(T), conv(T, M))
        self.g_s = nn.Sequential(deconv(M, T), GDN(T, inverse=True), deconv(T, T), GDN(T, inverse=True),
                                 deconv(T, T), GDN(T, inverse=True), deconv(T, 3))
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N),
                                 nn.LeakyReLU(inplace=True), conv(N, N))
        # h_s predicts (scale, mean) of every latent channel.
        self.h_s = nn.Sequential(deconv(N, N), nn.LeakyReLU(inplace=True), deconv(N, N),
                                 nn.LeakyReLU(inplace=True), conv(N, 2 * M, 3, 1))
        # Log-gains per level and channel. For MSE the best uniform quantizer step goes as
        # 1/sqrt(lambda), so the gains start at sqrt(lambda / lambda_mid) and training refines them.
        log_l = torch.log(torch.tensor(lambdas, dtype=torch.float32))
        init = (0.5 * (log_l - log_l.mean()))[:, None]
        self.log_gain = nn.Parameter(init.repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init.repeat(1, M))
        self.log_hyper_gain = nn.Parameter(init.repeat(1, N))
        self.log_hyper_inv_gain = nn.Parameter(-init.repeat(1, N))
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_MIN)

    @staticmethod
    def transform_channels(N: int) -> int:
        """Width of g_a and g_s (and of their residual blocks); the hyperprior's is N."""
        return N

    # The transforms are methods, not bare g_a / g_s calls, so a subclass can grow them (more layers
    # between the trained ones) and still load the trained ones' weights under their names.

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """The rate-free part of the analysis: computed once, it serves every level (a rate search)."""
        return self.g_a(x)

    def analysis_head(self, features: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """analysis(x) -> y before its gain, at rates `level` (B,): the rest of the analysis, for an
        architecture whose analysis is told the rate (none here)."""
        return features

    def synthesis(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """y: the latent with its gain undone; level: (B,) rates, for an architecture whose synthesis
        is told the rate (this one's is not)."""
        return self.g_s(y)

    # Parameters with a row per trained level (interpolated between levels by level_rows):
    # the gains, and in a subclass other tables; codec.train.transfer_level_tables carries them over
    # to other lambdas.
    GAIN_TABLES = ("log_gain", "log_inv_gain", "log_hyper_gain", "log_hyper_inv_gain")
    LEVEL_TABLES = GAIN_TABLES

    @staticmethod
    def encoder_side(name: str) -> bool:
        """Whether parameter `name` serves the encoder alone (the analysis transforms and the gains into
        y and z), so that the decoder and the entropy model can train on with it frozen."""
        return name.split(".")[0] in ("g_a", "h_a", "log_gain", "log_hyper_gain") or name.startswith("analysis_")

    def level_rows(self, table: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """table: (n_levels, C), level: (B,) floats in [0, n_levels-1] -> (B, C), interpolated
        linearly between the two nearest trained levels."""
        level = level.clamp(0, self.n_levels - 1)
        lo = level.floor().long().clamp(max=self.n_levels - 2)
        t = (level - lo.to(level.dtype))[:, None]
        return (1 - t) * table[lo] + t * table[lo + 1]

    def gains(self, level: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """level: (B,) floats in [0, n_levels-1] -> four gain tensors shaped (B, C, 1, 1).

        Log-gains are interpolated linearly between the two nearest trained levels, so the
        gains themselves are interpolated geometrically and the rate moves smoothly."""
        return tuple(torch.exp(self.level_rows(getattr(self, name), level))[:, :, None, None]
                     for name in self.GAIN_TABLES)

    def lambda_at(self, level: torch.Tensor) -> torch.Tensor:
        """(B,) continuous levels -> the lambda each was trained for, interpolated geometrically."""
        log_l = torch.log(torch.tensor(self.lambdas, device=level.device))
        level = level.clamp(0, self.n_levels - 1)
        lo = level.floor().long().clamp(max=self.n_levels - 2)
        t = level - lo
        return torch.exp((1 - t) * log_l[lo] + t * log_l[lo + 1])

    def hyper_features(self, z_hat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Decoded z (gained) at rate `level` -> the features the latent prior is computed from."""
        return self.h_s(z_hat * self.gains(level)[3])

    # The latent is coded in passes: each pass codes the positions of its mask, with a prior that may
    # look at the latents decoded by earlier passes. This model has one pass: the hyperprior alone.

    def latent_masks(self, y: torch.Tensor) -> list[torch.Tensor]:
        """y: (B, M, h, w) -> one bool mask (1, 1, h, w) per coding pass; together they cover y once."""
        return [torch.ones((1, 1) + tuple(y.shape[2:]), dtype=torch.bool, device=y.device)]

    def latent_params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 (scales, means) of every latent for pass `step`; y_hat holds the latents decoded so
        far (zero elsewhere); memo: a dict the caller keeps over one image's passes, in which a pass
        may leave what a later one reuses."""
        scales, means = hyper.float().chunk(2, 1)
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

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> dict:
        gain, inv_gain, hgain, _ = self.gains(level)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            y = self.analysis_head(self.analysis(x), level)
        y = y.float() * gain
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            z = self.h_a(y)
        # Likelihoods stay in float32: bf16 would blur the rate term.
        z_hat, z_likelihoods = self.entropy_bottleneck(z.float() * hgain)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            hyper = self.hyper_features(z_hat, level)
        # The synthesis sees the rounded latent (straight-through), as the decoder will;
        # the rate term sees additive noise.
        scales, means, y_hat = self.latent_prior(y, hyper)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            x_hat = self.synthesis(y_hat * inv_gain, level)
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # --- coding path (float latents in, float latents out; symbols are made in codec.entropy) ---

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, level: torch.Tensor, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (gained y, gained z) ready for quantization. `features` = analysis(x) when already
        computed: it does not depend on the level, so a rate search reuses it."""
        gain, _, hgain, _ = self.gains(level)
        y = self.analysis_head(self.analysis(x) if features is None else features, level) * gain
        z = self.h_a(y) * hgain
        return y, z

    @torch.no_grad()
    def synthesise(self, y_hat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        _, inv_gain, _, _ = self.gains(level)
        return self.synthesis(y_hat * inv_gain, level).clamp(0, 1)

    def rounded_latents(self, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                        quantize=round_straight_through) -> tuple[torch.Tensor, ...]:
        """The gained latents (y, z) as the coder rounds them -> (z_hat, the latent prior's scales and
        means, y_hat); quantize(values, offsets) rounds, by default as the coder does, straight-through."""
        medians = self.entropy_bottleneck.quantiles[:, 0, 1].view(1, -1, 1, 1)
        z_hat = quantize(z, medians)
        return (z_hat, *self.latent_prior(y, self.hyper_features(z_hat, level), quantize))

    def coded_terms(self, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                    quantize=round_straight_through) -> tuple[torch.Tensor, torch.Tensor]:
        """What the coder will make of the gained latents (y, z) of a batch -> (bits of each image,
        from the discrete priors the coder's tables are built from; the decoded picture, padded as
        y is). `quantize` as in rounded_latents (refine's annealing passes a soft rounding)."""
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
        """Bits of the latent values y_values (B, M, h, w) under the Gaussian prior (scales, means) -> (B, M):
        each image's bits by channel (tools/channel_bits.py counts the channels that carry none)."""
        gc = self.gaussian_conditional
        return -torch.log2(gc.likelihood_lower_bound(gc._likelihood(y_values, scales, means))).sum(dim=(2, 3))

    def coded_loss(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor,
                   quantize=round_straight_through) -> torch.Tensor:
        """Rate-distortion loss of the gained latents (y, z) of image x (1, 3, h, w; unpadded) as the
        coder will code them (`coded_terms`): lambda * 255^2 * MSE + bits per pixel, as in training."""
        h, w = x.shape[-2:]
        bits, x_hat = self.coded_terms(y, z, level, quantize)
        distortion = self.lambda_at(level) * 255 ** 2 * (x_hat[..., :h, :w] - x).pow(2).mean()
        return distortion + bits.sum() / (h * w)

    def refine(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, level: torch.Tensor, steps: int,
               lr: float = REFINE_LR, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-side search: move the gained latents (y, z) of x (analyse's output) to lower the
        rate-distortion loss of what will really be coded (`coded_loss` over the top-left `size`
        pixels, the image without its padding). Adam follows the loss of a random soft rounding
        (stochastic Gumbel annealing, Yang et al. 2020, `annealed_round`) whose temperature falls
        geometrically over the steps, so the search ends on the coder's own rounding; the real coded
        loss is measured every REFINE_CHECK_EVERY steps and at the end. Returns the (y, z) measured
        lowest: never worse than where it started. The decoder needs nothing of this.

        It needs a long cooling: on stills no weights trained on (results/stills/hp-refine.md), 120
        steps saved 2.6-9.3 % of the bits where the additive-noise search it replaced saved
        0.2-5.1 % in 40, but 10 steps saved less than 10 of that search's."""
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

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()


class GainedCheckerboardHyperprior(GainedMeanScaleHyperprior):
    """The same transforms and gains with a checkerboard context (He et al. 2021): half the latent
    positions (the anchors, (i + j) even) are coded from the hyperprior alone, the other half also
    from a 5x5 convolution over the decoded anchors. Two parallel passes, no serial decoding."""

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        B = self.B = self.checkerboard_channels(M)
        # B context channels (not 2B): the 5x5 context is the largest layer of the entropy model.
        self.context = conv(B, B, 5, 1)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(3 * B, 10 * B // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(10 * B // 3, 8 * B // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(8 * B // 3, 2 * B, 1))

    @staticmethod
    def checkerboard_channels(M: int) -> int:
        """How many of the M latent channels the two checkerboard passes code: here all of them."""
        return M

    @staticmethod
    def anchors(y: torch.Tensor) -> torch.Tensor:
        """y: (B, C, h, w) -> the anchor positions, (i + j) even, as a bool mask (1, 1, h, w)."""
        i = torch.arange(y.shape[2], device=y.device)[:, None]
        j = torch.arange(y.shape[3], device=y.device)[None, :]
        return ((i + j) % 2 == 0)[None, None]

    def latent_masks(self, y: torch.Tensor) -> list[torch.Tensor]:
        anchor = self.anchors(y)
        return [anchor, ~anchor]

    def latent_params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        # Anchors see no context; at step 1, y_hat holds exactly the decoded anchors. The first 2B
        # hyper channels are the checkerboard channels' (the first B of y).
        B = self.B
        ctx = hyper.new_zeros((hyper.shape[0], B) + hyper.shape[2:]) if step == 0 else \
            self.context(y_hat[:, :B].to(hyper.dtype))
        scales, means = self.entropy_parameters(torch.cat([hyper[:, :2 * B], ctx], 1)).float().chunk(2, 1)
        return scales, means


class ResidualBlock(nn.Module):
    """x + body(x), channels kept: conv 3x3, leaky ReLU, conv 3x3; or, as a `bottleneck`, ELIC's
    1x1 down to half the channels, 3x3, 1x1 back (a fifth of the parameters and compute, cheap
    enough for half resolution). The last convolution starts at zero, so a block added to trained
    transforms starts as the identity: the model codes exactly as before and training only has
    capacity to gain."""

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


class GainedResidualCheckerboard(GainedCheckerboardHyperprior):
    """The checkerboard model with a residual block inside each transform, at a quarter of the image
    resolution (after g_a's second GDN, after g_s's second inverse GDN), +0.59 M parameters. Why: the
    GDN transforms were the ceiling at the top rates (on images no weights trained on, decoding the
    unrounded latent gained only 0.3-1.1 dB over the top level's rounded one). g_a and g_s keep their
    layers and names, so checkerboard weights load and, the blocks starting as the identity, code
    exactly as before growing."""

    SPLIT = 4  # g_a[:4] and g_s[:4] run up to quarter resolution

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        self.analysis_block = ResidualBlock(self.T)
        self.synthesis_block = ResidualBlock(self.T)

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a[self.SPLIT:](self.analysis_block(self.g_a[:self.SPLIT](x)))

    def synthesis(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.g_s[self.SPLIT:](self.synthesis_block(self.g_s[:self.SPLIT](y)))


class GainedResidualCheckerboard2(GainedResidualCheckerboard):
    """checkerboard-res grown again, at half resolution, where the fine detail of the top rates is
    analysed and drawn: two bottleneck residual blocks after g_a's first GDN and two after g_s's third
    inverse GDN, +0.21 M parameters (7.93 M in all). Starts as the checkerboard-res model it grows."""

    HALF = 2  # g_a[:2] (conv, GDN) ends at half resolution; g_s[-1] (deconv) starts there

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        T = self.T
        self.analysis_fine = nn.Sequential(ResidualBlock(T, bottleneck=True), ResidualBlock(T, bottleneck=True))
        self.synthesis_fine = nn.Sequential(ResidualBlock(T, bottleneck=True), ResidualBlock(T, bottleneck=True))

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        half = self.analysis_fine(self.g_a[:self.HALF](x))
        return self.g_a[self.SPLIT:](self.analysis_block(self.g_a[self.HALF:self.SPLIT](half)))

    def synthesis(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        half = self.g_s[self.SPLIT:-1](self.synthesis_block(self.g_s[:self.SPLIT](y)))
        return self.g_s[-1:](self.synthesis_fine(half))


class GainedWideCheckerboard(GainedResidualCheckerboard2):
    """checkerboard-res2 with a wider latent: M/4 more channels (M = 256 grown from 192) where the top
    rates were capped by the transforms (decoding the unrounded latent of the top level gained only
    0.6 dB over the rounded one; CompressAI's mbt2018-mean uses M = 320 for its top rates).

    The extra channels (the last M/4) are coded in a third pass, after both checkerboard passes of
    the first 3M/4: their prior comes from the hyperprior and from a 3x3 convolution over all the
    decoded checkerboard channels (a channel context, Minnen & Singh 2020), which costs far less than
    widening the 5x5 spatial context. Grown from checkerboard-res2 weights (the old layers' channels
    are the leading ones), the extra channels enter g_s and h_a through zero weights
    (codec.train.grow_parameters), so the model starts out reconstructing as the one it grew from
    (to float rounding). Grown so from hp-cbr2-v2, they ended up carrying almost no bits, their
    decoded values the prior's means predicted from the other channels, i.e. features for the
    synthesis (results/training/hp-cbw-v2/RECIPE.md)."""

    CHANNEL_CONTEXT = 128
    GROWS = True  # codec.train.grow_parameters may load narrower weights into it

    def __init__(self, N: int = 128, M: int = 256, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        B, E, C = self.B, M - self.B, self.CHANNEL_CONTEXT
        if E:  # a subclass whose checkerboard passes code every channel has no extra pass
            self.channel_context = conv(B, C, 3, 1)
            self.extra_parameters = nn.Sequential(
                nn.Conv2d(2 * E + C, 3 * E, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(3 * E, 2 * E, 1))

    @staticmethod
    def checkerboard_channels(M: int) -> int:
        return 3 * M // 4

    def latent_masks(self, y: torch.Tensor) -> list[torch.Tensor]:
        anchor, other = super().latent_masks(y)
        if self.B == self.M:
            return [anchor, other]
        base = (torch.arange(self.M, device=y.device) < self.B)[None, :, None, None]
        return [anchor & base, other & base, ~base & (anchor | other)]

    def latent_params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.B
        if step < 2:  # a checkerboard pass: the extra channels' entries are not coded now (any value)
            scales, means = super().latent_params(hyper, y_hat, step, memo)
            pad = scales.new_zeros((scales.shape[0], self.M - B) + scales.shape[2:])
            return torch.cat([scales, pad], 1), torch.cat([means, pad], 1)
        ctx = self.channel_context(y_hat[:, :B].to(hyper.dtype))
        scales, means = self.extra_parameters(torch.cat([hyper[:, 2 * B:], ctx], 1)).float().chunk(2, 1)
        pad = scales.new_zeros((scales.shape[0], B) + scales.shape[2:])
        return torch.cat([pad, scales], 1), torch.cat([pad, means], 1)


class GainedWiderCheckerboard(GainedWideCheckerboard):
    """checkerboard-wide with transforms half as wide again: g_a, g_s and their residual blocks have
    3N/2 channels (192 for N = 128), the hyperprior keeps N. Why: at the top rates the transforms,
    not the quantizer, were the ceiling, and CompressAI's mbt2018-mean, which widens its transforms
    to 192 channels for its top qualities, was 0.8-1.5 dB ahead of hp there (N = 128 throughout)
    while level with it below 0.5 bpp. Grown from checkerboard-wide weights, every old channel keeps
    its values and the new ones reach the old ones only through zero weights
    (codec.train.grow_parameters), so the model starts out coding as the one it grew from."""

    @staticmethod
    def transform_channels(N: int) -> int:
        return 3 * N // 2


class GainedGroupedCheckerboard(GainedWiderCheckerboard):
    """checkerboard-wider with its checkerboard channels coded in uneven channel groups (ELIC's
    space-channel context, He et al. 2022): each checkerboard half is coded group by group, B/12,
    B/12, B/6 and 2B/3 channels (16, 16, 32, 128 for B = 192), and a group's prior also sees the
    groups decoded before it in that half (and, for the second half, all of the first). 2 x 4 + 1
    passes. Why: the checkerboard passes predicted each channel from space alone, and the latent's
    channels are not independent.

    A group's prior is the old one corrected: a head per group and half (the first group needs none)
    reads the decoded channels of the earlier groups (3x3) and the old (log-scales, means) of its
    channels, and outputs a log-scale factor and a mean shift. The heads' last layers start at zero and
    the old spatial context is given the anchors only, as before, so grown from checkerboard-wider
    weights the model codes as they did (codec.train.grow_parameters keeps fresh parameters fresh)."""

    @staticmethod
    def channel_groups(B: int) -> tuple[int, ...]:
        return (B // 12, B // 12, B // 6, B - B // 3)

    def __init__(self, N: int = 128, M: int = 256, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        sizes = self.channel_groups(self.B)
        self.group_starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]

        def head(seen: int, size: int) -> nn.ModuleDict:
            width = max(64, seen + size)
            out = nn.Conv2d(width, 2 * size, 1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            return nn.ModuleDict({"context": conv(seen, width, 3, 1), "params": nn.Sequential(
                nn.Conv2d(width + 2 * size, width, 1), nn.LeakyReLU(inplace=True), out)})

        self.group_heads = nn.ModuleList(head(self.group_starts[g], sizes[g])
                                         for half in range(2) for g in range(1, len(sizes)))

    def latent_masks(self, y: torch.Tensor) -> list[torch.Tensor]:
        anchor, other, *extra = super().latent_masks(y)
        c = torch.arange(self.M, device=y.device)[None, :, None, None]
        s = self.group_starts
        groups = [(c >= s[g]) & (c < s[g + 1]) for g in range(len(s) - 1)]
        return [half & group for half in (anchor, other) for group in groups] + extra

    def latent_params(self, hyper: torch.Tensor, y_hat: torch.Tensor, step: int, memo: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        n_groups = len(self.group_starts) - 1
        if step == 2 * n_groups:  # the extra channels, after every checkerboard channel
            return super().latent_params(hyper, y_hat, 2, memo)
        half, g = divmod(step, n_groups)
        # The old checkerboard prior of every channel, the same for each group of a half: its spatial
        # context sees the anchors only, all of them decoded before the second half's first group.
        if ("checkerboard", half) not in memo:
            anchor_only = torch.where(self.anchors(y_hat), y_hat, torch.zeros_like(y_hat))
            memo["checkerboard", half] = super().latent_params(hyper, anchor_only, half, memo)
        scales, means = memo["checkerboard", half]
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


class GainedConditionedCheckerboard(GainedGroupedCheckerboard):
    """checkerboard-groups with a synthesis told the rate: after each of g_s's three inverse GDNs the
    channels are scaled and shifted by a row of per-level tables, interpolated between levels as the
    gains are (a conditional autoencoder, Choi et al. 2019), +1,152 parameters per level. Why: one
    synthesis decoded the coarse latents of the lowest rates and the fine ones of the highest alike,
    and the top levels were the furthest behind BPG-444 (0.65-2.1 dB) while the middle led it. The
    analysis stays rate-free, so a rate search still computes it once. The tables start at the
    identity (log-scale 0, shift 0), so grown from checkerboard-groups weights the model codes as
    they did."""

    LEVEL_TABLES = GainedGroupedCheckerboard.LEVEL_TABLES + ("synthesis_log_scale", "synthesis_shift")

    def __init__(self, N: int = 128, M: int = 256, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        self.synthesis_log_scale = nn.Parameter(torch.zeros(self.n_levels, 3 * self.T))
        self.synthesis_shift = nn.Parameter(torch.zeros(self.n_levels, 3 * self.T))

    def told(self, name: str, level: torch.Tensor):
        """-> a function (h, i) -> h scaled and shifted by chunk i of the tables `name`_log_scale and
        `name`_shift at rates `level`."""
        scales = torch.exp(self.level_rows(getattr(self, f"{name}_log_scale"), level))
        shifts = self.level_rows(getattr(self, f"{name}_shift"), level)
        T = self.T
        return lambda h, i: (h * scales[:, i * T:(i + 1) * T, None, None].to(h.dtype)
                             + shifts[:, i * T:(i + 1) * T, None, None].to(h.dtype))

    def synthesis(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        told, g_s = self.told("synthesis", level), self.g_s  # g_s: checkerboard-res2's layers, in its order
        h = told(g_s[2:4](told(g_s[:2](y), 0)), 1)  # told after inverse GDNs 0, 1 and 2
        h = told(g_s[4:6](self.synthesis_block(h)), 2)
        return g_s[6:](self.synthesis_fine(h))


class GainedConditionedCheckerboard2(GainedConditionedCheckerboard):
    """checkerboard-cond with an analysis told the rate too: after g_a's second and third GDNs, per-level
    channel scales and shifts as in the synthesis. Why: with a rate-free analysis every rate codes the
    same latent, only more or less finely (the gains); told the rate, the analysis can keep what that
    rate can afford. The first half of g_a (up to the second GDN, two thirds of its arithmetic) stays
    rate-free, so a rate search computes it once and only the rest per level. Starts at the identity,
    as the synthesis tables did."""

    LEVEL_TABLES = GainedConditionedCheckerboard.LEVEL_TABLES + ("analysis_log_scale", "analysis_shift")

    def __init__(self, N: int = 128, M: int = 256, lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__(N, M, lambdas)
        self.analysis_log_scale = nn.Parameter(torch.zeros(self.n_levels, 2 * self.T))
        self.analysis_shift = nn.Parameter(torch.zeros(self.n_levels, 2 * self.T))

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a[self.HALF:self.SPLIT](self.analysis_fine(self.g_a[:self.HALF](x)))

    def analysis_head(self, features: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        told = self.told("analysis", level)
        return self.g_a[6:](told(self.g_a[4:6](self.analysis_block(told(features, 0))), 1))


class GainedFullCheckerboard(GainedConditionedCheckerboard2):
    """checkerboard-cond2 with every latent channel coded in the grouped checkerboard passes (no third
    pass), for a latent as wide as the top rates need (M = 320: ELIC's and mbt2018-mean's top-rate
    width). Why: in checkerboard-cond2 (M = 256), 42 of the 64 channels of the third pass carried no
    bits at the top level; their prior means, computed from the other channels, had become features for
    the synthesis, free of bits, and neither growing nor freeing their bits brought them back
    (results/training/hp-cbc2-v8/RECIPE.md). Here every channel is coded like the 192 that all carried
    bits, in ELIC's five uneven groups (16, 16, 32, 64, 192 for M = 320): 2 x 5 passes. Not grown: it
    starts from checkerboard-cond2's transforms with fresh latent-facing layers and entropy model
    (codec.train --transplant). Measured after 25.5 GPU-minutes (results/training/hp-cbf-v1/): 247
    channels hold 99 % of the top level's bits (checkerboard-cond2: 211), but 73 carry under 0.1 %,
    none of them in the first two groups."""

    GROWS = False  # its channel groups and hyper channels do not line up with narrower weights'

    @staticmethod
    def checkerboard_channels(M: int) -> int:
        return M

    @staticmethod
    def channel_groups(B: int) -> tuple[int, ...]:
        return (B // 20, B // 20, B // 10, B // 5, B - 2 * (B // 20) - B // 10 - B // 5)
