"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""
from __future__ import annotations

import numpy as np


def next_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0) -> int:
    """Pick one token id from logits (n_vocab,).

    temperature 0 is greedy (argmax). top_k > 0 keeps the k most likely tokens; top_p < 1 keeps
    the smallest set whose probability reaches top_p. Both filters apply before sampling.
    """
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.shape[0]:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        # Keep every token up to and including the one that crosses top_p.
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.shape[0], p=p))
