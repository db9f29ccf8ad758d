"""Multi-step neuron updates: fused Numba kernels and their vectorised NumPy twins.

Each kernel runs the whole T loop inside, on one block of neurons at a time, in parallel over blocks
(serially for calls below PARALLEL_MIN_NEURON_STEPS; both variants run the same block body): a block's
state stays in L1 for all T steps and is never written back to memory, where the NumPy twin makes a
handful of full-size temporaries per step.

Expectation-compensating IF (EC-IF): with m[t] = m[t-1] + I[t],

    s[t] = clip(rint(t f(m[t]/t) / θ) - n[t-1], -B, B),   n[t] = n[t-1] + s[t].

Arithmetic: currents are read as float32; m, f and the target are float64, in the same order of
operations in kernel and twin. The target is t f(m/t) · (1/θ), with 1/θ rounded once per channel
(a division per neuron-step costs more than the rest of an identity step); it can differ from
t f(m/t) / θ only where that lies within an ulp of a half-integer. For f = identity the target is
m · (1/θ), since t·(m/t) is m in exact arithmetic. With a constant float32 input x, every partial sum
t·x is exact in float64, so m[t]/t == x and the target is exactly fl(fl(t f(x)) · fl(1/θ)): what the
constant-input path and the tests compute.

GELU is the tanh form of `snnlm.kernels.gelu` (its constants), with tanh computed by `tanh_numpy`'s arithmetic
(only +, -, *, /, so that both twins round alike and the kernel's loop vectorises: a scalar libm tanh
costs about 20 ns, more than all the rest of a neuron step).

Rounding is half to even (`np.rint`) in both twins: it is one exact hardware instruction in NumPy and
in Numba, and it is odd-symmetric, so the signed neuron treats ±x alike. Round-half-away-from-zero
written as floor(|y| + 0.5) is not exact (it rounds 0.49999999999999994 up).

LIF: v[t] = β v[t-1] + I[t]; spike when v[t] ≥ θ; then v[t] -= θ (subtract) or v[t] = 0 (zero), in
float32 as snnTorch and SpikingJelly keep their membranes.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from snnlm.kernels.gelu import GELU_A, GELU_C

IDENTITY = 0
GELU = 1

# Neurons per block: 4 KiB of float64 state per array, so a block's state stays in L1 across the
# T steps, while the inner loop is long enough to vectorise.
_BLOCK = 512


# tanh(z) = -q / (2 + q) with q = expm1(-2|z|). expm1 of y / 2**_DOUBLINGS by its Taylor series to
# degree 11 (|y| / 256 <= 0.16, truncation error < 1e-17 relative), then expm1(2y) = q (q + 2) each
# doubling: no cancellation near 0, relative error a few ulp. Beyond |z| = 20, tanh rounds to ±1.
_TANH_CLAMP = 20.0
_DOUBLINGS = 8
_EXPM1_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(11, 0, -1))


@njit(cache=True, error_model="numpy", inline="always")
def _tanh(z):
    y = -2.0 * min(abs(z), _TANH_CLAMP) / 2.0**_DOUBLINGS
    p = 0.0
    for c in _EXPM1_TAYLOR:
        p = p * y + c
    q = p * y
    for _ in range(_DOUBLINGS):
        q = q * (q + 2.0)
    t = -q / (2.0 + q)
    return -t if z < 0.0 else t


def tanh_numpy(z: np.ndarray) -> np.ndarray:
    """tanh of float64 z (any shape) in the arithmetic of the kernels' `_tanh`; within 1e-14 of np.tanh."""
    y = -2.0 * np.minimum(np.abs(z), _TANH_CLAMP) / 2.0**_DOUBLINGS
    p = np.zeros_like(y)
    for c in _EXPM1_TAYLOR:
        p = p * y + c
    q = p * y
    for _ in range(_DOUBLINGS):
        q = q * (q + 2.0)
    t = -q / (2.0 + q)
    return np.where(z < 0.0, -t, t)


@njit(cache=True, error_model="numpy", inline="always")
def _gelu(v):
    return 0.5 * v * (1.0 + _tanh(GELU_C * (v + GELU_A * v * v * v)))


def gelu_numpy(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) of float64 x (any shape), with `tanh_numpy`: the hidden neurons' f."""
    return 0.5 * x * (1.0 + tanh_numpy(GELU_C * (x + GELU_A * x * x * x)))


@njit(cache=True, error_model="numpy", inline="always")
def _emit(target, count, limit):
    return min(max(np.rint(target) - count, -limit), limit)


@njit(cache=True, error_model="numpy", inline="always")
def _blocks_per_row(channels):
    return (channels + _BLOCK - 1) // _BLOCK


@njit(cache=True, error_model="numpy", inline="always")
def _block(chunk, channels):
    """Row and channel range of block number `chunk`, counted row by row."""
    blocks_per_row = _blocks_per_row(channels)
    row = chunk // blocks_per_row
    c0 = (chunk % blocks_per_row) * _BLOCK
    return row, c0, min(c0 + _BLOCK, channels)


@njit(cache=True, error_model="numpy", inline="always")
def _n_blocks(spikes):
    """Blocks of neurons, the work items, of spikes (T, M, C)."""
    return spikes.shape[1] * _blocks_per_row(spikes.shape[2])


# Below this many neuron-steps (T x neurons) a call runs the serial kernel. A parallel launch waits for
# every worker thread, which on a loaded machine takes a scheduler time slice: with another process on
# one of the 2 cores of the development machine, a parallel call on one decode token (T = 4, 3072
# neurons) took 12 ms, the serial kernel 0.01 to 0.03 ms. A serial neuron-step took 1.8 to 2.1 ns
# (GELU), 0.2 to 0.5 ns (identity, LIF), so at this threshold the serial kernel runs about 0.5 ms at
# most: what it can lose on an idle machine. Decode (T x 3072 neurons up to T = 64) stays serial.
PARALLEL_MIN_NEURON_STEPS = 1 << 18


def _use_parallel(parallel: bool | None, neuron_steps: int) -> bool:
    return neuron_steps >= PARALLEL_MIN_NEURON_STEPS if parallel is None else parallel


# The kernels index 1-D slices rather than current[t, row, c0 + j]: with the computed index inside a
# prange body, LLVM does not vectorise the inner loop (10x slower).
@njit(cache=True, error_model="numpy", inline="always")
def _ec_if_block(current, inverse_threshold, limit, activation_code, spikes, chunk):
    """EC-IF over all T steps for one block of neurons; writes its spikes."""
    n_steps, _, channels = current.shape
    row, c0, c1 = _block(chunk, channels)
    inverse = inverse_threshold[c0:c1]
    integrated = np.zeros(c1 - c0, np.float64)
    count = np.zeros(c1 - c0, np.float64)
    mean = np.empty(c1 - c0, np.float64)
    for t in range(n_steps):
        steps = t + 1.0
        drive = current[t, row, c0:c1]
        out = spikes[t, row, c0:c1]
        if activation_code == GELU:
            # Three loops, not one: LLVM vectorises them better apart (measured 20% faster).
            for j in range(c1 - c0):
                integrated[j] += drive[j]
                mean[j] = integrated[j] / steps
            for j in range(c1 - c0):
                mean[j] = _gelu(mean[j])
            for j in range(c1 - c0):
                s = _emit(steps * mean[j] * inverse[j], count[j], limit)
                count[j] += s
                out[j] = np.int8(s)
        else:
            for j in range(c1 - c0):
                m = integrated[j] + drive[j]
                integrated[j] = m
                s = _emit(m * inverse[j], count[j], limit)
                count[j] += s
                out[j] = np.int8(s)


@njit(parallel=True, cache=True, error_model="numpy")
def _ec_if_parallel(current, inverse_threshold, limit, activation_code, spikes):
    for chunk in prange(_n_blocks(spikes)):
        _ec_if_block(current, inverse_threshold, limit, activation_code, spikes, chunk)


@njit(cache=True, error_model="numpy")
def _ec_if_serial(current, inverse_threshold, limit, activation_code, spikes):
    for chunk in range(_n_blocks(spikes)):
        _ec_if_block(current, inverse_threshold, limit, activation_code, spikes, chunk)


def ec_if_numba(current, threshold, burst, activation_code, parallel: bool | None = None):
    """EC-IF neurons over T steps. current (T, M, C) float32, threshold (C,) float64 -> spikes (T, M, C) int8.

    parallel: over blocks of neurons on all cores (True), on one (False), or by the amount of work (None)."""
    spikes = np.empty(current.shape, np.int8)
    kernel = _ec_if_parallel if _use_parallel(parallel, current.size) else _ec_if_serial
    kernel(current, 1.0 / threshold, float(burst), activation_code, spikes)
    return spikes


@njit(cache=True, error_model="numpy", inline="always")
def _ec_if_constant_block(x, inverse_threshold, limit, activation_code, spikes, chunk):
    """EC-IF driven by x at every step, for one block of neurons; writes its spikes."""
    n_steps, _, channels = spikes.shape
    row, c0, c1 = _block(chunk, channels)
    inverse = inverse_threshold[c0:c1]
    drive = x[row, c0:c1]
    value = np.empty(c1 - c0, np.float64)
    if activation_code == GELU:
        for j in range(c1 - c0):
            value[j] = _gelu(np.float64(drive[j]))
    else:
        for j in range(c1 - c0):
            value[j] = drive[j]
    count = np.zeros(c1 - c0, np.float64)
    for t in range(n_steps):
        steps = t + 1.0
        out = spikes[t, row, c0:c1]
        for j in range(c1 - c0):
            s = _emit(steps * value[j] * inverse[j], count[j], limit)
            count[j] += s
            out[j] = np.int8(s)


@njit(parallel=True, cache=True, error_model="numpy")
def _ec_if_constant_parallel(x, inverse_threshold, limit, activation_code, spikes):
    for chunk in prange(_n_blocks(spikes)):
        _ec_if_constant_block(x, inverse_threshold, limit, activation_code, spikes, chunk)


@njit(cache=True, error_model="numpy")
def _ec_if_constant_serial(x, inverse_threshold, limit, activation_code, spikes):
    for chunk in range(_n_blocks(spikes)):
        _ec_if_constant_block(x, inverse_threshold, limit, activation_code, spikes, chunk)


def ec_if_constant_numba(x, n_steps, threshold, burst, activation_code, parallel: bool | None = None):
    """EC-IF neurons driven by the same input at every step. x (M, C) float32, threshold (C,) float64
    -> spikes (n_steps, M, C) int8; equal to `ec_if_numba` on x repeated n_steps times. parallel as there."""
    spikes = np.empty((n_steps, *x.shape), np.int8)
    kernel = _ec_if_constant_parallel if _use_parallel(parallel, spikes.size) else _ec_if_constant_serial
    kernel(x, 1.0 / threshold, float(burst), activation_code, spikes)
    return spikes


def ec_if_numpy(current, threshold, burst, activation_code, gelu=None):
    """NumPy twin of `ec_if_numba`: the same arithmetic, vectorised over neurons, looping over t.

    `gelu` replaces the kernel's portable GELU (e.g. by one on NumPy's SIMD tanh, for benchmarks);
    the default reproduces the kernel bit for bit."""
    gelu = gelu or gelu_numpy
    inverse_threshold = 1.0 / threshold
    integrated = np.zeros(current.shape[1:], np.float64)
    count = np.zeros(current.shape[1:], np.float64)
    spikes = np.empty(current.shape, np.int8)
    for t in range(current.shape[0]):
        integrated += current[t]
        steps = t + 1.0
        if activation_code == GELU:
            target = steps * gelu(integrated / steps) * inverse_threshold
        else:
            target = integrated * inverse_threshold
        s = np.clip(np.rint(target) - count, -burst, burst)
        count += s
        spikes[t] = s
    return spikes


def ec_if_constant_numpy(x, n_steps, threshold, burst, activation_code):
    """NumPy twin of `ec_if_constant_numba`."""
    value = x.astype(np.float64)
    if activation_code == GELU:
        value = gelu_numpy(value)
    inverse_threshold = 1.0 / threshold
    count = np.zeros(x.shape, np.float64)
    spikes = np.empty((n_steps, *x.shape), np.int8)
    for t in range(n_steps):
        s = np.clip(np.rint((t + 1.0) * value * inverse_threshold) - count, -burst, burst)
        count += s
        spikes[t] = s
    return spikes


@njit(cache=True, error_model="numpy", inline="always")
def _lif_block(current, beta, threshold, reset_subtract, spikes, chunk):
    """LIF over all T steps for one block of neurons; writes its spikes."""
    n_steps, _, channels = current.shape
    row, c0, c1 = _block(chunk, channels)
    leak = beta[c0:c1]
    theta = threshold[c0:c1]
    membrane = np.zeros(c1 - c0, np.float32)
    for t in range(n_steps):
        drive = current[t, row, c0:c1]
        out = spikes[t, row, c0:c1]
        if reset_subtract:
            for j in range(c1 - c0):
                v = leak[j] * membrane[j] + drive[j]
                fired = v >= theta[j]
                membrane[j] = v - theta[j] if fired else v
                out[j] = np.int8(fired)
        else:
            for j in range(c1 - c0):
                v = leak[j] * membrane[j] + drive[j]
                fired = v >= theta[j]
                membrane[j] = np.float32(0.0) if fired else v
                out[j] = np.int8(fired)


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_parallel(current, beta, threshold, reset_subtract, spikes):
    for chunk in prange(_n_blocks(spikes)):
        _lif_block(current, beta, threshold, reset_subtract, spikes, chunk)


@njit(cache=True, error_model="numpy")
def _lif_serial(current, beta, threshold, reset_subtract, spikes):
    for chunk in range(_n_blocks(spikes)):
        _lif_block(current, beta, threshold, reset_subtract, spikes, chunk)


def lif_numba(current, beta, threshold, reset_subtract, parallel: bool | None = None):
    """LIF neurons over T steps. current (T, M, C), beta (C,), threshold (C,), all float32
    -> spikes (T, M, C) int8 in {0, 1}. parallel as in `ec_if_numba`."""
    spikes = np.empty(current.shape, np.int8)
    kernel = _lif_parallel if _use_parallel(parallel, current.size) else _lif_serial
    kernel(current, beta, threshold, reset_subtract, spikes)
    return spikes


def lif_numpy(current, beta, threshold, reset_subtract):
    """NumPy twin of `lif_numba`, in float32."""
    membrane = np.zeros(current.shape[1:], np.float32)
    spikes = np.empty(current.shape, np.int8)
    for t in range(current.shape[0]):
        v = beta * membrane + current[t]
        fired = v >= threshold
        membrane = np.where(fired, v - threshold, v) if reset_subtract else np.where(fired, np.float32(0.0), v)
        spikes[t] = fired
    return spikes
