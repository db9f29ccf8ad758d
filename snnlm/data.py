"""Training text -> one stream of GPT-2 tokens: encoded fast, cached on disk, split into train and validation.

Every input file is one document. The cache (`tokens.npy` + `tokens.json` in the cache directory) holds
each file's tokens back to back and is reused while the files (compared by size and sha256) and the
tokenizer are unchanged.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from snnlm.errors import SnnlmError
from snnlm.fileio import atomic_open, atomic_write_text
from snnlm.tokenizer import GPT2Tokenizer

CACHE_TOKENS_FILE = "tokens.npy"
CACHE_MANIFEST_FILE = "tokens.json"
_CACHE_FORMAT = 1
_CHUNK_CHARS = 1 << 16
# A lone space or newline between two non-space characters always starts a new pre-token of GPT-2's
# split regex, and the regex never looks behind, so encoding the pieces cut just before it separately
# gives exactly the tokens of the whole text. Word boundaries are everywhere, so even a file with
# 100k-character lines splits into many chunks for the parallel encoder. Python's \s covers every
# character the tokenizer treats as whitespace (checked over the whole BMP), so this \S never claims
# a boundary the tokenizer lacks.
SAFE_SPLIT = re.compile(r"(?<=\S)(?=[ \n]\S)")


def find_text_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named in `paths`, with each folder replaced by its `*.txt` files (recursively, sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise SnnlmError(f"{path}: no .txt files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SnnlmError(f"{path}: no such file or folder")
    if not files:
        raise SnnlmError("no training text given")
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def encode_text(text: str, tokenizer: GPT2Tokenizer) -> np.ndarray:
    """GPT-2 tokens of `text`, shape (N,) uint16; equal to `tokenizer.encode(text)`, but on every core."""
    chunks, start = [], 0
    while start < len(text):
        boundary = SAFE_SPLIT.search(text, start + _CHUNK_CHARS) if start + _CHUNK_CHARS < len(text) else None
        end = boundary.start() if boundary else len(text)
        chunks.append(text[start:end])
        start = end
    encodings = tokenizer.backend.encode_batch(chunks, add_special_tokens=False)
    if not encodings:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encodings])


def load_token_splits(paths: Sequence[str | Path], cache_dir: str | Path, tokenizer: GPT2Tokenizer,
                      val_fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Tokenize (or load from the cache) the text in `paths` and split it into train and validation.

    The last `val_fraction` of EACH file's tokens goes to validation, so every source is represented.
    Within each split, documents are separated by `<|endoftext|>`. Returns (train (N_train,) uint16,
    val (N_val,) uint16, sources), where sources holds one dict per file: path, size, sha256,
    n_tokens, n_train, n_val.
    """
    if not 0.0 < val_fraction < 1.0:
        raise SnnlmError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if tokenizer.n_vocab > np.iinfo(np.uint16).max + 1:
        raise SnnlmError(f"a vocabulary of {tokenizer.n_vocab} tokens does not fit the uint16 token cache")
    files = find_text_files(paths)
    tokens, sources = _cached_tokens(files, Path(cache_dir), tokenizer)
    train_parts, val_parts = [], []
    offset = 0
    for source in sources:
        n = source["n_tokens"]
        doc = tokens[offset:offset + n]
        offset += n
        n_val = max(1, math.ceil(n * val_fraction))
        if n - n_val < 1:
            raise SnnlmError(f"{source['path']}: only {n} tokens, too few to hold out a validation part")
        source["n_train"], source["n_val"] = n - n_val, n_val
        train_parts.append(doc[:n - n_val])
        val_parts.append(doc[n - n_val:])
    return _join_documents(train_parts, tokenizer.eot_id), _join_documents(val_parts, tokenizer.eot_id), sources


def token_fingerprint(train: np.ndarray, val: np.ndarray) -> str:
    """sha256 of the train and validation token streams: equal fingerprints mean identical training data."""
    h = hashlib.sha256()
    for split in (train, val):
        h.update(len(split).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(split, dtype=np.uint16).tobytes())
    return h.hexdigest()


def sample_batch(tokens: np.ndarray, batch_size: int, seq_len: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` random windows of the stream: ids (B, T) int64 and their next tokens, targets (B, T) int64."""
    if len(tokens) < seq_len + 1:
        raise SnnlmError(f"{len(tokens)} tokens are too few for windows of seq_len={seq_len} (need {seq_len + 1})")
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def eval_window_starts(n_tokens: int, seq_len: int, n_windows: int | None) -> np.ndarray:
    """Start offsets (K,) of K evenly spaced windows of seq_len + 1 tokens; None = as many as fit without overlap."""
    if n_tokens < seq_len + 1:
        raise SnnlmError(f"{n_tokens} tokens are too few for windows of seq_len={seq_len} (need {seq_len + 1})")
    most = (n_tokens - 1) // seq_len
    k = most if n_windows is None else max(1, min(n_windows, most))
    return np.floor(np.linspace(0, n_tokens - seq_len - 1, k)).astype(np.int64)


def iter_eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int,
                      max_batches: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Deterministic evenly spaced windows, in batches: (ids (b, T) int64, targets (b, T) int64), b <= batch_size.

    At most `max_batches` batches; None covers the whole stream with non-overlapping windows.
    """
    n_windows = None if max_batches is None else max_batches * batch_size
    starts = eval_window_starts(len(tokens), seq_len, n_windows)
    offsets = np.arange(seq_len + 1)
    for i in range(0, len(starts), batch_size):
        windows = tokens[starts[i:i + batch_size, None] + offsets].astype(np.int64)
        yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def _join_documents(parts: list[np.ndarray], eot_id: int) -> np.ndarray:
    eot = np.array([eot_id], dtype=np.uint16)
    pieces = []
    for i, part in enumerate(parts):
        if i:
            pieces.append(eot)
        pieces.append(part)
    return np.concatenate(pieces)


def _cached_tokens(files: list[Path], cache_dir: Path, tokenizer: GPT2Tokenizer) -> tuple[np.ndarray, list[dict]]:
    """All files' tokens back to back (N,) uint16 and their source dicts, from the cache when it is current."""
    contents = []
    for path in files:
        try:
            contents.append(path.read_bytes())
        except OSError as e:
            raise SnnlmError(f"{path}: cannot read it ({e.strerror})") from None
    sources = [{"path": str(path.resolve()), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
               for path, data in zip(files, contents)]
    tokenizer_sha = hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()
    cached = _read_cache(cache_dir, sources, tokenizer_sha)
    if cached is not None:
        return cached
    parts = []
    with tqdm(total=sum(s["size"] for s in sources), desc="tokenizing", unit="B", unit_scale=True,
              leave=False) as bar:
        for path, data, source in zip(files, contents, sources):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SnnlmError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
            if not text.strip():
                raise SnnlmError(f"{path}: the file holds no text")
            part = encode_text(text, tokenizer)
            source["n_tokens"] = len(part)
            parts.append(part)
            bar.update(source["size"])
    tokens = np.concatenate(parts)
    _write_cache(cache_dir, tokens, sources, tokenizer_sha)
    return tokens, sources


def _read_cache(cache_dir: Path, sources: list[dict], tokenizer_sha: str) -> tuple[np.ndarray, list[dict]] | None:
    # The cache is derived data: anything unreadable or stale just means "tokenize again".
    try:
        manifest = json.loads((cache_dir / CACHE_MANIFEST_FILE).read_text(encoding="utf-8"))
        if (manifest["format"] != _CACHE_FORMAT or manifest["tokenizer_sha256"] != tokenizer_sha
                or [(f["size"], f["sha256"]) for f in manifest["files"]] != [(s["size"], s["sha256"]) for s in sources]):
            return None
        raw = (cache_dir / CACHE_TOKENS_FILE).read_bytes()
        if hashlib.sha256(raw).hexdigest() != manifest["tokens_sha256"]:
            return None
        tokens = np.load(io.BytesIO(raw), allow_pickle=False)
        counts = [int(f["n_tokens"]) for f in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if tokens.dtype != np.uint16 or tokens.ndim != 1 or len(tokens) != sum(counts):
        return None
    return tokens, [{**s, "n_tokens": n} for s, n in zip(sources, counts)]


def _write_cache(cache_dir: Path, tokens: np.ndarray, sources: list[dict], tokenizer_sha: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, tokens, allow_pickle=False)
    raw = buffer.getvalue()
    with atomic_open(cache_dir / CACHE_TOKENS_FILE) as f:
        f.write(raw)
    # The manifest goes last and names the tokens file's hash, so a crash between the two writes
    # leaves a cache that is detected as stale rather than one that is silently wrong.
    manifest = {"format": _CACHE_FORMAT, "tokenizer_sha256": tokenizer_sha,
                "tokens_sha256": hashlib.sha256(raw).hexdigest(), "files": sources}
    atomic_write_text(cache_dir / CACHE_MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
