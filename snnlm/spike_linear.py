"""Spike-driven linear layer: I[t] = s[t] @ (diag(θ_in) W) + b, and its synaptic-operation count.

The input thresholds are folded into the weight once, at conversion time (`scale_weight`), so that every
nonzero spike adds one row of the scaled weight: an accumulate (AC), not a multiply-accumulate.

Also what the spiking blocks built on it (`snnlm.ssa`, `snnlm.spiking_ffn`) share: `EVENTS_ONLY`, and the
checked reading of their checkpoint tensors.
"""
from __future__ import annotations

import math

import numpy as np

from snnlm.kernels.spike_matmul import spike_matmul

# The crossover that keeps `spike_linear` on the event-driven path at any density. The spiking blocks
# need it to be exact: the event-driven sum for a token depends only on that token's spikes, while the
# dense BLAS path sums in an order that depends on the number of rows, so a prefill and a token-by-token
# decode would round differently and, near a threshold, spike differently.
EVENTS_ONLY = math.inf


def scale_weight(threshold_in, w) -> np.ndarray:
    """diag(θ_in) W. threshold_in scalar or (K,), w (K, M) -> (K, M) float32."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"w must have shape (K, M), got {w.shape}")
    theta = np.asarray(threshold_in, np.float32)
    if theta.ndim == 0:
        theta = np.full(w.shape[0], theta, np.float32)
    if theta.shape != (w.shape[0],):
        raise ValueError(f"threshold_in must be a scalar or have shape ({w.shape[0]},), got {theta.shape}")
    return np.ascontiguousarray(theta[:, None] * w)


def spike_linear(spikes, weight_scaled, bias, crossover: float | None = None) -> np.ndarray:
    """The current driven by input spikes. spikes (T, N, K) int8, weight_scaled (K, M) float32 (from
    `scale_weight`), bias (M,) -> current (T, N, M) float32. `crossover` as in `spike_matmul`."""
    spikes = np.asarray(spikes)
    if spikes.ndim != 3 or spikes.dtype != np.int8:
        raise ValueError(f"spikes must be int8 of shape (T, N, K), got {spikes.dtype} {spikes.shape}")
    n_steps, n_tokens, n_in = spikes.shape
    weight_scaled = np.asarray(weight_scaled)
    if weight_scaled.ndim != 2 or weight_scaled.shape[0] != n_in:
        raise ValueError(f"weight_scaled must have shape ({n_in}, M), got {weight_scaled.shape}")
    n_out = weight_scaled.shape[1]
    if np.shape(bias) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},), got {np.shape(bias)}")
    current = spike_matmul(spikes.reshape(n_steps * n_tokens, n_in), weight_scaled, crossover)
    current += np.asarray(bias, np.float32)
    return current.reshape(n_steps, n_tokens, n_out)


def synaptic_ops(spikes, fan_out: int) -> int:
    """Accumulates performed by the synapses these spikes drive: Σ|s| × fan_out (a spike of size |s|
    adds its weight row |s| times). spikes int8, any shape."""
    spikes = np.asarray(spikes)
    if spikes.dtype != np.int8:
        raise ValueError(f"spikes must be int8, got {spikes.dtype}")
    # int16 first: abs(int8(-128)) wraps to -128.
    magnitudes = np.abs(spikes.astype(np.int16))
    return int(magnitudes.sum(dtype=np.int64)) * int(fan_out)


def read_block_tensors(tensors: dict[str, np.ndarray], prefix: str, shapes: dict[str, tuple[int, ...]],
                       thresholds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{name: tensors[prefix + name] as float32} for the names of `shapes`, checked: a floating-point
    dtype, shape shapes[name], finite values, and > 0 for the names in `thresholds`.

    Raises KeyError for a missing tensor, ValueError (one line, naming the tensor) for a bad one."""
    arrays = {}
    for name, shape in shapes.items():
        key = prefix + name
        tensor = np.asarray(tensors[key])
        if tensor.dtype.kind != "f":
            raise ValueError(f"tensor {key!r} has dtype {tensor.dtype}, expected a floating-point type")
        if tensor.shape != shape:
            raise ValueError(f"tensor {key!r} has shape {tensor.shape}, expected {shape}")
        with np.errstate(over="ignore"):
            array = np.array(tensor, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {key!r} holds non-finite values (in float32)")
        if name in thresholds and not (array > 0).all():
            raise ValueError(f"tensor {key!r} holds thresholds <= 0")
        arrays[name] = array
    return arrays


def read_block_integer(tensors: dict[str, np.ndarray], prefix: str, name: str, low: int, high: int) -> int:
    """The one integer in [low, high] that tensors[prefix + name] holds, of shape (1,) and an integer dtype.

    Raises KeyError for a missing tensor, ValueError (one line, naming the tensor) for a bad one."""
    key = prefix + name
    tensor = np.asarray(tensors[key])
    if tensor.dtype.kind not in "iu" or tensor.shape != (1,):
        raise ValueError(f"tensor {key!r} must hold one integer, found {tensor.dtype} of shape {tensor.shape}")
    if not low <= int(tensor[0]) <= high:
        raise ValueError(f"tensor {key!r} holds {int(tensor[0])}, expected an integer in [{low}, {high}]")
    return int(tensor[0])
