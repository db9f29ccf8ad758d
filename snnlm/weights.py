"""Load and save GPT-2 checkpoints in the Hugging Face layout.

Parameters live in a nested dict that mirrors the checkpoint (picoGPT style):

    params = {
        "wte": (n_vocab, d), "wpe": (n_ctx, d),
        "blocks": [{"ln_1": {"g": (d,), "b": (d,)},
                    "attn": {"c_attn": {"w": (d, 3d), "b": (3d,)}, "c_proj": {"w": (d, d), "b": (d,)}},
                    "ln_2": {"g", "b"},
                    "mlp": {"c_fc": {"w": (d, 4d), "b": (4d,)}, "c_proj": {"w": (4d, d), "b": (d,)}}}, ...],
        "ln_f": {"g": (d,), "b": (d,)},
    }

The LM head is tied to `wte`. All arrays are float32 whatever the dtype on disk.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from snnlm.config import GPT2Config, read_hf_config
from snnlm.errors import SnnlmError
from snnlm.fileio import atomic_write_text
from snnlm.safetensors_io import read_safetensors, write_safetensors

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_FLOAT_DTYPES = (np.float32, np.float16)
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$|^lm_head\.weight$")
# Checkpoint name of each leaf: (HF suffix, our path inside a block dict).
_BLOCK_LEAVES = [
    ("ln_1.weight", ("ln_1", "g")), ("ln_1.bias", ("ln_1", "b")),
    ("attn.c_attn.weight", ("attn", "c_attn", "w")), ("attn.c_attn.bias", ("attn", "c_attn", "b")),
    ("attn.c_proj.weight", ("attn", "c_proj", "w")), ("attn.c_proj.bias", ("attn", "c_proj", "b")),
    ("ln_2.weight", ("ln_2", "g")), ("ln_2.bias", ("ln_2", "b")),
    ("mlp.c_fc.weight", ("mlp", "c_fc", "w")), ("mlp.c_fc.bias", ("mlp", "c_fc", "b")),
    ("mlp.c_proj.weight", ("mlp", "c_proj", "w")), ("mlp.c_proj.bias", ("mlp", "c_proj", "b")),
]


@dataclasses.dataclass
class GPT2Model:
    """A loaded GPT-2: its shape, its parameters (nested dict above) and where it came from."""

    config: GPT2Config
    params: dict
    directory: Path | None = None


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, for every tensor a GPT-2 of this config must have."""
    d, V, P = config.n_embd, config.n_vocab, config.n_ctx
    block = {
        "ln_1.weight": (d,), "ln_1.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "ln_2.weight": (d,), "ln_2.bias": (d,),
        "mlp.c_fc.weight": (d, 4 * d), "mlp.c_fc.bias": (4 * d,),
        "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,),
    }
    shapes = {"wte.weight": (V, d), "wpe.weight": (P, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{k}": s for k, s in block.items()})
    return shapes


def load_gpt2(directory: str | Path | None = None) -> GPT2Model:
    """Load `model.safetensors` (+ `config.json` if present) from a directory (default: the embedded model)."""
    directory = Path(directory) if directory is not None else DEFAULT_WEIGHTS_DIR
    if not directory.is_dir():
        raise SnnlmError(f"{directory}: no such weights directory")
    path = directory / MODEL_FILE
    if not path.is_file():
        raise SnnlmError(f"{path}: no such file (a GPT-2 weights directory holds {MODEL_FILE} and {CONFIG_FILE})")
    tensors, _ = read_safetensors(path)
    config = config_from_tensors(tensors, read_hf_config(directory / CONFIG_FILE), path)
    return GPT2Model(config, params_from_tensors(tensors, config, path), directory)


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}


def config_from_tensors(tensors: dict[str, np.ndarray], hf: dict, path: Path) -> GPT2Config:
    """Derive the config from tensor shapes, taking from `config.json` (`hf`) what shapes cannot tell."""
    tensors = _strip_prefix(tensors)
    _check_hf_config_types(hf, path)
    for key in ("wte.weight", "wpe.weight"):
        if key not in tensors:
            raise SnnlmError(f"{path}: missing tensor {key!r}")
        if tensors[key].ndim != 2:
            raise SnnlmError(f"{path}: tensor {key!r} has shape {tensors[key].shape}, expected 2 dimensions")
    n_vocab, d = tensors["wte.weight"].shape
    n_ctx = tensors["wpe.weight"].shape[0]
    layers = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"h\.(\d+)\.", k))})
    missing = next((i for i, layer in enumerate(layers) if layer != i), None)
    if missing is not None:
        raise SnnlmError(f"{path}: inconsistent layer count: the file has blocks up to h.{layers[-1]} but no h.{missing}")
    n_layer = len(layers)
    if "n_layer" in hf and hf["n_layer"] != n_layer:
        raise SnnlmError(f"{path}: inconsistent layer count: config.json says n_layer={hf['n_layer']}, the file has {n_layer} blocks")
    for name, found in (("n_embd", d), ("vocab_size", n_vocab), ("n_positions", n_ctx)):
        if name in hf and hf[name] != found:
            raise SnnlmError(f"{path}: config.json says {name}={hf[name]}, the tensors say {found}")
    # n_head cannot be read from shapes; every released GPT-2 uses 64-wide heads.
    n_head = hf.get("n_head", max(1, d // 64))
    if d % n_head:
        raise SnnlmError(f"{path}: n_embd={d} is not divisible by n_head={n_head}")
    eps = float(hf.get("layer_norm_epsilon", 1e-5))
    return GPT2Config(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=d, n_head=n_head, n_layer=n_layer, layer_norm_epsilon=eps)


def _check_hf_config_types(hf, path: Path) -> None:
    config_path = path.parent / CONFIG_FILE
    if not isinstance(hf, dict):
        raise SnnlmError(f"{config_path}: expected a JSON object, found {type(hf).__name__}")
    for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
        if name in hf and (not isinstance(hf[name], int) or isinstance(hf[name], bool) or hf[name] <= 0):
            raise SnnlmError(f"{config_path}: {name} must be a positive integer, found {hf[name]!r}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise SnnlmError(f"{config_path}: layer_norm_epsilon must be a small positive number, found {eps!r}")


def params_from_tensors(tensors: dict[str, np.ndarray], config: GPT2Config, path: Path) -> dict:
    """Check every tensor's presence, shape, dtype and finiteness; return the float32 params dict."""
    tensors = _strip_prefix(tensors)
    shapes = expected_shapes(config)

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise SnnlmError(f"{path}: missing tensor {key!r} (expected shape {shapes[key]})")
        t = tensors[key]
        if t.dtype not in _FLOAT_DTYPES:
            raise SnnlmError(f"{path}: tensor {key!r} has dtype {t.dtype}, expected float32, float16 or bfloat16")
        if t.shape != shapes[key]:
            raise SnnlmError(f"{path}: tensor {key!r} has shape {t.shape}, expected {shapes[key]}")
        out = np.array(t, dtype=np.float32)
        if not np.isfinite(out).all():
            raise SnnlmError(f"{path}: tensor {key!r} holds non-finite values (NaN or inf)")
        return out

    for key in tensors:
        if key not in shapes and not _IGNORED.match(key):
            raise SnnlmError(f"{path}: unexpected tensor {key!r} for a {config.n_layer}-layer GPT-2")
    blocks = []
    for i in range(config.n_layer):
        block: dict = {}
        for suffix, where in _BLOCK_LEAVES:
            node = block
            for part in where[:-1]:
                node = node.setdefault(part, {})
            node[where[-1]] = take(f"h.{i}.{suffix}")
        blocks.append(block)
    return {
        "wte": take("wte.weight"),
        "wpe": take("wpe.weight"),
        "blocks": blocks,
        "ln_f": {"g": take("ln_f.weight"), "b": take("ln_f.bias")},
    }


def params_to_tensors(params: dict) -> dict[str, np.ndarray]:
    """The inverse of `params_from_tensors`: checkpoint key -> array."""
    tensors = {"wte.weight": params["wte"], "wpe.weight": params["wpe"],
               "ln_f.weight": params["ln_f"]["g"], "ln_f.bias": params["ln_f"]["b"]}
    for i, block in enumerate(params["blocks"]):
        for suffix, where in _BLOCK_LEAVES:
            node = block
            for part in where:
                node = node[part]
            tensors[f"h.{i}.{suffix}"] = node
    return tensors


def save_gpt2(directory: str | Path, config: GPT2Config, params: dict, dtype=np.float16) -> Path:
    """Write `model.safetensors` and `config.json` (Hugging Face layout) into `directory`, atomically."""
    directory = Path(directory)
    tensors = {k: np.asarray(v, dtype=dtype) for k, v in params_to_tensors(params).items()}
    write_safetensors(directory / MODEL_FILE, tensors, metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config.to_hf_json(), indent=2) + "\n")
    return directory
