"""K-means, for two jobs of the vq family: initialising a codebook from encoder outputs, and shrinking
a trained codebook into smaller ones (variable rate by codebook clustering, Mao et al. 2023).

Codes live on the unit sphere, so this is spherical k-means: assignment by cosine similarity,
centroids renormalised after each update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D) -> (centroids (k, D) unit-norm, assignment (N,) long). Deterministic for a seed.

    Seeded k-means++ style (each seed drawn with probability growing with its distance to the seeds
    so far); a cluster that empties is re-seeded with the points least well served, so all k
    centroids stay in use."""
    x = F.normalize(x.float(), dim=-1)
    centroids = _seeds(x, k, torch.Generator(device="cpu").manual_seed(seed))
    for _ in range(iters):
        sim = x @ centroids.T
        assignment = sim.argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # least well served points first; cycled when there are fewer points than k
            worst = sim.max(1).values.argsort()
            sums[empty] = x[worst[torch.arange(len(empty), device=x.device) % len(worst)]]
        centroids = F.normalize(sums, dim=-1)
    return centroids, (x @ centroids.T).argmax(1)


def _seeds(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if n <= k:  # fewer points than clusters: every point, then repeats
        return x[torch.randint(n, (k,), generator=gen).to(x.device)].clone() if n < k else x.clone()
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    best = x @ x[chosen[0]]
    for _ in range(k - 1):
        weight = (1 - best).clamp_min(0).cpu() + 1e-12  # cosine distance to the nearest seed
        chosen.append(int(torch.multinomial(weight, 1, generator=gen)))
        best = torch.maximum(best, x @ x[chosen[-1]])
    return x[chosen].clone()


def cluster_codebook(codebook: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained codebook (K, D) -> (smaller codebook (k, D), mapping (K,) from old index to new).

    An index map coded with the large codebook maps to the small one through `mapping`; an encoder
    output is quantized directly against the small codebook."""
    if not 1 <= k <= codebook.shape[0]:
        raise ValueError(f"cannot cluster {codebook.shape[0]} codes into {k}")
    return spherical_kmeans(codebook, k, iters, seed)
