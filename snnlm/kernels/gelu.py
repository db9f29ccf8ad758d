"""GELU (tanh form) forward and backward: fused Numba kernels and their NumPy references.

NumPy evaluates the formula as a chain of full-size temporaries; the kernels do it in one pass,
on all cores. Training spends more time here than in the attention.
"""
from __future__ import annotations

import math

import numba
import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715
# Below this many elements (one decode step's hidden layer is 4d), waking the thread pool costs
# more than the arithmetic, so the NumPy reference runs instead.
PARALLEL_MIN_SIZE = 1 << 16


def gelu_numpy(x: np.ndarray) -> np.ndarray:
    """Reference: 0.5 x (1 + tanh(c (x + a x^3))), elementwise."""
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_A * x * x * x)))


def gelu_grad_numpy(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Reference: dout * GELU'(x), elementwise."""
    t = np.tanh(GELU_C * (x + GELU_A * x * x * x))
    dt = GELU_C * (1.0 + 3 * GELU_A * x * x) * (1.0 - t * t)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)


@numba.njit(parallel=True, cache=True, fastmath=False)
def _gelu_flat(x, out):
    for i in numba.prange(x.shape[0]):
        v = x[i]
        out[i] = 0.5 * v * (1.0 + math.tanh(GELU_C * (v + GELU_A * v * v * v)))


@numba.njit(parallel=True, cache=True, fastmath=False)
def _gelu_grad_flat(dout, x, out):
    for i in numba.prange(x.shape[0]):
        v = x[i]
        t = math.tanh(GELU_C * (v + GELU_A * v * v * v))
        dt = GELU_C * (1.0 + 3 * GELU_A * v * v) * (1.0 - t * t)
        out[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * v * dt)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU of x (any shape), same dtype."""
    if x.size < PARALLEL_MIN_SIZE:
        return gelu_numpy(x)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _gelu_flat(x.reshape(-1), out.reshape(-1))
    return out


def gelu_grad(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout * GELU'(x), both of the same shape and dtype."""
    if x.size < PARALLEL_MIN_SIZE:
        return gelu_grad_numpy(dout, x)
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    out = np.empty_like(x)
    _gelu_grad_flat(dout.reshape(-1), x.reshape(-1), out.reshape(-1))
    return out
