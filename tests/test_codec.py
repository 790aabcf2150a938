"""End-to-end behaviour of the hp codec with the shipped weights (CPU)."""
import copy

import numpy as np
import pytest
import torch

import bitstream
import codec
from codec import api, zoo
from codec.metrics import bpp, psnr
from codec.quantizers import scalar
from tests.conftest import decoded_or_error


def test_round_trip_returns_an_image_of_the_same_size_and_sane_quality(sample_rgb):
    data = codec.encode(sample_rgb, quality=60)
    out = np.asarray(codec.decode(data))
    assert out.shape == sample_rgb.shape
    assert psnr(sample_rgb, out) > 24


def test_encoding_twice_gives_identical_bytes(sample_rgb):
    assert codec.encode(sample_rgb, quality=35) == codec.encode(sample_rgb, quality=35)


def test_decoding_is_lossless_with_respect_to_the_quantized_latents(sample_rgb):
    """What the decoder outputs equals the synthesis of the encoder's own quantized latents."""
    net, _, _ = zoo.load("hp")
    x = api.to_tensor(sample_rgb, "cpu", net.stride)
    level = net.level_of(50.0)
    _, y_hat = net.code_latents(*net.analyse(x, level), 50.0)
    expected = api.to_rgb(net.synthesise(y_hat, level), *sample_rgb.shape[:2])
    decoded = api.decode_rgb(codec.encode(sample_rgb, quality=50))
    assert np.array_equal(decoded, expected)


def test_bpp_counts_the_whole_file_header_included(sample_rgb):
    data = codec.encode(sample_rgb, quality=20)
    info = bitstream.describe(data)
    payload = sum(len(p.payload) for p in bitstream.read(data).packets)
    assert info["bytes"] == len(data) > payload
    assert bpp(len(data), 256, 256) == 8 * len(data) / 65536


def test_quality_is_monotonic_in_rate_and_distortion(sample_rgb):
    sizes, psnrs = [], []
    for q in (0, 25, 50, 75, 100):
        data = codec.encode(sample_rgb, quality=q)
        sizes.append(len(data))
        psnrs.append(psnr(sample_rgb, api.decode_rgb(data)))
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    assert psnrs == sorted(psnrs)


@pytest.mark.parametrize("h, w", [(37, 100), (65, 64), (1, 1)])
def test_sizes_that_are_not_multiples_of_64_round_trip(sample_rgb, h, w):
    crop = np.ascontiguousarray(sample_rgb[:h, :w])
    out = api.decode_rgb(codec.encode(crop, quality=70))
    assert out.shape == crop.shape
    if h * w > 100:
        assert psnr(crop, out) > 20


def test_file_made_with_other_weights_is_refused(sample_rgb):
    c = bitstream.read(codec.encode(sample_rgb, quality=10))
    c.header.weights_hash = b"\0\0\0\0"
    with pytest.raises(bitstream.BitstreamError, match="with weights 00000000, but"):
        codec.decode(bitstream.write(c))


def test_quality_out_of_range_is_a_value_error(sample_rgb):
    with pytest.raises(ValueError):
        codec.encode(sample_rgb, quality=101)


def test_shipped_weights_carry_the_training_record_the_readme_states():
    meta = zoo.read_meta(zoo.weights_path("hp"))
    assert (meta["family"], meta["arch"], meta["N"], meta["M"]) == ("hp", "checkerboard-cond2", 128, 256)
    assert (meta["steps"], round(meta["gpu_seconds"] / 60, 1)) == (604906, 576.0)


@pytest.mark.parametrize("name", ["kodim07.png", "kodim23.png"])
def test_kodak_images_decode_at_every_trained_level(kodak_dir, name):
    from codec.io import load_image
    rgb = load_image(kodak_dir / name)
    for q in np.linspace(0, 100, 8):
        out = api.decode_rgb(codec.encode(rgb, quality=float(q)))
        assert psnr(rgb, out) > 22


def test_a_bpp_target_is_met_from_below_within_3_percent(sample_rgb):
    target = 1.0
    data = codec.encode(sample_rgb, bpp=target)
    achieved = bpp(len(data), 256, 256)
    assert 0.97 * target <= achieved <= target
    assert bitstream.describe(data)["quality"] not in (0.0, 100.0)


def test_a_size_target_is_met_and_an_impossible_one_falls_back_to_quality_0(sample_rgb):
    data = codec.encode(sample_rgb, size=8000)
    assert 0.97 * 8000 <= len(data) <= 8000
    tiny = codec.encode(sample_rgb, size=10)
    assert bitstream.describe(tiny)["quality"] == 0.0


def test_conceal_decodes_past_a_corrupt_latent_packet(sample_rgb):
    data = bytearray(codec.encode(sample_rgb, quality=60))
    latent = bitstream.read(bytes(data)).packets[1]
    data[latent.offset + latent.length // 2] ^= 0xFF
    with pytest.raises(bitstream.BitstreamError, match="corrupt"):
        api.decode_rgb(bytes(data))
    concealed = api.decode_rgb(bytes(data), conceal=True)
    assert concealed.shape == sample_rgb.shape
    assert psnr(sample_rgb, concealed) > 15  # the prior's mean: blurred, but the picture is there


def test_conceal_cannot_recover_a_lost_hyper_packet(sample_rgb):
    data = bytearray(codec.encode(sample_rgb, quality=60))
    hyper = bitstream.read(bytes(data)).packets[0]
    data[hyper.offset + hyper.length // 2] ^= 0xFF
    with pytest.raises(bitstream.BitstreamError, match="hyper-latent"):
        api.decode_rgb(bytes(data), conceal=True)


def _untrained():
    """A small hp model, seeded, whose zero-started layers (residual blocks, group heads) are given
    weights so every path takes part -> (model, its metadata)."""
    from codec.models.hp import LAMBDAS
    meta = {"family": "hp", "model_id": "hp-test", "arch": "checkerboard-cond2", "N": 32, "M": 48,
            "lambdas": list(LAMBDAS)}
    torch.manual_seed(0)
    net = zoo.build("hp", meta).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return net, meta


def test_the_nine_coding_passes_cover_the_latent_once_and_decode_losslessly(tmp_path, sample_rgb):
    """An untrained model, exported and reloaded as shipped weights would be: its multi-pass coding
    must give back exactly the encoder's quantized latents."""
    net, meta = _untrained()
    zoo.export(net, tmp_path / "cb.safetensors", meta)
    net, _ = zoo.load_file(tmp_path / "cb.safetensors")
    masks = net.latent_masks(torch.zeros(1, 48, 4, 4))
    assert len(masks) == 9
    assert torch.equal(sum(m.expand(1, 48, 4, 4).int() for m in masks), torch.ones(1, 48, 4, 4, dtype=torch.int))
    x = api.to_tensor(sample_rgb[:128, :192], "cpu", net.stride)
    quality = 29.17  # between trained levels 3 and 4
    level = net.level_of(quality)
    packets, y_hat = net.code_latents(*net.analyse(x, level), quality)
    header = bitstream.Header("hp", "hp-test", b"0000", 192, 128, quality, release=(0, 2, 0))
    decoded = net.decode_latents(packets, header)
    assert torch.equal(decoded, y_hat)
    assert net.gaussian_conditional.likelihood_lower_bound.bound.item() > 0  # buffers survive export exactly


def test_passes_sharing_a_memo_get_the_prior_each_would_compute_alone(sample_rgb):
    """Each checkerboard half's prior is computed once for all its groups: every pass given the memo
    of the passes before it must get exactly the (scales, means) it computes afresh."""
    net, _ = _untrained()
    with torch.no_grad():
        level = torch.tensor([3.5])
        y, z = net.analyse(api.to_tensor(sample_rgb[:128, :192], "cpu", net.stride), level)
        hyper = net.hyper_features(torch.round(z), level)
        y_hat, memo = torch.zeros_like(y), {}
        for step, mask in enumerate(net.latent_masks(y)):
            shared, alone = net.latent_params(hyper, y_hat, step, memo), net.latent_params(hyper, y_hat, step, {})
            assert all(torch.equal(a, b) for a, b in zip(shared, alone)), f"pass {step}"
            y_hat = torch.where(mask, torch.round(y - shared[1]) + shared[1], y_hat)
        assert len(memo) == 2  # one prior per checkerboard half


def test_the_shipped_weights_load_through_the_name_table_into_every_parameter():
    """hp-cbc2-v8 was written under an older class's names: every tensor of the file lands on a
    parameter or buffer of the flat class, and every parameter is given one."""
    from safetensors.torch import load
    net, _, _ = zoo.load("hp")
    names = {zoo._current_name(net, k) for k in load(zoo._weights_bytes(zoo.weights_path("hp")))}
    assert names == set(net.state_dict())


def test_images_too_large_to_code_in_memory_are_refused_before_any_work(monkeypatch, sample_rgb):
    from codec.io import ImageReadError
    with pytest.raises(ImageReadError, match="over the limit of 10000"):
        codec.encode(sample_rgb, max_pixels=100 * 100)
    monkeypatch.setattr(api, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageReadError, match="over the limit of 10000"):
        codec.encode(sample_rgb)
    monkeypatch.undo()
    c = bitstream.read(codec.encode(sample_rgb[:64, :64], quality=5))
    c.header.width, c.header.height = 16384, 16384  # legal in the format, over the default limit
    with pytest.raises(bitstream.BitstreamError, match="claims a 16384x16384 image, over the limit"):
        codec.decode(bitstream.write(c))
    c.header.width, c.header.height = 128, 128
    with pytest.raises(bitstream.BitstreamError, match="claims a 128x128 image, over the limit of 10000"):
        codec.decode(bitstream.write(c), max_pixels=100 * 100)


def _with_packets(data: bytes, edit) -> bytes:
    """The file with its packet list edited by `edit(packets)`, CRCs recomputed (a forgery, not damage)."""
    c = bitstream.read(data)
    edit(c.packets)
    return bitstream.write(c)


def test_every_packet_is_checked_against_what_the_model_writes(sample_rgb):
    data = codec.encode(sample_rgb[:64, :64], quality=50)
    forged = {
        "junk after a payload": lambda ps: setattr(ps[1], "payload", ps[1].payload + b"\x5a\x17\x99"),
        "an emptied payload": lambda ps: setattr(ps[1], "payload", b""),
        "a packet too many": lambda ps: ps.append(copy.deepcopy(ps[1])),
        "a missing packet": lambda ps: ps.pop(),
        "packets out of order": lambda ps: ps.reverse(),
        "a wrong count": lambda ps: setattr(ps[1], "count", ps[1].count - 1),
    }
    for what, edit in forged.items():
        with pytest.raises(bitstream.BitstreamError):
            codec.decode(_with_packets(data, edit))
            pytest.fail(f"{what} was accepted")


def test_conceal_goes_past_a_lost_latent_packet_and_says_so(sample_rgb):
    data = _with_packets(codec.encode(sample_rgb, quality=50), lambda ps: setattr(ps[1], "payload", b""))
    with pytest.warns(bitstream.container.ConcealedWarning, match="latent packet 1 .* is empty; concealed"):
        rgb = api.decode_rgb(data, conceal=True)
    assert rgb.shape == sample_rgb.shape and psnr(sample_rgb, rgb) > 15


def test_tiled_synthesis_matches_the_whole_image_to_float_rounding():
    net = api.model_of(bitstream.read(codec.encode(np.zeros((64, 64, 3), np.uint8))).header)
    y_hat = torch.randn(1, net.M, 20, 28, generator=torch.Generator().manual_seed(0)) * 3
    level = net.level_of(50)
    whole = net.synthesise(y_hat, level, tile=64)
    tiled = net.synthesise(y_hat, level, tile=8)
    assert (whole - tiled).abs().max() * 255 < 0.1  # levels of 255; a margin of 1 latent gives 6
    # A level map (a region of interest) is cut into the same tiles.
    qualities = np.full((20, 28), 5000, np.int64)
    qualities[5:15, 10:20] = 7000
    level = net.level_of(qualities)
    whole, tiled = net.synthesise(y_hat, level, tile=64), net.synthesise(y_hat, level, tile=8)
    assert (whole - tiled).abs().max() * 255 < 0.1
    assert (whole - net.synthesise(y_hat, net.level_of(50.0), tile=64)).abs().max() * 255 > 1  # the map matters


def test_the_tiled_integer_prior_codes_exactly_what_the_whole_map_does(monkeypatch, sample_rgb):
    """hp's entropy-model networks run in tiles with a halo of their reach: integer arithmetic, so
    the same bytes and latents as one pass over the whole map (tiles of 4 and 8 latents, maps of
    16 x 24 and z of 4 x 6: every network crosses tile edges)."""
    from codec.models.hp import IntegerPrior
    rgb = np.concatenate([sample_rgb, sample_rgb[:, :100]], 1)[:200]
    coded = {}
    for tile in (1024, 8, 4):
        monkeypatch.setattr(IntegerPrior, "TILE", tile)
        data = codec.encode(rgb, quality=60)
        c = bitstream.read(data)
        coded[tile] = data, api.model_of(c.header).decode_latents(c.packets, c.header)
    for tile in (8, 4):
        assert coded[tile][0] == coded[1024][0] and torch.equal(coded[tile][1], coded[1024][1])


def _decoded_or_error(data: bytes):
    """The decoded image, or the BitstreamError decoding raised (any other exception propagates)."""
    return decoded_or_error(lambda: api.decode_rgb(data))


def test_forged_payloads_with_valid_crcs_give_an_image_or_a_bitstream_error(sample_rgb):
    """CRCs stop accidental damage; a forged file reaches the range decoder and must still be safe:
    a picture of the right size or a BitstreamError, nothing else (an empty payload is an error:
    an encoder never writes one)."""
    good = bitstream.read(codec.encode(sample_rgb, quality=50))
    assert _decoded_or_error(bitstream.write(good)).shape == sample_rgb.shape  # the control decodes
    rng = np.random.default_rng(0)
    outcomes = []
    for trial in range(12):
        c = bitstream.read(bitstream.write(good))
        packet = c.packets[trial % 2]
        packet.payload = rng.bytes(len(packet.payload) if trial % 4 < 2 else int(rng.integers(0, 30)))
        out = _decoded_or_error(bitstream.write(c))
        assert isinstance(out, bitstream.BitstreamError) or out.shape == sample_rgb.shape
        outcomes.append(type(out).__name__)
    assert "BitstreamError" in outcomes, outcomes  # the forgeries did reach the decoder's checks


@pytest.mark.gpu
def test_cuda_round_trip_is_lossless_on_the_same_device(sample_rgb):
    """On a GPU the coding path runs there too: the same file twice, and a faithful decode there
    (tests/test_portable.py decodes GPU-written files on the CPU)."""
    data = codec.encode(sample_rgb, quality=50, device="cuda")
    assert data == codec.encode(sample_rgb, quality=50, device="cuda")
    assert psnr(sample_rgb, api.decode_rgb(data, device="cuda")) > 24


def _coded_loss(net, rgb, y, z, quality) -> float:
    """What coding (y, z) really costs: lambda * 255^2 * MSE of the decoded image + file bits per pixel
    of the payload."""
    packets, y_hat = net.code_latents(y, z, quality)
    level = net.level_of(quality)
    h, w = rgb.shape[:2]
    out = api.to_rgb(net.synthesise(y_hat, level), h, w)
    mse = np.mean((out.astype(np.float64) - rgb) ** 2) / 255 ** 2
    return net.lambda_at(level).item() * 255 ** 2 * mse + 8 * sum(len(p.payload) for p in packets) / (h * w)


def test_refine_lowers_the_real_coded_loss_and_estimates_it_closely(sample_rgb):
    """hp --refine searches on coded_loss; that must be what the coder then spends (within 3 %), and the
    latents it returns must code at a lower real cost than analyse's, without touching the weights."""
    net, _, _ = zoo.load("hp")
    x = api.to_tensor(sample_rgb, "cpu", net.stride)
    level = net.level_of(40.0)
    y0, z0 = net.analyse(x, level)
    estimate = net.coded_loss(x, y0, z0, level).item()
    assert estimate == pytest.approx(_coded_loss(net, sample_rgb, y0, z0, 40.0), rel=0.03)
    y, z = net.refine(x, y0, z0, level, steps=20)
    assert _coded_loss(net, sample_rgb, y, z, 40.0) < _coded_loss(net, sample_rgb, y0, z0, 40.0)
    y_same, z_same = net.refine(x, y0, z0, level, steps=0)
    assert torch.equal(y_same, y0) and torch.equal(z_same, z0)  # nothing tried, nothing moved
    assert all(p.grad is None for p in net.parameters())


def test_annealed_rounding_is_a_soft_choice_of_the_two_neighbours_that_cools_to_the_coders_rounding():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(1, 8, 6, 6)
    # Offsets from the means kept 0.05 away from the halfway points, where the coder's rounding is a coin toss.
    frac = 0.05 + 0.4 * torch.rand(1, 8, 6, 6, generator=gen) + 0.5 * (torch.rand(1, 8, 6, 6, generator=gen) > 0.5)
    y = (means + torch.randint(-4, 5, (1, 8, 6, 6), generator=gen) + frac).requires_grad_(True)
    hard = scalar.dequantize(scalar.quantize(y, means), means)
    assert torch.allclose(scalar.annealed_round(y, means, 1e-3, gen), hard, atol=1e-4)
    hot = scalar.annealed_round(y, means, 0.5, gen)
    low = torch.floor(y - means).detach() + means
    assert ((hot >= low) & (hot <= low + 1)).all() and not torch.allclose(hot, hard, atol=1e-2)
    hot.sum().backward()
    assert y.grad.abs().sum() > 0  # the search follows this gradient


@pytest.mark.gpu
def test_a_search_on_the_gpu_writes_a_file_the_cpu_decodes(sample_rgb):
    data = codec.encode(sample_rgb, quality=75, refine=6, refine_device="cuda")
    assert data != codec.encode(sample_rgb, quality=75)
    assert psnr(sample_rgb, api.decode_rgb(data, device="cpu")) > 24


def test_refined_files_decode_with_the_plain_decoder(sample_rgb):
    # A short search may keep the plain latents (none of its checked steps coded better); at quality 75
    # on this sample 6 steps move them, and the test needs a search that moved the latents.
    data = codec.encode(sample_rgb, quality=75, refine=6)
    assert data != codec.encode(sample_rgb, quality=75)
    assert data == codec.encode(sample_rgb, quality=75, refine=6)  # the search's noise is seeded
    out = api.decode_rgb(data)
    assert out.shape == sample_rgb.shape and psnr(sample_rgb, out) > 26
