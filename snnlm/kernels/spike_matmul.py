"""Spike-driven matrix product out = spikes @ weight, for int8 spikes that are mostly zero.

The event-driven kernel touches only the weight rows of the nonzero spikes and adds (or subtracts)
them: an accumulate per synapse, no multiply. Its cost grows with the number of spikes, the dense BLAS
product's does not, so `spike_matmul` switches to BLAS above a density crossover measured by
`benchmarks/bench_neurons.py`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Output tiles of _ROW_TILE rows x _COL_TILE columns are the parallel work items, column panel by
# column panel, so that a core runs all the row tiles of one weight panel in turn and a row's 2 KiB
# accumulator stays in L1. Panels of 128 to 1024 columns were timed (R = 512, K = 768, M = 3072): 512
# and 1024 were fastest; 512 still gives decode (R <= 8) six panels to spread across cores.
_ROW_TILE = 16
_COL_TILE = 512

# Fraction of nonzero spikes above which dense BLAS is faster, measured by benchmarks/bench_neurons.py
# (K = 768, M = 3072, weights read from memory; one thread each, on the 2-core development machine,
# two runs): prefill, R = 512 rows: 30 % and 32 %; decode, R = 1 and 4 rows: between 62 % and 100 %
# (the two paths are within 30 % of each other above 50 %). Decode is R <= DECODE_ROWS.
DECODE_ROWS = 8
DECODE_CROSSOVER = 0.6
PREFILL_CROSSOVER = 0.3


@njit(parallel=True, cache=True)
def _events(spikes):
    """Per row, the weight rows to add and to subtract, each k repeated |s| times, in CSR form: row r's
    additions are rows[offsets[r]:offsets[r] + n_add[r]], its subtractions the rest up to offsets[r + 1].
    spikes (R, K) int8 -> offsets (R + 1,) int64, n_add (R,) int64, rows (Σ|s|,) int32."""
    n_rows, n_cols = spikes.shape
    n_add = np.zeros(n_rows, np.int64)
    n_sub = np.zeros(n_rows, np.int64)
    for r in prange(n_rows):
        for k in range(n_cols):
            s = spikes[r, k]
            if s > 0:
                n_add[r] += s
            elif s < 0:
                n_sub[r] -= s
    offsets = np.zeros(n_rows + 1, np.int64)
    offsets[1:] = np.cumsum(n_add + n_sub)
    rows = np.empty(offsets[-1], np.int32)
    for r in prange(n_rows):
        add = offsets[r]
        sub = add + n_add[r]
        for k in range(n_cols):
            for _ in range(spikes[r, k]):
                rows[add] = k
                add += 1
            for _ in range(-spikes[r, k]):
                rows[sub] = k
                sub += 1
    return offsets, n_add, rows


@njit(cache=True, inline="always")
def _accumulate(acc, weight, rows, j0, j1, subtract):
    """acc (j1 - j0,) += (or -=) the sum of weight[k, j0:j1] over k in rows.

    Four weight rows per pass over the accumulator quarter its loads and stores (1.4-2x faster).
    """
    e = 0
    while e + 4 <= rows.size:
        w0 = weight[rows[e], j0:j1]
        w1 = weight[rows[e + 1], j0:j1]
        w2 = weight[rows[e + 2], j0:j1]
        w3 = weight[rows[e + 3], j0:j1]
        if subtract:
            for j in range(j1 - j0):
                acc[j] -= (w0[j] + w1[j]) + (w2[j] + w3[j])
        else:
            for j in range(j1 - j0):
                acc[j] += (w0[j] + w1[j]) + (w2[j] + w3[j])
        e += 4
    for e in range(e, rows.size):
        w0 = weight[rows[e], j0:j1]
        if subtract:
            for j in range(j1 - j0):
                acc[j] -= w0[j]
        else:
            for j in range(j1 - j0):
                acc[j] += w0[j]


@njit(parallel=True, cache=True)
def spike_matmul_events(spikes, weight):
    """Event-driven spikes @ weight: each spike s adds weight row k |s| times (subtracts it if s < 0).
    spikes (R, K) int8, weight (K, M) float32 -> (R, M) float32."""
    n_rows = spikes.shape[0]
    n_out = weight.shape[1]
    offsets, n_add, rows = _events(spikes)
    out = np.zeros((n_rows, n_out), np.float32)
    row_tiles = (n_rows + _ROW_TILE - 1) // _ROW_TILE
    col_tiles = (n_out + _COL_TILE - 1) // _COL_TILE
    for tile in prange(row_tiles * col_tiles):
        j0 = (tile // row_tiles) * _COL_TILE
        j1 = min(j0 + _COL_TILE, n_out)
        r0 = (tile % row_tiles) * _ROW_TILE
        for r in range(r0, min(r0 + _ROW_TILE, n_rows)):
            mid = offsets[r] + n_add[r]
            _accumulate(out[r, j0:j1], weight, rows[offsets[r]:mid], j0, j1, False)
            _accumulate(out[r, j0:j1], weight, rows[mid:offsets[r + 1]], j0, j1, True)
    return out


def spike_matmul_dense(spikes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Dense BLAS spikes @ weight. spikes (R, K) int8, weight (K, M) float32 -> (R, M) float32."""
    return spikes.astype(np.float32) @ weight


def spike_matmul_numpy(spikes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """NumPy twin: the plain product, in float64, rounded to float32. (R, K) int8, (K, M) -> (R, M) float32."""
    return (spikes.astype(np.float64) @ weight.astype(np.float64)).astype(np.float32)


def spike_matmul_path(spikes: np.ndarray, crossover: float | None = None) -> str:
    """"events" or "dense": the path `spike_matmul` takes for these (R, K) spikes.

    The default crossover is DECODE_CROSSOVER for at most DECODE_ROWS rows, PREFILL_CROSSOVER otherwise.
    """
    if crossover is None:
        crossover = DECODE_CROSSOVER if spikes.shape[0] <= DECODE_ROWS else PREFILL_CROSSOVER
    density = np.count_nonzero(spikes) / max(spikes.size, 1)
    return "events" if density < crossover else "dense"


def spike_matmul(spikes: np.ndarray, weight: np.ndarray, crossover: float | None = None) -> np.ndarray:
    """spikes @ weight, event-driven below the density crossover (fraction of nonzero spikes), dense above.
    spikes (R, K) int8, weight (K, M) float32 -> (R, M) float32."""
    spikes = np.ascontiguousarray(spikes, np.int8)
    weight = np.ascontiguousarray(weight, np.float32)
    if spike_matmul_path(spikes, crossover) == "events":
        return spike_matmul_events(spikes, weight)
    return spike_matmul_dense(spikes, weight)
