"""GPT-2's layers as explicit forward/backward pairs (llm.c style).

Each `xxx_forward` returns `(out, cache)`; `xxx_backward(dout, cache)` returns the gradients of its
inputs and parameters. Shapes: B batch, T tokens, d width, H heads, V vocabulary. Every function is
dtype-generic, so the gradient checks run them in float64 and training in float32.
"""
from __future__ import annotations

import math

import numpy as np

from snnlm.kernels.gelu import gelu, gelu_grad


def embedding_forward(wte: np.ndarray, wpe: np.ndarray, ids: np.ndarray, pos0: int = 0):
    """Token plus position embedding. ids (..., T) int -> x (..., T, d)."""
    T = ids.shape[-1]
    x = wte[ids] + wpe[pos0:pos0 + T]
    return x, (ids, wte.shape, pos0, wpe.shape)


def embedding_backward(dx: np.ndarray, cache):
    """dx (..., T, d) -> dwte (V, d), dwpe (P, d)."""
    ids, wte_shape, pos0, wpe_shape = cache
    d = dx.shape[-1]
    dwte = np.zeros(wte_shape, dtype=dx.dtype)
    np.add.at(dwte, ids.reshape(-1), dx.reshape(-1, d))
    dwpe = np.zeros(wpe_shape, dtype=dx.dtype)
    dwpe[pos0:pos0 + ids.shape[-1]] = dx.reshape(-1, ids.shape[-1], d).sum(axis=0)
    return dwte, dwpe


def layernorm_forward(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """LayerNorm over the last axis. x (..., d), g (d,), b (d,) -> (..., d)."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    return xhat * g + b, (xhat, rstd, g)


def layernorm_backward(dout: np.ndarray, cache):
    """dout (..., d) -> dx (..., d), dg (d,), db (d,)."""
    xhat, rstd, g = cache
    d = xhat.shape[-1]
    lead = tuple(range(dout.ndim - 1))
    dg = (dout * xhat).sum(axis=lead)
    db = dout.sum(axis=lead)
    dxhat = dout * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).sum(axis=-1, keepdims=True) / d)
    return dx, dg, db


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (..., n_in) @ w (n_in, n_out) + b (n_out,) -> (..., n_out). HF's Conv1D layout: w is (in, out)."""
    # BLAS sees one 2-D product; a 3-D matmul was measured up to 2x slower.
    out = (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[1])
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout: np.ndarray, cache):
    """dout (..., n_out) -> dx (..., n_in), dw (n_in, n_out), db (n_out,) or None."""
    x, w, has_bias = cache
    n_in, n_out = w.shape
    dout2 = dout.reshape(-1, n_out)
    dw = x.reshape(-1, n_in).T @ dout2
    db = dout2.sum(axis=0) if has_bias else None
    return (dout2 @ w.T).reshape(*dout.shape[:-1], n_in), dw, db


def gelu_forward(x: np.ndarray):
    """GELU, tanh form (GPT-2's `gelu_new`). Elementwise."""
    return gelu(x), x


def gelu_backward(dout: np.ndarray, cache):
    """Elementwise derivative of the tanh-form GELU."""
    return gelu_grad(dout, cache)


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(..., T, d) -> (..., H, T, d_h)."""
    *lead, T, d = x.shape
    return np.moveaxis(x.reshape(*lead, T, n_head, d // n_head), -2, -3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(..., H, T, d_h) -> (..., T, d)."""
    x = np.moveaxis(x, -3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for -inf entries (masked positions)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(n_query: int, n_key: int) -> np.ndarray:
    """True where query i (the last n_query of n_key positions) may NOT see key j. (n_query, n_key)."""
    offset = n_key - n_query
    return np.arange(n_key)[None, :] > (np.arange(n_query)[:, None] + offset)


def attention_forward(qkv: np.ndarray, n_head: int):
    """Causal multi-head softmax attention. qkv (..., T, 3d) -> (..., T, d)."""
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    T = scores.shape[-1]
    scores = np.where(causal_mask(T, T), -np.inf, scores)
    att = softmax(scores).astype(qkv.dtype, copy=False)
    return merge_heads(att @ v), (q, k, v, att, scale)


def attention_backward(dout: np.ndarray, cache):
    """dout (..., T, d) -> dqkv (..., T, 3d)."""
    q, k, v, att, scale = cache
    n_head = q.shape[-3]
    dy = split_heads(dout, n_head)
    datt = dy @ np.swapaxes(v, -1, -2)
    dv = np.swapaxes(att, -1, -2) @ dy
    # Softmax backward: dscore = att * (datt - sum(datt * att)); masked entries have att = 0.
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
    dq = dscores @ k
    dk = np.swapaxes(dscores, -1, -2) @ q
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray):
    """Mean cross-entropy. logits (..., V), targets (...) int -> scalar loss.

    With 50257 classes a batch's logits are hundreds of MB, so they are turned into exp(logit - max)
    in place and kept as the cache: a caller must not reuse the logits afterwards.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    rows = np.arange(t.shape[0])
    row_max = flat.max(axis=-1, keepdims=True)
    target_logit = flat[rows, t] - row_max[:, 0]
    np.subtract(flat, row_max, out=flat)
    np.exp(flat, out=flat)
    total = flat.sum(axis=-1, dtype=np.float64)
    loss = float(np.mean(np.log(total) - target_logit))
    return loss, (flat, total, t, logits.shape)


def crossentropy_backward(dloss: float, cache):
    """Gradient of the mean cross-entropy with respect to the logits: (..., V). Consumes the cache."""
    exp_shifted, total, t, shape = cache
    scale = dloss / t.shape[0]
    exp_shifted *= (scale / total).astype(exp_shifted.dtype)[:, None]
    exp_shifted[np.arange(t.shape[0]), t] -= scale
    return exp_shifted.reshape(shape)
