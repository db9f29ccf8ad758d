"""Spiking neurons: the expectation-compensating IF neuron, its decoder, and a LIF neuron.

Arrays are time-major: a current or a spike train is (T, ..., C), with the channel (whose threshold is
θ[c]) on the last axis. Spikes are int8. The arithmetic and the rounding rule (half to even) are
described in `snnlm.kernels.neurons`.

EC-IF, at t = 1..T, with m[t] = m[t-1] + I[t] and n[t] = n[t-1] + s[t]:

    s[t] = clip(rint(t f(m[t]/t) / θ) - n[t-1], -B, B)

- Constant input x: n[T] = clip(rint(T f(x) / θ), -BT, BT), so `decode` returns f(x) to within θ/(2T)
  unless the neuron saturates.
- f = identity, B = 1: with the pre-spike membrane v' = m[t] - θ n[t-1] = v[t-1] + I[t], this is the
  signed IF neuron with soft reset, v[t] = v' - θ s[t] = m[t] - θ n[t]: it fires +1 when v' > θ/2 and
  -1 when v' < -θ/2, so the equivalent IF thresholds are ±θ/2, not ±θ. At an exact tie v' = ±θ/2 it
  fires (toward the tie) only if n[t-1] is odd: rint rounds m/θ = n ± 1/2 to the even integer, so the
  count n[t] is always even after a tie (rint(y) - n ≠ rint(y - n) for odd n).
"""
from __future__ import annotations

import math

import numpy as np

from snnlm.kernels.neurons import GELU, IDENTITY, ec_if_constant_numba, ec_if_numba, lif_numba

ACTIVATIONS = {"identity": IDENTITY, "gelu": GELU}
RESET_MECHANISMS = ("subtract", "zero")
MAX_BURST = 127  # spikes are int8


def _channel_vector(value, channels: int, name: str, dtype) -> np.ndarray:
    """A scalar or (C,) argument as a contiguous (C,) array of dtype."""
    vector = np.asarray(value, dtype)
    if vector.ndim == 0:
        vector = np.full(channels, vector, dtype)
    if vector.shape != (channels,):
        raise ValueError(f"{name} must be a scalar or have shape ({channels},), got {vector.shape}")
    return np.ascontiguousarray(vector)


def _positive_threshold(threshold, channels: int, dtype) -> np.ndarray:
    theta = _channel_vector(threshold, channels, "threshold", dtype)
    if not (np.all(np.isfinite(theta)) and np.all(theta > 0)):
        raise ValueError("threshold must be finite and > 0 in every channel")
    return theta


def _check_burst(burst: int) -> None:
    if isinstance(burst, bool) or not isinstance(burst, (int, np.integer)) or not 1 <= burst <= MAX_BURST:
        raise ValueError(f"burst must be an integer in [1, {MAX_BURST}], got {burst!r}")


def _activation_code(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]


def _as_steps_rows_channels(current, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(T, ..., C) -> contiguous float32 (T, M, C), and the original shape."""
    current = np.asarray(current)
    if current.ndim < 2:
        raise ValueError(f"{name} must have shape (T, ..., C), got {current.shape}")
    rows = math.prod(current.shape[1:-1])
    flat = np.ascontiguousarray(current, np.float32).reshape(current.shape[0], rows, current.shape[-1])
    return flat, current.shape


def ec_if(current, threshold, burst: int = 1, activation: str = "identity") -> np.ndarray:
    """Expectation-compensating IF neurons. current (T, ..., C), threshold scalar or (C,)
    -> spikes (T, ..., C) int8 in [-burst, burst]. Currents are read as float32."""
    flat, shape = _as_steps_rows_channels(current, "current")
    theta = _positive_threshold(threshold, shape[-1], np.float64)
    _check_burst(burst)
    code = _activation_code(activation)
    return ec_if_numba(flat, theta, int(burst), code).reshape(shape)


def ec_if_constant(x, timesteps: int, threshold, burst: int = 1, activation: str = "identity") -> np.ndarray:
    """EC-IF neurons driven by x at every one of `timesteps` steps (an encoder), without materialising
    the T copies. x (..., C), threshold scalar or (C,) -> spikes (timesteps, ..., C) int8."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError("x must have shape (..., C)")
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    theta = _positive_threshold(threshold, x.shape[-1], np.float64)
    _check_burst(burst)
    code = _activation_code(activation)
    rows = np.ascontiguousarray(x, np.float32).reshape(math.prod(x.shape[:-1]), x.shape[-1])
    return ec_if_constant_numba(rows, int(timesteps), theta, int(burst), code).reshape(timesteps, *x.shape)


def decode(spikes, threshold) -> np.ndarray:
    """The rate-decoded value θ/T Σ_t s[t]. spikes (T, ..., C), threshold scalar or (C,) -> (..., C) float32."""
    spikes = np.asarray(spikes)
    if spikes.ndim < 2 or spikes.shape[0] == 0:
        raise ValueError(f"spikes must have shape (T, ..., C) with T >= 1, got {spikes.shape}")
    theta = _positive_threshold(threshold, spikes.shape[-1], np.float64)
    counts = spikes.sum(axis=0, dtype=np.int64)
    return (theta * counts / spikes.shape[0]).astype(np.float32)


def lif(current, beta, threshold, reset_mechanism: str = "subtract") -> np.ndarray:
    """Leaky integrate-and-fire neurons, in float32: v[t] = β v[t-1] + I[t], spike when v[t] ≥ θ, then
    v[t] -= θ ("subtract") or v[t] = 0 ("zero"). current (T, ..., C), beta and threshold scalar or (C,)
    -> spikes (T, ..., C) int8 in {0, 1}.

    Unlike snnTorch's Leaky, the reset acts in the step that fired (snnTorch subtracts it one step later)
    and the comparison is ≥ (snnTorch's Heaviside fires on >).
    """
    flat, shape = _as_steps_rows_channels(current, "current")
    leak = _channel_vector(beta, shape[-1], "beta", np.float32)
    if not np.all((leak >= 0) & (leak <= 1)):
        raise ValueError("beta must lie in [0, 1] in every channel")
    theta = _positive_threshold(threshold, shape[-1], np.float32)
    if reset_mechanism not in RESET_MECHANISMS:
        raise ValueError(f"reset_mechanism must be one of {RESET_MECHANISMS}, got {reset_mechanism!r}")
    return lif_numba(flat, leak, theta, reset_mechanism == "subtract").reshape(shape)
