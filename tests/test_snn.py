"""The spiking GPT-2: conversion, whole-sequence forward vs incremental decoding, checkpoints."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, tiny_params
from snnlm.errors import SnnlmError
from snnlm.gpt2 import hidden_states, lm_head
from snnlm.safetensors_io import read_safetensors, write_safetensors
from snnlm.snn import (CHECKPOINT_FORMAT, SNNDecoder, convert, corpus_calibration_ids, load_snn, save_snn,
                       snn_forward, snn_logits)
from snnlm.spiking_ffn import SpikingFFNStats
from snnlm.ssa import SSAStats
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import GPT2Model, load_gpt2

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_gpt2"


@functools.lru_cache(maxsize=None)
def _random_model() -> GPT2Model:
    return GPT2Model(TINY, tiny_params(TINY, np.random.default_rng(5), np.float32))


@functools.lru_cache(maxsize=None)
def _random_snn(attention=True, ffn=True, timesteps=4):
    ids = np.random.default_rng(6).integers(0, TINY.n_vocab, 8 * TINY.n_ctx)
    return convert(_random_model(), timesteps, ids, attention=attention, ffn=ffn, progress=False)


@functools.lru_cache(maxsize=None)
def _corpus_ids() -> np.ndarray:
    return corpus_calibration_ids(tokenizer_for_weights(FIXTURE))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


def test_corpus_calibration_ids_are_the_leading_tokens_of_the_files(tmp_path):
    tokenizer = tokenizer_for_weights(FIXTURE)
    first, second = "Call me Ishmael. " * 30, "The second file, a short one.\nIt ends here."
    (tmp_path / "a.txt").write_text(first, encoding="utf-8")
    (tmp_path / "b.txt").write_text(second, encoding="utf-8")
    whole = tokenizer.encode(first) + [tokenizer.eot_id] + tokenizer.encode(second)
    assert corpus_calibration_ids(tokenizer, 20, tmp_path).tolist() == whole[:20]
    assert corpus_calibration_ids(tokenizer, len(whole) - 3, tmp_path).tolist() == whole[:-3]
    assert corpus_calibration_ids(tokenizer, 10 * len(whole), tmp_path).tolist() == whole
    moby_dick = (Path(__file__).resolve().parents[1] / "data" / "corpus" / "moby_dick.txt").read_text(encoding="utf-8")
    assert _corpus_ids().tolist() == tokenizer.encode(moby_dick[:50_000])[:4096]


def test_converted_ffns_at_large_t_track_the_ann():
    model = load_gpt2(FIXTURE)
    ids = _corpus_ids()
    calibration, held_out = ids[:2048], ids[-model.config.n_ctx:]
    reference = hidden_states(model.params, model.config, held_out)
    snn = convert(model, 32, calibration, attention=False, progress=False)
    assert snn.ffn_layers == [0, 1] and snn.attention_layers == []
    assert _cosine(snn_forward(snn, held_out)[0], reference) > 0.99


@pytest.mark.parametrize("attention, ffn", [(True, True), (True, False), (False, True), ([1], [0])])
def test_decoder_gives_the_whole_sequence_logits(attention, ffn):
    """With every block spiking the hidden states agree bit for bit. The logits (the tied head: one row
    against N rows of BLAS) and any ANN block kept agree to float32 rounding only."""
    snn = _random_snn(tuple(attention) if isinstance(attention, list) else attention,
                      tuple(ffn) if isinstance(ffn, list) else ffn)
    ids = np.random.default_rng(7).integers(0, TINY.n_vocab, TINY.n_ctx)
    whole = snn_logits(snn, ids)
    decoder = SNNDecoder(snn)
    assert (decoder.cache is None) == all(layer is not None for layer in snn.attention)
    fed = [decoder.feed(ids[:5])] + [decoder.feed([token]) for token in ids[5:]]
    np.testing.assert_allclose(np.stack(fed), whole[4:], rtol=1e-5, atol=1e-5)
    if attention is True and ffn is True:
        hidden = snn_forward(snn, ids)[0]
        decoder = SNNDecoder(snn)
        for i, token in enumerate(ids):
            np.testing.assert_array_equal(decoder.feed([token]), lm_head(snn.params, hidden[i:i + 1])[0])
    with pytest.raises(ValueError, match="context window"):
        decoder.feed([0])


def test_stats_name_each_spiking_block():
    snn = _random_snn((0,), True)
    _, stats = snn_forward(snn, np.arange(10))
    assert isinstance(stats[0].attention, SSAStats) and stats[1].attention is None
    assert all(isinstance(layer.ffn, SpikingFFNStats) for layer in stats)
    assert stats[1].ffn.slots == {"in": 4 * 10 * TINY.n_embd, "hidden": 4 * 10 * 4 * TINY.n_embd}
    assert 0 < stats[1].ffn.spikes["hidden"] < stats[1].ffn.slots["hidden"]


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    snn = _random_snn((1,), (0,))
    path = save_snn(tmp_path / "snn.safetensors", snn)
    tensors, metadata = read_safetensors(path)
    assert metadata["format"] == CHECKPOINT_FORMAT and int(metadata["timesteps"]) == 4
    assert json.loads(metadata["attention_layers"]) == [1] and json.loads(metadata["ffn_layers"]) == [0]
    assert json.loads(metadata["config"])["n_embd"] == TINY.n_embd and metadata["snnlm_version"]
    assert {"wte.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight", "h.1.ssa.alpha",
            "h.0.ffn.theta_h"} <= set(tensors)
    assert not {"h.1.attn.c_attn.weight", "h.0.mlp.c_fc.weight"} & set(tensors)
    loaded = load_snn(path)
    assert loaded.settings == snn.settings and loaded.timesteps == snn.timesteps
    ids = np.arange(12)
    np.testing.assert_array_equal(snn_logits(loaded, ids), snn_logits(snn, ids))


def _one_line_error(path) -> str:
    with pytest.raises(SnnlmError) as e:
        load_snn(path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    assert "no such file" in _one_line_error(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage!" * 10)
    assert "not a safetensors file" in _one_line_error(tmp_path / "garbage.safetensors")
    assert "not an snnlm spiking checkpoint" in _one_line_error(FIXTURE / "model.safetensors")

    path = save_snn(tmp_path / "snn.safetensors", _random_snn())
    tensors, metadata = read_safetensors(path)
    truncated = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(truncated[:len(truncated) // 2])
    assert "truncated" in _one_line_error(tmp_path / "truncated.safetensors")
    without = {k: v for k, v in tensors.items() if k != "h.1.ffn.b_fc"}
    write_safetensors(tmp_path / "missing.safetensors", without, metadata)
    assert "h.1.ffn.b_fc" in _one_line_error(tmp_path / "missing.safetensors")
    write_safetensors(tmp_path / "shape.safetensors", {**tensors, "h.0.ln_2.bias": np.zeros(3, np.float32)}, metadata)
    assert "h.0.ln_2.bias" in _one_line_error(tmp_path / "shape.safetensors")
    write_safetensors(tmp_path / "meta.safetensors", tensors, {**metadata, "config": "{"})
    assert "metadata" in _one_line_error(tmp_path / "meta.safetensors")
    write_safetensors(tmp_path / "layers.safetensors", tensors, {**metadata, "ffn_layers": "[0]"})
    assert "missing tensor 'h.1.mlp.c_fc.weight'" in _one_line_error(tmp_path / "layers.safetensors")
    extra = {**tensors, "h.0.attn.c_attn.weight": np.zeros((8, 24), np.float32)}
    write_safetensors(tmp_path / "extra.safetensors", extra, metadata)
    assert "unexpected tensor 'h.0.attn.c_attn.weight'" in _one_line_error(tmp_path / "extra.safetensors")
    partial, partial_metadata = read_safetensors(save_snn(tmp_path / "partial.safetensors", _random_snn(True, (1,))))
    stray = {**partial, **{k: v for k, v in tensors.items() if k.startswith("h.0.ffn.")}}
    write_safetensors(tmp_path / "stray.safetensors", stray, partial_metadata)
    assert "unexpected tensor 'h.0.ffn." in _one_line_error(tmp_path / "stray.safetensors")


@pytest.mark.parametrize("kwargs, needle", [
    ({"attention": [2]}, r"layers \[2\] do not exist"),
    ({"calibration_ids": np.array([0, TINY.n_vocab])}, "calibration token ids"),
    ({"timesteps": 0}, "timesteps"),
    ({"method": "best"}, "method"),
    ({"burst": 0}, "burst"),
    ({"percentile": 120}, "percentile"),
])
def test_convert_rejects_bad_arguments(kwargs, needle):
    arguments = {"calibration_ids": np.arange(TINY.n_ctx), "progress": False, **kwargs}
    with pytest.raises(SnnlmError, match=needle):
        convert(_random_model(), **arguments)
