"""Resilient files (independently decodable packets) and what conceal makes of lost ones (CPU)."""
import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch

import bitstream
import codec
from bitstream import BitstreamError, PacketKind
from bitstream.container import ConcealedWarning, expect_packets
from codec import api, zoo
from codec.metrics import psnr
from codec.models.hp import interpolate_lost
from codec.models.index_prior import IndexPrior
from tests.conftest import ROOT


def _loss_eval():
    spec = importlib.util.spec_from_file_location("loss_eval", ROOT / "tools" / "loss_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _concealed(data: bytes) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConcealedWarning)
        out = api.decode_rgb(data, conceal=True)
    assert any(issubclass(w.category, ConcealedWarning) for w in caught)
    return out


@pytest.mark.parametrize("family, quality", [("hp", 40), ("vq", 50)])
def test_a_resilient_file_decodes_as_the_plain_one_and_says_so(sample_rgb, family, quality):
    plain = codec.encode(sample_rgb, model=family, quality=quality)
    data = codec.encode(sample_rgb, model=family, quality=quality, resilient=True)
    info = bitstream.describe(data)
    assert info["resilient"] and not bitstream.describe(plain)["resilient"]
    packets = info["packets"]
    if family == "vq":  # four quarters of the 16 x 16 index map, 64 indices each
        assert [(p["kind"], p["first"], p["count"]) for p in packets] == [("indices", i, 64) for i in range(4)]
        assert np.array_equal(api.decode_rgb(data), api.decode_rgb(plain))  # the same indices
    else:  # 256 pixels = 16 latent rows: two slices of 8, z inside each
        assert [(p["kind"], p["first"], p["count"]) for p in packets] == [("latent", 0, 8), ("latent", 8, 8)]
        assert abs(psnr(sample_rgb, api.decode_rgb(data)) - psnr(sample_rgb, api.decode_rgb(plain))) < 0.1
    assert len(data) > len(plain)  # independence costs context


@pytest.mark.parametrize("family", ["hp", "vq"])
def test_a_packet_cut_out_of_a_resilient_file_is_named_or_concealed(sample_rgb, family):
    data = codec.encode(sample_rgb, model=family, quality=50, resilient=True)
    cut = _loss_eval().cut(data, [0])
    first = "latent packet 0 (covering 0..7)" if family == "hp" else "indices packet 0 (covering 0..63)"
    with pytest.raises(BitstreamError, match=rf"truncated.*; the {re.escape(first)} is missing or corrupt \(--conceal"):
        api.decode_rgb(cut)
    out, whole = _concealed(cut), api.decode_rgb(data)
    assert out.shape == sample_rgb.shape
    if family == "hp":  # the top slice lost: the bottom rows, out of the synthesis's reach, as if nothing was
        assert psnr(whole[192:], out[192:]) > 40
    else:  # a quarter of the indices lost
        assert psnr(sample_rgb, out) > psnr(sample_rgb, whole) - 3


@pytest.mark.parametrize("family, what", [("hp", "slice"), ("vq", "index")])
def test_a_resilient_file_with_every_packet_lost_fails_also_under_conceal(sample_rgb, family, what):
    c = bitstream.read(codec.encode(sample_rgb, model=family, quality=50, resilient=True))
    for p in c.packets:
        p.payload = None
    net = zoo.load(c.header.model_id)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConcealedWarning)
        with pytest.raises(BitstreamError, match=f"no {what} of the image was received"):
            net.decode(c.packets, c.header, conceal=True)


def test_vq_recovery_keeps_received_indices_and_restores_lost_ones_near_the_truth(sample_rgb):
    net = zoo.load("vq")[0]
    data = codec.encode(sample_rgb, model="vq", quality=50, resilient=True)
    c = bitstream.read(data)
    maps = net.decode(c.packets, c.header)[0]
    c.packets[3].payload = None  # the quarter (2i + 1, 2j + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConcealedWarning)
        restored = net.decode(c.packets, c.header, conceal=True)[0]
    lost = torch.zeros_like(maps[0], dtype=torch.bool)
    lost[1::2, 1::2] = True
    assert torch.equal(restored[0][~lost], maps[0][~lost])
    codes = net.codebook(c.header.codebook)[0]
    truth, guess = codes[maps[0][lost]], codes[restored[0][lost]]
    # Restored codes lie closer to the lost ones than the codebook's codes do on average.
    assert (truth * guess).sum(1).mean() > (truth @ codes.T).mean() + 0.1


def test_recover_is_deterministic_and_handles_a_second_codebook():
    torch.manual_seed(0)
    prior = IndexPrior(16, code_dim=4, dim=32, depth=1, heads=2).eval()
    codes, big = torch.randn(8, 4), torch.randn(16, 4)
    mapping = torch.arange(16) % 8
    indices = torch.randint(8, (20, 18))
    where = torch.zeros(20, 18, dtype=torch.bool)
    where[5:9, 3:12] = True
    indices[where] = torch.randint(16, (int(where.sum()),))
    known = torch.rand(20, 18) > 0.4
    region = (big, torch.arange(16), where)
    a, means = prior.recover(indices, known, codes, mapping, [codes, big], region)
    b, again = prior.recover(indices, known, codes, mapping, [codes, big], region)
    assert torch.equal(a, b) and torch.equal(means, again)
    assert torch.equal(a[known], indices[known]) and not means[known].any()
    assert (a[~known & ~where] < 8).all() and (a[~known & where] < 16).all()
    # An expected code is a mix of its codebook's: inside their bounding box, not a code of the other's.
    for inside, book in ((~known & where, big), (~known & ~where, codes)):
        assert ((means[inside] >= book.min(0).values - 1e-5) & (means[inside] <= book.max(0).values + 1e-5)).all()


def test_lost_hp_rows_are_interpolated_between_the_slices_received():
    slices = [(0, 2), (2, 4), (4, 6)]
    top, bottom = torch.zeros(1, 1, 2, 3), torch.full((1, 1, 2, 3), 3.0)
    y = interpolate_lost([top, None, bottom], slices, 1, 3)
    assert y[0, 0, :, 0].tolist() == [0, 0, 1, 2, 3, 3]
    assert torch.equal(interpolate_lost([None, None, bottom], slices, 1, 3)[0, 0, :4], torch.full((4, 3), 3.0))


def test_concealing_matches_packets_by_what_they_cover_not_where_they_sit():
    layout = [(PacketKind.LATENT, r, 8) for r in (0, 8, 16)]
    packets = [bitstream.Packet(PacketKind.LATENT, r, 8, b"x") for r in (0, 16)]  # the middle one cut out
    with pytest.raises(BitstreamError, match="should be the latent packet 1"):
        expect_packets(packets, layout)
    with pytest.warns(ConcealedWarning, match="packet 1 .* is missing or corrupt"):
        slots = expect_packets(packets, layout, conceal=True)
    assert [s and s.first for s in slots] == [0, None, 16]


def test_loss_patterns_hit_the_rate_asked_for_alone_and_in_bursts():
    tool = _loss_eval()
    rng = np.random.default_rng(0)
    for loss in (0.05, 0.2, 0.3):
        patterns = tool.loss_patterns(4, 5, loss, rng, burst=False)
        assert len(patterns) == 5 and sum(map(len, patterns)) == round(loss * 20)
        assert all(len(set(p)) == len(p) and all(0 <= i < 4 for i in p) for p in patterns)
    lost = sum(map(len, tool.loss_patterns(100, 200, 0.2, rng, burst=True)))
    assert 0.18 < lost / 20000 < 0.22
    assert tool.loss_patterns(10, 3, 0.0, rng, burst=True) == [[], [], []]


def test_nearest_fill_copies_a_received_neighbour():
    tool = _loss_eval()
    maps = torch.arange(12).view(3, 4)
    received = torch.ones(3, 4, dtype=torch.bool)
    received[1, 1] = received[0, 0] = False
    out = tool.nearest_fill(maps, received)
    assert out[1, 1] == maps[1, 0] and out[0, 0] == maps[0, 1]  # left first; at the edge, right
    assert torch.equal(out[received], maps[received])


def test_the_eval_scores_a_file_with_nothing_received_as_grey(sample_rgb):
    tool = _loss_eval()
    data = codec.encode(sample_rgb, model="vq", quality=50, resilient=True)
    out = tool.decodes(zoo.load("vq")[0], data, [0, 1, 2, 3])
    assert set(out) == {"recovered", "most frequent", "nearest"}
    assert all(o.shape == sample_rgb.shape and (o == 128).all() for o in out.values())


def test_a_corrupted_packet_is_concealed_as_a_cut_one(sample_rgb):
    tool = _loss_eval()
    data = codec.encode(sample_rgb, model="vq", quality=50, resilient=True)
    net = zoo.load("vq")[0]
    damaged = tool.corrupt(data, [2])
    assert len(damaged) == len(data) and bitstream.read(damaged, strict=False).packets[2].damaged
    cut, corrupted = tool.decodes(net, data, [2]), tool.decodes(net, data, [2], tool.corrupt)
    assert all(np.array_equal(cut[m], corrupted[m]) for m in cut)
