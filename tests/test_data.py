"""Text files -> token stream: exact chunked encoding, per-file validation split, the token cache, batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnlm import data
from snnlm.data import (
    CACHE_MANIFEST_FILE, CACHE_TOKENS_FILE, encode_text, find_text_files, iter_eval_batches, load_token_splits,
    sample_batch, token_fingerprint,
)
from snnlm.errors import SnnlmError
from snnlm.tokenizer import GPT2Tokenizer, load_tokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
ENGLISH = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
           "must be in want of a wife.\n")
# Whitespace runs, trailing spaces before newlines, CRLF, indentation, non-ASCII and the special token:
# the places where a careless split would change the tokens.
TRICKY = ("Call me Ishmael.  \nSome years ago\n\n\nnever mind how long\r\n  precisely\n\tHaving little\n"
          "Ünïcödé — “quotes” 日本語\n\u2028x\n<|endoftext|>\nend \n \n!\n'tis\n 's\n")


@pytest.fixture(scope="module")
def tokenizer() -> GPT2Tokenizer:
    return load_tokenizer(WEIGHTS_DIR)


@pytest.fixture
def every_piece_its_own_chunk(monkeypatch):
    """Make encode_text send each safe piece separately, so the split itself is what gets tested."""
    monkeypatch.setattr(data, "_CHUNK_CHARS", 1)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_chunked_encoding_equals_whole_text_encoding(tokenizer, every_piece_its_own_chunk):
    text = TRICKY * 3 + ENGLISH * 5
    tokens = encode_text(text, tokenizer)
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == tokenizer.encode(text)
    assert len(data.SAFE_SPLIT.findall(text)) > 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", " ", "  ", "\n", "\r\n", "\t", "é", ".", "'s", "1", "\u00a0", "\x85",
                                 "\u2028", "\x1c", "<|endoftext|>"]), max_size=60))
def test_chunked_encoding_equals_whole_text_encoding_property(tokenizer, pieces):
    data._CHUNK_CHARS, saved = 1, data._CHUNK_CHARS
    try:
        text = "".join(pieces)
        assert encode_text(text, tokenizer).tolist() == tokenizer.encode(text)
    finally:
        data._CHUNK_CHARS = saved


def test_find_text_files_recurses_sorted_and_dedupes(tmp_path):
    b = write(tmp_path / "corpus" / "b.txt", "b")
    a = write(tmp_path / "corpus" / "sub" / "a.txt", "a")
    write(tmp_path / "corpus" / "notes.md", "skip me")
    other = write(tmp_path / "other.text", "named explicitly, so taken whatever its suffix")
    found = find_text_files([tmp_path / "corpus", other, b])
    assert found == [b, a, other]


def test_find_text_files_errors(tmp_path):
    with pytest.raises(SnnlmError, match="no such file or folder"):
        find_text_files([tmp_path / "missing"])
    write(tmp_path / "empty_folder" / "readme.md", "x")
    with pytest.raises(SnnlmError, match="no .txt files"):
        find_text_files([tmp_path / "empty_folder"])


def test_validation_is_the_tail_of_every_file(tmp_path, tokenizer):
    texts = {"a.txt": ENGLISH * 20, "b.txt": TRICKY * 10}
    for name, text in texts.items():
        write(tmp_path / "corpus" / name, text)
    train, val, sources = load_token_splits([tmp_path / "corpus"], tmp_path / "out", tokenizer, 0.1)
    eot = [tokenizer.eot_id]
    docs = [tokenizer.encode(texts[name]) for name in sorted(texts)]
    cuts = [len(d) - int(np.ceil(len(d) * 0.1)) for d in docs]
    assert train.tolist() == docs[0][:cuts[0]] + eot + docs[1][:cuts[1]]
    assert val.tolist() == docs[0][cuts[0]:] + eot + docs[1][cuts[1]:]
    assert [(s["n_tokens"], s["n_train"], s["n_val"]) for s in sources] == \
        [(len(d), c, len(d) - c) for d, c in zip(docs, cuts)]
    assert [Path(s["path"]).name for s in sources] == ["a.txt", "b.txt"]
    assert train.dtype == val.dtype == np.uint16


def test_cache_is_reused_while_inputs_are_unchanged_and_rebuilt_when_they_change(tmp_path, tokenizer, monkeypatch):
    corpus = write(tmp_path / "corpus.txt", ENGLISH * 20)
    out = tmp_path / "out"
    encoded = []
    monkeypatch.setattr(data, "encode_text", lambda text, tok: encoded.append(text) or encode_text(text, tok))
    first = load_token_splits([corpus], out, tokenizer, 0.05)
    again = load_token_splits([corpus], out, tokenizer, 0.05)
    assert len(encoded) == 1
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])

    write(corpus, ENGLISH * 20 + "A new closing sentence.\n")
    changed = load_token_splits([corpus], out, tokenizer, 0.05)
    assert len(encoded) == 2
    assert token_fingerprint(*changed[:2]) != token_fingerprint(*first[:2])
    manifest = json.loads((out / CACHE_MANIFEST_FILE).read_text())
    assert manifest["files"][0]["sha256"] == changed[2][0]["sha256"] != first[2][0]["sha256"]


def test_damaged_cache_is_rebuilt(tmp_path, tokenizer):
    corpus = write(tmp_path / "corpus.txt", ENGLISH * 20)
    out = tmp_path / "out"
    train, val, _ = load_token_splits([corpus], out, tokenizer, 0.05)
    (out / CACHE_TOKENS_FILE).write_bytes((out / CACHE_TOKENS_FILE).read_bytes()[:-10])
    again_train, again_val, _ = load_token_splits([corpus], out, tokenizer, 0.05)
    np.testing.assert_array_equal(again_train, train)
    np.testing.assert_array_equal(again_val, val)


def test_bad_inputs_are_one_line_errors(tmp_path, tokenizer):
    with pytest.raises(SnnlmError, match="holds no text"):
        load_token_splits([write(tmp_path / "blank.txt", " \n\n")], tmp_path / "o1", tokenizer, 0.1)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"abc\xff\xfe")
    with pytest.raises(SnnlmError, match="not UTF-8"):
        load_token_splits([binary], tmp_path / "o2", tokenizer, 0.1)
    with pytest.raises(SnnlmError, match="too few"):
        load_token_splits([write(tmp_path / "one.txt", "Hi")], tmp_path / "o3", tokenizer, 0.1)


def test_sample_batch_windows_and_determinism():
    tokens = np.arange(1000, dtype=np.uint16)
    ids, targets = sample_batch(tokens, 8, 16, np.random.default_rng([3, 7]))
    assert ids.shape == targets.shape == (8, 16) and ids.dtype == targets.dtype == np.int64
    np.testing.assert_array_equal(targets, ids + 1)
    np.testing.assert_array_equal(np.diff(ids, axis=1), 1)
    assert ids.min() >= 0 and targets.max() <= 999
    again, _ = sample_batch(tokens, 8, 16, np.random.default_rng([3, 7]))
    np.testing.assert_array_equal(ids, again)
    other, _ = sample_batch(tokens, 8, 16, np.random.default_rng([3, 8]))
    assert not np.array_equal(ids, other)
    with pytest.raises(SnnlmError, match="too few"):
        sample_batch(tokens[:16], 1, 16, np.random.default_rng(0))


def test_sample_batch_reaches_both_ends():
    tokens = np.arange(20, dtype=np.uint16)
    ids, targets = sample_batch(tokens, 500, 16, np.random.default_rng(0))
    assert ids[:, 0].min() == 0 and targets[:, -1].max() == 19


def test_eval_batches_cover_the_stream_without_overlap():
    tokens = np.arange(1001, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 4, 10, None))
    ids = np.concatenate([b[0] for b in batches])
    targets = np.concatenate([b[1] for b in batches])
    assert len(ids) == 100 and [len(b[0]) for b in batches] == [4] * 25
    np.testing.assert_array_equal(targets, ids + 1)
    np.testing.assert_array_equal(ids.reshape(-1), np.arange(1000))


def test_eval_batches_are_evenly_spaced_and_capped():
    tokens = np.arange(10_001, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 3, 10, max_batches=2))
    starts = np.concatenate([b[0][:, 0] for b in batches])
    assert len(batches) == 2 and len(starts) == 6
    assert starts[0] == 0 and starts[-1] == 10_001 - 11
    assert np.ptp(np.diff(starts)) <= 1
    again = np.concatenate([b[0][:, 0] for b in iter_eval_batches(tokens, 3, 10, max_batches=2)])
    np.testing.assert_array_equal(starts, again)
