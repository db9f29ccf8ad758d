"""Softmax cross-entropy over a large vocabulary: fused Numba kernels and their NumPy references.

With 50257 classes the logits of one training batch are hundreds of MB. The kernels read them
once per pass, row-parallel, and the backward writes the gradient over the logits in place
instead of allocating a second buffer of the same size.
"""
from __future__ import annotations

import math

import numba
import numpy as np


def logsumexp_numpy(logits: np.ndarray) -> np.ndarray:
    """Reference: log(sum(exp(logits))) per row. logits (N, V) -> (N,) float64."""
    m = logits.max(axis=-1, keepdims=True).astype(np.float64)
    return (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]


def crossentropy_grad_numpy(logits: np.ndarray, lse: np.ndarray, targets: np.ndarray, scale: float) -> np.ndarray:
    """Reference: scale * (softmax(logits) - onehot(targets)). (N, V)."""
    g = np.exp(logits - lse[:, None]).astype(logits.dtype)
    g[np.arange(len(targets)), targets] -= 1.0
    return g * scale


@numba.njit(parallel=True, cache=True)
def logsumexp(logits):
    """log(sum(exp(logits))) per row, accumulated in float64. logits (N, V) -> (N,)."""
    n, v = logits.shape
    out = np.empty(n, np.float64)
    for i in numba.prange(n):
        row = logits[i]
        m = row[0]
        for j in range(1, v):
            if row[j] > m:
                m = row[j]
        s = 0.0
        for j in range(v):
            s += math.exp(row[j] - m)
        out[i] = m + math.log(s)
    return out


@numba.njit(parallel=True, cache=True)
def crossentropy_grad_inplace(logits, lse, targets, scale):
    """Overwrite logits (N, V) with scale * (softmax(logits) - onehot(targets))."""
    n, v = logits.shape
    for i in numba.prange(n):
        row = logits[i]
        for j in range(v):
            row[j] = math.exp(row[j] - lse[i]) * scale
        row[targets[i]] -= scale
