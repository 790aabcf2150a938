"""Vector quantizer of the vq family: a large codebook of low-dimensional, l2-normalised codes, and
residual stages under it.

Lookup happens after projecting the encoder output to `code_dim` dimensions and normalising it
(factorised, normalised codes as in ViT-VQGAN): nearest code by cosine similarity, which keeps
codebook usage high for large K. Each further stage quantizes what the stages before it left
(residual VQ, Euclidean nearest code), so depth D adds rate above one codebook. Training drops the
residual stages for a share of the samples (quantizer dropout, as SoundStream), so the decoder works
at every depth. Behaviours are constructor flags with defaults:
  * k-means initialisation of the main codebook from the first training batch (residual codebooks
    start from random residuals of that batch);
  * dead-code restarts (restart_dead_codes(), after each optimizer step): a code whose usage (an exponential moving average of its share of the
    assignments) falls below `dead_code_threshold` times the uniform share 1/K is replaced by a
    random input of the current batch;
  * commitment loss weight `commitment`.
Shapes: z (B, dim, H, W) -> z_q (B, dim, H, W), indices (B, H, W) per stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.quantizers.cluster import spherical_kmeans


class Codebook(nn.Module):
    """One stage: K codes of `code_dim`; cosine lookup on the unit sphere, or Euclidean lookup."""

    def __init__(self, size: int, code_dim: int, normalised: bool, dead_code_threshold: float, usage_decay: float):
        super().__init__()
        self.size, self.normalised = size, normalised
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        init = torch.randn(size, code_dim)
        self.weight = nn.Parameter(F.normalize(init, dim=-1) if normalised else 0.1 * init)
        # Usage starts at the uniform share, so no code counts as dead before it had a chance.
        self.register_buffer("usage", torch.full((size,), 1.0 / size))

    def vectors(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1) if self.normalised else self.weight

    def nearest(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, code_dim) -> (N,) indices of the nearest of `codes` (default: this stage's)."""
        codes = self.vectors() if codes is None else codes
        if self.normalised:
            return (e @ codes.T).argmax(1)
        return (codes.pow(2).sum(1) - 2 * e @ codes.T).argmin(1)  # |e|^2 is the same for every code

    @torch.no_grad()
    def track_usage(self, idx: torch.Tensor, e: torch.Tensor) -> None:
        share = torch.bincount(idx, minlength=self.size).float() / idx.numel()
        self.usage.mul_(self.usage_decay).add_(share, alpha=1 - self.usage_decay)
        self._candidates = e  # restart material for restart_dead()

    @torch.no_grad()
    def restart_dead(self) -> None:
        """Replace codes whose usage fell below the threshold with inputs of the last batch. Called
        after the optimizer step: the codebook is still needed for the backward pass until then."""
        e = getattr(self, "_candidates", None)
        dead = (self.usage < self.dead_code_threshold / self.size).nonzero().flatten()
        if e is not None and len(dead):
            pick = torch.randint(e.shape[0], (len(dead),), device=e.device)
            self.weight[dead] = e[pick]
            self.usage[dead] = 1.0 / self.size
        self._candidates = None


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, code_dim: int = 16, residual_sizes: tuple[int, ...] = (),
                 commitment: float = 0.25, kmeans_init: bool = True, dead_code_threshold: float = 1e-3,
                 usage_decay: float = 0.99, residual_dropout: float = 0.5):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.commitment, self.residual_dropout = commitment, residual_dropout
        self.project_in = nn.Conv2d(dim, code_dim, 1)
        self.project_out = nn.Conv2d(code_dim, dim, 1)
        self.stages = nn.ModuleList(
            [Codebook(codebook_size, code_dim, True, dead_code_threshold, usage_decay)]
            + [Codebook(k, code_dim, False, dead_code_threshold, usage_decay) for k in residual_sizes])
        self.register_buffer("initialised", torch.tensor(not kmeans_init))

    @property
    def max_depth(self) -> int:
        return len(self.stages)

    def codes(self) -> torch.Tensor:
        """(K, code_dim) unit-norm codes of the main codebook."""
        return self.stages[0].vectors()

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B*H*W, code_dim) unit-norm vectors."""
        e = self.project_in(z).permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return F.normalize(e.float(), dim=-1)

    @torch.no_grad()
    def indices(self, z: torch.Tensor, depth: int = 1, codes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """z: (B, dim, H, W) -> one (B, H, W) int64 index map per stage, `depth` stages.
        codes: a replacement for the main codebook (a clustered one)."""
        b, _, h, w = z.shape
        maps = []
        with torch.autocast(z.device.type, enabled=False):  # nearest codes in float32, also in training
            residual = self.project(z.float())
            for i in range(depth):
                table = self._table(i, codes)
                idx = self.stages[i].nearest(residual, table)
                residual = residual - table[idx]
                maps.append(idx.view(b, h, w))
        return maps

    def _table(self, stage: int, codes: torch.Tensor | None) -> torch.Tensor:
        """The code vectors of a stage; `codes` replaces the main codebook's when given."""
        return codes if (stage == 0 and codes is not None) else self.stages[stage].vectors()

    def lookup(self, maps: list[torch.Tensor], codes: torch.Tensor | None = None,
               region: tuple[torch.Tensor, torch.Tensor] | None = None,
               restored: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Index maps (stage 1 first) -> (B, dim, H, W), what the decoder is given. region: (a
        second codebook, where (B, H, W) bool): stage-1 indices there are into that codebook.
        restored: (where (B, H, W) bool, vectors (B, H, W, code_dim)): stage-1 vectors that stand
        for lost indices (IndexPrior.recover's expected codes)."""
        vectors = [self._table(i, codes)[idx] for i, idx in enumerate(maps[1:], start=1)]
        first = self._table(0, codes)
        if region is None:
            v = first[maps[0]]
        else:
            v = torch.where(region[1][..., None], region[0][maps[0]], first[maps[0].clamp(max=len(first) - 1)])
        vectors.append(v if restored is None else torch.where(restored[0][..., None], restored[1], v))
        q = sum(vectors)
        return self.project_out(q.permute(0, 3, 1, 2))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training path -> (z_q with straight-through gradients, stage-1 indices, quantizer loss)."""
        with torch.autocast(z.device.type, enabled=False):  # nearest codes in float32
            z_q, first, loss = self._quantize(z.float())
        return z_q.to(z.dtype), first, loss

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = z.shape
        e = self.project(z)
        if self.training and not bool(self.initialised):
            self._initialise(e.detach())
        residual, loss, quantized = e, e.new_zeros(()), []
        for stage in self.stages:
            codes = stage.vectors()
            idx = stage.nearest(residual.detach(), codes)
            qi = codes[idx]
            loss = loss + F.mse_loss(qi, residual.detach()) + self.commitment * F.mse_loss(residual, qi.detach())
            if self.training:
                stage.track_usage(idx, residual.detach())
            quantized.append((idx, qi))
            residual = residual - qi.detach()
        first, q = quantized[0]
        if len(quantized) > 1:
            rest = sum(qi for _, qi in quantized[1:])
            if self.training:  # quantizer dropout: per position, all stages or only the first
                rest = rest * (torch.rand(e.shape[0], 1, device=e.device) >= self.residual_dropout)
            q = q + rest
        q_st = e + (q - e).detach()
        z_q = self.project_out(q_st.view(b, h, w, self.code_dim).permute(0, 3, 1, 2))
        return z_q, first.view(b, h, w), loss

    def restart_dead_codes(self) -> None:
        """Dead-code restarts of every stage, after the optimizer step of a training forward."""
        for stage in self.stages:
            stage.restart_dead()

    @torch.no_grad()
    def _initialise(self, e: torch.Tensor) -> None:
        centroids, assignment = spherical_kmeans(e, self.codebook_size, iters=10)
        self.stages[0].weight.copy_(centroids)
        residual = e - centroids[assignment]
        for stage in self.stages[1:]:
            stage.weight.copy_(residual[torch.randint(len(residual), (stage.size,), device=e.device)])
        self.initialised.fill_(True)
