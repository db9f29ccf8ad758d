"""Spike-driven matrix product out = spikes @ weight, for int8 spikes that are mostly zero.

The event-driven kernel touches only the weight rows of the nonzero spikes and adds (or subtracts)
them: an accumulate per synapse, no multiply. Its cost grows with the number of spikes, the dense BLAS
product's does not, so `spike_matmul` switches to BLAS above a density crossover measured by
`benchmarks/bench_neurons.py`. Its two stages (listing the events, summing the weight rows) run on all
cores, or on one below a size where a parallel launch costs more than it saves; the parallel and serial
kernels share their loop bodies.
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
# (K = 768, M = 3072, weights read from memory, 2-core development machine). Both threads, quiet
# machine: prefill (R = 512 rows) 12 %, decode (R = 1 and 4 rows) 56 % and 47 %. One thread each,
# loaded machine: prefill 30-32 %, decode 62-100 %. Decode is R <= DECODE_ROWS.
DECODE_ROWS = 8
DECODE_CROSSOVER = 0.5
PREFILL_CROSSOVER = 0.12

# Below these sizes a stage of `spike_matmul_events` runs serially: a parallel launch waits for every
# worker thread, which on a loaded machine takes a scheduler time slice (about 12 ms measured on the
# 2-core development machine with another process on a core), while a decode product (R = 4, K = 768,
# M = 3072, 30 % density) takes 0.17 ms on one core. Serially, listing the events took 1.6 to 2.6 ns per
# spike slot (R K) and the sums 0.064 ns per accumulate (events x M), so at these thresholds each stage
# runs about 0.5 ms at most: what it can lose on an idle machine.
PARALLEL_MIN_SPIKES = 1 << 18
PARALLEL_MIN_ACCUMULATES = 1 << 23


@njit(cache=True, inline="always")
def _count_events(spikes, n_add, n_sub, r):
    """n_add[r], n_sub[r] = the sums of the positive and of the negative spikes' sizes in row r."""
    for k in range(spikes.shape[1]):
        s = spikes[r, k]
        if s > 0:
            n_add[r] += s
        elif s < 0:
            n_sub[r] -= s


@njit(cache=True, inline="always")
def _list_events(spikes, offsets, n_add, rows, r):
    """Row r's weight rows to add, then those to subtract, into rows[offsets[r]:offsets[r + 1]]."""
    add = offsets[r]
    sub = add + n_add[r]
    for k in range(spikes.shape[1]):
        for _ in range(spikes[r, k]):
            rows[add] = k
            add += 1
        for _ in range(-spikes[r, k]):
            rows[sub] = k
            sub += 1


@njit(cache=True, inline="always")
def _event_offsets(n_add, n_sub):
    offsets = np.zeros(n_add.size + 1, np.int64)
    offsets[1:] = np.cumsum(n_add + n_sub)
    return offsets


@njit(parallel=True, cache=True)
def _events_parallel(spikes):
    """Per row, the weight rows to add and to subtract, each k repeated |s| times, in CSR form: row r's
    additions are rows[offsets[r]:offsets[r] + n_add[r]], its subtractions the rest up to offsets[r + 1].
    spikes (R, K) int8 -> offsets (R + 1,) int64, n_add (R,) int64, rows (Σ|s|,) int32."""
    n_add = np.zeros(spikes.shape[0], np.int64)
    n_sub = np.zeros(spikes.shape[0], np.int64)
    for r in prange(spikes.shape[0]):
        _count_events(spikes, n_add, n_sub, r)
    offsets = _event_offsets(n_add, n_sub)
    rows = np.empty(offsets[-1], np.int32)
    for r in prange(spikes.shape[0]):
        _list_events(spikes, offsets, n_add, rows, r)
    return offsets, n_add, rows


@njit(cache=True)
def _events_serial(spikes):
    """`_events_parallel` on one core."""
    n_add = np.zeros(spikes.shape[0], np.int64)
    n_sub = np.zeros(spikes.shape[0], np.int64)
    for r in range(spikes.shape[0]):
        _count_events(spikes, n_add, n_sub, r)
    offsets = _event_offsets(n_add, n_sub)
    rows = np.empty(offsets[-1], np.int32)
    for r in range(spikes.shape[0]):
        _list_events(spikes, offsets, n_add, rows, r)
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


@njit(cache=True, inline="always")
def _tile(weight, offsets, n_add, rows, out, tile):
    """One output tile: rows r0..r0 + _ROW_TILE of out, columns j0..j0 + _COL_TILE."""
    n_rows, n_out = out.shape
    row_tiles = (n_rows + _ROW_TILE - 1) // _ROW_TILE
    j0 = (tile // row_tiles) * _COL_TILE
    j1 = min(j0 + _COL_TILE, n_out)
    r0 = (tile % row_tiles) * _ROW_TILE
    for r in range(r0, min(r0 + _ROW_TILE, n_rows)):
        mid = offsets[r] + n_add[r]
        _accumulate(out[r, j0:j1], weight, rows[offsets[r]:mid], j0, j1, False)
        _accumulate(out[r, j0:j1], weight, rows[mid:offsets[r + 1]], j0, j1, True)


@njit(cache=True, inline="always")
def _n_tiles(out):
    return ((out.shape[0] + _ROW_TILE - 1) // _ROW_TILE) * ((out.shape[1] + _COL_TILE - 1) // _COL_TILE)


@njit(parallel=True, cache=True)
def _accumulate_parallel(weight, offsets, n_add, rows, out):
    for tile in prange(_n_tiles(out)):
        _tile(weight, offsets, n_add, rows, out, tile)


@njit(cache=True)
def _accumulate_serial(weight, offsets, n_add, rows, out):
    for tile in range(_n_tiles(out)):
        _tile(weight, offsets, n_add, rows, out, tile)


def spike_matmul_events(spikes: np.ndarray, weight: np.ndarray, parallel: bool | None = None) -> np.ndarray:
    """Event-driven spikes @ weight: each spike s adds weight row k |s| times (subtracts it if s < 0).
    spikes (R, K) int8, weight (K, M) float32 -> (R, M) float32.

    parallel: on all cores (True), on one (False), or by the amount of work (None): the event lists by
    the number of spike slots R K, the sums by the number of accumulates (events x M)."""
    serial_lists = spikes.size < PARALLEL_MIN_SPIKES if parallel is None else not parallel
    offsets, n_add, rows = (_events_serial if serial_lists else _events_parallel)(spikes)
    out = np.zeros((spikes.shape[0], weight.shape[1]), np.float32)
    serial_sums = rows.size * out.shape[1] < PARALLEL_MIN_ACCUMULATES if parallel is None else not parallel
    (_accumulate_serial if serial_sums else _accumulate_parallel)(weight, offsets, n_add, rows, out)
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
