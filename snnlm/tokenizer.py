"""GPT-2's byte-level BPE tokenizer, built offline with `tokenizers` from the vocabulary files."""
from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from snnlm.errors import SnnlmError

EOT_TOKEN = "<|endoftext|>"
EXPECTED_FILES = "tokenizer.json, or vocab.json and merges.txt, or encoder.json and vocab.bpe"
VOCAB_AND_MERGES_FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte 0..255 to the printable character that stands for it in the vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    unprintable = [byte for byte in range(256) if byte not in table]
    for offset, byte in enumerate(unprintable):
        table[byte] = chr(256 + offset)
    return table


UNICODE_TO_BYTE = {char: byte for byte, char in gpt2_bytes_to_unicode().items()}


class GPT2Tokenizer:
    """Text <-> GPT-2 token ids. `<|endoftext|>` in text is the single special token `eot_id`."""

    def __init__(self, tokenizer: Tokenizer, source: Path):
        self.backend = tokenizer
        """The underlying `tokenizers.Tokenizer`, for fast batch encoding of large texts."""
        self.source = source
        self.n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        eot_id = tokenizer.token_to_id(EOT_TOKEN)
        if eot_id is None:
            raise SnnlmError(f"{source}: the vocabulary has no {EOT_TOKEN} token; expected GPT-2's vocabulary")
        self.eot_id = eot_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, shape (N,)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids, shape (N,); bytes that are not valid UTF-8 become U+FFFD."""
        checked_ids = [self._checked_id(token_id) for token_id in ids]
        return self.backend.decode(checked_ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes that one token stands for; may be part of a multi-byte UTF-8 character."""
        token = self.backend.id_to_token(self._checked_id(token_id))
        return bytes(UNICODE_TO_BYTE[char] for char in token)

    def stream_decoder(self) -> StreamDecoder:
        """A fresh StreamDecoder for one stream of generated tokens."""
        return StreamDecoder(self)

    def _checked_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.n_vocab:
            raise SnnlmError(f"token id {token_id} is outside the vocabulary of {self.source} (0..{self.n_vocab - 1})")
        return token_id


class StreamDecoder:
    """Turns token ids fed one at a time into text, holding back a multi-byte character until it is whole.

    The concatenation of every `push` result and the final `flush` equals `GPT2Tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer: GPT2Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes; empty while a character is still incomplete."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End the stream: a held-back incomplete character comes out as U+FFFD."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(directory: str | Path) -> GPT2Tokenizer:
    """Build the GPT-2 tokenizer from `directory`: tokenizer.json, else vocab.json + merges.txt,
    else encoder.json + vocab.bpe."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SnnlmError(f"tokenizer directory {directory} does not exist; expected a directory with {EXPECTED_FILES}")
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.is_file():
        return GPT2Tokenizer(read_tokenizer_json(tokenizer_json), tokenizer_json)
    for vocab_name, merges_name in VOCAB_AND_MERGES_FILE_NAMES:
        vocab_path, merges_path = directory / vocab_name, directory / merges_name
        if vocab_path.is_file() and merges_path.is_file():
            return GPT2Tokenizer(build_byte_level_bpe(vocab_path, merges_path), vocab_path)
    raise SnnlmError(f"{directory} holds no tokenizer files; expected {EXPECTED_FILES}")


def tokenizer_for_weights(weights_dir: str | Path) -> GPT2Tokenizer:
    """The tokenizer stored beside a checkpoint, else the embedded GPT-2 one.

    Every GPT-2 size shares one vocabulary, so a weights directory without tokenizer files (a
    bare `model.safetensors` + `config.json`) still gets the right tokenizer.
    """
    from snnlm.weights import DEFAULT_WEIGHTS_DIR

    weights_dir = Path(weights_dir)
    has_own = (weights_dir / "tokenizer.json").is_file() or any(
        (weights_dir / v).is_file() and (weights_dir / m).is_file() for v, m in VOCAB_AND_MERGES_FILE_NAMES)
    return load_tokenizer(weights_dir if has_own else DEFAULT_WEIGHTS_DIR)


def read_tokenizer_json(path: Path) -> Tokenizer:
    """A `tokenizers` Tokenizer from a Hugging Face tokenizer.json file."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise SnnlmError(f"{path}: cannot read it as a Hugging Face tokenizer.json ({_first_line(e)})") from e


def build_byte_level_bpe(vocab_path: Path, merges_path: Path) -> Tokenizer:
    """GPT-2's tokenizer from a vocabulary (token -> id JSON) and a merges file (one pair per line)."""
    vocab = read_vocab(vocab_path)
    merges = read_merges(merges_path)
    # tokenizers panics rather than raising when a merge names a token the vocabulary lacks
    for left, right in merges:
        for token in (left, right, left + right):
            if token not in vocab:
                raise SnnlmError(f"{merges_path}: the merge {left!r} {right!r} needs {token!r}, which {vocab_path.name} lacks")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    if EOT_TOKEN in vocab:
        tokenizer.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    return tokenizer


def read_vocab(path: Path) -> dict[str, int]:
    """The token -> id mapping of a vocab.json / encoder.json file."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnnlmError(f"{path}: cannot read it as a JSON object of token -> id ({_first_line(e)})") from e
    if not isinstance(vocab, dict) or not all(isinstance(token_id, int) for token_id in vocab.values()):
        raise SnnlmError(f"{path}: expected a JSON object of token -> integer id")
    return vocab


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merge pairs of a merges.txt / vocab.bpe file, in priority order; skips the `#version` header."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SnnlmError(f"{path}: cannot read it as UTF-8 text ({_first_line(e)})") from e
    merges = []
    # split on "\n" only: str.splitlines would also split on characters such as U+2028
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise SnnlmError(f"{path}:{line_number}: expected two tokens separated by one space, got {line!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
