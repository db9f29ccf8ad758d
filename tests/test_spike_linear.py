"""Spike-driven linear layer: event-driven and dense products against the NumPy twin, the path choice,
the layer, and its synaptic-operation count."""
from __future__ import annotations

import numpy as np
import pytest

from snnlm.kernels import spike_matmul as sm
from snnlm.spike_linear import scale_weight, spike_linear, synaptic_ops

# 37 inputs: event lists of every length mod 4; 600 outputs: a full 512-column panel and a partial one.
K, M = 37, 600


def _spikes(rng, rows: int, density: float, values=(-1, 1)) -> np.ndarray:
    nonzero = rng.random((rows, K)) < density
    return np.where(nonzero, rng.choice(np.array(values, np.int8), (rows, K)), 0).astype(np.int8)


def _assert_close_to_twin(out, spikes, weight):
    # float32 sums of up to Σ|s| terms of size ~1, in different orders.
    atol = 1e-6 * max(int(np.abs(spikes.astype(np.int16)).sum(axis=1).max()), 1)
    np.testing.assert_allclose(out, sm.spike_matmul_numpy(spikes, weight), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("rows", [1, 4, 40])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("values", [(-1, 1), (-2, -1, 1, 2)])
def test_event_driven_and_dense_match_numpy_twin(rng, rows, density, values):
    spikes = _spikes(rng, rows, density, values)
    weight = rng.normal(0.0, 1.0, (K, M)).astype(np.float32)
    events = sm.spike_matmul_events(spikes, weight, parallel=True)
    dense = sm.spike_matmul_dense(spikes, weight)
    assert events.dtype == dense.dtype == np.float32
    assert events.shape == dense.shape == (rows, M)
    _assert_close_to_twin(events, spikes, weight)
    _assert_close_to_twin(dense, spikes, weight)
    # Each output element is summed in the same order on one core or many.
    np.testing.assert_array_equal(sm.spike_matmul_events(spikes, weight, parallel=False), events)


def test_only_stages_of_at_least_the_threshold_size_launch_in_parallel(rng, monkeypatch):
    spikes = _spikes(rng, 4, 0.5)
    weight = rng.normal(0.0, 1.0, (K, M)).astype(np.float32)
    slots, accumulates = spikes.size, int(np.abs(spikes).sum()) * M
    launched = []
    for name in ("_events_parallel", "_accumulate_parallel"):
        kernel = getattr(sm, name)
        monkeypatch.setattr(sm, name, lambda *args, name=name, kernel=kernel: launched.append(name) or kernel(*args))
    # Neither stage reaches its threshold, then the event listing only, then the sums only.
    for min_slots, min_sums in ((slots + 1, accumulates + 1), (slots, accumulates + 1), (slots + 1, accumulates)):
        monkeypatch.setattr(sm, "PARALLEL_MIN_SPIKES", min_slots)
        monkeypatch.setattr(sm, "PARALLEL_MIN_ACCUMULATES", min_sums)
        _assert_close_to_twin(sm.spike_matmul_events(spikes, weight), spikes, weight)
    assert launched == ["_events_parallel", "_accumulate_parallel"]


def test_event_driven_adds_a_burst_spike_s_times(rng):
    weight = rng.normal(0.0, 1.0, (K, M)).astype(np.float32)
    spikes = np.zeros((2, K), np.int8)
    spikes[0, 3], spikes[1, 5] = 5, -3
    out = sm.spike_matmul_events(spikes, weight)
    np.testing.assert_allclose(out[0], 5 * weight[3], rtol=1e-6)
    np.testing.assert_allclose(out[1], -3 * weight[5], rtol=1e-6)


def test_path_follows_density_and_crossover(rng):
    sparse, busy = _spikes(rng, 20, 0.02), _spikes(rng, 20, 0.6)
    assert sm.spike_matmul_path(sparse, crossover=0.3) == "events"
    assert sm.spike_matmul_path(busy, crossover=0.3) == "dense"
    assert sm.spike_matmul_path(busy, crossover=0.9) == "events"
    assert sm.spike_matmul_path(np.zeros((3, K), np.int8), crossover=0.0) == "dense"


def test_default_crossover_depends_on_rows(rng, monkeypatch):
    monkeypatch.setattr(sm, "DECODE_CROSSOVER", 0.5)
    monkeypatch.setattr(sm, "PREFILL_CROSSOVER", 0.1)
    spikes = _spikes(rng, sm.DECODE_ROWS + 1, 0.3)
    assert sm.spike_matmul_path(spikes[:sm.DECODE_ROWS]) == "events"
    assert sm.spike_matmul_path(spikes) == "dense"


@pytest.mark.parametrize("crossover", [0.0, 1.01])
def test_spike_matmul_either_path_matches_twin(rng, crossover):
    spikes = _spikes(rng, 12, 0.2, (-2, -1, 1, 2))
    weight = rng.normal(0.0, 1.0, (K, M)).astype(np.float32)
    _assert_close_to_twin(sm.spike_matmul(spikes, weight, crossover), spikes, weight)


def test_spike_linear_is_thresholded_spikes_times_weight_plus_bias(rng):
    n_steps, n_tokens = 4, 3
    spikes = _spikes(rng, n_steps * n_tokens, 0.3, (-2, -1, 1, 2)).reshape(n_steps, n_tokens, K)
    threshold_in = rng.uniform(0.5, 2.0, K)
    w = rng.normal(0.0, 0.5, (K, M)).astype(np.float32)
    b = rng.normal(0.0, 0.5, M).astype(np.float32)
    expected = (spikes * threshold_in) @ w.astype(np.float64) + b
    for crossover in (0.0, 1.01):
        current = spike_linear(spikes, scale_weight(threshold_in, w), b, crossover)
        assert current.dtype == np.float32 and current.shape == (n_steps, n_tokens, M)
        np.testing.assert_allclose(current, expected, rtol=1e-5, atol=1e-4)


def test_scale_weight_scales_rows():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(scale_weight([2.0, 0.5], w), [[0, 2, 4], [1.5, 2, 2.5]])
    np.testing.assert_array_equal(scale_weight(3.0, w), 3 * w)


def test_synaptic_ops_counts_spike_magnitudes_times_fan_out():
    spikes = np.array([[1, 0, -2], [0, -128, 3]], np.int8)
    assert synaptic_ops(spikes, 10) == (1 + 2 + 128 + 3) * 10
    assert synaptic_ops(np.zeros((4, 5), np.int8), 10) == 0


@pytest.mark.parametrize("call, message", [
    (lambda: spike_linear(np.zeros((2, 3), np.int8), np.zeros((3, 4), np.float32), np.zeros(4)), "spikes"),
    (lambda: spike_linear(np.zeros((1, 2, 3)), np.zeros((3, 4), np.float32), np.zeros(4)), "spikes"),
    (lambda: spike_linear(np.zeros((1, 2, 3), np.int8), np.zeros((5, 4), np.float32), np.zeros(4)), "weight_scaled"),
    (lambda: spike_linear(np.zeros((1, 2, 3), np.int8), np.zeros((3, 4), np.float32), np.zeros(5)), "bias"),
    (lambda: scale_weight([1.0, 2.0], np.zeros((3, 4))), "threshold_in"),
    (lambda: scale_weight(1.0, np.zeros(3)), "w must"),
    (lambda: synaptic_ops(np.zeros(3, np.int16), 2), "int8"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
