"""GELU, tanh form (GPT-2's `gelu_new`): the constants and the array functions.

The spiking neurons' Numba kernels (`snnlm.kernels.neurons`) evaluate the same formula per
element. The dense layers use these NumPy functions: a fused Numba version was measured slower
(16 ms vs 4 ms for 2048x1024 float32 on 2 cores), because NumPy's float32 tanh is vectorised and a
parallel kernel stalls whenever another process holds a core.
"""
from __future__ import annotations

import math

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(c (x + a x^3))), elementwise, in x's dtype."""
    c, a = x.dtype.type(GELU_C), x.dtype.type(GELU_A)
    return 0.5 * x * (1.0 + np.tanh(c * (x + a * x * x * x)))


def gelu_grad(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout * GELU'(x), elementwise."""
    c, a = x.dtype.type(GELU_C), x.dtype.type(GELU_A)
    t = np.tanh(c * (x + a * x * x * x))
    dt = c * (1.0 + 3 * a * x * x) * (1.0 - t * t)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)
