"""The GPT-2 tokenizer against llama.cpp's reference vectors, plus round-trip and streaming properties."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnlm.errors import SnnlmError
from snnlm.tokenizer import GPT2Tokenizer, build_byte_level_bpe, gpt2_bytes_to_unicode, load_tokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
VECTORS_DIR = Path(__file__).resolve().parent / "fixtures" / "tokenizer"
CASE_SEPARATOR = "\n__ggml_vocab_test__\n"
N_VECTOR_CASES = 46
GPT2_N_VOCAB = 50257
GPT2_EOT_ID = 50256

# Surrogates cannot be encoded to UTF-8, so no tokenizer can take them.
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


def read_test_vectors() -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs; every case in the .inp file ends with the separator line."""
    inputs = (VECTORS_DIR / "test-vectors.inp").read_bytes().decode("utf-8")
    outputs = (VECTORS_DIR / "test-vectors.out").read_text(encoding="utf-8")
    assert inputs.endswith(CASE_SEPARATOR) and outputs.endswith("\n")
    texts = inputs[: -len(CASE_SEPARATOR)].split(CASE_SEPARATOR)
    id_lines = outputs[:-1].split("\n")
    assert len(texts) == len(id_lines)
    return [(text, [int(token) for token in line.split()]) for text, line in zip(texts, id_lines)]


TEST_VECTORS = read_test_vectors()


@pytest.fixture(scope="module")
def tokenizer() -> GPT2Tokenizer:
    return load_tokenizer(WEIGHTS_DIR)


def test_vector_file_holds_every_case():
    assert len(TEST_VECTORS) == N_VECTOR_CASES


@pytest.mark.parametrize(("text", "expected_ids"), TEST_VECTORS, ids=[f"case{i:02d}" for i in range(len(TEST_VECTORS))])
def test_encode_matches_reference_vectors(tokenizer, text, expected_ids):
    assert tokenizer.encode(text) == expected_ids


def test_vocabulary_size_and_end_of_text(tokenizer):
    assert tokenizer.n_vocab == GPT2_N_VOCAB
    assert tokenizer.eot_id == GPT2_EOT_ID
    assert tokenizer.encode("<|endoftext|>") == [GPT2_EOT_ID]
    assert tokenizer.decode([GPT2_EOT_ID]) == "<|endoftext|>"
    assert stream(tokenizer, [GPT2_EOT_ID]) == ["<|endoftext|>", ""]
    assert tokenizer.encode("Hello<|endoftext|> world") == [15496, GPT2_EOT_ID, 995]


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = gpt2_bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in table.values())


@settings(max_examples=200, deadline=None)
@given(unicode_text)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def stream(tokenizer: GPT2Tokenizer, ids: list[int]) -> list[str]:
    decoder = tokenizer.stream_decoder()
    return [decoder.push(token_id) for token_id in ids] + [decoder.flush()]


@settings(max_examples=200, deadline=None)
@given(unicode_text)
def test_stream_decoder_concatenation_equals_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_first_256_ids_are_single_bytes(tokenizer):
    assert sorted(tokenizer.token_bytes(token_id) for token_id in range(256)) == [bytes([b]) for b in range(256)]


# Single-byte tokens (ids 0..255) often make invalid UTF-8, which both decoders must replace alike.
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 255), st.integers(0, GPT2_N_VOCAB - 1)), max_size=50))
def test_stream_decoder_matches_decode_on_arbitrary_ids(tokenizer, ids):
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_stream_decoder_holds_back_a_split_character(tokenizer):
    ids = tokenizer.encode("Äpfel")
    assert ids == [127, 226, 79, 69, 417]
    assert [tokenizer.decode([token_id]) for token_id in ids[:2]] == ["\ufffd", "\ufffd"]
    assert stream(tokenizer, ids) == ["", "Ä", "p", "f", "el", ""]


def test_unfinished_stream_flushes_as_replacement_character(tokenizer):
    decoder = tokenizer.stream_decoder()
    assert decoder.push(127) == ""
    assert decoder.flush() == "\ufffd"


@pytest.mark.parametrize("token_id", [-1, GPT2_N_VOCAB])
def test_out_of_vocabulary_ids_are_rejected(tokenizer, token_id):
    with pytest.raises(SnnlmError, match=f"token id {token_id} is outside the vocabulary"):
        tokenizer.decode([token_id])
    with pytest.raises(SnnlmError, match=f"token id {token_id} is outside the vocabulary"):
        tokenizer.stream_decoder().push(token_id)


def test_loads_openai_file_names(tmp_path, tokenizer):
    shutil.copyfile(WEIGHTS_DIR / "vocab.json", tmp_path / "encoder.json")
    shutil.copyfile(WEIGHTS_DIR / "merges.txt", tmp_path / "vocab.bpe")
    text, expected_ids = TEST_VECTORS[-1]
    assert load_tokenizer(tmp_path).encode(text) == expected_ids


def test_loads_tokenizer_json_first(tmp_path):
    build_byte_level_bpe(WEIGHTS_DIR / "vocab.json", WEIGHTS_DIR / "merges.txt").save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "vocab.json").write_text("not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("", encoding="utf-8")
    loaded = load_tokenizer(tmp_path)
    assert loaded.source == tmp_path / "tokenizer.json"
    for text, expected_ids in TEST_VECTORS:
        assert loaded.encode(text) == expected_ids
    assert loaded.eot_id == GPT2_EOT_ID


def test_merges_without_version_header_load(tmp_path, tokenizer):
    shutil.copyfile(WEIGHTS_DIR / "vocab.json", tmp_path / "vocab.json")
    merges = (WEIGHTS_DIR / "merges.txt").read_text(encoding="utf-8")
    assert merges.startswith("#version")
    (tmp_path / "merges.txt").write_text(merges.split("\n", 1)[1].replace("\n", "\r\n"), encoding="utf-8")
    text, expected_ids = TEST_VECTORS[-1]
    assert load_tokenizer(tmp_path).encode(text) == expected_ids


def test_missing_directory_is_an_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SnnlmError, match="does not exist; expected a directory with tokenizer.json") as error:
        load_tokenizer(missing)
    assert str(missing) in str(error.value)


@pytest.mark.parametrize("present_files", [[], ["vocab.json"], ["merges.txt"], ["encoder.json", "merges.txt"]])
def test_incomplete_file_set_is_an_error(tmp_path, present_files):
    for name in present_files:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    with pytest.raises(SnnlmError, match="holds no tokenizer files; expected tokenizer.json, or vocab.json and merges.txt") as error:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize(
    ("vocab_text", "merges_text", "message"),
    [
        ("{not json", "#version: 0.2\n", r"vocab.json: cannot read it as a JSON object"),
        ('["a", "b"]', "#version: 0.2\n", r"vocab.json: expected a JSON object of token -> integer id"),
        ('{"a": 0, "b": 1, "ab": 2}', "#version: 0.2\na b c\n", r"merges.txt:2: expected two tokens"),
        ('{"a": 0, "b": 1}', "#version: 0.2\na b\n", r"merges.txt: the merge 'a' 'b' needs 'ab', which vocab.json lacks"),
        ('{"a": 0, "ab": 1}', "#version: 0.2\na b\n", r"merges.txt: the merge 'a' 'b' needs 'b', which vocab.json lacks"),
        ('{"a": 0, "b": 1, "ab": 2}', "#version: 0.2\na b\n", r"vocab.json: the vocabulary has no <\|endoftext\|> token"),
    ],
)
def test_malformed_files_are_errors(tmp_path, vocab_text, merges_text, message):
    (tmp_path / "vocab.json").write_text(vocab_text, encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges_text, encoding="utf-8")
    with pytest.raises(SnnlmError, match=message) as error:
        load_tokenizer(tmp_path)
    assert "\n" not in str(error.value)


def test_malformed_tokenizer_json_is_an_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}', encoding="utf-8")
    with pytest.raises(SnnlmError, match="tokenizer.json: cannot read it as a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)


def test_undecodable_merges_file_is_an_error(tmp_path):
    shutil.copyfile(WEIGHTS_DIR / "vocab.json", tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe a\n")
    with pytest.raises(SnnlmError, match="merges.txt: cannot read it as UTF-8 text"):
        load_tokenizer(tmp_path)
