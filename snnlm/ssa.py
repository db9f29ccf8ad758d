"""Causal spiking self-attention (SSA): one GPT-2 attention block as a spiking network.

Per layer, for the input u = LN1(x) (N, d), H heads of width d_h and T timesteps:

1. IF encoder neurons (per-channel thresholds theta_u) turn u into ternary spikes s_u (T, N, d).
2. The spike-driven `c_attn` gives currents; q, k, v neurons (one threshold per head) give ternary
   spikes s_q, s_k, s_v. With one threshold per head, the core below is pure integer arithmetic and
   the product theta_q theta_k theta_v folds into the head's scale alpha_h.
3. The core, per head and timestep, for token i (1-based): a_i[t] = sum_{j <= i} (s_q,i . s_k,j) s_v,j.
4. The output neurons receive alpha_h a_i[t] with threshold theta_o * i: the mean over the i attended
   tokens lives in the threshold, so the core needs no multiplication. Their spikes drive `c_proj`
   with synaptic weights theta_o W_proj; the block output is the mean current over T plus the bias.

`ssa_forward` runs a whole sequence (the bit-packed parallel core, or for a long sequence the recurrent
core fed every token at once, whichever is faster); `ssa_step` continues one from an `SSAState`
(recurrent core, O(1) per token in the context length). Both give exactly the same numbers.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from snnlm.gpt2 import cached_attention
from snnlm.kernels.ssa_core import causal_core, recurrent_step
from snnlm.layers import attention_forward
from snnlm.neurons import ec_if, ec_if_constant, lif
from snnlm.spike_linear import (EVENTS_ONLY, read_block_integer, read_block_tensors, scale_weight, spike_linear,
                                synaptic_ops)

SPIKE_GROUPS = ("u", "q", "k", "v", "o")
# A channel that never fires in the calibration data still needs a positive threshold.
_MIN_THRESHOLD = 1e-6
# From this sequence length on, `ssa_forward` feeds the whole sequence to the recurrent core (the same
# integers as the bit-packed one). The bit-packed core's cost grows as N^2, the recurrent one's as N.
# Measured (H = 12, d_h = 64, T = 4, spikes of calibrated density, one thread, 2-core development
# machine), bit-packed vs recurrent: N = 64: 0.8 vs 2.3 ms, N = 96: 1.6 vs 1.9 ms, N = 128: 2.6 vs 2.6 ms,
# N = 256: 9.1 vs 4.9 ms; and by benchmarks/bench_ssa_core.py, N = 1024: 138 vs 18 ms (7.6x).
RECURRENT_CORE_MIN_TOKENS = 128


@dataclasses.dataclass
class SSAWeights:
    """One layer's SSA parameters (float32). d width, H heads.

    theta_u (d,): encoder thresholds. w_qkv_scaled (d, 3d) = diag(theta_u) W_attn, b_qkv (3d,).
    theta_q, theta_k, theta_v (H,): one threshold per head. alpha (H,): the heads' output scales.
    theta_o (d,): output thresholds (before the 1/i fold). w_proj_scaled (d, d) = diag(theta_o) W_proj,
    b_proj (d,). binary: {0, 1} q, k, v spikes (Spikformer style) instead of ternary ones.
    """

    theta_u: np.ndarray
    w_qkv_scaled: np.ndarray
    b_qkv: np.ndarray
    theta_q: np.ndarray
    theta_k: np.ndarray
    theta_v: np.ndarray
    alpha: np.ndarray
    theta_o: np.ndarray
    w_proj_scaled: np.ndarray
    b_proj: np.ndarray
    n_head: int
    binary: bool = False

    @property
    def width(self) -> int:
        return self.theta_u.shape[0]

    @property
    def head_dim(self) -> int:
        return self.width // self.n_head

    def qkv_thresholds(self) -> np.ndarray:
        """The per-head thresholds of q, k, v, one per neuron: (3d,)."""
        return np.repeat(np.concatenate([self.theta_q, self.theta_k, self.theta_v]), self.head_dim)

    def to_tensors(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat name -> array dict for a safetensors checkpoint; `from_tensors` reads it back."""
        tensors = {f"{prefix}{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("n_head", "binary")}
        tensors[f"{prefix}binary"] = np.array([self.binary], dtype=np.uint8)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str) -> "SSAWeights":
        """The inverse of `to_tensors`; H is the length of theta_q. Raises KeyError for a missing tensor,
        ValueError naming a tensor whose dtype, shape or values do not fit the others."""
        d, n_head = np.size(tensors[f"{prefix}theta_u"]), np.size(tensors[f"{prefix}theta_q"])
        if n_head < 1 or d % n_head:
            raise ValueError(f"tensor {prefix + 'theta_q'!r} gives {n_head} heads, which do not divide the width {d}")
        heads = (n_head,)
        shapes = {"theta_u": (d,), "w_qkv_scaled": (d, 3 * d), "b_qkv": (3 * d,), "theta_q": heads,
                  "theta_k": heads, "theta_v": heads, "alpha": heads, "theta_o": (d,), "w_proj_scaled": (d, d),
                  "b_proj": (d,)}
        arrays = read_block_tensors(tensors, prefix, shapes,
                                    thresholds=("theta_u", "theta_q", "theta_k", "theta_v", "theta_o"))
        return cls(**arrays, n_head=n_head, binary=bool(read_block_integer(tensors, prefix, "binary", 0, 1)))


@dataclasses.dataclass
class SSAState:
    """One layer's recurrent state: kv_sum S (H, T, d_h, d_h) int32 = sum over the tokens so far of
    s_k^T s_v, per head and timestep, and `length`, the number of those tokens."""

    kv_sum: np.ndarray
    length: int = 0

    @classmethod
    def empty(cls, n_head: int, head_dim: int, timesteps: int) -> "SSAState":
        return cls(np.zeros((n_head, timesteps, head_dim, head_dim), dtype=np.int32))


@dataclasses.dataclass(frozen=True)
class SSAStats:
    """What one SSA call did, for the energy model.

    spikes: nonzero spikes per group (u, q, k, v, o), summed over tokens and timesteps.
    slots: neurons x timesteps per group (firing rate = spikes / slots).
    synaptic_ops: accumulates of the two spike-driven projections (spikes x fan-out).
    core_adds: integer adds of the core in its recurrent form (the same result as the parallel form,
    at a cost linear in N): nnz(s_k,i) nnz(s_v,i) into S, then nnz(s_q,i) rows of d_h out of S.
    """

    spikes: dict[str, int]
    slots: dict[str, int]
    synaptic_ops: int
    core_adds: int


def encode_qkv(u: np.ndarray, layer: SSAWeights, timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder and q, k, v neurons. u (N, d) -> s_u (T, N, d), s_qkv (T, N, 3d) int8.

    Spikes are ternary, or {0, 1} for a binary layer: there the q, k, v neurons are IF neurons
    (LIF with beta = 1, reset by subtraction), so their rates code the positive part of the currents.
    """
    s_u = ec_if_constant(u, timesteps, layer.theta_u)
    current = spike_linear(s_u, layer.w_qkv_scaled, layer.b_qkv, crossover=EVENTS_ONLY)
    if layer.binary:
        return s_u, lif(current, beta=1.0, threshold=layer.qkv_thresholds(), reset_mechanism="subtract")
    return s_u, ec_if(current, layer.qkv_thresholds())


def _to_groups(spikes: np.ndarray, n_head: int) -> np.ndarray:
    """(T, N, d) -> (H * T, N, d_h), head-major: the core's independent groups."""
    T, N, d = spikes.shape
    return np.ascontiguousarray(spikes.reshape(T, N, n_head, d // n_head).transpose(2, 0, 1, 3)).reshape(
        n_head * T, N, d // n_head)


def _from_groups(groups: np.ndarray, timesteps: int) -> np.ndarray:
    """(H * T, N, d_h) -> (T, N, d)."""
    G, N, head_dim = groups.shape
    n_head = G // timesteps
    return groups.reshape(n_head, timesteps, N, head_dim).transpose(1, 2, 0, 3).reshape(timesteps, N, n_head * head_dim)


def _output_spikes(core_out: np.ndarray, layer: SSAWeights, first_position: int) -> np.ndarray:
    """Output neurons of tokens first_position, first_position + 1, ... (1-based). core_out (T, N, d) int32
    -> s_o (T, N, d) int8.

    The current is alpha_h a_i[t] and the threshold theta_o * i. Both forms of the layer call this
    with the same per-token values, so their output spikes are identical.
    """
    T, N, d = core_out.shape
    current = core_out.astype(np.float32) * np.repeat(layer.alpha, layer.head_dim)
    positions = np.arange(first_position, first_position + N, dtype=np.float64)
    thresholds = positions[:, None] * layer.theta_o.astype(np.float64)  # (N, d)
    # One neuron per (token, channel): each has its own threshold.
    return ec_if(np.ascontiguousarray(current).reshape(T, 1, N * d), thresholds.reshape(-1)).reshape(T, N, d)


def _project_output(s_o: np.ndarray, layer: SSAWeights) -> np.ndarray:
    """Spike-driven c_proj, decoded: (1/T) sum_t s_o[t] (theta_o W_proj), plus the bias once. (N, d)."""
    current = spike_linear(s_o, layer.w_proj_scaled, np.zeros_like(layer.b_proj), crossover=EVENTS_ONLY)
    total = current[0].copy()
    # A fixed left-to-right sum over t, so the result per token never depends on how many tokens share the call.
    for t in range(1, current.shape[0]):
        total += current[t]
    return total / np.float32(current.shape[0]) + layer.b_proj


def _attend(u: np.ndarray, layer: SSAWeights, timesteps: int, first_position: int,
            core: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]):
    """The layer with a given core (parallel or recurrent). -> out (N, d), spikes {group: (T, N, ...)}."""
    s_u, s_qkv = encode_qkv(np.asarray(u, dtype=np.float32), layer, timesteps)
    s_q, s_k, s_v = (_to_groups(s, layer.n_head) for s in np.split(s_qkv, 3, axis=-1))
    s_o = _output_spikes(_from_groups(core(s_q, s_k, s_v), timesteps), layer, first_position)
    return _project_output(s_o, layer), {"u": s_u, "q": s_q, "k": s_k, "v": s_v, "o": s_o}


def sequence_core(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The causal core over whole sequences, by the faster kernel for their length (RECURRENT_CORE_MIN_TOKENS).
    q, k, v (G, N, d_h) ternary int8 -> (G, N, d_h) int32."""
    G, N, head_dim = q.shape
    if N >= RECURRENT_CORE_MIN_TOKENS:
        return recurrent_step(q, k, v, np.zeros((G, head_dim, head_dim), dtype=np.int32))
    return causal_core(q, k, v)


def _stats(spikes: dict[str, np.ndarray], layer: SSAWeights) -> SSAStats:
    nonzero = {name: np.count_nonzero(s, axis=-1) for name, s in spikes.items()}  # per (group, token)
    core_adds = nonzero["k"].astype(np.int64) * nonzero["v"] + nonzero["q"].astype(np.int64) * layer.head_dim
    return SSAStats(
        spikes={name: int(n.sum()) for name, n in nonzero.items()},
        slots={name: int(s.size) for name, s in spikes.items()},
        synaptic_ops=synaptic_ops(spikes["u"], 3 * layer.width) + synaptic_ops(spikes["o"], layer.width),
        core_adds=int(core_adds.sum()),
    )


def ssa_forward(u: np.ndarray, layer: SSAWeights, timesteps: int) -> tuple[np.ndarray, SSAStats]:
    """The block over a whole sequence, by `sequence_core`. u (N, d) -> out (N, d) float32, stats.

    `out` is the attention block's contribution; the caller adds it to the residual stream.
    """
    out, spikes = _attend(u, layer, timesteps, 1, sequence_core)
    return out, _stats(spikes, layer)


def ssa_step(u: np.ndarray, layer: SSAWeights, state: SSAState) -> np.ndarray:
    """Continue the sequence held in `state` by n_new tokens, recurrent core. u (n_new, d) -> out (n_new, d).

    Updates `state` (kv_sum and length). Prefill can feed many tokens at once, decode one at a time;
    any split of a sequence gives exactly `ssa_forward`'s output.
    """
    n_head, timesteps, head_dim, _ = state.kv_sum.shape
    if (n_head, head_dim) != (layer.n_head, layer.head_dim):
        raise ValueError(f"state of {n_head} heads of width {head_dim} for a layer of "
                         f"{layer.n_head} heads of width {layer.head_dim}")
    if state.kv_sum.dtype != np.int32 or not state.kv_sum.flags.c_contiguous:
        raise ValueError("the SSA state must be a C-contiguous int32 array")
    kv_sum = state.kv_sum.reshape(n_head * timesteps, head_dim, head_dim)  # a view: the kernel updates the state
    out, _ = _attend(u, layer, timesteps, state.length + 1, lambda q, k, v: recurrent_step(q, k, v, kv_sum))
    state.length += u.shape[0]
    return out


def _percentile_threshold(x: np.ndarray, percentile: float, axis) -> np.ndarray:
    return np.maximum(np.percentile(np.abs(x), percentile, axis=axis), _MIN_THRESHOLD).astype(np.float32)


def _mean_core_current(u: np.ndarray, layer: SSAWeights, timesteps: int) -> np.ndarray:
    """The value each output neuron codes when alpha = 1: sum_t a_i[t] / (T i). u (N, d) -> (N, d) float64."""
    _, s_qkv = encode_qkv(u, layer, timesteps)
    s_q, s_k, s_v = (_to_groups(s, layer.n_head) for s in np.split(s_qkv, 3, axis=-1))
    core_sum = _from_groups(sequence_core(s_q, s_k, s_v), timesteps).sum(axis=0, dtype=np.int64)
    return core_sum / (timesteps * np.arange(1, u.shape[0] + 1, dtype=np.float64))[:, None]


def _sequences(u_calib: np.ndarray) -> np.ndarray:
    """(N, d) or (B, N, d) -> (B, N, d) float32."""
    u_calib = np.asarray(u_calib, dtype=np.float32)
    return u_calib[None] if u_calib.ndim == 2 else u_calib


def ssa_from_block(attn: dict, u_calib: np.ndarray, n_head: int, timesteps: int, percentile: float = 99.9,
                   binary: bool = False, fit_alpha: bool = True) -> SSAWeights:
    """Convert a pretrained GPT-2 attention block, calibrated on LN1 outputs.

    attn: {"c_attn": {"w": (d, 3d), "b": (3d,)}, "c_proj": {"w": (d, d), "b": (d,)}} (snnlm.weights).
    u_calib: LN1(x) of calibration sequences, (N, d) or (B, N, d). Thresholds are the `percentile`-th
    percentile of |activation|: per channel for u (of u itself), per head for q, k, v (of the ANN's
    q, k, v). alpha_h is the least-squares scale that makes each head's mean output current match the
    ANN's softmax attention output (before c_proj); with fit_alpha=False it is the plain transfer
    theta_q theta_k theta_v / sqrt(d_h), i.e. the ANN's scores without the softmax. Then theta_o is the
    percentile of the output currents, per channel.
    """
    sequences = _sequences(u_calib)
    B, N, d = sequences.shape
    head_dim = d // n_head
    w_qkv, b_qkv = (np.asarray(attn["c_attn"][k], dtype=np.float32) for k in ("w", "b"))
    w_proj, b_proj = (np.asarray(attn["c_proj"][k], dtype=np.float32) for k in ("w", "b"))
    theta_u = _percentile_threshold(sequences.reshape(-1, d), percentile, axis=0)
    qkv = sequences @ w_qkv + b_qkv  # (B, N, 3d)
    theta_q, theta_k, theta_v = _percentile_threshold(
        qkv.reshape(B * N, 3, n_head, head_dim), percentile, axis=(0, 3))
    transferred = SSAWeights(
        theta_u=theta_u, w_qkv_scaled=scale_weight(theta_u, w_qkv), b_qkv=b_qkv,
        theta_q=theta_q, theta_k=theta_k, theta_v=theta_v,
        alpha=(theta_q * theta_k * theta_v / np.float32(math.sqrt(head_dim))).astype(np.float32),
        theta_o=np.ones(d, dtype=np.float32), w_proj_scaled=w_proj, b_proj=b_proj,
        n_head=n_head, binary=binary)
    mean_current = np.stack([_mean_core_current(u, transferred, timesteps) for u in sequences])  # (B, N, d)
    by_head = mean_current.reshape(B * N, n_head, head_dim)
    alpha = transferred.alpha
    if fit_alpha:
        target = np.stack([attention_forward(x, n_head)[0] for x in qkv]).reshape(B * N, n_head, head_dim)
        energy = (by_head * by_head).sum(axis=(0, 2))
        fitted = (by_head * target).sum(axis=(0, 2)) / np.where(energy > 0, energy, 1.0)
        alpha = np.where(energy > 0, fitted, alpha).astype(np.float32)
    theta_o = _percentile_threshold((by_head * alpha[:, None]).reshape(B * N, d), percentile, axis=0)
    return dataclasses.replace(transferred, alpha=alpha, theta_o=theta_o, w_proj_scaled=scale_weight(theta_o, w_proj))


def relative_mse_vs_ann(layer: SSAWeights, attn: dict, u: np.ndarray, timesteps: int) -> float:
    """||SSA(u) - ANN(u)||^2 / ||ANN(u)||^2 over the sequences u, (N, d) or (B, N, d), where ANN is the
    softmax attention block (after c_proj) with the same `attn` parameters."""
    error = reference = 0.0
    for x in _sequences(u):
        ann = cached_attention(x, attn, layer.n_head, None, 0)
        error += float(np.sum((ssa_forward(x, layer, timesteps)[0] - ann) ** 2, dtype=np.float64))
        reference += float(np.sum(ann.astype(np.float64) ** 2))
    return error / reference
