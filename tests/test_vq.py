import torch
import torch.nn.functional as F

from codec.quantizers.cluster import cluster_codebook, spherical_kmeans
from codec.quantizers.vq import VectorQuantizer


def test_spherical_kmeans_separates_well_separated_directions():
    torch.manual_seed(0)
    centres = F.normalize(torch.eye(4, 8), dim=-1)
    labels = torch.arange(400) % 4
    x = centres[labels] + 0.05 * torch.randn(400, 8)
    _, assignment = spherical_kmeans(x, 4)
    # Same partition up to renaming: each true cluster maps to exactly one found cluster.
    pairs = {(int(a), int(b)) for a, b in zip(labels, assignment)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4


def test_clustering_a_codebook_maps_every_code_to_its_nearest_small_code():
    torch.manual_seed(1)
    big = F.normalize(torch.randn(256, 16), dim=-1)
    small, mapping = cluster_codebook(big, 16)
    assert small.shape == (16, 16) and mapping.shape == (256,)
    assert torch.allclose(small.norm(dim=-1), torch.ones(16))
    assert torch.equal(mapping, (big @ small.T).argmax(1))
    assert len(mapping.unique()) == 16  # no centroid left without codes


def test_quantizer_output_is_the_looked_up_code_and_gradients_reach_encoder_and_codebook():
    torch.manual_seed(2)
    vq = VectorQuantizer(dim=32, codebook_size=64, code_dim=8)
    z = torch.randn(2, 32, 4, 6, requires_grad=True)
    z_q, idx, loss = vq(z)
    assert z_q.shape == z.shape and idx.shape == (2, 4, 6) and bool(vq.initialised)
    (z_q.pow(2).mean() + loss).backward()
    assert z.grad.abs().sum() > 0 and vq.stages[0].weight.grad.abs().sum() > 0
    vq.eval()
    z_q, idx, _ = vq(z)
    assert torch.equal(idx, vq.indices(z)[0])
    assert torch.allclose(z_q, vq.lookup([idx]), atol=1e-5)


def test_kmeans_initialisation_puts_codes_where_the_data_is():
    torch.manual_seed(3)
    vq = VectorQuantizer(dim=8, codebook_size=4, code_dim=8)
    with torch.no_grad():
        vq.project_in.weight.copy_(torch.eye(8)[:, :, None, None])
        vq.project_in.bias.zero_()
    directions = F.normalize(torch.eye(8)[:4], dim=-1)
    z = (directions[torch.arange(64) % 4] + 0.02 * torch.randn(64, 8)).T.reshape(1, 8, 8, 8)
    vq(z)
    assert ((vq.codes() @ directions.T).max(0).values > 0.99).all()


def test_dead_codes_are_restarted_from_the_batch():
    torch.manual_seed(4)
    vq = VectorQuantizer(dim=8, codebook_size=32, code_dim=8, kmeans_init=False, usage_decay=0.0)
    z = torch.randn(1, 8, 1, 1).expand(1, 8, 4, 4).contiguous()  # one vector: one code used
    before = vq.codes().clone()
    z_q, _, loss = vq(z)
    (z_q.sum() + loss).backward()  # the backward pass still needs the codes as they were
    vq.restart_dead_codes()
    changed = (vq.codes() - before).abs().sum(1) > 1e-6
    assert changed.sum() == 31  # every code the batch did not use was dead and restarted


def test_refine_finds_a_latent_that_decodes_closer_and_never_returns_a_worse_one():
    from codec.models.vq import VQAutoencoder
    torch.manual_seed(0)
    ae = VQAutoencoder(channels=(32, 32, 32, 32), dim=32, codebook_size=64, residual_sizes=(), decoder_blocks=1).eval()
    codes = F.normalize(torch.randn(64, 16), dim=-1)
    x = torch.rand(1, 3, 64, 80)

    def loss(z):  # what refine minimises at this size (MSE only: MS-SSIM needs > 160 px)
        with torch.no_grad():
            return (ae.synthesise(ae.quantizer.indices(z, 1, codes), codes) - x).pow(2).mean().item()

    z0 = ae.g_a(x).detach()
    z = ae.refine(x, z0, codes, steps=30, lr=0.05)
    assert loss(z) < loss(z0) and not torch.equal(ae.quantizer.indices(z, 1, codes)[0],
                                                  ae.quantizer.indices(z0, 1, codes)[0])
    assert torch.equal(ae.refine(x, z0, codes, steps=0), z0)  # nothing tried, nothing moved
    assert all(p.grad is None for p in ae.parameters())  # the search leaves the weights alone
