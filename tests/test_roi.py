"""Regions of interest: masks, boxes and "auto" become a share-of-region map; hp codes each latent at
its own quality between the background's and the region's, vq codes the region's indices with a
larger codebook; the map travels in an ROI packet, counted in the file and checked on reading."""

import numpy as np
import pytest
import torch
from PIL import Image

import bitstream
import codec
from bitstream import BitstreamError, PacketKind
from codec import api, roi
from codec.cli import main
from codec.metrics import psnr
from tests.conftest import SAMPLES

SAMPLE = SAMPLES / "unsplash-jacob-aguilar-256.png"
BOX = (64, 80, 96, 96)  # x, y, w, h in the 256 x 256 sample


def _inside(rgb, box=BOX):
    x, y, w, h = box
    return rgb[y:y + h, x:x + w]


def test_boxes_masks_and_auto_become_a_blended_share_of_region():
    rgb = np.zeros((40, 70, 3), np.uint8)
    mask = roi.region_mask([(16, 16, 32, 16)], rgb)
    assert mask.shape == (40, 70) and mask.sum() == 32 * 16
    share = roi.share_map(mask, (3, 5), 16)  # the padded 48 x 80 grid
    assert share.shape == (3, 5) and share[1, 1] == 255 and share[2, 4] == 0
    assert 0 < share[0, 3] < 255  # a neighbour of the region: blended, not cut
    small = Image.fromarray((np.arange(35)[None, :] > 17).repeat(20, 0).astype(np.uint8) * 255)
    resized = roi.region_mask(small, rgb)  # any size, resized to the image
    assert resized.shape == (40, 70) and resized[:, :30].max() == 0 and resized[:, 40:].min() == 1
    auto = roi.region_mask("auto", np.asarray(Image.open(SAMPLE).convert("RGB")))
    assert 0.08 < auto.mean() < 0.3  # about AUTO_SHARE of the image
    with pytest.raises(ValueError, match="outside"):
        roi.region_mask([(100, 0, 5, 5)], rgb)
    for bad in ([(-2, 0, 5, 5)], [(0, 0, 0, 5)], [(1, 2, 3)], []):  # boxes are checked, never wrapped or dropped
        with pytest.raises(ValueError, match="box"):
            roi.region_mask(bad, rgb)
    assert roi.region_mask([np.array([16, 16, 32, 16])], rgb).sum() == 32 * 16  # array boxes read as boxes
    assert roi.region_mask("auto", rgb[:8, :12]).min() == 1  # too small to rank: the whole image


def test_qualities_run_in_integers_from_background_to_region():
    share = np.array([[0, 128, 255]], np.uint8)
    q = roi.qualities(share, 30.0, 70.5)
    assert q.dtype == np.int64 and q.tolist() == [[3000, 3000 + (128 * 4050 + 127) // 255, 7050]]
    assert roi.qualities(share, 70.0, 30.0)[0, 2] == 3000  # a region below the background works too


def test_the_roi_packet_round_trips_and_refuses_what_it_cannot_hold():
    share = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
    p = roi.packet(share, 8050)
    assert (p.kind, p.first, p.count) == (PacketKind.ROI, 0, 12)
    got, region = roi.unpack(p.payload, (3, 4))
    assert np.array_equal(got, share) and region == 8050
    for payload in (p.payload[:2], p.payload[:2] + b"junk", p.payload + b"\0"):
        with pytest.raises(BitstreamError, match="corrupt ROI packet"):
            roi.unpack(payload, (3, 4))
    with pytest.raises(BitstreamError, match="exactly 4x4"):
        roi.unpack(p.payload, (4, 4))


def test_hp_spends_more_on_the_region_and_decodes_what_the_encoder_meant(sample_rgb):
    uniform = codec.encode(sample_rgb, quality=30)
    data = codec.encode(sample_rgb, quality=30, roi=[BOX], roi_quality=70)
    c = bitstream.read(data)
    assert [p.kind for p in c.packets] == [PacketKind.ROI, PacketKind.HYPER, PacketKind.LATENT]
    assert c.header.quality == 30.0 and c.header.roi and len(data) > len(uniform)
    assert bitstream.describe(data)["roi"] and not bitstream.describe(uniform)["roi"]  # codec info shows it
    u, r = api.decode_rgb(uniform), api.decode_rgb(data)
    assert psnr(_inside(sample_rgb), _inside(r)) > psnr(_inside(sample_rgb), _inside(u)) + 2
    # The background keeps its quality: far from the region the pictures are alike.
    assert abs(psnr(sample_rgb[:, 200:], r[:, 200:]) - psnr(sample_rgb[:, 200:], u[:, 200:])) < 0.3
    # A size target holds the whole file, by searching the background's quality.
    sized = codec.encode(sample_rgb, roi=[BOX], roi_quality=70, size=len(uniform))
    assert 0.97 * len(uniform) <= len(sized) <= len(uniform)
    assert bitstream.read(sized).header.quality < 30
    # A size beyond reach: the background goes up to the region's quality, not past it.
    assert bitstream.read(codec.encode(sample_rgb[:64, :64], roi=[(0, 0, 40, 40)], size=10**6)).header.quality == 80


def test_vq_codes_the_region_with_a_larger_codebook(sample_rgb):
    uniform = codec.encode(sample_rgb, model="vq", codebook=64)
    data = codec.encode(sample_rgb, model="vq", codebook=64, roi=[BOX])
    c = bitstream.read(data)
    share, k = roi.unpack(c.packets[0].payload, (16, 16))
    assert [p.kind for p in c.packets] == [PacketKind.ROI, PacketKind.INDICES] and k == 8192
    assert set(np.unique(share)) == {0, 255}  # inside or not: all vq reads
    indices = api.model_of(c.header).decode_latents(c.packets, c.header)[0]
    inside = torch.from_numpy(roi.inside(share))
    assert indices[~inside].max() < 64 and indices[inside].max() >= 64  # each in its own codebook
    u, r = api.decode_rgb(uniform), api.decode_rgb(data)
    gain = psnr(_inside(sample_rgb), _inside(r)) - psnr(_inside(sample_rgb), _inside(u))
    assert gain > 1.0 and len(data) > len(uniform)
    # The region's codebook from a region quality, and none smaller than the background's.
    assert roi.unpack(bitstream.read(codec.encode(sample_rgb, model="vq", codebook=64, roi=[BOX], roi_quality=60)
                                     ).packets[0].payload, (16, 16))[1] == 256
    with pytest.raises(ValueError, match="codebook larger than the background"):
        codec.encode(sample_rgb, model="vq", codebook=1024, roi=[BOX], roi_quality=30)
    with pytest.raises(ValueError, match="codebook larger than the background"):
        codec.encode(sample_rgb, model="vq", depth=2, roi=[BOX])
    sized = codec.encode(sample_rgb, model="vq", roi=[BOX], size=len(uniform))  # depth-1 points below the region's
    assert len(sized) <= len(uniform) and bitstream.read(sized).header.codebook < 8192
    for region_quality, top in ((None, 4096), (50, 64)):  # a size beyond reach: the largest point below the region's
        huge = codec.encode(sample_rgb[:64, :96], model="vq", roi=[(8, 8, 40, 30)], roi_quality=region_quality, size=10**6)
        assert bitstream.read(huge).header.codebook == top


def _forged(data: bytes, edit) -> bytes:
    c = bitstream.read(data)
    edit(c)
    return bitstream.write(c)


def test_a_damaged_or_forged_roi_packet_is_fatal_also_under_conceal(sample_rgb):
    data = codec.encode(sample_rgb[:64, :64], quality=30, roi=[(0, 0, 32, 32)])
    bad = bytearray(data)
    bad[bitstream.read(data).packets[0].offset + 6] ^= 0xFF  # inside the ROI packet's payload: its CRC fails
    with pytest.raises(BitstreamError, match="packet 0 is corrupt"):
        api.decode_rgb(bytes(bad))
    with pytest.raises(BitstreamError, match="roi packet 0 .* is corrupt: the entropy model needs its qualities"):
        api.decode_rgb(bytes(bad), conceal=True)  # hp's entropy model reads them: nothing to conceal with
    vq = codec.encode(sample_rgb[:64, :64], model="vq", codebook=16, roi=[(0, 0, 32, 32)])
    bad = bytearray(vq)
    bad[bitstream.read(vq).packets[0].offset + 6] ^= 0xFF
    with pytest.raises(BitstreamError, match="roi packet 0 .* is corrupt: the index prior needs its codebooks"):
        api.decode_rgb(bytes(bad), conceal=True)
    for edit, message in ((lambda c: setattr(c.packets[0], "count", 3), "packet 0 should be the roi packet"),
                          (lambda c: c.packets.pop(0), "packet 0 should be the roi packet"),  # the header announces it
                          (lambda c: setattr(c.header, "roi", False), "should be the hyper packet 0 .*, but is a roi packet"),
                          (lambda c: setattr(c.packets[0], "payload", (20000).to_bytes(2, "little") + c.packets[0].payload[2:]),
                           "region quality 200.0 is over 100")):
        with pytest.raises(BitstreamError, match=message):
            api.decode_rgb(_forged(data, edit))
    for k in (8, 100):  # smaller than the background's, or no codebook of the model
        forged = _forged(vq, lambda c: setattr(c.packets[0], "payload", k.to_bytes(2, "little") + c.packets[0].payload[2:]))
        with pytest.raises(BitstreamError, match=f"region codebook of {k} over 16"):
            api.decode_rgb(forged)


def test_the_cli_takes_boxes_masks_and_auto_and_refuses_bad_regions(tmp_path, capsys):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 20)).save(mask)  # 60 x 60, resized to the image
    for option in (["--roi", "10,10,50,40", "--roi", "150,150,30,30"], ["--roi", str(mask)], ["--roi", "auto"]):
        out = tmp_path / "o.bin"
        assert main(["encode", str(SAMPLE), str(out), "--quality", "20", "--roi-quality", "60", *option]) == 0
        assert bitstream.read(out.read_bytes()).packets[0].kind == PacketKind.ROI
        assert main(["decode", str(out), str(tmp_path / "o.png")]) == 0
    capsys.readouterr()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(mask.read_bytes()[:60])
    for option in (["--roi", "1,2,3"], ["--roi", "no-such-mask.png"], ["--roi", "0,0,-4,4"], ["--roi-quality", "50"],
                   ["--roi", str(truncated)]):
        assert main(["encode", str(SAMPLE), str(tmp_path / "x.bin"), *option]) == 2
        err = capsys.readouterr().err
        assert err.startswith("codec: error: ") and "roi" in err.lower() and err.count("\n") == 1, err
    assert not (tmp_path / "x.bin").exists()
