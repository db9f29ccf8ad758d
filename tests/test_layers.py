"""Each forward/backward pair of snnlm.layers against central differences in float64.

Every output is reduced by a fixed random projection, loss = sum(out * R), so that every output
element contributes to the checked gradient.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import assert_gradient
from snnlm.layers import (
    attention_backward, attention_forward, crossentropy_backward, crossentropy_forward,
    embedding_backward, embedding_forward, gelu_backward, gelu_forward,
    layernorm_backward, layernorm_forward, linear_backward, linear_forward,
)


def projection(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.normal(size=shape)


# --- embedding ---------------------------------------------------------------------------------

# Token 1 and 3 occur several times, within a row and across the batch; tokens 2 and 4 never occur.
REPEATED_IDS = np.array([[1, 3, 1, 6, 3], [3, 0, 1, 1, 5]])


@pytest.mark.parametrize("pos0", [0, 3])
def test_embedding_gradients_with_repeated_ids(rng, pos0):
    wte, wpe = rng.normal(size=(7, 4)), rng.normal(size=(9, 4))
    R = projection(rng, (2, 5, 4))

    def loss():
        return float((embedding_forward(wte, wpe, REPEATED_IDS, pos0)[0] * R).sum())

    x, cache = embedding_forward(wte, wpe, REPEATED_IDS, pos0)
    dwte, dwpe = embedding_backward(R, cache)
    assert_gradient(loss, wte, dwte, name="wte")
    assert_gradient(loss, wpe, dwpe, name="wpe")


def test_embedding_of_unbatched_ids_adds_the_positions_from_pos0(rng):
    wte, wpe = rng.normal(size=(7, 4)), rng.normal(size=(9, 4))
    x, _ = embedding_forward(wte, wpe, np.array([2, 2, 5]), pos0=4)
    np.testing.assert_array_equal(x, wte[[2, 2, 5]] + wpe[4:7])


# --- layernorm ---------------------------------------------------------------------------------

def test_layernorm_gradients(rng):
    x = rng.normal(1.0, 2.0, size=(2, 3, 6))  # non-zero mean and non-unit scale
    g, b = rng.uniform(0.5, 1.5, 6), rng.normal(0.0, 0.5, 6)
    R = projection(rng, x.shape)

    def loss():
        return float((layernorm_forward(x, g, b)[0] * R).sum())

    dx, dg, db = layernorm_backward(R, layernorm_forward(x, g, b)[1])
    assert_gradient(loss, x, dx, name="x")
    assert_gradient(loss, g, dg, name="g")
    assert_gradient(loss, b, db, name="b")


def test_layernorm_normalises_the_last_axis_then_applies_gain_and_bias(rng):
    x = rng.normal(3.0, 5.0, size=(4, 10))
    g, b = rng.uniform(0.5, 1.5, 10), rng.normal(size=10)
    out, _ = layernorm_forward(x, g, b, eps=1e-5)
    xhat = (out - b) / g
    np.testing.assert_allclose(xhat.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=-1), 1.0, rtol=1e-5)


# --- linear ------------------------------------------------------------------------------------

def test_linear_gradients_with_bias(rng):
    x, w, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 4)), rng.normal(size=4)
    R = projection(rng, (2, 3, 4))

    def loss():
        return float((linear_forward(x, w, b)[0] * R).sum())

    dx, dw, db = linear_backward(R, linear_forward(x, w, b)[1])
    assert_gradient(loss, x, dx, name="x")
    assert_gradient(loss, w, dw, name="w")
    assert_gradient(loss, b, db, name="b")


def test_linear_gradients_without_bias(rng):
    x, w = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 4))
    R = projection(rng, (2, 3, 4))

    def loss():
        return float((linear_forward(x, w, None)[0] * R).sum())

    out, cache = linear_forward(x, w, None)
    np.testing.assert_allclose(out, x @ w, rtol=1e-14)
    dx, dw, db = linear_backward(R, cache)
    assert db is None
    assert_gradient(loss, x, dx, name="x")
    assert_gradient(loss, w, dw, name="w")


def test_linear_does_not_modify_its_inputs(rng):
    x, w, b = rng.normal(size=(3, 5)), rng.normal(size=(5, 4)), rng.normal(size=4)
    copies = [a.copy() for a in (x, w, b)]
    linear_backward(rng.normal(size=(3, 4)), linear_forward(x, w, b)[1])
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


# --- gelu --------------------------------------------------------------------------------------

def test_gelu_gradient(rng):
    x = rng.normal(0.0, 2.5, size=(3, 7))  # covers the negative tail, the bend and the linear part
    R = projection(rng, x.shape)

    def loss():
        return float((gelu_forward(x)[0] * R).sum())

    assert_gradient(loss, x, gelu_backward(R, gelu_forward(x)[1]), name="x")


def test_gelu_is_the_tanh_approximation():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu_forward(x)[0], expected, rtol=1e-15)
    assert abs(gelu_forward(np.array([1.0]))[0][0] - 0.8411919906082768) < 1e-12


# --- attention ---------------------------------------------------------------------------------

def reference_attention(qkv: np.ndarray, n_head: int) -> np.ndarray:
    """Causal multi-head attention written with loops, for one (T, 3d) sequence."""
    T, three_d = qkv.shape
    d = three_d // 3
    dh = d // n_head
    out = np.zeros((T, d))
    for h in range(n_head):
        q = qkv[:, h * dh:(h + 1) * dh]
        k = qkv[:, d + h * dh:d + (h + 1) * dh]
        v = qkv[:, 2 * d + h * dh:2 * d + (h + 1) * dh]
        for i in range(T):
            s = np.array([q[i] @ k[j] / math.sqrt(dh) for j in range(i + 1)])
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h * dh:(h + 1) * dh] = p @ v[:i + 1]
    return out


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_attention_forward_matches_a_loop_reference(rng, n_head):
    qkv = rng.normal(size=(2, 5, 3 * 8))
    out, _ = attention_forward(qkv, n_head)
    for b in range(2):
        np.testing.assert_allclose(out[b], reference_attention(qkv[b], n_head), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_attention_gradient(rng, n_head):
    qkv = rng.normal(0.0, 1.5, size=(2, 5, 3 * 8))
    R = projection(rng, (2, 5, 8))

    def loss():
        return float((attention_forward(qkv, n_head)[0] * R).sum())

    assert_gradient(loss, qkv, attention_backward(R, attention_forward(qkv, n_head)[1]), name="qkv")


@pytest.mark.parametrize("t", [1, 3, 5])
def test_attention_is_causal(rng, t):
    """Changing token t's q, k and v leaves the outputs before t unchanged, and changes those from t on."""
    qkv = rng.normal(size=(2, 6, 3 * 8))
    changed = qkv.copy()
    changed[:, t] += rng.normal(size=(2, 3 * 8))
    before, after = attention_forward(qkv, 2)[0], attention_forward(changed, 2)[0]
    np.testing.assert_array_equal(after[:, :t], before[:, :t])
    assert np.all(np.abs(after[:, t:] - before[:, t:]).max(axis=-1) > 1e-6)


def test_attention_backward_is_causal(rng):
    """A gradient arriving at output position t reaches no input after t."""
    qkv = rng.normal(size=(1, 6, 3 * 8))
    dout = np.zeros((1, 6, 8))
    dout[0, 2] = rng.normal(size=8)
    dqkv = attention_backward(dout, attention_forward(qkv, 2)[1])
    np.testing.assert_array_equal(dqkv[0, 3:], 0.0)
    assert np.abs(dqkv[0, :3]).max() > 1e-6


# --- cross-entropy -----------------------------------------------------------------------------

def test_crossentropy_gradient(rng):
    logits = rng.normal(0.0, 2.0, size=(2, 3, 7))
    targets = np.array([[0, 6, 6], [3, 0, 2]])
    dloss = 0.7  # an upstream gradient other than 1, to check that it scales the result

    def loss():
        return dloss * crossentropy_forward(logits.copy(), targets)[0]

    # The forward and backward overwrite the logits they were given (documented), so they get a copy.
    dlogits = crossentropy_backward(dloss, crossentropy_forward(logits.copy(), targets)[1])
    assert_gradient(loss, logits, dlogits, name="logits")


def test_crossentropy_is_mean_negative_log_softmax(rng):
    logits = rng.normal(0.0, 3.0, size=(2, 3, 7)) + 500.0  # large logits must not overflow
    targets = np.array([[0, 6, 6], [3, 0, 2]])
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    loss, _ = crossentropy_forward(logits, targets)
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-12)
