"""The integer core of spiking self-attention: bit-packed parallel form and recurrent step, with NumPy twins.

Spikes come in G independent groups (one per head and timestep), each a (N, D) ternary int8 matrix.
For token i of a group the core computes

    a_i = sum_{j <= i} (q_i . k_j) v_j          (int32)

The parallel kernel packs each ternary vector into a positive and a negative uint64 bit mask, so
q . k is popcount(pos&pos | neg&neg) - popcount(pos&neg | neg&pos) over D/64 words. The recurrent step
keeps S = sum_{j <= i} k_j^T v_j (D, D) per group, so a token costs O(D^2) whatever the context length.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

WORD_BITS = 64


@intrinsic
def _popcount(typingctx, x):
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def pack_ternary(spikes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ternary spikes (G, N, D) int8 -> positive and negative bit masks, each (G, N, ceil(D/64)) uint64.

    D is zero-padded up to a multiple of 64; the padding bits are zero in both masks, so they never count.
    """
    G, N, D = spikes.shape
    n_words = -(-D // WORD_BITS)
    padded = np.zeros((G, N, n_words * WORD_BITS), dtype=np.int8)
    padded[..., :D] = spikes
    # Only popcounts of ANDs of two masks packed the same way are used, so the bit order within a word is free.
    positive = np.packbits(padded > 0, axis=-1, bitorder="little").view(np.uint64)
    negative = np.packbits(padded < 0, axis=-1, bitorder="little").view(np.uint64)
    return positive, negative


# Below this many (group, query, key) triples, or (group, token, state entry) updates for the step, the
# serial kernel runs: a parallel launch waits for every worker thread, which on a loaded machine can take
# a scheduler time slice (about 10 ms), far longer than the work itself (decode: tens of microseconds).
PARALLEL_MIN_PAIRS = 1 << 18
PARALLEL_MIN_UPDATES = 1 << 24


@numba.njit(cache=True, inline="always")
def _packed_row(q_pos, q_neg, k_pos, k_neg, v, out, g, i):
    """out[g, i] = sum_{j <= i} (q_i . k_j) v_j for one group and token."""
    n_words = q_pos.shape[2]
    any_spike = np.uint64(0)
    for w in range(n_words):
        any_spike |= q_pos[g, i, w] | q_neg[g, i, w]
    if any_spike == 0:
        return
    # A private accumulator, and int32 products written out as such: Numba widens integer arithmetic
    # to int64, which halves the SIMD lanes (2x slower).
    acc = np.zeros(v.shape[2], np.int32)
    for j in range(i + 1):
        dot = 0
        for w in range(n_words):
            qp = q_pos[g, i, w]
            qn = q_neg[g, i, w]
            kp = k_pos[g, j, w]
            kn = k_neg[g, j, w]
            # A spike is either positive or negative, so each OR joins disjoint bit sets.
            dot += np.int64(_popcount((qp & kp) | (qn & kn))) - np.int64(_popcount((qp & kn) | (qn & kp)))
        if dot != 0:
            weight = np.int32(dot)
            for c in range(acc.shape[0]):
                acc[c] = np.int32(acc[c] + weight * np.int32(v[g, j, c]))
    out[g, i] = acc


@numba.njit(parallel=True, cache=True)
def _causal_core_parallel(q_pos, q_neg, k_pos, k_neg, v, out):
    G, N = q_pos.shape[:2]
    # One row (group, token) per iteration: every group holds a whole causal triangle, so rows of all
    # lengths are spread evenly over the threads.
    for row in numba.prange(G * N):
        _packed_row(q_pos, q_neg, k_pos, k_neg, v, out, row // N, row % N)


@numba.njit(cache=True)
def _causal_core_serial(q_pos, q_neg, k_pos, k_neg, v, out):
    G, N = q_pos.shape[:2]
    for g in range(G):
        for i in range(N):
            _packed_row(q_pos, q_neg, k_pos, k_neg, v, out, g, i)


def causal_core(q: np.ndarray, k: np.ndarray, v: np.ndarray, parallel: bool | None = None) -> np.ndarray:
    """Bit-packed causal core. q, k, v (G, N, D) ternary int8 -> a (G, N, D) int32.

    parallel: run on all cores (True), on one (False), or by the amount of work (None)."""
    q_pos, q_neg = pack_ternary(q)
    k_pos, k_neg = pack_ternary(k)
    G, N, _ = q.shape
    out = np.zeros(q.shape, dtype=np.int32)
    if parallel is None:
        parallel = G * N * (N + 1) // 2 >= PARALLEL_MIN_PAIRS
    kernel = _causal_core_parallel if parallel else _causal_core_serial
    kernel(q_pos, q_neg, k_pos, k_neg, np.ascontiguousarray(v, dtype=np.int8), out)
    return out


def causal_core_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Reference: masked (q k^T) v by float32 BLAS. q, k, v (G, N, D) ternary int8 -> a (G, N, D) int32.

    Exact while N * D < 2^24: every product and partial sum is then an integer that float32 holds exactly.
    """
    qf, kf, vf = (x.astype(np.float32) for x in (q, k, v))
    scores = np.tril(qf @ np.swapaxes(kf, -1, -2))
    return (scores @ vf).astype(np.int32)


@numba.njit(cache=True, inline="always")
def _step_group(q, k, v, state, out, g):
    """Feed one group's n_new tokens: S += k_i^T v_i, then out_i = q_i S, token by token."""
    S = state[g]
    D = S.shape[0]
    for i in range(q.shape[1]):
        values = v[g, i]
        for r in range(D):
            kr = k[g, i, r]
            if kr != 0:
                for c in range(D):
                    S[r, c] += kr * values[c]
        acc = out[g, i]
        for r in range(D):
            qr = q[g, i, r]
            if qr != 0:
                for c in range(D):
                    acc[c] += qr * S[r, c]


@numba.njit(parallel=True, cache=True)
def _recurrent_step_parallel(q, k, v, state, out):
    for g in numba.prange(q.shape[0]):
        _step_group(q, k, v, state, out, g)


@numba.njit(cache=True)
def _recurrent_step_serial(q, k, v, state, out):
    for g in range(q.shape[0]):
        _step_group(q, k, v, state, out, g)


def recurrent_step(q: np.ndarray, k: np.ndarray, v: np.ndarray, state: np.ndarray,
                   parallel: bool | None = None) -> np.ndarray:
    """Feed n_new tokens through the recurrent core, updating `state` in place.

    q, k, v (G, n_new, D) ternary int8; state (G, D, D) int32 -> a (G, n_new, D) int32.
    parallel: over the groups on all cores (True), on one (False), or by the amount of work (None).
    """
    if state.dtype != np.int32 or not state.flags.c_contiguous:
        raise ValueError("the SSA state must be a C-contiguous int32 array")
    G, n_new, D = q.shape
    out = np.zeros(q.shape, dtype=np.int32)
    if parallel is None:
        parallel = G * n_new * D * D >= PARALLEL_MIN_UPDATES
    kernel = _recurrent_step_parallel if parallel else _recurrent_step_serial
    kernel(*(np.ascontiguousarray(x, dtype=np.int8) for x in (q, k, v)), state, out)
    return out


def recurrent_step_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Reference of `recurrent_step`: S += k_i^T v_i, then a_i = q_i S, token by token. Same shapes."""
    out = np.empty(q.shape, dtype=np.int32)
    for i in range(q.shape[1]):
        state += k[:, i, :, None].astype(np.int32) * v[:, i, None, :].astype(np.int32)
        out[:, i] = (q[:, i, None, :].astype(np.int32) @ state)[:, 0]
    return out
