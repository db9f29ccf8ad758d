"""snnlm's GPT-2 against Hugging Face transformers' logits (fixture made by tests/fixtures/make_reference.py)."""
from pathlib import Path

import numpy as np

from snnlm.gpt2 import forward, hidden_states
from snnlm.weights import load_gpt2

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_gpt2"


def test_logits_match_transformers():
    model = load_gpt2(FIXTURE)
    ids = np.load(FIXTURE / "reference_tokens.npy")
    logits = forward(model.params, model.config, ids)
    columns = np.load(FIXTURE / "reference_columns.npy")
    assert np.abs(logits[:, columns] - np.load(FIXTURE / "reference_logits.npy")).max() < 1e-4
    assert (logits.argmax(axis=-1) == np.load(FIXTURE / "reference_argmax.npy")).all()


def test_final_hidden_states_match_transformers():
    model = load_gpt2(FIXTURE)
    h = hidden_states(model.params, model.config, np.load(FIXTURE / "reference_tokens.npy"))
    assert np.abs(h - np.load(FIXTURE / "reference_hidden.npy")).max() < 1e-4


def test_config_comes_from_shapes_and_config_json():
    config = load_gpt2(FIXTURE).config
    assert (config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer) == (50257, 64, 32, 4, 2)
