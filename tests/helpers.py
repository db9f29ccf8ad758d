"""Builders and checkers shared by the engine's tests: tiny GPT-2 params, HF checkpoint layout, and
central-difference gradient checks.

The checkpoint layout is written out here by hand, independently of `snnlm.weights`, so that the
loader is tested against the Hugging Face names rather than against itself.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from snnlm.config import GPT2Config

# n_layer 2, d 8, n_head 2, V 50: big enough for every code path, small enough to check by finite differences.
TINY = GPT2Config(n_vocab=50, n_ctx=16, n_embd=8, n_head=2, n_layer=2, layer_norm_epsilon=1e-5)

FD_STEP = 1e-6
FD_RTOL = 1e-5

# HF name inside block i (after "h.{i}.") -> path of the leaf inside our block dict.
BLOCK_LEAVES: dict[str, tuple[str, ...]] = {
    "ln_1.weight": ("ln_1", "g"), "ln_1.bias": ("ln_1", "b"),
    "attn.c_attn.weight": ("attn", "c_attn", "w"), "attn.c_attn.bias": ("attn", "c_attn", "b"),
    "attn.c_proj.weight": ("attn", "c_proj", "w"), "attn.c_proj.bias": ("attn", "c_proj", "b"),
    "ln_2.weight": ("ln_2", "g"), "ln_2.bias": ("ln_2", "b"),
    "mlp.c_fc.weight": ("mlp", "c_fc", "w"), "mlp.c_fc.bias": ("mlp", "c_fc", "b"),
    "mlp.c_proj.weight": ("mlp", "c_proj", "w"), "mlp.c_proj.bias": ("mlp", "c_proj", "b"),
}
TOP_LEAVES: dict[str, tuple[str, ...]] = {
    "wte.weight": ("wte",), "wpe.weight": ("wpe",), "ln_f.weight": ("ln_f", "g"), "ln_f.bias": ("ln_f", "b"),
}


def _layernorm_params(rng: np.random.Generator, d: int, dtype) -> dict:
    # Gains away from 1 and biases away from 0, so a swapped or ignored g/b shows up.
    return {"g": rng.uniform(0.5, 1.5, d).astype(dtype), "b": rng.normal(0.0, 0.1, d).astype(dtype)}


def _linear_params(rng: np.random.Generator, n_in: int, n_out: int, std: float, dtype) -> dict:
    return {"w": rng.normal(0.0, std, (n_in, n_out)).astype(dtype), "b": rng.normal(0.0, 0.1, n_out).astype(dtype)}


def tiny_params(config: GPT2Config, rng: np.random.Generator, dtype=np.float64) -> dict:
    """Random GPT-2 params in the nested-dict layout of `snnlm.weights`, with non-trivial LN gains/biases."""
    d = config.n_embd
    blocks = [
        {
            "ln_1": _layernorm_params(rng, d, dtype),
            "attn": {"c_attn": _linear_params(rng, d, 3 * d, 0.4, dtype), "c_proj": _linear_params(rng, d, d, 0.3, dtype)},
            "ln_2": _layernorm_params(rng, d, dtype),
            "mlp": {"c_fc": _linear_params(rng, d, 4 * d, 0.4, dtype), "c_proj": _linear_params(rng, 4 * d, d, 0.2, dtype)},
        }
        for _ in range(config.n_layer)
    ]
    return {
        "wte": rng.normal(0.0, 0.5, (config.n_vocab, d)).astype(dtype),
        "wpe": rng.normal(0.0, 0.3, (config.n_ctx, d)).astype(dtype),
        "blocks": blocks,
        "ln_f": _layernorm_params(rng, d, dtype),
    }


def leaf_paths(config: GPT2Config) -> list[tuple]:
    """The path (keys and list indices) of every parameter leaf of a params dict."""
    paths = [("wte",), ("wpe",)]
    for i in range(config.n_layer):
        paths += [("blocks", i, *where) for where in BLOCK_LEAVES.values()]
    return paths + [("ln_f", "g"), ("ln_f", "b")]


def get_leaf(tree, path: Iterable):
    for part in path:
        tree = tree[part]
    return tree


def hf_key_to_path(key: str) -> tuple:
    """'h.1.mlp.c_fc.bias' -> ('blocks', 1, 'mlp', 'c_fc', 'b'); 'wte.weight' -> ('wte',)."""
    if key in TOP_LEAVES:
        return TOP_LEAVES[key]
    _, i, suffix = key.split(".", 2)
    return ("blocks", int(i), *BLOCK_LEAVES[suffix])


def hf_tensors(params: dict, dtype=None) -> dict[str, np.ndarray]:
    """Params -> checkpoint dict with Hugging Face keys (no `transformer.` prefix)."""
    keys = list(TOP_LEAVES) + [f"h.{i}.{s}" for i in range(len(params["blocks"])) for s in BLOCK_LEAVES]
    out = {}
    for key in keys:
        arr = get_leaf(params, hf_key_to_path(key))
        out[key] = np.ascontiguousarray(arr if dtype is None else arr.astype(dtype))
    return out


def central_difference(f: Callable[[], float], x: np.ndarray, indices: Iterable[tuple], h: float = FD_STEP) -> np.ndarray:
    """d f / d x[idx] for each idx, by central differences; `x` is perturbed in place and restored."""
    grads = []
    for idx in indices:
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grads.append((f_plus - f_minus) / (2 * h))
    return np.array(grads)


def relative_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """max |numeric - analytic| relative to the largest gradient magnitude among the checked entries."""
    scale = max(np.abs(numeric).max(), np.abs(analytic).max(), 1e-12)
    return float(np.abs(numeric - analytic).max() / scale)


def all_indices(shape: tuple[int, ...]) -> list[tuple]:
    return list(np.ndindex(*shape))


def assert_gradient(f: Callable[[], float], x: np.ndarray, analytic: np.ndarray, indices=None, name: str = "") -> None:
    """The analytic gradient of f w.r.t. x matches central differences at `indices` (default: all)."""
    assert analytic is not None and analytic.shape == x.shape, f"{name}: gradient shape {getattr(analytic, 'shape', None)} != {x.shape}"
    indices = all_indices(x.shape) if indices is None else list(indices)
    numeric = central_difference(f, x, indices)
    picked = np.array([analytic[idx] for idx in indices])
    # The check must be able to fail: an all-zero numerical gradient would match a backward that returns zeros.
    assert np.abs(numeric).max() > 1e-6, f"{name}: degenerate check, the loss does not depend on the checked entries"
    err = relative_error(numeric, picked)
    assert err < FD_RTOL, f"{name}: relative error {err:.2e}\nnumeric  {numeric}\nanalytic {picked}"
