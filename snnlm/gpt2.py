"""GPT-2 inference in NumPy: batched prefill and KV-cache decode, float32.

Pure functions over the params dict of `snnlm.weights` (picoGPT style); the only state is the
`KVCache`, which holds the keys and values of the tokens seen so far.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from snnlm.config import GPT2Config
from snnlm.layers import (
    causal_mask, gelu_forward, layernorm_forward, linear_forward, merge_heads, softmax, split_heads,
)


@dataclasses.dataclass
class KVCache:
    """Keys and values of the first `length` positions: k, v (n_layer, H, n_ctx, d_h) float32."""

    k: np.ndarray
    v: np.ndarray
    length: int = 0

    @classmethod
    def empty(cls, config: GPT2Config, capacity: int | None = None) -> "KVCache":
        shape = (config.n_layer, config.n_head, capacity or config.n_ctx, config.head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))


def layer_norm(x: np.ndarray, ln: dict, eps: float) -> np.ndarray:
    """x (N, d) -> (N, d)."""
    return layernorm_forward(x, ln["g"], ln["b"], eps)[0]


def linear(x: np.ndarray, lin: dict) -> np.ndarray:
    """x (N, n_in) -> (N, n_out)."""
    return linear_forward(x, lin["w"], lin["b"])[0]


def mlp(x: np.ndarray, p: dict) -> np.ndarray:
    """The feed-forward block. x (N, d) -> (N, d)."""
    return linear(gelu_forward(linear(x, p["c_fc"]))[0], p["c_proj"])


def cached_attention(x: np.ndarray, p: dict, n_head: int, cache: KVCache | None, layer: int) -> np.ndarray:
    """Causal self-attention of N new tokens over the cached ones and themselves. x (N, d) -> (N, d).

    Appends the new keys and values to `cache` (not its length: the caller advances it once all
    layers have run).
    """
    q, k, v = (split_heads(t, n_head) for t in np.split(linear(x, p["c_attn"]), 3, axis=-1))  # (H, N, d_h)
    if cache is not None:
        start, end = cache.length, cache.length + x.shape[0]
        cache.k[layer, :, start:end] = k
        cache.v[layer, :, start:end] = v
        k, v = cache.k[layer, :, :end], cache.v[layer, :, :end]
    scores = (q @ np.swapaxes(k, -1, -2)) * np.float32(1.0 / math.sqrt(q.shape[-1]))  # (H, N, S)
    if x.shape[0] > 1:
        scores = np.where(causal_mask(scores.shape[-2], scores.shape[-1]), np.float32(-np.inf), scores)
    return linear(merge_heads(softmax(scores) @ v), p["c_proj"])


def hidden_states(params: dict, config: GPT2Config, ids: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
    """The final hidden states (after ln_f) of N new tokens. ids (N,) -> (N, d).

    With a cache the tokens continue the cached sequence and the cache grows by N; without one
    they are the whole sequence.
    """
    pos0 = cache.length if cache is not None else 0
    capacity = cache.k.shape[2] if cache is not None else config.n_ctx
    if pos0 + len(ids) > min(capacity, config.n_ctx):
        raise ValueError(f"sequence of {pos0 + len(ids)} tokens exceeds the context window of {min(capacity, config.n_ctx)}")
    eps = config.layer_norm_epsilon
    x = params["wte"][ids] + params["wpe"][pos0:pos0 + len(ids)]  # (N, d)
    for i, block in enumerate(params["blocks"]):
        x = x + cached_attention(layer_norm(x, block["ln_1"], eps), block["attn"], config.n_head, cache, i)
        x = x + mlp(layer_norm(x, block["ln_2"], eps), block["mlp"])
    if cache is not None:
        cache.length += len(ids)
    return layer_norm(x, params["ln_f"], eps)


def lm_head(params: dict, h: np.ndarray) -> np.ndarray:
    """Tied LM head. h (N, d) -> logits (N, n_vocab)."""
    return h @ params["wte"].T


def forward(params: dict, config: GPT2Config, ids: np.ndarray, cache: KVCache | None = None,
            last_only: bool = False) -> np.ndarray:
    """Logits of N new tokens, (N, n_vocab), or of the last one only, (1, n_vocab)."""
    h = hidden_states(params, config, np.asarray(ids), cache)
    return lm_head(params, h[-1:] if last_only else h)


class ANNDecoder:
    """Incremental decoding with a KV cache: `feed` new tokens, get the next-token logits."""

    def __init__(self, params: dict, config: GPT2Config):
        self.params, self.config = params, config
        self.cache = KVCache.empty(config)

    @property
    def length(self) -> int:
        """Tokens seen so far."""
        return self.cache.length

    def feed(self, ids) -> np.ndarray:
        """Append tokens ids (N,) to the context; return the logits after the last one, (n_vocab,)."""
        return forward(self.params, self.config, np.asarray(ids, dtype=np.int64), self.cache, last_only=True)[0]
