"""Neurons: fused kernels against their NumPy twins, the EC-IF identities of the design, LIF by hand."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnlm.kernels import gelu as ann_gelu
from snnlm.kernels import neurons as kernels
from snnlm.kernels.neurons import (
    GELU,
    IDENTITY,
    ec_if_constant_numba,
    ec_if_constant_numpy,
    ec_if_numba,
    ec_if_numpy,
    gelu_numpy,
    lif_numba,
    lif_numpy,
    tanh_numpy,
)
from snnlm.neurons import decode, ec_if, ec_if_constant, lif

# 700 channels: one full 512-neuron block and a partial one.
T, M, C = 5, 3, 700
ACTIVATION_NAMES = {IDENTITY: "identity", GELU: "gelu"}


def _thresholds(rng, channels=C):
    return rng.uniform(0.2, 1.5, channels)


def _time_varying_current(rng):
    # A slow drift plus noise, so that neurons both fire and unfire (emit -1 after +1).
    drift = rng.normal(0.0, 1.0, (1, M, C))
    return (drift + rng.normal(0.0, 1.0, (T, M, C))).astype(np.float32)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("burst", [1, 2, 3])
@pytest.mark.parametrize("code", [IDENTITY, GELU])
def test_ec_if_kernel_matches_numpy_twin(rng, burst, code, parallel):
    current = _time_varying_current(rng)
    theta = _thresholds(rng)
    spikes = ec_if_numba(current, theta, burst, code, parallel)
    assert spikes.dtype == np.int8
    np.testing.assert_array_equal(spikes, ec_if_numpy(current, theta, burst, code))
    assert np.abs(spikes).max() == burst
    assert (spikes < 0).any() and (spikes > 0).any()


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("burst", [1, 2, 3])
@pytest.mark.parametrize("code", [IDENTITY, GELU])
def test_ec_if_constant_kernel_matches_twin_and_repeated_input(rng, burst, code, parallel):
    x = rng.normal(0.0, 2.0, (M, C)).astype(np.float32)
    theta = _thresholds(rng)
    spikes = ec_if_constant_numba(x, T, theta, burst, code, parallel)
    np.testing.assert_array_equal(spikes, ec_if_constant_numpy(x, T, theta, burst, code))
    repeated = np.ascontiguousarray(np.broadcast_to(x, (T, M, C)))
    np.testing.assert_array_equal(spikes, ec_if_numba(repeated, theta, burst, code, not parallel))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("reset_subtract", [True, False])
def test_lif_kernel_matches_numpy_twin(rng, reset_subtract, parallel):
    current = rng.normal(0.3, 1.0, (T, M, C)).astype(np.float32)
    beta = rng.uniform(0.5, 1.0, C).astype(np.float32)
    theta = rng.uniform(0.5, 1.5, C).astype(np.float32)
    spikes = lif_numba(current, beta, theta, reset_subtract, parallel)
    np.testing.assert_array_equal(spikes, lif_numpy(current, beta, theta, reset_subtract))
    assert set(np.unique(spikes)) == {0, 1}


def test_only_calls_of_at_least_the_threshold_size_launch_in_parallel(rng, monkeypatch):
    monkeypatch.setattr(kernels, "PARALLEL_MIN_NEURON_STEPS", T * M * C)
    launched = []
    for name in ("_ec_if_parallel", "_ec_if_constant_parallel", "_lif_parallel"):
        monkeypatch.setattr(kernels, name, lambda *args, name=name: launched.append(name))
    theta = _thresholds(rng)
    for rows in (M - 1, M):
        current = _time_varying_current(rng)[:, :rows].copy()
        ones = np.ones(C, np.float32)
        ec_if_numba(current, theta, 1, GELU)
        ec_if_constant_numba(current[0], T, theta, 1, GELU)
        lif_numba(current, ones, ones, True)
    assert launched == ["_ec_if_parallel", "_ec_if_constant_parallel", "_lif_parallel"]


def test_tanh_and_gelu_of_the_neurons_match_numpy():
    z = np.concatenate([np.linspace(-30.0, 30.0, 100_001), np.geomspace(1e-300, 30.0, 2001)])
    z = np.concatenate([z, -z])
    np.testing.assert_allclose(tanh_numpy(z), np.tanh(z), rtol=1e-14, atol=0)
    x = np.linspace(-8.0, 8.0, 10_001)
    # Near -8, 1 + tanh cancels: errors are ulps of x, not of GELU(x).
    np.testing.assert_allclose(gelu_numpy(x), ann_gelu.gelu(x), rtol=1e-13, atol=1e-14)


def _expected_count(x32: np.float32, theta: float, n_steps: int, burst: int, code: int) -> int:
    """clip(rint(T f(x) / θ), -BT, BT), rounded as the kernel rounds: fl(fl(T f(x)) * fl(1/θ)) in float64."""
    value = np.float64(x32)
    if code == GELU:
        value = gelu_numpy(np.array([value]))[0]
    target = (n_steps * value) * (1.0 / theta)
    return int(np.clip(np.rint(target), -burst * n_steps, burst * n_steps))


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(-1e6, 1e6, width=32),
    theta=st.floats(1e-3, 1e3),
    n_steps=st.integers(1, 32),
    burst=st.integers(1, 3),
    code=st.sampled_from([IDENTITY, GELU]),
)
def test_constant_input_count_is_the_rounded_rate(x, theta, n_steps, burst, code):
    """n[T] = Σ s = clip(rint(T f(x)/θ), -BT, BT), exactly, through both paths."""
    expected = _expected_count(np.float32(x), theta, n_steps, burst, code)
    activation = ACTIVATION_NAMES[code]
    constant = ec_if_constant(np.array([x], np.float32), n_steps, theta, burst, activation)
    repeated = ec_if(np.full((n_steps, 1), x, np.float32), theta, burst, activation)
    assert int(constant.sum(dtype=np.int64)) == expected
    assert int(repeated.sum(dtype=np.int64)) == expected


def _signed_if_soft_reset(current: np.ndarray, theta: float) -> np.ndarray:
    """Reference signed IF neuron with soft reset: v += I; fire +1 if v > θ/2, -1 if v < -θ/2, and at
    v = ±θ/2 exactly fire only if the count so far is odd; v -= θ s. current (T, C) -> spikes (T, C) int8."""
    v = np.zeros(current.shape[1])
    count = np.zeros(current.shape[1], np.int64)
    spikes = np.zeros(current.shape, np.int8)
    for t, drive in enumerate(current.astype(np.float64)):
        v = v + drive
        odd = count % 2 == 1
        up = (v > theta / 2) | ((v == theta / 2) & odd)
        down = (v < -theta / 2) | ((v == -theta / 2) & odd)
        s = up.astype(np.int8) - down.astype(np.int8)
        v = v - theta * s
        count += s
        spikes[t] = s
    return spikes


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.lists(st.integers(-48, 48), min_size=4, max_size=4), min_size=1, max_size=24),
    exponent=st.integers(-2, 2),
)
def test_identity_ternary_ec_if_is_signed_if_with_soft_reset_on_dyadic_input(steps, exponent):
    """Exact in floating point: currents are multiples of 1/16 and θ a power of two, so every sum and
    product is exact, and the ties v' = ±θ/2 are reached."""
    current = np.array(steps, np.float32) / 16
    theta = 2.0**exponent
    np.testing.assert_array_equal(ec_if(current, theta), _signed_if_soft_reset(current, theta))


def test_identity_ternary_ec_if_is_signed_if_with_soft_reset_on_random_input(rng):
    current = rng.normal(0.1, 0.8, (40, 500)).astype(np.float32)
    theta = 0.37
    np.testing.assert_array_equal(ec_if(current, theta), _signed_if_soft_reset(current, theta))


@pytest.mark.parametrize("n_steps", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("burst", [1, 2])
@pytest.mark.parametrize("activation", ["identity", "gelu"])
def test_decoded_constant_input_is_within_half_a_level(rng, n_steps, burst, activation):
    x = rng.normal(0.0, 1.5, (50, 64)).astype(np.float32)
    theta = rng.uniform(0.3, 2.0, 64)
    exact = x.astype(np.float64)
    if activation == "gelu":
        exact = ann_gelu.gelu(exact)
    decoded = decode(ec_if_constant(x, n_steps, theta, burst, activation), theta)
    assert decoded.dtype == np.float32 and decoded.shape == x.shape
    unsaturated = np.abs(exact) <= burst * theta
    assert unsaturated.mean() > 0.5
    error = np.abs(decoded - exact)[unsaturated]
    bound = np.broadcast_to(theta / (2 * n_steps), x.shape)[unsaturated]
    assert np.all(error <= bound * (1 + 1e-6) + 1e-6)
    # Saturated neurons fire B at every step.
    np.testing.assert_allclose(decoded[~unsaturated], (np.sign(exact) * burst * theta)[~unsaturated], rtol=1e-6)


def test_decode_by_hand():
    spikes = np.array([[1, 2], [1, -1], [0, 2], [-1, 1]], np.int8)
    np.testing.assert_allclose(decode(spikes, [2.0, 0.5]), [0.5, 0.5])


def test_ec_if_accepts_any_number_of_middle_axes(rng):
    current = rng.normal(0.0, 1.0, (3, 2, 4, 5)).astype(np.float32)
    theta = rng.uniform(0.5, 1.0, 5)
    spikes = ec_if(current, theta, 2, "gelu")
    assert spikes.shape == current.shape
    np.testing.assert_array_equal(spikes.reshape(3, 8, 5), ec_if(current.reshape(3, 8, 5), theta, 2, "gelu"))
    np.testing.assert_array_equal(ec_if(current[:, 0, 0], theta, 2, "gelu"), spikes[:, 0, 0])
    x = current[0]
    constant = ec_if_constant(x, 6, theta)
    assert constant.shape == (6, 2, 4, 5)
    np.testing.assert_array_equal(ec_if_constant(x[0, 0], 6, theta), constant[:, 0, 0])


def test_lif_by_hand():
    # β = 1: after a 2.5 spike, soft reset keeps 1.5 (another spike), hard reset keeps 0.
    current = np.array([[2.5], [0.0], [0.0]], np.float32)
    np.testing.assert_array_equal(lif(current, 1.0, 1.0, "subtract")[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(lif(current, 1.0, 1.0, "zero")[:, 0], [1, 0, 0])
    # Leak halves the membrane each step; v = θ fires.
    leaky = np.array([[0.5], [0.75], [0.25]], np.float32)
    np.testing.assert_array_equal(lif(leaky, 0.5, 1.0)[:, 0], [0, 1, 0])


def test_lif_per_channel_parameters(rng):
    current = rng.normal(0.5, 1.0, (6, 2, 3)).astype(np.float32)
    beta, theta = [0.9, 0.5, 1.0], [1.0, 0.5, 2.0]
    spikes = lif(current, beta, theta, "zero")
    for c in range(3):
        np.testing.assert_array_equal(spikes[..., c], lif(current[..., c:c + 1], beta[c], theta[c], "zero")[..., 0])


@pytest.mark.parametrize("call, message", [
    (lambda: ec_if(np.zeros(4), 1.0), "shape"),
    (lambda: ec_if(np.zeros((2, 3)), 0.0), "threshold"),
    (lambda: ec_if(np.zeros((2, 3)), [1.0, -1.0, 1.0]), "threshold"),
    (lambda: ec_if(np.zeros((2, 3)), [1.0, 1.0]), "threshold"),
    (lambda: ec_if(np.zeros((2, 3)), np.inf), "threshold"),
    (lambda: ec_if(np.zeros((2, 3)), 1.0, burst=0), "burst"),
    (lambda: ec_if(np.zeros((2, 3)), 1.0, burst=128), "burst"),
    (lambda: ec_if(np.zeros((2, 3)), 1.0, burst=1.5), "burst"),
    (lambda: ec_if(np.zeros((2, 3)), 1.0, burst=True), "burst"),
    (lambda: ec_if(np.zeros((2, 3)), 1.0, activation="relu"), "activation"),
    (lambda: ec_if_constant(np.zeros(3), 0, 1.0), "timesteps"),
    (lambda: ec_if_constant(np.float32(1.0), 4, 1.0), "shape"),
    (lambda: decode(np.zeros((0, 3), np.int8), 1.0), "T >= 1"),
    (lambda: lif(np.zeros((2, 3)), 1.5, 1.0), "beta"),
    (lambda: lif(np.zeros((2, 3)), 0.9, 1.0, reset_mechanism="none"), "reset_mechanism"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
