"""End-to-end behaviour of the vq codec with the shipped weights (CPU)."""
import math

import numpy as np
import pytest

import bitstream
import codec
from bitstream import BitstreamError, PacketKind
from codec import api, zoo
from codec.metrics import psnr


@pytest.fixture(scope="module")
def vq():
    net, meta, _ = zoo.load("vq")
    return net, meta


def test_operating_points_run_from_the_smallest_codebook_to_residual_depth(vq):
    net, _ = vq
    points = net.points
    assert points[0] == (2, 1) and points[-2] == (8192, 1) and points[-1] == (8192, 2)
    assert [k for k, _ in points[:-1]] == [2 ** i for i in range(1, 14)]
    assert net.qualities() == [round(100 * i / (len(points) - 1), 2) for i in range(len(points))]
    assert [net.operating_point(q, None, None) for q in net.qualities()] == [
        (q, k, d) for q, (k, d) in zip(net.qualities(), points)]


def test_decoding_reproduces_the_synthesis_of_the_encoders_indices(vq, sample_rgb):
    """Lossless index coding: the decoded image is the decoder run on the encoder's own index maps."""
    net, _ = vq
    for k, depth in [(16, 1), (8192, 2)]:
        data = codec.encode(sample_rgb, model="vq", codebook=k, depth=depth)
        assert data == codec.encode(sample_rgb, model="vq", codebook=k, depth=depth)  # deterministic
        codes, _ = net.codebook(k)
        x = api.to_tensor(sample_rgb, "cpu", net.stride)
        maps = net.autoencoder.analyse(x, depth, codes)
        expected = api.to_rgb(net.autoencoder.synthesise(maps, codes), 256, 256)
        assert np.array_equal(api.decode_rgb(data), expected)
        header = bitstream.read(data).header
        assert (header.family, header.codebook, header.depth) == ("vq", k, depth)
        assert len(bitstream.read(data).packet(PacketKind.INDICES)) == depth


def test_quality_walks_the_operating_points_and_rate_grows_with_it(vq, sample_rgb):
    sizes = [len(codec.encode(sample_rgb, model="vq", quality=q)) for q in (0, 30, 60, 90, 100)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 5


def test_the_transformer_prior_codes_below_uniform_at_every_codebook_size(vq, kodak_dir):
    """Kodak's kodim23 at each codebook size: index bits under log2(K) an index."""
    net, _ = vq
    from codec.io import load_image
    x = api.to_tensor(load_image(kodak_dir / "kodim23.png"), "cpu", net.stride)
    features = net.autoencoder.g_a(x)
    for k in (8, 256, 8192):
        codes, mapping = net.codebook(k)
        indices = net.autoencoder.quantizer.indices(features, 1, codes)[0][0]
        bits = len(net.prior.compress(indices, codes, mapping)) * 8 / indices.numel()
        assert bits < math.log2(k), (k, bits)


def test_a_bpp_target_picks_the_largest_operating_point_that_fits(vq, sample_rgb):
    target = 0.05
    data = codec.encode(sample_rgb, model="vq", bpp=target)
    assert len(data) * 8 / 65536 <= target
    points = vq[0].points
    header = bitstream.read(data).header
    i = points.index((header.codebook, header.depth))
    k, d = points[i + 1]
    assert len(codec.encode(sample_rgb, model="vq", codebook=k, depth=d)) * 8 / 65536 > target


def test_unknown_codebook_or_depth_is_a_value_error_naming_the_choices(sample_rgb):
    with pytest.raises(ValueError, match="2, 4, 8, 16"):
        codec.encode(sample_rgb, model="vq", codebook=100)
    with pytest.raises(ValueError, match="depth 2"):
        codec.encode(sample_rgb, model="vq", codebook=16, depth=2)
    with pytest.raises(ValueError, match="not both"):
        codec.encode(sample_rgb, model="vq", bpp=0.05, codebook=64)
    with pytest.raises(ValueError, match="vq model only"):
        codec.encode(sample_rgb, model="hp", codebook=16)


def test_odd_sizes_round_trip(sample_rgb):
    crop = np.ascontiguousarray(sample_rgb[:37, :100])
    out = api.decode_rgb(codec.encode(crop, model="vq", quality=100))
    assert out.shape == crop.shape and psnr(crop, out) > 12


def test_a_header_naming_a_codebook_the_model_lacks_is_a_bitstream_error(sample_rgb):
    container = bitstream.read(codec.encode(sample_rgb, model="vq", codebook=64))
    container.header.codebook = 100
    with pytest.raises(BitstreamError, match="codebook 100"):
        api.decode_rgb(bitstream.write(container))


def test_forged_index_payloads_give_an_image_or_a_bitstream_error(sample_rgb):
    from tests.test_codec import _decoded_or_error
    container = bitstream.read(codec.encode(sample_rgb, model="vq", codebook=8192, depth=2))
    assert _decoded_or_error(bitstream.write(container)).shape == sample_rgb.shape  # the control decodes
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(6):
        packet = container.packets[i % 2]
        original = packet.payload
        packet.payload = rng.integers(0, 256, len(original) + i, dtype=np.uint8).tobytes()
        out = _decoded_or_error(bitstream.write(container))
        assert isinstance(out, BitstreamError) or out.shape == sample_rgb.shape
        outcomes.append(type(out).__name__)
        packet.payload = original
    # Random bytes are (almost) never exactly an encoder's output: the payload-end check refuses them.
    assert "BitstreamError" in outcomes, outcomes


def test_vq_weights_carry_the_training_record_the_readme_states(vq):
    _, meta = vq
    assert meta["family"] == "vq" and meta["gpu_seconds"] == 3199.8
    assert meta["steps"] == {"autoencoder": 20479, "cluster": 4332, "prior": 83094, "decoder": 13297}


@pytest.mark.gpu
def test_vq_cuda_round_trip_is_lossless_on_the_same_device(sample_rgb):
    data = codec.encode(sample_rgb, model="vq", quality=80, device="cuda")
    assert data == codec.encode(sample_rgb, model="vq", quality=80, device="cuda")
    out = api.decode_rgb(data, device="cuda")
    assert np.array_equal(out, api.decode_rgb(data, device="cuda")) and psnr(sample_rgb, out) > 12


def test_prior_bits_tool_recovers_the_exact_index_payload_from_a_file_size(sample_rgb):
    import importlib.util
    from tests.conftest import ROOT
    spec = importlib.util.spec_from_file_location("vq_prior_bits", ROOT / "tools" / "vq_prior_bits.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for k in (8, 8192):
        data = codec.encode(sample_rgb, model="vq", codebook=k)
        container = bitstream.read(data)
        assert tool.payload_bytes(len(data), 256, 256, container.header.quality, k, 256) == \
            len(container.packets[0].payload)
