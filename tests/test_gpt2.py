"""The whole model: the training backward against finite differences, the training loss against the
inference forward, and KV-cache decoding against full recomputation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TINY, assert_gradient, get_leaf, leaf_paths, tiny_params
from snnlm.errors import SnnlmError
from snnlm.gpt2 import ANNDecoder, KVCache, forward
from snnlm.gpt2_train import loss_and_grads

B, T = 2, 6
ENTRIES_PER_LEAF = 4
# Token 7 repeats within row 0 and across rows; every other id occurs once or not at all.
IDS = np.array([[7, 3, 7, 41, 0, 12], [7, 49, 25, 3, 18, 30]])
TARGETS = np.array([[3, 7, 41, 0, 12, 5], [49, 25, 3, 18, 30, 7]])
CACHE_ATOL = 1e-5


def path_name(path: tuple) -> str:
    return ".".join(map(str, path))


def entries_to_check(path: tuple, shape: tuple[int, ...], rng: np.random.Generator) -> list[tuple]:
    """A few random entries of one leaf, chosen where the gradient is not zero by construction."""
    if path == ("wte",):
        # Rows of tokens in the input get gradient through the embedding and the tied head;
        # the other rows only through the head. Check both kinds.
        used = np.unique(IDS)
        unused = np.setdiff1d(np.arange(shape[0]), used)
        rows = [*rng.choice(used, 2, replace=False), *rng.choice(unused, 2, replace=False)]
    elif path == ("wpe",):
        rows = rng.choice(T, ENTRIES_PER_LEAF, replace=False)  # positions >= T get no gradient
    else:
        flat = rng.choice(int(np.prod(shape)), ENTRIES_PER_LEAF, replace=False)
        return [np.unravel_index(i, shape) for i in flat]
    return [(int(r), int(rng.integers(shape[1]))) for r in rows]


@pytest.mark.parametrize("path", leaf_paths(TINY), ids=path_name)
def test_loss_and_grads_matches_finite_differences(path):
    rng = np.random.default_rng(11)
    params = tiny_params(TINY, rng, np.float64)
    _, grads = loss_and_grads(params, TINY, IDS, TARGETS)
    leaf = get_leaf(params, path)

    def loss():
        return loss_and_grads(params, TINY, IDS, TARGETS, need_grads=False)[0]

    indices = entries_to_check(path, leaf.shape, rng)
    assert_gradient(loss, leaf, get_leaf(grads, path), indices, name=path_name(path))


def test_grads_have_the_structure_shapes_and_dtype_of_the_params(rng):
    for dtype in (np.float64, np.float32):
        params = tiny_params(TINY, rng, dtype)
        _, grads = loss_and_grads(params, TINY, IDS, TARGETS)
        assert set(grads) == set(params) and len(grads["blocks"]) == TINY.n_layer
        for path in leaf_paths(TINY):
            g, p = get_leaf(grads, path), get_leaf(params, path)
            assert g.shape == p.shape and g.dtype == dtype, (path, g.shape, g.dtype)


def test_positions_beyond_the_sequence_get_zero_gradient(rng):
    _, grads = loss_and_grads(tiny_params(TINY, rng), TINY, IDS, TARGETS)
    np.testing.assert_array_equal(grads["wpe"][T:], 0.0)
    assert np.abs(grads["wpe"][:T]).min(axis=-1).max() > 0


def mean_crossentropy(logits: np.ndarray, targets: np.ndarray) -> float:
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], axis=-1).mean())


def test_training_loss_equals_crossentropy_of_inference_logits(rng):
    params = tiny_params(TINY, rng, np.float64)
    logits = np.stack([forward(params, TINY, row) for row in IDS])  # (B, T, V)
    expected = mean_crossentropy(logits, TARGETS)
    loss, _ = loss_and_grads(params, TINY, IDS, TARGETS)
    loss_only, grads = loss_and_grads(params, TINY, IDS, TARGETS, need_grads=False)
    assert grads is None
    assert loss == pytest.approx(expected, rel=1e-12)
    assert loss_only == pytest.approx(expected, rel=1e-12)


# --- inference with a KV cache -----------------------------------------------------------------

PARAMS32 = tiny_params(TINY, np.random.default_rng(5), np.float32)
SEQUENCE = np.random.default_rng(6).integers(0, TINY.n_vocab, TINY.n_ctx)


def cached_logits(ids: np.ndarray, chunks: list[int], cache: KVCache | None = None) -> np.ndarray:
    """Logits of ids fed through one cache in chunks of the given sizes, stacked (N, V)."""
    assert sum(chunks) == len(ids)
    cache = cache if cache is not None else KVCache.empty(TINY)
    out, start = [], 0
    for n in chunks:
        out.append(forward(PARAMS32, TINY, ids[start:start + n], cache))
        start += n
        assert cache.length == start
    return np.concatenate(out)


@pytest.mark.parametrize("prefill", [1, 5, TINY.n_ctx - 1])
def test_prefill_then_one_token_at_a_time_matches_full_recomputation(prefill):
    full = forward(PARAMS32, TINY, SEQUENCE)
    chunks = [prefill] + [1] * (TINY.n_ctx - prefill)
    np.testing.assert_allclose(cached_logits(SEQUENCE, chunks), full, rtol=0, atol=CACHE_ATOL)


def test_several_chunked_prefills_match_full_recomputation():
    full = forward(PARAMS32, TINY, SEQUENCE)
    np.testing.assert_allclose(cached_logits(SEQUENCE, [3, 4, 1, 6, 2]), full, rtol=0, atol=CACHE_ATOL)


def test_a_cache_with_just_enough_capacity_gives_the_same_logits():
    ids = SEQUENCE[:7]
    got = cached_logits(ids, [4, 1, 2], KVCache.empty(TINY, capacity=7))
    np.testing.assert_allclose(got, forward(PARAMS32, TINY, ids), rtol=0, atol=CACHE_ATOL)


def test_cached_logits_are_float32():
    assert forward(PARAMS32, TINY, SEQUENCE[:3], KVCache.empty(TINY)).dtype == np.float32


def test_decoder_feed_returns_the_logits_after_the_last_token():
    decoder = ANNDecoder(PARAMS32, TINY)
    full = forward(PARAMS32, TINY, SEQUENCE[:9])
    np.testing.assert_allclose(decoder.feed(SEQUENCE[:4]), full[3], rtol=0, atol=CACHE_ATOL)
    np.testing.assert_allclose(decoder.feed(SEQUENCE[4:5]), full[4], rtol=0, atol=CACHE_ATOL)
    np.testing.assert_allclose(decoder.feed(SEQUENCE[5:9]), full[8], rtol=0, atol=CACHE_ATOL)
    assert decoder.length == 9


def test_last_only_equals_the_last_row():
    full = forward(PARAMS32, TINY, SEQUENCE[:8])
    last = forward(PARAMS32, TINY, SEQUENCE[:8], last_only=True)
    assert last.shape == (1, TINY.n_vocab)
    np.testing.assert_allclose(last, full[-1:], rtol=0, atol=CACHE_ATOL)


def test_last_only_with_a_cache_equals_the_last_row():
    cache = KVCache.empty(TINY)
    forward(PARAMS32, TINY, SEQUENCE[:5], cache)
    last = forward(PARAMS32, TINY, SEQUENCE[5:8], cache, last_only=True)
    np.testing.assert_allclose(last, forward(PARAMS32, TINY, SEQUENCE[:8])[-1:], rtol=0, atol=CACHE_ATOL)


def test_more_tokens_than_the_context_window_raises():
    ids = np.zeros(TINY.n_ctx + 1, dtype=np.int64)
    with pytest.raises((ValueError, SnnlmError), match="context window"):
        forward(PARAMS32, TINY, ids)


@pytest.mark.parametrize("filled, extra", [(TINY.n_ctx, 1), (TINY.n_ctx - 2, 3)])
def test_growing_the_cache_past_the_context_window_raises_and_leaves_it_intact(filled, extra):
    cache = KVCache.empty(TINY)
    forward(PARAMS32, TINY, SEQUENCE[:filled], cache)
    k, v = cache.k.copy(), cache.v.copy()
    with pytest.raises((ValueError, SnnlmError), match="context window"):
        forward(PARAMS32, TINY, np.zeros(extra, dtype=np.int64), cache)
    assert cache.length == filled
    np.testing.assert_array_equal(cache.k, k)
    np.testing.assert_array_equal(cache.v, v)


@st.composite
def sequence_and_chunks(draw):
    n = draw(st.integers(1, TINY.n_ctx))
    ids = np.array(draw(st.lists(st.integers(0, TINY.n_vocab - 1), min_size=n, max_size=n)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set())
    bounds = [0, *cuts, n]
    return ids, [b - a for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=30, deadline=None)
@given(sequence_and_chunks())
def test_any_split_into_chunks_gives_the_full_logits(case):
    ids, chunks = case
    np.testing.assert_allclose(cached_logits(ids, chunks), forward(PARAMS32, TINY, ids), rtol=0, atol=CACHE_ATOL)
