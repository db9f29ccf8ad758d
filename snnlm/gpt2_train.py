"""GPT-2's training pass: the forward that keeps its caches, and the hand-written backward.

`loss_and_grads` chains the pairs of `snnlm.layers` exactly as `snnlm.gpt2` chains the inference
functions; the gradients come back in a dict with the structure of the params.
"""
from __future__ import annotations

import numpy as np

from snnlm.config import GPT2Config
from snnlm.layers import (
    attention_backward, attention_forward, crossentropy_backward, crossentropy_forward,
    embedding_backward, embedding_forward, gelu_backward, gelu_forward,
    layernorm_backward, layernorm_forward, linear_backward, linear_forward,
)


def block_forward(x: np.ndarray, p: dict, n_head: int, eps: float):
    """One transformer block. x (B, T, d) -> (B, T, d), cache."""
    a_in, c_ln1 = layernorm_forward(x, p["ln_1"]["g"], p["ln_1"]["b"], eps)
    qkv, c_qkv = linear_forward(a_in, p["attn"]["c_attn"]["w"], p["attn"]["c_attn"]["b"])
    att, c_att = attention_forward(qkv, n_head)
    a_out, c_aproj = linear_forward(att, p["attn"]["c_proj"]["w"], p["attn"]["c_proj"]["b"])
    x = x + a_out
    m_in, c_ln2 = layernorm_forward(x, p["ln_2"]["g"], p["ln_2"]["b"], eps)
    h, c_fc = linear_forward(m_in, p["mlp"]["c_fc"]["w"], p["mlp"]["c_fc"]["b"])
    h, c_gelu = gelu_forward(h)
    m_out, c_mproj = linear_forward(h, p["mlp"]["c_proj"]["w"], p["mlp"]["c_proj"]["b"])
    return x + m_out, (c_ln1, c_qkv, c_att, c_aproj, c_ln2, c_fc, c_gelu, c_mproj)


def block_backward(dx: np.ndarray, cache):
    """dx (B, T, d) -> d(block input) (B, T, d), grads of the block's params."""
    c_ln1, c_qkv, c_att, c_aproj, c_ln2, c_fc, c_gelu, c_mproj = cache
    dh, dw_mproj, db_mproj = linear_backward(dx, c_mproj)
    dh = gelu_backward(dh, c_gelu)
    dm_in, dw_fc, db_fc = linear_backward(dh, c_fc)
    dmid, dg2, db2 = layernorm_backward(dm_in, c_ln2)
    dmid += dx
    datt, dw_aproj, db_aproj = linear_backward(dmid, c_aproj)
    dqkv = attention_backward(datt, c_att)
    da_in, dw_qkv, db_qkv = linear_backward(dqkv, c_qkv)
    dx_in, dg1, db1 = layernorm_backward(da_in, c_ln1)
    grads = {
        "ln_1": {"g": dg1, "b": db1},
        "attn": {"c_attn": {"w": dw_qkv, "b": db_qkv}, "c_proj": {"w": dw_aproj, "b": db_aproj}},
        "ln_2": {"g": dg2, "b": db2},
        "mlp": {"c_fc": {"w": dw_fc, "b": db_fc}, "c_proj": {"w": dw_mproj, "b": db_mproj}},
    }
    return dx_in + dmid, grads


def loss_and_grads(params: dict, config: GPT2Config, ids: np.ndarray, targets: np.ndarray,
                   need_grads: bool = True):
    """Mean next-token cross-entropy and its gradient for every parameter.

    ids, targets (B, T) int. Returns (loss, grads) with grads shaped like params (None when
    `need_grads` is False). The LM head is tied, so `wte` collects two gradients.
    """
    eps = config.layer_norm_epsilon
    x, c_emb = embedding_forward(params["wte"], params["wpe"], ids)
    block_caches = []
    for p in params["blocks"]:
        x, c = block_forward(x, p, config.n_head, eps)
        block_caches.append(c)
    h, c_lnf = layernorm_forward(x, params["ln_f"]["g"], params["ln_f"]["b"], eps)
    logits, c_head = linear_forward(h, params["wte"].T, None)
    loss, c_ce = crossentropy_forward(logits, targets)
    if not need_grads:
        return loss, None
    del logits
    dlogits = crossentropy_backward(1.0, c_ce)
    dh, dwte_head, _ = linear_backward(dlogits, c_head)
    del dlogits, c_ce
    dx, dg_f, db_f = layernorm_backward(dh, c_lnf)
    block_grads = []
    for c in reversed(block_caches):
        dx, g = block_backward(dx, c)
        block_grads.append(g)
    dwte, dwpe = embedding_backward(dx, c_emb)
    dwte += dwte_head.T
    grads = {"wte": dwte, "wpe": dwpe, "blocks": block_grads[::-1], "ln_f": {"g": dg_f, "b": db_f}}
    return loss, grads
