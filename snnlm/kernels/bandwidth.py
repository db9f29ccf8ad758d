"""Memory read bandwidth probe: a sum that streams an array once, split across all threads.

Batch-1 decoding reads every weight once per token, so the sum's bytes per second bound the
decode speed. `parallel_sum` is the kernel, `sum_reference` its plain NumPy twin.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def parallel_sum(a: np.ndarray) -> float:
    """Sum of a 1-D array, accumulated in float64. a (n,) -> scalar.

    Numba gives each thread a contiguous range with its own accumulator; fastmath frees the order
    of additions so that each thread's loop vectorises and the sum runs at memory speed.
    """
    total = 0.0
    for i in prange(a.size):
        total += a[i]
    return total


def sum_reference(a: np.ndarray) -> float:
    """NumPy twin of `parallel_sum`. a (n,) -> scalar."""
    return float(a.sum(dtype=np.float64))
