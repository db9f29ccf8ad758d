"""AdamW against a float64 NumPy twin of its formula, the cosine schedule, gradient clipping and state round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest

from snnlm.errors import SnnlmError
from snnlm.optim import AdamW, clip_grad_norm, cosine_lr, tree_leaves


def small_params(rng: np.random.Generator) -> dict:
    """A matrix and two vectors, one inside a list, float32; also serves as a matching gradient tree."""
    return {"w": rng.standard_normal((3, 4), dtype=np.float32), "b": rng.standard_normal(4, dtype=np.float32),
            "blocks": [{"g": rng.standard_normal(4, dtype=np.float32)}]}


def reference_adamw(p, grads, lrs, beta1, beta2, eps, decay):
    """Torch's AdamW, written out in float64 for one array over several steps."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        p = p * (1 - lr * decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_first_step_by_hand():
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
    params = {"w": np.array([[1.0, -2.0]], dtype=np.float32), "b": np.array([0.5], dtype=np.float32)}
    grads = {"w": np.array([[0.5, -4.0]], dtype=np.float32), "b": np.array([2.0], dtype=np.float32)}
    AdamW(params, betas=(0.9, 0.95), eps=0.0, weight_decay=0.5).step(grads, lr=0.1)
    # w: decayed by (1 - 0.1 * 0.5) first, then moved by 0.1 against the sign of g; b: not decayed.
    np.testing.assert_allclose(params["w"], [[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1]], rtol=1e-6)
    np.testing.assert_allclose(params["b"], [0.5 - 0.1], rtol=1e-6)


def test_adamw_matches_reference_over_several_steps(rng):
    params = small_params(rng)
    start = {name: p.copy() for name, p in tree_leaves(params)}
    grads = [small_params(rng) for _ in range(5)]
    lrs = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2]
    opt = AdamW(params, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for g, lr in zip(grads, lrs):
        opt.step(g, lr)
    for name, p in tree_leaves(params):
        decay = 0.1 if p.ndim >= 2 else 0.0
        expected = reference_adamw(start[name], [dict(tree_leaves(g))[name] for g in grads], lrs, 0.9, 0.95, 1e-8, decay)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    assert opt.t == 5


def test_weight_decay_skips_vectors():
    params = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    zero = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    AdamW(params, weight_decay=0.5).step(zero, lr=0.1)
    np.testing.assert_allclose(params["w"], 0.95)
    np.testing.assert_array_equal(params["b"], 1.0)


def test_rejects_mismatched_gradients_and_bad_params(rng):
    params = small_params(rng)
    opt = AdamW(params)
    with pytest.raises(ValueError):
        opt.step({"w": params["w"]}, lr=0.1)
    with pytest.raises(TypeError):
        AdamW({"w": np.ones((2, 2), np.float64)})


def test_tree_leaves_order_ignores_insertion_order():
    a = {"x": np.zeros(1), "a": [np.zeros(2), {"k": np.zeros(3)}]}
    b = {"a": [np.zeros(2), {"k": np.zeros(3)}], "x": np.zeros(1)}
    assert [n for n, _ in tree_leaves(a)] == [n for n, _ in tree_leaves(b)] == ["a.0", "a.1.k", "x"]


def test_state_dict_round_trip_continues_identically(rng):
    params = small_params(rng)
    opt = AdamW(params, betas=(0.8, 0.9), weight_decay=0.1)
    grads = [small_params(rng) for _ in range(6)]
    for g in grads[:3]:
        opt.step(g, 0.01)
    tensors, metadata = opt.state_dict()
    twin_params = {name: p.copy() for name, p in params.items() if name != "blocks"}
    twin_params["blocks"] = [{"g": params["blocks"][0]["g"].copy()}]
    twin = AdamW(twin_params, betas=(0.8, 0.9), weight_decay=0.1)
    twin.load_state_dict({k: v.copy() for k, v in tensors.items()}, metadata, "test")
    assert twin.t == 3
    for g in grads[3:]:
        opt.step(g, 0.01)
        twin.step(g, 0.01)
    for (name, p), (_, q) in zip(tree_leaves(params), tree_leaves(twin_params)):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_load_state_dict_refuses_bad_state(rng):
    opt = AdamW(small_params(rng))
    tensors, metadata = opt.state_dict()
    missing = {k: v for k, v in tensors.items() if k != "v.w"}
    with pytest.raises(SnnlmError, match="'v.w'"):
        opt.load_state_dict(missing, metadata, "ckpt")
    misshapen = {**tensors, "m.b": np.zeros(5, np.float32)}
    with pytest.raises(SnnlmError, match=r"'m.b' has shape \(5,\)"):
        opt.load_state_dict(misshapen, metadata, "ckpt")
    with pytest.raises(SnnlmError, match="step"):
        opt.load_state_dict(tensors, {}, "ckpt")


def test_cosine_schedule_warmup_and_endpoints():
    max_lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 110
    lrs = [cosine_lr(s, max_lr, min_lr, warmup, total) for s in range(total + 20)]
    assert lrs[0] == pytest.approx(max_lr / warmup)
    np.testing.assert_allclose(lrs[:warmup], max_lr * np.arange(1, warmup + 1) / warmup)
    assert lrs[warmup] == pytest.approx(max_lr)
    assert lrs[warmup + (total - warmup) // 2] == pytest.approx((max_lr + min_lr) / 2)
    assert lrs[total] == pytest.approx(min_lr)
    assert lrs[-1] == pytest.approx(min_lr)
    decay = np.array(lrs[warmup:])
    assert np.all(np.diff(decay) <= 1e-18)


def test_cosine_schedule_without_warmup_starts_at_peak():
    assert cosine_lr(0, 1.0, 0.0, 0, 100) == pytest.approx(1.0)
    assert cosine_lr(100, 1.0, 0.0, 0, 100) == pytest.approx(0.0)


def test_clip_grad_norm_scales_to_max_norm(rng):
    grads = {"a": rng.standard_normal((5, 3), dtype=np.float32), "b": [rng.standard_normal(7, dtype=np.float32)]}
    expected = math.sqrt(float((grads["a"].astype(np.float64) ** 2).sum() + (grads["b"][0].astype(np.float64) ** 2).sum()))
    before = {n: g.copy() for n, g in tree_leaves(grads)}
    norm = clip_grad_norm(grads, max_norm=0.5)
    assert norm == pytest.approx(expected, rel=1e-5)
    clipped = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for _, g in tree_leaves(grads)))
    assert clipped == pytest.approx(0.5, rel=1e-4)
    for name, g in tree_leaves(grads):
        np.testing.assert_allclose(g, before[name] * (0.5 / expected), rtol=1e-5)


def test_clip_grad_norm_leaves_small_or_nonfinite_gradients(rng):
    grads = {"a": rng.standard_normal(4, dtype=np.float32)}
    before = grads["a"].copy()
    assert clip_grad_norm(grads, max_norm=100.0) < 100.0
    np.testing.assert_array_equal(grads["a"], before)
    grads["a"][0] = np.inf
    assert math.isinf(clip_grad_norm(grads, max_norm=1.0))
    np.testing.assert_array_equal(grads["a"][1:], before[1:])
