import math

import numpy as np
import torch

from codec.entropy import transformer
from codec.entropy.transformer import IndexPrior


def test_groups_partition_the_map_in_lattice_squared_steps():
    prior = IndexPrior(16, dim=32, depth=1, heads=2, lattice=3)
    groups = prior.groups(7, 10)
    assert len(groups) == 9
    assert torch.equal(torch.stack(groups).sum(0), torch.ones(7, 10, dtype=torch.long))
    assert groups[0][0, 0] and groups[1][0, 2]  # even tile columns before odd ones


def test_index_maps_code_losslessly_with_an_untrained_prior():
    torch.manual_seed(0)
    prior = IndexPrior(64, dim=32, depth=1, heads=2).eval()
    indices = torch.randint(64, (6, 9))
    data = transformer.encode(prior, indices)
    assert torch.equal(transformer.decode(prior, data, 6, 9), indices)
    # Nothing learned: about log2(K) bits an index (+ a little for the softmax's unevenness).
    assert len(data) * 8 / indices.numel() < math.log2(64) + 1


def _toy_maps(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """8x8 maps made of 2x2 blocks of one index: a neighbour predicts an index exactly."""
    blocks = torch.randint(k, (n, 4, 4), generator=gen)
    return blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)


def test_a_trained_prior_codes_structured_maps_well_below_uniform():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    k = 16
    prior = IndexPrior(k, dim=64, depth=2, heads=4, lattice=2)
    opt = torch.optim.AdamW(prior.parameters(), lr=2e-3)
    for _ in range(300):
        loss = prior.loss(_toy_maps(32, k, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    maps = _toy_maps(8, k, gen)
    bits = np.mean([len(transformer.encode(prior, m)) * 8 / m.numel() for m in maps])
    assert all(torch.equal(transformer.decode(prior, transformer.encode(prior, m), 8, 8), m) for m in maps[:2])
    # The first group (a quarter of the indices) is new information: log2(16) / 4 = 1 bit an index
    # is the floor; uniform coding is 4. (Measured: 1.06.)
    assert bits < 1.5, bits
