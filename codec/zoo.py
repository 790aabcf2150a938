"""The model zoo: which weights ship, how they are written and read (fp16 safetensors, no pickle).

A weights file holds the float parameters in fp16 and the tables of the entropy models (int32 CDFs,
the float32 scale table) exactly, computed once at export from the fp16-rounded parameters. Encoder and decoder therefore
read the same tables from disk instead of each recomputing them in floating point.

No tracked file may exceed 20 MB, so a larger weights file ships as numbered byte parts of itself
(`split -b 16M -d -a 3 NAME NAME.` -> NAME.000, NAME.001, ...), joined when read: the bytes, and so
the weights hash stamped into every .bin, are those of the one file training exported.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from codec.models.hp import ConditionedCheckerboard, scale_table
from codec.models.vq import VQCodec

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Versioned model id (family, architecture, weights version) -> weights file. The id is what a .bin
# header records, beside the weights' hash: new weights get a new id, so a file never silently meets
# weights it was not made with. A release ships the ids below; a file naming another is refused.
MODELS = {
    "hp-cbc2-v8": "hp-cbc2-v8.safetensors",
    "vq-t16-v3": "vq-v3.safetensors",  # vq-v3 weights, index prior coded in 16x16 tiles (0.3.0)
}
# What `--model hp` / `--model vq` mean in this release. Format-1 files recorded these family names
# as their model id; they decode when their weights hash is the default model's.
DEFAULT_MODEL = {"hp": "hp-cbc2-v8", "vq": "vq-t16-v3"}

_TABLE_SUFFIXES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


class ModelNotFound(LookupError):
    pass


def is_table(key: str) -> bool:
    return key.endswith(_TABLE_SUFFIXES)


# Architecture name (what a weights file's metadata records) -> its class: the registry that
# api.py, training and the tools look a model up in. Each class implements the same seam: forward
# (training), prepare/compress (image -> packets) and decompress (packets -> image).
ARCHITECTURES = {cls.arch: cls for cls in (ConditionedCheckerboard, VQCodec)}


def build(family: str, config: dict) -> torch.nn.Module:
    """A fresh network from a weights file's metadata (family, arch and the constructor's arguments)."""
    arch = config.get("arch", "vq-f16" if family == "vq" else None)  # vq-v3 predates the arch field
    cls = ARCHITECTURES.get(arch)
    if cls is None or cls.family != family:
        raise ModelNotFound(f"unknown {family} architecture {arch!r} (this release has: "
                            + ", ".join(ARCHITECTURES) + ")")
    if family == "vq":
        return cls(config)
    return cls(N=config["N"], M=config["M"], lambdas=tuple(config["lambdas"]))


def update_tables(model: torch.nn.Module) -> None:
    """Compute integer CDF tables from the current parameters (export time only)."""
    model.gaussian_conditional.update_scale_table(scale_table(), force=True)
    model.entropy_bottleneck.update(force=True)


def export(model: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """Write fp16 parameters and exact buffers; `meta` holds what build() needs (family first)."""
    model = model.float().cpu().eval()
    with torch.no_grad():  # round to fp16 first so the tables match the shipped parameters
        for p in model.parameters():
            p.copy_(p.half().float())
    if meta["family"] == "hp":
        update_tables(model)
    params = {name for name, _ in model.named_parameters()}
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().contiguous()
        # Parameters go to fp16; buffers (CDF tables, scale table, bounds such as the 1e-9
        # likelihood floor, which fp16 would flush to zero) keep their exact dtype.
        tensors[key] = value.half() if key in params else value
    save_file(tensors, str(path), metadata={"codec": json.dumps(meta)})


def weights_parts(path: str | Path) -> list[Path]:
    """The files holding a weights file's bytes, in order: itself, or its numbered parts; [] if neither."""
    path = Path(path)
    if path.exists():
        return [path]
    return sorted(path.parent.glob(glob.escape(path.name) + ".[0-9][0-9][0-9]"))


def _existing_parts(path: str | Path) -> list[Path]:
    parts = weights_parts(path)
    if not parts:
        raise ModelNotFound(f"no weights file {path}")
    return parts


def _weights_bytes(path: str | Path) -> bytes:
    return b"".join(part.read_bytes() for part in _existing_parts(path))


def weights_hash(path: str | Path) -> bytes:
    """First 4 bytes of the SHA-256 of the weights file: stamped into every .bin it makes."""
    return hashlib.sha256(_weights_bytes(path)).digest()[:4]


def read_meta(path: str | Path) -> dict:
    """The metadata export() wrote, read from the safetensors header alone (it lies in the first part)."""
    with open(_existing_parts(path)[0], "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(json.loads(f.read(size))["__metadata__"]["codec"])


def load_file(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    meta = read_meta(path)
    model = build(meta["family"], meta)
    params = model.state_dict()
    tensors = {_current_name(model, key): value for key, value in load_tensors(_weights_bytes(path)).items()}
    missing = sorted(k for k in params if k not in tensors)
    if missing:
        raise ModelNotFound(f"{path} lacks {len(missing)} tensors, e.g. {missing[0]}")
    for key, value in tensors.items():
        if is_table(key):
            # Table buffers are sized by the file, not by the freshly built module.
            module_path, _, name = key.rpartition(".")
            model.get_submodule(module_path).register_buffer(name, value.clone())
        else:
            params[key].copy_(value.float())
    return model.to(device).eval(), meta


def _current_name(model: torch.nn.Module, key: str) -> str:
    """A tensor's name in a weights file -> its name in the model, through the class's table of the
    names its shipped weights were written under (SHIPPED_NAMES: old prefix -> new prefix)."""
    for old, new in getattr(model, "SHIPPED_NAMES", {}).items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def deterministic_kernels(device: str) -> None:
    """Encoder and decoder must compute the entropy parameters bit for bit alike. On CUDA that
    takes float32 (not TF32) arithmetic and deterministic cuDNN kernels: with the defaults, an
    H200 decoded garbage from its own checkerboard-model files."""
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def weights_path(model_id: str) -> Path:
    """The shipped weights file of a model id (or of a family's default model)."""
    model_id = DEFAULT_MODEL.get(model_id, model_id)
    if model_id not in MODELS:
        raise ModelNotFound(f"unknown model {model_id!r} (known: {', '.join(MODELS)})")
    return WEIGHTS_DIR / MODELS[model_id]


@functools.lru_cache(maxsize=4)
def load(model_id: str, device: str = "cpu") -> tuple[torch.nn.Module, dict, bytes]:
    """model id -> (model in eval mode, its metadata, its 4-byte weights hash)."""
    path = weights_path(model_id)
    if not weights_parts(path):
        raise ModelNotFound(f"weights for {model_id!r} are not installed ({path})")
    deterministic_kernels(device)
    model, meta = load_file(path, device)
    return model, meta, weights_hash(path)
