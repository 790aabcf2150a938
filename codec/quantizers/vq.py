"""Vector quantizer of the vq family: a large codebook of low-dimensional, l2-normalised codes.

Lookup happens after projecting the encoder output to `code_dim` dimensions and normalising it
(factorised, normalised codes as in ViT-VQGAN): nearest code by cosine similarity, which keeps
codebook usage high for large K. Behaviours are constructor flags with defaults:
  * k-means initialisation of the codebook from the first training batch;
  * dead-code restarts: a code whose usage (an exponential moving average of its share of the
    assignments) falls below `dead_code_threshold` times the uniform share 1/K is replaced by a
    random encoder output of the current batch;
  * commitment loss weight `commitment`.
Shapes: z (B, dim, H, W) -> z_q (B, dim, H, W), indices (B, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.quantizers.cluster import spherical_kmeans


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, code_dim: int = 16, commitment: float = 0.25,
                 kmeans_init: bool = True, dead_code_threshold: float = 1e-3, usage_decay: float = 0.99):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.commitment, self.dead_code_threshold, self.usage_decay = commitment, dead_code_threshold, usage_decay
        self.project_in = nn.Conv2d(dim, code_dim, 1)
        self.project_out = nn.Conv2d(code_dim, dim, 1)
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, code_dim), dim=-1))
        # Usage starts at the uniform share, so no code counts as dead before it had a chance.
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))
        self.register_buffer("initialised", torch.tensor(not kmeans_init))

    def codes(self) -> torch.Tensor:
        """(K, code_dim) unit-norm codes."""
        return F.normalize(self.codebook, dim=-1)

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B*H*W, code_dim) unit-norm vectors."""
        e = self.project_in(z).permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return F.normalize(e.float(), dim=-1)

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, dim, H, W) -> (B, H, W) int64 nearest-code indices."""
        b, _, h, w = z.shape
        return (self._project(z) @ self.codes().T).argmax(1).view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) indices -> (B, dim, H, W), what the decoder is given."""
        q = self.codes()[indices]  # (B, H, W, code_dim)
        return self.project_out(q.permute(0, 3, 1, 2))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training path -> (z_q with straight-through gradients, indices, quantizer loss)."""
        b, _, h, w = z.shape
        e = self._project(z)
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                centroids, _ = spherical_kmeans(e.detach(), self.codebook_size, iters=10)
                self.codebook.copy_(centroids)
                self.initialised.fill_(True)
        codes = self.codes()
        idx = (e.detach() @ codes.T).argmax(1)
        q = codes[idx]
        loss = F.mse_loss(q, e.detach()) + self.commitment * F.mse_loss(e, q.detach())
        q_st = e + (q - e).detach()
        if self.training:
            self._track_usage_and_restart(idx, e.detach())
        z_q = self.project_out(q_st.view(b, h, w, self.code_dim).permute(0, 3, 1, 2).to(z.dtype))
        return z_q, idx.view(b, h, w), loss

    @torch.no_grad()
    def _track_usage_and_restart(self, idx: torch.Tensor, e: torch.Tensor) -> None:
        share = torch.bincount(idx, minlength=self.codebook_size).float() / idx.numel()
        self.usage.mul_(self.usage_decay).add_(share, alpha=1 - self.usage_decay)
        dead = (self.usage < self.dead_code_threshold / self.codebook_size).nonzero().flatten()
        if len(dead):
            pick = torch.randint(e.shape[0], (len(dead),), device=e.device)
            self.codebook[dead] = e[pick]
            self.usage[dead] = 1.0 / self.codebook_size
