"""Integer-only inference of the vq family's index prior: the CDF rows that code the stage-1
indices, bit for bit alike on every CPU and GPU, whatever the thread count or batch.

A post-training copy of a trained `IndexPrior`, built at load time from its float weights (no extra
file). Every value that decides a probability is an integer:
  * activations are int64 in fixed point with FRAC_A fractional bits;
  * Linear weights are integers below 2^WEIGHT_BITS with a power-of-two scale per output channel
    (codec.models.integer's scheme), the bias at the accumulator's scale, the output shifted back
    with rounding. The matmuls run in float64 on integer values: every input is clamped so that the
    sum of absolute products stays below 2^53, so every partial sum in any order is an exact
    integer and the result is the same whatever kernel, blocking, thread count or device sums it.
    The depthwise position convolution runs as 25 shifted multiply-adds in int64;
  * LayerNorm: integer mean and variance, an integer square root (float64 estimate, then corrected
    with integer comparisons to the exact floor), one integer division per element;
  * softmax (the attention's and the output's over the K codes): the row maximum minus each logit,
    rounded to steps of 2^-EXP_STEP, indexes a table of exp(-i 2^-EXP_STEP) built with Python's
    `decimal` (the same integers everywhere); attention divides sum_j e_ij v_j by sum_j e_ij once per
    output value instead of normalising each weight;
  * output: exp-table weights over the main codebook, summed (exact integer sums) onto a clustered
    codebook through `mapping`, then frequencies floor(e * (2^16 - K) / sum e) + 1 with the rounding
    remainder on the most probable symbol (the smallest index among ties): pmf_to_cdf's rule, in
    integers. Every frequency >= 1, each row sums to exactly 2^16.

The only float inputs are the code vectors: they are l2-normalised here in float64 with elementwise
operations in a fixed order (each IEEE-correctly rounded, so identical everywhere) and then rounded
to CODE_FRAC bits. Given the raw stored codebook, the path is therefore deterministic end to end.
"""
from __future__ import annotations

import decimal
import functools

import numpy as np
import torch
from torch import nn

from codec.models.integer import EXACT, pow2, shift_round, to_fixed

# Own constants, not integer.py's: a change there must not change the vq bitstream.
WEIGHT_BITS = 14  # |integer weight| <= 2^WEIGHT_BITS, a power-of-two scale per output channel
FRAC_A = 14       # fractional bits of every activation (residual stream, q/k/v, logits)
CODE_FRAC = 15    # fractional bits of the unit-norm code vectors fed to the token layer
GAMMA_FRAC = 14   # fractional bits of LayerNorm gains
EXP_STEP = 10     # the exp tables' step: exp(-i / 2^EXP_STEP)
ATTN_BITS = 16    # attention weights: exp at 16 fractional bits (the row's largest is 2^16)
OUT_BITS = 30     # output distribution: exp at 30 fractional bits before the frequencies
CDF_BITS = 16     # the range coder's precision (bitstream.coder.PRECISION)
ATTN_ROWS = 256   # query rows per attention block (a block's scores stay in cache)
OUT_ROWS = 32     # positions per block of the output softmax
LN_CLAMP = 1 << (FRAC_A + 12)  # |LayerNorm input| bound: keeps sum (x - mean)^2 below 2^62


@functools.lru_cache(maxsize=None)
def exp_table(bits: int, step: int = EXP_STEP) -> tuple[int, ...]:
    """round(exp(-i / 2^step) * 2^bits) for i = 0, 1, ... up to and including the first 0.

    Built in decimal at 50 digits as exp(-hi / 2^5) * exp(-lo / 2^step) (i = hi * 2^(step-5) + lo):
    pure software arithmetic, the same integers on every machine."""
    with decimal.localcontext(decimal.Context(prec=50)):
        fine = 1 << (step - 5)
        scale = decimal.Decimal(1 << bits)
        coarse = [(-decimal.Decimal(h) / 32).exp() * scale for h in range(2 ** 5 * 64)]
        small = [(-decimal.Decimal(lo) / (1 << step)).exp() for lo in range(fine)]
        values = []
        for i in range(len(coarse) * fine):
            v = int((coarse[i // fine] * small[i % fine]).to_integral_value(decimal.ROUND_HALF_EVEN))
            values.append(v)
            if v == 0:
                return tuple(values)
    raise ValueError("exp table does not reach 0")


def div_round(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """round(num / den) in int64 (half up), den > 0."""
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(x)) of int64 values 0 <= x < 2^53, exactly: a float64 estimate, then corrected
    with integer comparisons (the estimate is within one of the answer; the loops make the result
    independent of how the estimate was rounded)."""
    r = torch.sqrt(x.double()).long()
    while True:
        high = r * r > x
        low = (r + 1) * (r + 1) <= x
        if not (high.any() or low.any()):
            return r
        r = r - high.long() + low.long()


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Number of bits of int64 values x >= 0 (0 -> 0), by integer comparisons."""
    powers = torch.ones(63, dtype=torch.long, device=x.device) << torch.arange(63, device=x.device)
    return (x[..., None] >= powers).sum(-1)


def unit_codes(codes: torch.Tensor) -> torch.Tensor:
    """(K, d) code vectors -> l2-normalised, rounded to CODE_FRAC bits (int64), deterministically:
    the squared norm is summed column by column in float64 (elementwise ops, each correctly
    rounded), then sqrt and division, also correctly rounded. As F.normalize (eps 1e-12)."""
    c = codes.detach().double()
    squares = c[:, 0] * c[:, 0]
    for i in range(1, c.shape[1]):
        squares = squares + c[:, i] * c[:, i]
    norm = torch.sqrt(squares).clamp(min=1e-12)
    return to_fixed(c / norm[:, None], CODE_FRAC)


def _channel_shift(peak: torch.Tensor, low: int, high: int = 30) -> torch.Tensor:
    """Per output channel, the largest s with |w| * 2^s < 2^WEIGHT_BITS (peak < 2^exponent exactly)."""
    exponent = torch.frexp(peak.clamp(min=2.0 ** -30)).exponent.long()
    return (WEIGHT_BITS - exponent).clamp(min=low, max=high)


class IntLinear(nn.Module):
    """A frozen integer nn.Linear: int64 at `frac_in` bits in, at `frac_out` bits out. `gain`
    (out,) float64 multiplies each output's weights and bias before rounding (the attention's
    1 / sqrt(head_dim))."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, frac_in: int = FRAC_A,
                 frac_out: int = FRAC_A, gain: torch.Tensor | None = None):
        super().__init__()
        w = weight.detach().cpu().double()
        b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().cpu().double()
        if gain is not None:
            w, b = w * gain[:, None], b * gain
        shift = _channel_shift(w.abs().amax(1), low=frac_out - frac_in + 1)
        self.register_buffer("weight", torch.round(w * pow2(shift)[:, None]).T.contiguous())
        self.register_buffer("shift", shift + frac_in - frac_out)
        # The bias at the accumulator's scale plus the half that makes the final shift round; all
        # integers, kept in float64 for the exact arithmetic below.
        bias = torch.round(b * pow2(shift + frac_in)) + pow2(self.shift - 1)
        self.register_buffer("bias", bias)
        self.register_buffer("scale", pow2(-self.shift))
        # |x| <= limit keeps sum |x| |w| + |bias| < 2^53: every partial sum, in any order, and the
        # biased sum are exact integers.
        self.limit = int((EXACT - bias.abs().max().item()) // ((1 << WEIGHT_BITS) * w.shape[1])) - 1
        if self.limit < 1 << (frac_in + 8):
            raise ValueError("IntLinear: weights or bias out of the exact range")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = x.clamp(-self.limit, self.limit).double() @ self.weight
        # floor((acc + bias) / 2^shift): a power-of-two scaling and floor, both exact.
        return acc.add_(self.bias).mul_(self.scale).floor_().long()


class IntLayerNorm(nn.Module):
    """nn.LayerNorm over the last dimension, int64 at FRAC_A bits in and out."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.n = norm.normalized_shape[0]
        self.register_buffer("gamma", to_fixed(norm.weight.detach().cpu(), GAMMA_FRAC))
        self.register_buffer("beta", to_fixed(norm.bias.detach().cpu(), FRAC_A))
        self.eps = to_fixed(torch.tensor(norm.eps * self.n), 2 * FRAC_A).item()  # added to sum (x - mean)^2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-LN_CLAMP, LN_CLAMP)
        c = x - div_round(x.sum(-1, keepdim=True), torch.tensor(self.n, device=x.device))
        v = (c * c).sum(-1, keepdim=True) + self.eps  # n * variance at 2 FRAC_A bits, < 2^62
        # Scale v by 4^a into [2^58, 2^60) so that the square root keeps about 27 bits.
        a = torch.div(60 - bit_length(v), 2, rounding_mode="floor")
        v = torch.where(a >= 0, v << a.clamp(min=0) * 2, v >> (-a).clamp(min=0) * 2)
        std = isqrt(torch.div(v, self.n, rounding_mode="floor"))  # std * 2^(FRAC_A + a)
        # (c / std) at FRAC_A bits: c * 2^(FRAC_A + a) / std; |c| <= sqrt(v) keeps it below 2^45.
        u = div_round(c << (FRAC_A + a), std)
        return shift_round(u * self.gamma, GAMMA_FRAC) + self.beta


class IntDepthwise(nn.Module):
    """The position convolution (depthwise k x k, 'same' padding) on (B, h, w, C) int64 at FRAC_A bits,
    as k^2 shifted multiply-adds in int64 (|x| < 2^40: every sum < 2^63)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        w = conv.weight.detach().cpu().double()[:, 0]  # (C, k, k)
        shift = _channel_shift(w.abs().amax((1, 2)), low=1)
        self.register_buffer("weight", torch.round(w * pow2(shift)[:, None, None])
                             .long().permute(1, 2, 0).contiguous())  # (k, k, C)
        self.register_buffer("bias", torch.round(conv.bias.detach().cpu().double()
                                                 * pow2(shift + FRAC_A)).long())
        self.register_buffer("shift", shift)
        self.k, self.pad = w.shape[-1], conv.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        p = self.pad
        xp = torch.zeros((b, h + 2 * p, w + 2 * p, c), dtype=x.dtype, device=x.device)
        xp[:, p:p + h, p:p + w] = x.clamp(-(1 << 40), 1 << 40)
        acc = self.bias.expand(b, h, w, c).clone()
        for dy in range(self.k):
            for dx in range(self.k):
                acc += xp[:, dy:dy + h, dx:dx + w] * self.weight[dy, dx]
        return shift_round(acc, self.shift)


class IntEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer (norm_first, ReLU, batch_first) in integers."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        attn = layer.self_attn
        if not (layer.norm_first and attn.batch_first and attn._qkv_same_embed_dim):
            raise ValueError("IntEncoderLayer expects norm_first, batch_first self-attention")
        c = attn.embed_dim
        self.heads, self.head_dim = attn.num_heads, c // attn.num_heads
        gain = torch.ones(3 * c, dtype=torch.float64)
        gain[:c] = 1 / np.sqrt(float(self.head_dim))  # q / sqrt(head_dim), correctly rounded
        self.norm1, self.norm2 = IntLayerNorm(layer.norm1), IntLayerNorm(layer.norm2)
        self.in_proj = IntLinear(attn.in_proj_weight, attn.in_proj_bias, gain=gain)
        self.out_proj = IntLinear(attn.out_proj.weight, attn.out_proj.bias)
        self.linear1 = IntLinear(layer.linear1.weight, layer.linear1.bias)
        self.linear2 = IntLinear(layer.linear2.weight, layer.linear2.bias)
        self.register_buffer("table", torch.tensor(exp_table(ATTN_BITS), dtype=torch.float64))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, M, C), k and v (B, N, C) int64 at FRAC_A bits (q already over sqrt(head_dim)) ->
        (B, M, C): per head, sum_j e_ij v_j / sum_j e_ij, e_ij = exp(s_ij - max_j s_ij) from the table.
        Computed in blocks of ATTN_ROWS query rows with reused buffers (rows are independent)."""
        b, m, c = q.shape
        n = k.shape[1]
        limit_qk = int(np.sqrt(EXACT // self.head_dim)) - 1  # |q| |k| head_dim < 2^53
        limit_v = EXACT // (int(self.table[0]) * n) - 1      # sum_j e_ij |v_j| < 2^53
        # Scores in table steps (q k / 2^(2 FRAC_A - EXP_STEP)): scaling by a power of two is exact,
        # so the products and every partial sum are exact multiples of 2^-(2 FRAC_A - EXP_STEP).
        q = q.clamp(-limit_qk, limit_qk).double().mul_(2.0 ** (EXP_STEP - 2 * FRAC_A))
        k = k.clamp(-limit_qk, limit_qk).double()
        v = v.clamp(-limit_v, limit_v).double()
        num = torch.empty((b, self.heads, m, self.head_dim), dtype=torch.float64, device=q.device)
        den = torch.empty((b, self.heads, m, 1), dtype=torch.float64, device=q.device)
        rows = min(m, ATTN_ROWS)
        s = torch.empty((rows, n), dtype=torch.float64, device=q.device)
        e = torch.empty((rows, n), dtype=torch.float64, device=q.device)
        step = torch.empty((rows, n), dtype=torch.int32, device=q.device)
        last = len(self.table) - 1
        for i in range(b):
            for h in range(self.heads):
                cols = slice(h * self.head_dim, (h + 1) * self.head_dim)
                qh, kt, vh = q[i, :, cols].contiguous(), k[i, :, cols].T.contiguous(), v[i, :, cols].contiguous()
                for r0 in range(0, m, rows):
                    r1 = min(r0 + rows, m)
                    sb, eb, ib = s[:r1 - r0], e[:r1 - r0], step[:r1 - r0]
                    torch.mm(qh[r0:r1], kt, out=sb)
                    # round(max - s) in table steps, >= 0; every step exact (multiples of
                    # 2^-(2 FRAC_A - EXP_STEP) below 2^40); truncation of a positive value is its floor.
                    top = sb.amax(-1, keepdim=True).add_(0.5)
                    torch.sub(top, sb, out=sb).clamp_(max=last)
                    ib.copy_(sb)
                    torch.index_select(self.table, 0, ib.view(-1), out=eb.view(-1))
                    torch.mm(eb, vh, out=num[i, h, r0:r1])
                    torch.sum(eb, -1, keepdim=True, out=den[i, h, r0:r1])
        out = div_round(num.long(), den.long())  # (B, heads, M, head_dim)
        return out.permute(0, 2, 1, 3).reshape(b, m, c)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C); with `rows` (M,) positions: only those rows are computed
        (every position's keys and values still enter) -> (B, M, C)."""
        c = x.shape[-1]
        qkv = self.in_proj(self.norm1(x))
        q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
        if rows is not None:
            x, q = x[:, rows], q[:, rows]
        x = x + self.out_proj(self.attention(q, k, v))
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))


class IntegerPrior(nn.Module):
    """The integer copy of an IndexPrior. `rows` gives the coded positions' integer
    frequencies (`features`, then `frequencies`), `cdf` the range coder's rows; compress/decompress
    of IndexPrior use them."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.codebook_size, self.total = prior.codebook_size, 1 << CDF_BITS
        self.token = IntLinear(prior.token.weight, prior.token.bias, frac_in=CODE_FRAC)
        self.register_buffer("mask", to_fixed(prior.mask.detach().cpu(), FRAC_A))
        self.register_buffer("level", to_fixed(prior.level.weight.detach().cpu(), FRAC_A))
        self.position = IntDepthwise(prior.position)
        self.layers = nn.ModuleList(IntEncoderLayer(layer) for layer in prior.blocks.layers)
        if prior.blocks.norm is not None:
            raise ValueError("IntegerPrior expects an encoder without a final norm of its own")
        self.norm = IntLayerNorm(prior.norm)
        self.head = nn.ModuleList(IntLinear(m.weight, m.bias) for m in prior.head)
        self.register_buffer("table", torch.tensor(exp_table(OUT_BITS), dtype=torch.long))

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (K, code_dim) -> the token layer's output per code, (K, dim) int64 (compute once
        per codebook and pass to `frequencies`)."""
        return self.token(unit_codes(codes.to(self.mask.device)))

    def embed(self, indices: torch.Tensor, known: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """indices, known (B, h, w) into the codebook whose `tokens` these are -> (B, h, w, dim): each
        known index's token, the mask elsewhere, plus the embedding of the codebook's size."""
        k = tokens.shape[0]
        return torch.where(known[..., None], tokens[indices.clamp(max=k - 1)], self.mask) + self.level[k.bit_length() - 1]

    def features(self, indices: torch.Tensor, known: torch.Tensor, tokens: torch.Tensor,
                 select: torch.Tensor, order: torch.Tensor | None = None,
                 region: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """indices, known, select (B, h, w) -> (N, head_rank) int64: the input of the output layer
        at the selected positions, in the order of x[select]. `order` (h*w,): a permutation of the
        positions in which the transformer sees the sequence (any gives the same integers).
        region: (tokens of a second codebook, where (B, h, w) bool): the positions whose indices are
        into that codebook (a region of interest coded with a larger one)."""
        b, h, w = indices.shape
        x = self.embed(indices, known, tokens)
        if region is not None:
            x = torch.where(region[1][..., None], self.embed(indices, known, region[0]), x)
        x = (x + self.position(x)).view(b, h * w, -1)
        sel = select.expand(b, h, w).reshape(b, h * w)
        inverse = None
        if order is not None:
            x = x[:, order]
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order), device=order.device)
        for layer in self.layers[:-1]:
            x = layer(x)
        if bool((sel == sel[:1]).all()):
            # Every map codes the same positions (coding groups do): the last layer only at those
            # rows (all keys and values still enter).
            rows = sel[0].nonzero().flatten()
            x = self.layers[-1](x, rows if inverse is None else inverse[rows]).reshape(-1, x.shape[-1])
        else:
            x = self.layers[-1](x)
            x = (x if inverse is None else x[:, inverse])[sel]
        x = self.norm(x)
        for linear in self.head[:-1]:
            x = linear(x)
        return x

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, head_rank) -> (N, K_main) int64 logits at FRAC_A bits."""
        return self.head[-1](features)

    def frequencies(self, features: torch.Tensor, mapping: torch.Tensor, k: int) -> torch.Tensor:
        """(N, head_rank) features -> (N, k) int64 frequencies over the codebook in use (summed
        over the main codes in each cluster), each >= 1, each row summing to 2^CDF_BITS. In blocks
        of OUT_ROWS positions (rows are independent)."""
        if k < 1 or k > self.total // 2:
            raise ValueError(f"alphabet size {k} out of range")
        mapping = mapping.to(features.device)
        out = torch.empty((features.shape[0], k), dtype=torch.long, device=features.device)
        shift, last = FRAC_A - EXP_STEP, len(self.table) - 1
        arange = torch.arange(k, device=features.device)
        for r0 in range(0, features.shape[0], OUT_ROWS):
            logits = self.logits(features[r0:r0 + OUT_ROWS])
            # round(max - logit) in table steps; e <= 2^OUT_BITS, the row's max exactly so.
            step = torch.sub(logits.amax(1, keepdim=True) + (1 << (shift - 1)), logits, out=logits) >> shift
            e = torch.index_select(self.table, 0, step.clamp_(max=last).view(-1)).view(step.shape)
            if k != self.codebook_size:
                e = torch.zeros((e.shape[0], k), dtype=e.dtype, device=e.device).index_add_(1, mapping, e)
            freq = torch.div(e * (self.total - k), e.sum(1, keepdim=True), rounding_mode="floor").add_(1)
            # The remainder to the most probable symbol, the first among equals (min is order-free).
            top = torch.where(e == e.amax(1, keepdim=True), arange, k).amin(1, keepdim=True)
            out[r0:r0 + OUT_ROWS] = freq.scatter_add_(1, top, self.total - freq.sum(1, keepdim=True))
        return out

    @staticmethod
    def cdf(freq: torch.Tensor) -> np.ndarray:
        """(N, k) frequencies -> (N, k + 1) uint32 CDF rows for bitstream.coder."""
        out = np.zeros((freq.shape[0], freq.shape[1] + 1), np.uint32)
        out[:, 1:] = torch.cumsum(freq, 1).cpu().numpy()
        return out

    @torch.no_grad()
    def rows(self, indices: torch.Tensor, known: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor,
             select: torch.Tensor, order: torch.Tensor | None = None, tokens: torch.Tensor | None = None
             ) -> torch.Tensor:
        """The integer frequencies (N, len(codes)) of the selected positions (B, h, w)."""
        dev = self.mask.device
        tokens = self.tokens(codes) if tokens is None else tokens
        features = self.features(indices.to(dev), known.to(dev), tokens, select.to(dev), order)
        return self.frequencies(features, mapping, len(codes))
