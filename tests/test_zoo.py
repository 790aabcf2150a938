"""Weights files: one file, or numbered byte parts of it (how files over 20 MB ship)."""
import pytest
import torch

from codec import zoo


def test_a_weights_file_split_into_parts_reads_as_the_file(tmp_path):
    meta = {"family": "hp", "model_id": "hp", "arch": "checkerboard-cond2", "N": 16, "M": 24, "lambdas": [0.001, 0.01]}
    torch.manual_seed(0)
    whole = tmp_path / "whole" / "w.safetensors"
    whole.parent.mkdir()
    zoo.export(zoo.build("hp", meta), whole, meta)
    data = whole.read_bytes()
    split = tmp_path / "split" / "w.safetensors"
    split.parent.mkdir()
    step = len(data) // 3 + 1  # three parts, the header wholly in the first
    for i in range(3):
        split.with_name(f"w.safetensors.{i:03d}").write_bytes(data[i * step:(i + 1) * step])
    assert [p.name for p in zoo.weights_parts(split)] == [f"w.safetensors.{i:03d}" for i in range(3)]
    assert zoo.weights_hash(split) == zoo.weights_hash(whole)  # so files made with either decode with both
    assert zoo.read_meta(split) == zoo.read_meta(whole) == meta
    a, _ = zoo.load_file(whole)
    b, _ = zoo.load_file(split)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(zoo.ModelNotFound):
        zoo.read_meta(tmp_path / "none.safetensors")
