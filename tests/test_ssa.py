"""Spiking self-attention: integer core kernels, parallel == recurrent, causality, conversion from GPT-2."""
import dataclasses
import functools
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnlm.kernels.ssa_core import causal_core, causal_core_numpy, recurrent_step, recurrent_step_numpy
from snnlm import ssa
from snnlm.neurons import decode
from snnlm.ssa import (SSAState, SSAWeights, encode_qkv, relative_mse_vs_ann, sequence_core, ssa_forward,
                       ssa_from_block, ssa_step)

D, H, N = 16, 2, 12


def _ternary(rng, shape, density=0.4):
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)
    return (signs * (rng.random(shape) < density)).astype(np.int8)


def _attn_params(rng) -> dict:
    return {"c_attn": {"w": rng.normal(0, 0.4, (D, 3 * D)).astype(np.float32),
                       "b": rng.normal(0, 0.1, 3 * D).astype(np.float32)},
            "c_proj": {"w": rng.normal(0, 0.3, (D, D)).astype(np.float32),
                       "b": rng.normal(0, 0.1, D).astype(np.float32)}}


def _sequences(rng, n_seq=3, n_tok=N) -> np.ndarray:
    """LN1-like inputs: unit-variance channels with a per-channel gain and offset. (n_seq, n_tok, D)."""
    gain = rng.uniform(0.5, 1.5, D).astype(np.float32)
    offset = rng.normal(0, 0.2, D).astype(np.float32)
    return (rng.normal(size=(n_seq, n_tok, D)).astype(np.float32) * gain + offset).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _converted(timesteps: int, binary: bool = False, fit_alpha: bool = True):
    """A converted random block, its params and its calibration sequences (cached: hypothesis reuses them)."""
    rng = np.random.default_rng(7)
    attn = _attn_params(rng)
    u = _sequences(rng)
    return ssa_from_block(attn, u, H, timesteps, binary=binary, fit_alpha=fit_alpha), attn, u


@pytest.mark.parametrize("head_dim", [8, 64, 100])
@pytest.mark.parametrize("density", [0.1, 0.6])
@pytest.mark.parametrize("parallel", [False, True])
def test_kernels_match_numpy_twins(head_dim, density, parallel, rng):
    q, k, v = (_ternary(rng, (3, 9, head_dim), density) for _ in range(3))
    expected = causal_core_numpy(q, k, v)
    assert np.any(expected != 0)
    np.testing.assert_array_equal(causal_core(q, k, v, parallel), expected)

    state, state_twin = (np.zeros((3, head_dim, head_dim), np.int32) for _ in range(2))
    first = recurrent_step(q[:, :4], k[:, :4], v[:, :4], state, parallel)
    rest = recurrent_step(q[:, 4:], k[:, 4:], v[:, 4:], state, parallel)
    np.testing.assert_array_equal(np.concatenate([first, rest], axis=1), expected)
    np.testing.assert_array_equal(recurrent_step_numpy(q, k, v, state_twin), expected)
    np.testing.assert_array_equal(state, state_twin)
    np.testing.assert_array_equal(state, np.einsum("gnr,gnc->grc", k.astype(np.int32), v.astype(np.int32)))


# RECURRENT_CORE_MIN_TOKENS that make `sequence_core` take the bit-packed or the recurrent kernel at N tokens.
CORE_PATHS = {"packed": N + 1, "recurrent": 1}


@pytest.mark.parametrize("min_tokens", CORE_PATHS.values(), ids=CORE_PATHS.keys())
def test_sequence_core_matches_numpy_twin_on_either_kernel(min_tokens, rng, monkeypatch):
    monkeypatch.setattr(ssa, "RECURRENT_CORE_MIN_TOKENS", min_tokens)
    q, k, v = (_ternary(rng, (4, N, 8)) for _ in range(3))
    np.testing.assert_array_equal(sequence_core(q, k, v), causal_core_numpy(q, k, v))


def test_core_is_the_causal_sum_of_scaled_values(rng):
    q, k, v = (_ternary(rng, (1, 5, 8)) for _ in range(3))
    a = causal_core(q, k, v)
    for i in range(5):
        expected = sum(int(q[0, i] @ k[0, j].astype(int)) * v[0, j].astype(int) for j in range(i + 1))
        np.testing.assert_array_equal(a[0, i], expected)


def _recurrent(u: np.ndarray, layer: SSAWeights, timesteps: int, cuts) -> tuple[np.ndarray, SSAState]:
    state = SSAState.empty(layer.n_head, layer.head_dim, timesteps)
    bounds = [0, *cuts, u.shape[0]]
    out = np.concatenate([ssa_step(u[a:b], layer, state) for a, b in zip(bounds[:-1], bounds[1:])])
    return out, state


@pytest.mark.parametrize("min_tokens", CORE_PATHS.values(), ids=CORE_PATHS.keys())
@pytest.mark.parametrize("timesteps", [1, 2, 4])
@pytest.mark.parametrize("binary", [False, True])
def test_parallel_equals_recurrent_token_by_token(timesteps, binary, min_tokens, monkeypatch):
    monkeypatch.setattr(ssa, "RECURRENT_CORE_MIN_TOKENS", min_tokens)
    layer, _, u = _converted(timesteps, binary)
    parallel, _ = ssa_forward(u[0], layer, timesteps)
    recurrent, state = _recurrent(u[0], layer, timesteps, range(1, N))
    assert parallel.dtype == np.float32 and parallel.shape == (N, D)
    np.testing.assert_array_equal(recurrent, parallel)
    assert state.length == N


def test_step_refuses_a_state_of_another_shape():
    layer, _, u = _converted(2)
    with pytest.raises(ValueError, match="heads"):
        ssa_step(u[0, :1], layer, SSAState.empty(H, D // H * 2, 2))
    wrong_dtype = SSAState(np.zeros((H, 2, D // H, D // H), np.int64))
    with pytest.raises(ValueError, match="int32"):
        ssa_step(u[0, :1], layer, wrong_dtype)


@settings(max_examples=25, deadline=None)
@given(cuts=st.sets(st.integers(1, N - 1), max_size=N - 1), timesteps=st.sampled_from([1, 2, 4]),
       sequence=st.integers(0, 2), min_tokens=st.sampled_from(list(CORE_PATHS.values())))
def test_parallel_equals_recurrent_for_any_chunking(cuts, timesteps, sequence, min_tokens):
    layer, _, u = _converted(timesteps)
    with mock.patch.object(ssa, "RECURRENT_CORE_MIN_TOKENS", min_tokens):
        parallel, _ = ssa_forward(u[sequence], layer, timesteps)
    recurrent, _ = _recurrent(u[sequence], layer, timesteps, sorted(cuts))
    np.testing.assert_array_equal(recurrent, parallel)


@pytest.mark.parametrize("changed", [0, 5, N - 1])
def test_outputs_before_a_changed_token_do_not_change(changed, rng):
    layer, _, u = _converted(4)
    x = u[0].copy()
    before, _ = ssa_forward(x, layer, 4)
    x[changed] = rng.normal(0, 3, D)
    after, _ = ssa_forward(x, layer, 4)
    np.testing.assert_array_equal(after[:changed], before[:changed])
    assert not np.array_equal(after[changed], before[changed])


def _qkv_relative_error(timesteps: int) -> float:
    layer, attn, u = _converted(timesteps)
    x = u.reshape(-1, D)
    _, s_qkv = encode_qkv(x, layer, timesteps)
    decoded = decode(s_qkv, layer.qkv_thresholds())
    real = x @ attn["c_attn"]["w"] + attn["c_attn"]["b"]
    return float(np.linalg.norm(decoded - real) / np.linalg.norm(real))


def test_decoded_qkv_approach_the_real_ones_as_timesteps_grow():
    errors = [_qkv_relative_error(t) for t in (2, 8, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


@pytest.mark.parametrize("timesteps", [2, 4])
def test_alpha_fit_reduces_the_error_against_ann_attention(timesteps):
    fitted, attn, u = _converted(timesteps, False, True)
    transferred, _, _ = _converted(timesteps, False, False)
    np.testing.assert_array_equal(fitted.theta_q, transferred.theta_q)
    assert relative_mse_vs_ann(fitted, attn, u, timesteps) < 0.5 * relative_mse_vs_ann(transferred, attn, u, timesteps)


def test_binary_layer_fires_zero_one_spikes_and_ternary_layer_fires_negative_ones():
    for binary, allowed in ((True, {0, 1}), (False, {-1, 0, 1})):
        layer, _, u = _converted(4, binary)
        _, s_qkv = encode_qkv(u[0], layer, 4)
        assert set(np.unique(s_qkv).tolist()) == allowed
        out, stats = ssa_forward(u[0], layer, 4)
        assert np.all(np.isfinite(out)) and stats.spikes["q"] > 0


def test_stats_count_the_measured_spikes():
    layer, _, u = _converted(2)
    _, stats = ssa_forward(u[0], layer, 2)
    s_u, s_qkv = encode_qkv(u[0], layer, 2)
    s_q, s_k, s_v = np.split(s_qkv, 3, axis=-1)
    assert stats.spikes["u"] == np.count_nonzero(s_u) and stats.slots["u"] == 2 * N * D
    for name, s in (("q", s_q), ("k", s_k), ("v", s_v)):
        assert stats.spikes[name] == np.count_nonzero(s) and stats.slots[name] == 2 * N * D
    assert 0 < stats.spikes["o"] <= stats.slots["o"] == 2 * N * D
    assert stats.synaptic_ops == (np.count_nonzero(s_u) * 3 + stats.spikes["o"]) * D
    head_dim = D // H
    adds = 0
    for t in range(2):
        for h in range(H):
            heads = slice(h * head_dim, (h + 1) * head_dim)
            for i in range(N):
                q, k, v = (np.count_nonzero(s[t, i, heads]) for s in (s_q, s_k, s_v))
                adds += k * v + q * head_dim
    assert stats.core_adds == adds


def test_weights_round_trip_through_tensors():
    layer, _, u = _converted(2, True)
    tensors = layer.to_tensors("h.3.ssa.")
    assert all(name.startswith("h.3.ssa.") for name in tensors)
    assert all(isinstance(t, np.ndarray) for t in tensors.values())
    restored = SSAWeights.from_tensors(tensors, "h.3.ssa.")
    assert restored.n_head == H and restored.binary
    for field in dataclasses.fields(SSAWeights):
        np.testing.assert_array_equal(getattr(restored, field.name), getattr(layer, field.name))
    np.testing.assert_array_equal(ssa_forward(u[1], restored, 2)[0], ssa_forward(u[1], layer, 2)[0])


@pytest.mark.parametrize("name, bad, message", [
    ("w_proj_scaled", lambda t: t[:-1], "shape"),
    ("b_qkv", lambda t: t[None], "shape"),
    ("theta_k", lambda t: -t, "thresholds <= 0"),
    ("theta_o", lambda t: np.where(np.arange(t.size) == 3, 0, t), "thresholds <= 0"),
    ("alpha", lambda t: np.full_like(t, np.nan), "non-finite"),
    ("w_qkv_scaled", lambda t: np.full_like(t, np.float64(1e39), dtype=np.float64), "non-finite"),
    ("b_proj", lambda t: t.astype(np.int32), "dtype int32"),
    ("binary", lambda t: np.array([2], np.uint8), r"holds 2, expected an integer in \[0, 1\]"),
    ("binary", lambda t: np.array([1.0], np.float32), "one integer"),
    ("theta_q", lambda t: np.ones(3, np.float32), "3 heads, which do not divide the width 16"),
])
def test_bad_tensors_are_named(name, bad, message):
    tensors = _converted(2)[0].to_tensors("h.3.ssa.")
    key = f"h.3.ssa.{name}"
    with pytest.raises(ValueError, match=message) as error:
        SSAWeights.from_tensors({**tensors, key: bad(tensors[key])}, "h.3.ssa.")
    assert repr(key) in str(error.value) and "\n" not in str(error.value)


def test_a_missing_tensor_raises_key_error():
    tensors = _converted(2)[0].to_tensors("h.3.ssa.")
    with pytest.raises(KeyError, match="h.3.ssa.theta_v"):
        SSAWeights.from_tensors({k: t for k, t in tensors.items() if k != "h.3.ssa.theta_v"}, "h.3.ssa.")
