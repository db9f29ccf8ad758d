"""load_gpt2 / save_gpt2 on tiny checkpoints written in tmp_path in the Hugging Face layout.

Every bad input must raise SnnlmError with a one-line message that names the file and, where there
is one, the offending key, shape or dtype.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import TINY, get_leaf, hf_key_to_path, hf_tensors, tiny_params
from snnlm.config import GPT2Config
from snnlm.errors import SnnlmError
from snnlm.weights import load_gpt2, save_gpt2

TINY_HF_CONFIG = {"n_head": TINY.n_head, "layer_norm_epsilon": TINY.layer_norm_epsilon}


def tiny_tensors(rng: np.random.Generator, config: GPT2Config = TINY, dtype=np.float32) -> dict[str, np.ndarray]:
    return hf_tensors(tiny_params(config, rng, np.float32), dtype)


def write_checkpoint(directory: Path, tensors: dict[str, np.ndarray], hf_config: dict | None = TINY_HF_CONFIG) -> Path:
    """model.safetensors (+ config.json unless hf_config is None) in directory; returns the model file."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if hf_config is not None:
        (directory / "config.json").write_text(json.dumps(hf_config))
    return directory / "model.safetensors"


def write_raw_safetensors(path: Path, entries: list[tuple[str, str, tuple, bytes]]) -> None:
    """A safetensors file written by hand: entries of (key, dtype name, shape, raw little-endian data)."""
    header, offset = {}, 0
    for key, dtype, shape, data in entries:
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(e[3] for e in entries))


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """The bfloat16 encoding of float32 x by truncation: its upper 16 bits."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")


def load_error(directory: Path, file: Path, *fragments: str) -> str:
    """load_gpt2(directory) raises SnnlmError with one line naming `file` and every fragment."""
    with pytest.raises(SnnlmError) as excinfo:
        load_gpt2(directory)
    message = str(excinfo.value)
    assert "\n" not in message.strip() and message.strip(), repr(message)
    assert str(file) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def numbers_in(message: str, file: Path) -> set[str]:
    """The whole numbers in an error message, leaving out the file's path (tmp paths hold digits)."""
    return set(re.findall(r"\b\d+\b", message.replace(str(file), "")))


# --- loading good checkpoints ------------------------------------------------------------------

def test_every_tensor_lands_in_its_place_as_float32(tmp_path, rng):
    tensors = tiny_tensors(rng)
    write_checkpoint(tmp_path, tensors)
    model = load_gpt2(tmp_path)
    assert model.config == TINY
    assert model.directory == tmp_path
    assert len(model.params["blocks"]) == TINY.n_layer
    for key, expected in tensors.items():
        got = get_leaf(model.params, hf_key_to_path(key))
        assert got.dtype == np.float32, key
        np.testing.assert_array_equal(got, expected, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_save_then_load_round_trips(tmp_path, rng, dtype):
    params = tiny_params(TINY, rng, np.float32)
    save_gpt2(tmp_path, TINY, params, dtype=dtype)
    # What is on disk is the Hugging Face layout, readable by the safetensors library.
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert set(on_disk) == set(hf_tensors(params)) and all(t.dtype == dtype for t in on_disk.values())
    model = load_gpt2(tmp_path)
    assert model.config == TINY
    for key in on_disk:
        path = hf_key_to_path(key)
        expected = get_leaf(params, path).astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(get_leaf(model.params, path), expected, err_msg=key)


def test_transformer_prefix_is_accepted(tmp_path, rng):
    tensors = tiny_tensors(rng)
    write_checkpoint(tmp_path, {f"transformer.{k}": v for k, v in tensors.items()})
    model = load_gpt2(tmp_path)
    for key, expected in tensors.items():
        np.testing.assert_array_equal(get_leaf(model.params, hf_key_to_path(key)), expected, err_msg=key)


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_attention_mask_buffers_and_lm_head_are_ignored(tmp_path, rng, prefix):
    tensors = tiny_tensors(rng)
    extra = {
        f"{prefix}h.0.attn.bias": np.tril(np.ones((1, 1, TINY.n_ctx, TINY.n_ctx), dtype=np.bool_)),
        f"{prefix}h.1.attn.bias": np.tril(np.ones((1, 1, TINY.n_ctx, TINY.n_ctx), dtype=np.float32)),
        f"{prefix}h.0.attn.masked_bias": np.array(-1e4, dtype=np.float32),
        "lm_head.weight": np.zeros((TINY.n_vocab, TINY.n_embd), np.float32),  # must not replace the tied wte
    }
    write_checkpoint(tmp_path, {**{prefix + k: v for k, v in tensors.items()}, **extra})
    model = load_gpt2(tmp_path)
    assert model.config == TINY
    np.testing.assert_array_equal(model.params["wte"], tensors["wte.weight"])


def test_raw_writer_produces_files_the_safetensors_library_reads(tmp_path, rng):
    """Checks the hand-written writer that the bf16 tests rely on."""
    x = rng.normal(size=(3, 4)).astype(np.float32)
    write_raw_safetensors(tmp_path / "f.safetensors", [("x", "F32", x.shape, x.astype("<f4").tobytes())])
    np.testing.assert_array_equal(load_file(str(tmp_path / "f.safetensors"))["x"], x)


def test_bf16_on_disk_loads_as_the_truncated_float32_values(tmp_path, rng):
    tensors = tiny_tensors(rng)
    write_raw_safetensors(tmp_path / "model.safetensors",
                          [(k, "BF16", v.shape, bf16_bits(v).tobytes()) for k, v in tensors.items()])
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    model = load_gpt2(tmp_path)
    assert model.config == TINY
    for key, original in tensors.items():
        expected = (bf16_bits(original).astype(np.uint32) << 16).view(np.float32)
        assert not np.array_equal(expected, original)  # bf16 loses bits, so the check is not vacuous
        got = get_leaf(model.params, hf_key_to_path(key))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected, err_msg=key)


def test_config_json_sets_n_head_and_layer_norm_epsilon(tmp_path, rng):
    write_checkpoint(tmp_path, tiny_tensors(rng), {"n_head": 4, "layer_norm_epsilon": 1e-3})
    config = load_gpt2(tmp_path).config
    assert (config.n_head, config.layer_norm_epsilon) == (4, 1e-3)


@pytest.mark.parametrize("d, n_head", [(8, 1), (64, 1), (128, 2), (192, 3)])
def test_without_config_json_n_head_is_d_over_64_at_least_1(tmp_path, rng, d, n_head):
    config = GPT2Config(n_vocab=3, n_ctx=2, n_embd=d, n_head=1, n_layer=1)
    write_checkpoint(tmp_path, tiny_tensors(rng, config), hf_config=None)
    loaded = load_gpt2(tmp_path).config
    assert loaded == GPT2Config(n_vocab=3, n_ctx=2, n_embd=d, n_head=n_head, n_layer=1, layer_norm_epsilon=1e-5)


# --- bad input: the file system and the file format --------------------------------------------

def test_missing_directory(tmp_path):
    load_error(tmp_path / "nowhere", tmp_path / "nowhere")


def test_missing_model_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    load_error(tmp_path, tmp_path / "model.safetensors")


def test_random_bytes_are_not_a_safetensors_file(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    load_error(tmp_path, model)


def test_empty_file_is_not_a_safetensors_file(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    load_error(tmp_path, model)


@pytest.mark.parametrize("header", [b"{this is not json", b"\xff\xfe not utf-8 ", b"[1, 2, 3]"])
def test_header_that_is_not_a_json_object(tmp_path, header):
    model = tmp_path / "model.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    load_error(tmp_path, model)


def test_truncated_file_names_the_tensor_that_is_cut(tmp_path, rng):
    model = write_checkpoint(tmp_path, tiny_tensors(rng))
    data = model.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    header.pop("__metadata__", None)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])
    model.write_bytes(data[:-5])
    load_error(tmp_path, model, last)


def test_header_byte_count_that_disagrees_with_the_shape(tmp_path):
    model = tmp_path / "model.safetensors"
    write_raw_safetensors(model, [("wte.weight", "F32", (4, 8), bytes(4 * 8 * 4 - 4))])
    load_error(tmp_path, model, "wte.weight")


def test_dtype_the_reader_does_not_know(tmp_path):
    model = tmp_path / "model.safetensors"
    write_raw_safetensors(model, [("wte.weight", "F8_E5M2", (4, 8), bytes(32))])
    load_error(tmp_path, model, "wte.weight", "F8_E5M2")


# --- bad input: the tensors ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["wte.weight", "wpe.weight", "h.1.mlp.c_fc.bias", "ln_f.weight"])
def test_missing_tensor(tmp_path, rng, key):
    tensors = tiny_tensors(rng)
    del tensors[key]
    load_error(tmp_path, write_checkpoint(tmp_path, tensors), key)


@pytest.mark.parametrize("key, shape, expected", [
    ("h.0.attn.c_proj.weight", (8, 9), (8, 8)),
    ("ln_f.bias", (9,), (8,)),
    ("h.1.attn.c_attn.weight", (24, 8), (8, 24)),  # transposed, as in a torch Linear rather than a Conv1D
])
def test_wrong_shape(tmp_path, rng, key, shape, expected):
    tensors = tiny_tensors(rng)
    tensors[key] = rng.normal(size=shape).astype(np.float32)
    load_error(tmp_path, write_checkpoint(tmp_path, tensors), key, str(shape), str(expected))


def test_wrong_dtype(tmp_path, rng):
    tensors = tiny_tensors(rng)
    tensors["h.0.ln_1.weight"] = np.ones(TINY.n_embd, dtype=np.int32)
    load_error(tmp_path, write_checkpoint(tmp_path, tensors), "h.0.ln_1.weight", "int32")


def test_gap_in_the_block_numbers(tmp_path, rng):
    tensors = tiny_tensors(rng, GPT2Config(n_vocab=50, n_ctx=16, n_embd=8, n_head=2, n_layer=4))
    tensors = {k: v for k, v in tensors.items() if not k.startswith("h.2.")}  # h.0, h.1, h.3 remain
    model = write_checkpoint(tmp_path, tensors)
    message = load_error(tmp_path, model, "layer")
    assert "2" in numbers_in(message, model)  # names the missing block


def test_config_json_n_layer_disagreeing_with_the_blocks(tmp_path, rng):
    model = write_checkpoint(tmp_path, tiny_tensors(rng), {**TINY_HF_CONFIG, "n_layer": 3})
    message = load_error(tmp_path, model, "n_layer")
    assert {"2", "3"} <= numbers_in(message, model)


@pytest.mark.parametrize("name, value", [("n_embd", 16), ("vocab_size", 51), ("n_positions", 32)])
def test_config_json_disagreeing_with_the_shapes(tmp_path, rng, name, value):
    model = write_checkpoint(tmp_path, tiny_tensors(rng), {**TINY_HF_CONFIG, name: value})
    load_error(tmp_path, model, name, str(value))


def test_n_embd_not_divisible_by_n_head(tmp_path, rng):
    model = write_checkpoint(tmp_path, tiny_tensors(rng), {"n_head": 3})
    message = load_error(tmp_path, model, "n_head")
    assert {"3", "8"} <= numbers_in(message, model)


def test_config_json_that_is_not_json(tmp_path, rng):
    write_checkpoint(tmp_path, tiny_tensors(rng), hf_config=None)
    (tmp_path / "config.json").write_text("{n_head: 2")
    load_error(tmp_path, tmp_path / "config.json")


@pytest.mark.parametrize("text", ['{"n_head": null}', '{"layer_norm_epsilon": null}', '{"n_head": "two"}', "[]",
                                  '{"n_head": 2.5}'])
def test_config_json_with_values_of_the_wrong_type(tmp_path, rng, text):
    write_checkpoint(tmp_path, tiny_tensors(rng), hf_config=None)
    (tmp_path / "config.json").write_text(text)
    load_error(tmp_path, tmp_path / "config.json")


@pytest.mark.parametrize("key, value, dtype", [
    ("h.1.mlp.c_proj.weight", np.nan, np.float32),
    ("wpe.weight", np.inf, np.float32),
    ("ln_f.bias", -np.inf, np.float16),
])
def test_non_finite_weights(tmp_path, rng, key, value, dtype):
    tensors = tiny_tensors(rng, dtype=dtype)
    tensors[key].flat[3] = value
    load_error(tmp_path, write_checkpoint(tmp_path, tensors), key)


@pytest.mark.parametrize("key", ["score.weight", "h.0.mlp.c_gate.weight", "transformer.h.1.attn.q_norm.weight"])
def test_unexpected_extra_tensor(tmp_path, rng, key):
    tensors = tiny_tensors(rng)
    tensors[key] = np.ones(TINY.n_embd, np.float32)
    load_error(tmp_path, write_checkpoint(tmp_path, tensors), key.removeprefix("transformer."))
