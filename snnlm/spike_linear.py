"""Spike-driven linear layer: I[t] = s[t] @ (diag(θ_in) W) + b, and its synaptic-operation count.

The input thresholds are folded into the weight once, at conversion time (`scale_weight`), so that every
nonzero spike adds one row of the scaled weight: an accumulate (AC), not a multiply-accumulate.
"""
from __future__ import annotations

import numpy as np

from snnlm.kernels.spike_matmul import spike_matmul


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
