"""The GPT-2 feed-forward block converted into a spiking network, without training.

Per layer, for the input u = LN2(x) (N, d), hidden width h = 4d and T timesteps:

1. Encoder: EC-IF neurons (f = identity, thresholds theta_in (d,)) driven by u at every step give
   spikes s_in (T, N, d).
2. Spike-driven `c_fc`: I_h[t] = s_in[t] @ (diag(theta_in) W_fc) + b_fc.
3. Hidden EC-IF neurons with f = GELU (tanh form), thresholds theta_h (h,), give s_h (T, N, h). Their
   count codes GELU of the running mean of I_h, which is GELU(decoded(u) W_fc + b_fc) at t = T.
4. Spike-driven `c_proj` with weights diag(theta_h) W_proj; the block output is the mean of its
   current over T plus the bias once: (1/T) sum_t s_h[t] @ (diag(theta_h) W_proj) + b_proj.

Thresholds and the burst limit B. A neuron's count is bounded by ±B·T, so what it can code lies in
[-B·theta, B·theta], in steps of theta/T. To cover activations up to q, theta must be at least q / B.
Calibration sets theta = q / B with q the `percentile`-th percentile of |activation| per channel: the
covered range is q whatever B, and each unit of burst buys finer steps (B·T levels per sign). With
B = 1 (ternary spikes) this is theta = q: the hidden threshold must cover the whole range of GELU(h).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from snnlm.layers import gelu_forward
from snnlm.neurons import MAX_BURST, decode, ec_if, ec_if_constant
from snnlm.spike_linear import (EVENTS_ONLY, read_block_integer, read_block_tensors, scale_weight, spike_linear,
                                synaptic_ops)

SPIKE_GROUPS = ("in", "hidden")
CALIBRATION_METHODS = ("percentile", "mse")
# Scales of the percentile threshold tried by the "mse" method, 2^(k/4) for k = -8..2, mostly below 1:
# at small T, finer steps can gain more than clipping the rare large activations loses.
MSE_SCALES = tuple(2.0 ** (k / 4) for k in range(-8, 3))
# A channel that never fires in the calibration data still needs a positive threshold.
_MIN_THRESHOLD = 1e-6
# The "mse" search runs the hidden neurons on chunks of calibration tokens whose (T, chunk, h)
# currents hold at most this many elements.
_MSE_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass
class SpikingFFNWeights:
    """One layer's converted FFN (float32). d width, h hidden width.

    theta_in (d,): encoder thresholds. w_fc_scaled (d, h) = diag(theta_in) W_fc, b_fc (h,).
    theta_h (h,): hidden thresholds. w_proj_scaled (h, d) = diag(theta_h) W_proj, b_proj (d,).
    burst: the burst limit B of every neuron of the block (spikes in [-B, B]).
    """

    theta_in: np.ndarray
    w_fc_scaled: np.ndarray
    b_fc: np.ndarray
    theta_h: np.ndarray
    w_proj_scaled: np.ndarray
    b_proj: np.ndarray
    burst: int = 1

    @property
    def width(self) -> int:
        return self.theta_in.shape[0]

    @property
    def hidden_width(self) -> int:
        return self.theta_h.shape[0]

    def to_tensors(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat name -> array dict for a safetensors checkpoint; `from_tensors` reads it back."""
        tensors = {f"{prefix}{f.name}": getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "burst"}
        tensors[f"{prefix}burst"] = np.array([self.burst], dtype=np.int32)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str) -> "SpikingFFNWeights":
        """The inverse of `to_tensors`. Raises KeyError for a missing tensor, ValueError naming a tensor
        whose dtype, shape or values do not fit the others."""
        d, h = np.size(tensors[f"{prefix}theta_in"]), np.size(tensors[f"{prefix}theta_h"])
        shapes = {"theta_in": (d,), "w_fc_scaled": (d, h), "b_fc": (h,), "theta_h": (h,),
                  "w_proj_scaled": (h, d), "b_proj": (d,)}
        arrays = read_block_tensors(tensors, prefix, shapes, thresholds=("theta_in", "theta_h"))
        return cls(**arrays, burst=read_block_integer(tensors, prefix, "burst", 1, MAX_BURST))


@dataclasses.dataclass(frozen=True)
class SpikingFFNStats:
    """What one FFN call did, for the energy model.

    spikes: nonzero spikes per group (in, hidden), summed over tokens and timesteps.
    slots: neurons x timesteps per group (firing rate = spikes / slots; also the neuron updates).
    synaptic_ops: accumulates of the two spike-driven projections (spikes x fan-out).
    """

    spikes: dict[str, int]
    slots: dict[str, int]
    synaptic_ops: int


def _mean_over_time(current: np.ndarray) -> np.ndarray:
    """(T, N, C) -> (N, C), a fixed left-to-right sum over t, so that a token's result never depends
    on how many tokens share the call."""
    total = current[0].copy()
    for t in range(1, current.shape[0]):
        total += current[t]
    return total / np.float32(current.shape[0])


def spiking_ffn_spikes(u: np.ndarray, layer: SpikingFFNWeights, timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder and hidden neurons. u (N, d) -> s_in (T, N, d), s_h (T, N, h) int8."""
    s_in = ec_if_constant(np.asarray(u, dtype=np.float32), timesteps, layer.theta_in, layer.burst)
    current = spike_linear(s_in, layer.w_fc_scaled, layer.b_fc, crossover=EVENTS_ONLY)
    s_h = ec_if(current, layer.theta_h, layer.burst, "gelu")
    return s_in, s_h


def spiking_ffn_forward(u: np.ndarray, layer: SpikingFFNWeights, timesteps: int) -> tuple[np.ndarray, SpikingFFNStats]:
    """The block over N tokens. u (N, d) -> out (N, d) float32, stats.

    `out` is the FFN block's contribution; the caller adds it to the residual stream. Each token's
    output depends only on its own u, bit for bit, whatever N.
    """
    s_in, s_h = spiking_ffn_spikes(u, layer, timesteps)
    current = spike_linear(s_h, layer.w_proj_scaled, np.zeros_like(layer.b_proj), crossover=EVENTS_ONLY)
    out = _mean_over_time(current) + layer.b_proj
    spikes = dict(zip(SPIKE_GROUPS, (s_in, s_h)))
    stats = SpikingFFNStats(
        spikes={name: int(np.count_nonzero(s)) for name, s in spikes.items()},
        slots={name: int(s.size) for name, s in spikes.items()},
        synaptic_ops=synaptic_ops(s_in, layer.hidden_width) + synaptic_ops(s_h, layer.width),
    )
    return out, stats


def _percentile_threshold(activation: np.ndarray, percentile: float, burst: int) -> np.ndarray:
    """Per channel q / B, q the percentile of |activation| (N, C) over tokens. -> (C,) float32."""
    q = np.percentile(np.abs(activation), percentile, axis=0) / burst
    return np.maximum(q, _MIN_THRESHOLD).astype(np.float32)


def _scaled(base: np.ndarray, scale) -> np.ndarray:
    """base (C,) times a scale (scalar or (C,)), kept positive."""
    return np.maximum(base * np.asarray(scale, dtype=np.float32), _MIN_THRESHOLD).astype(np.float32)


def _min_error_threshold(base: np.ndarray, pieces) -> np.ndarray:
    """Per channel, the scale of `base` (C,) in MSE_SCALES whose decoded values come closest to the
    target in squared error, summed over `pieces`: (target (n, C), decoded(theta (C,)) -> (n, C)) for
    chunks of the calibration tokens."""
    errors = np.zeros((len(MSE_SCALES), base.shape[0]))
    for target, decoded in pieces:
        for k, scale in enumerate(MSE_SCALES):
            errors[k] += ((decoded(_scaled(base, scale)) - target) ** 2).sum(axis=0, dtype=np.float64)
    return _scaled(base, np.asarray(MSE_SCALES)[np.argmin(errors, axis=0)])


def _hidden_pieces(u, hidden, theta_in, w_fc, b_fc, timesteps: int, burst: int):
    """(target, decoded) pieces of the hidden neurons for `_min_error_threshold`, one per chunk of
    tokens; each chunk's c_fc current is computed once and shared by all the scales."""
    w_fc_scaled = scale_weight(theta_in, w_fc)
    size = max(1, _MSE_CHUNK_ELEMENTS // (timesteps * hidden.shape[1]))
    for start in range(0, u.shape[0], size):
        rows = slice(start, start + size)
        current = spike_linear(ec_if_constant(u[rows], timesteps, theta_in, burst), w_fc_scaled, b_fc)
        yield hidden[rows], lambda theta, current=current: decode(ec_if(current, theta, burst, "gelu"), theta)


def ffn_from_block(mlp: dict, u_calib: np.ndarray, timesteps: int, method: str = "percentile",
                   percentile: float = 99.9, burst: int = 1) -> SpikingFFNWeights:
    """Convert a pretrained GPT-2 MLP block, calibrated on LN2 outputs.

    mlp: {"c_fc": {"w": (d, h), "b": (h,)}, "c_proj": {"w": (h, d), "b": (d,)}} (snnlm.weights).
    u_calib: LN2(x) of calibration tokens, (N_cal, d).
    method "percentile": theta_in from |u|, theta_h from |GELU(u W_fc + b_fc)| (the ANN's hidden
    activation), each the percentile / B per channel (see the module docstring).
    method "mse": starting from those, per channel the scale in MSE_SCALES that minimises the squared
    error of the decoded spikes against the real activation on the calibration tokens: first theta_in
    (decode(s_in) vs u), then theta_h with the encoder fixed (decode(s_h) vs GELU(u W_fc + b_fc)).
    Thresholds therefore depend on `timesteps` only with "mse".
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if isinstance(burst, bool) or not isinstance(burst, (int, np.integer)) or not 1 <= burst <= MAX_BURST:
        raise ValueError(f"burst must be an integer in [1, {MAX_BURST}], got {burst!r}")
    u = np.asarray(u_calib, dtype=np.float32)
    w_fc, b_fc = (np.asarray(mlp["c_fc"][k], dtype=np.float32) for k in ("w", "b"))
    w_proj, b_proj = (np.asarray(mlp["c_proj"][k], dtype=np.float32) for k in ("w", "b"))
    hidden = gelu_forward(u @ w_fc + b_fc)[0]  # (N_cal, h)
    theta_in = _percentile_threshold(u, percentile, burst)
    theta_h = _percentile_threshold(hidden, percentile, burst)
    if method == "mse":
        theta_in = _min_error_threshold(
            theta_in, [(u, lambda theta: decode(ec_if_constant(u, timesteps, theta, burst), theta))])
        theta_h = _min_error_threshold(theta_h, _hidden_pieces(u, hidden, theta_in, w_fc, b_fc, timesteps, burst))
    return SpikingFFNWeights(
        theta_in=theta_in, w_fc_scaled=scale_weight(theta_in, w_fc), b_fc=b_fc,
        theta_h=theta_h, w_proj_scaled=scale_weight(theta_h, w_proj), b_proj=b_proj, burst=burst)
