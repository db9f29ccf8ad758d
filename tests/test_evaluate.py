"""`python -m snnlm.evaluate` and its Python API `evaluate`."""
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY as TINY_CONFIG, tiny_params
from snnlm.evaluate import DEFAULT_DATA, evaluate, main, row_cosines
from snnlm.gpt2 import forward
from snnlm.snn import convert, save_snn
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import GPT2Model, load_gpt2

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_gpt2"
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity. ") * 4
RESULT_KEYS = {"tokens", "window", "windows", "predicted_tokens", "method", "timesteps", "attention_layers",
               "ffn_layers", "perplexity", "cosine_hidden", "cosine_logits", "top1_agreement", "firing_rates", "energy"}
ENERGY_KEYS = {"constants", "note", "tokens", "paper_ssa_saving_percent", "layers", "outside", "attention", "ffn",
               "model", "model_without_lm_head"}


@functools.lru_cache(maxsize=None)
def _model():
    return load_gpt2(TINY)


@functools.lru_cache(maxsize=None)
def _ids() -> np.ndarray:
    return np.asarray(tokenizer_for_weights(TINY).encode(TEXT), dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _snn(attention: bool, ffn: bool, timesteps: int = 2):
    return convert(_model(), timesteps, _ids(), attention=attention, ffn=ffn, progress=False)


def run_cli(capsys, tmp_path, *argv):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    code = main(["--weights", str(TINY), "--data", str(data), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_is_one_object_with_the_documented_keys(capsys, tmp_path):
    code, out, err = run_cli(capsys, tmp_path, "--timesteps", "2", "--max-tokens", "80", "--window", "32", "--json")
    assert code == 0 and "converting" in err
    result = json.loads(out)
    assert set(result) == RESULT_KEYS | {"source"} and set(result["energy"]) == ENERGY_KEYS
    assert (result["tokens"], result["windows"], result["predicted_tokens"], result["timesteps"]) == (80, 3, 77, 2)
    assert result["attention_layers"] == result["ffn_layers"] == [0, 1]
    assert result["source"]["data"].endswith("text.txt")
    for block in ("attention", "ffn"):
        assert 0 < result["energy"][block]["snn_pj"] < result["energy"][block]["ann_pj"]
    for layer in result["firing_rates"]:
        rates = [*layer["attention"].values(), *layer["ffn"].values()]
        assert all(0.0 <= r <= 1.0 for r in rates) and any(r > 0 for r in rates)


def test_an_snn_that_converts_nothing_matches_the_ann_exactly(capsys, tmp_path):
    code, out, _ = run_cli(capsys, tmp_path, "--no-attention", "--no-ffn", "--max-tokens", "70", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["attention_layers"] == result["ffn_layers"] == []
    for key in ("cosine_hidden", "cosine_logits"):
        assert result[key]["min"] == pytest.approx(1.0, abs=1e-12)
    assert result["top1_agreement"] == 1.0 and result["perplexity"]["ratio"] == 1.0
    energy = result["energy"]
    for key in ("attention", "ffn", "model"):
        assert energy[key]["snn_pj"] == energy[key]["ann_pj"]
    assert all(layer == {"attention": None, "ffn": None} for layer in result["firing_rates"])


def test_perplexity_is_that_of_non_overlapping_windows():
    model, ids = _model(), _ids()[:70]
    result = evaluate(model, _snn(False, True), ids, window=32)
    nll = 0.0
    for start in range(0, 70, 32):
        chunk = ids[start:start + 32]
        logits = forward(model.params, model.config, chunk).astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll -= log_probs[np.arange(chunk.size - 1), chunk[1:]].sum()
    assert (result["windows"], result["predicted_tokens"]) == (3, 67)
    assert result["perplexity"]["ann"] == pytest.approx(np.exp(nll / 67), rel=1e-5)
    assert result["perplexity"]["snn"] != result["perplexity"]["ann"]
    assert set(result) == RESULT_KEYS
    assert result["firing_rates"][0]["attention"] is None and result["energy"]["attention"]["ratio"] == 1.0


def test_row_cosines():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    assert row_cosines(a, b) == pytest.approx([1.0, -1.0, 0.0], abs=1e-15)


def test_checkpoint_evaluates_like_the_api_and_takes_a_new_t(capsys, tmp_path):
    path = save_snn(tmp_path / "snn.safetensors", _snn(True, False))
    code, out, err = run_cli(capsys, tmp_path, "--snn", str(path), "--max-tokens", "40", "--json")
    assert code == 0 and "converting" not in err
    result = json.loads(out)
    expected = evaluate(_model(), _snn(True, False), _ids()[:40])
    assert {k: v for k, v in result.items() if k != "source"} == json.loads(json.dumps(expected))
    code, out, err = run_cli(capsys, tmp_path, "--snn", str(path), "--timesteps", "3", "--max-tokens", "40", "--json")
    assert code == 0 and "calibrated for T=2" in err and json.loads(out)["timesteps"] == 3


def test_tables_by_default(capsys, tmp_path):
    code, out, _ = run_cli(capsys, tmp_path, "--no-attention", "--timesteps", "2", "--max-tokens", "40")
    assert code == 0
    for needle in ("perplexity", "top-1 agreement", "firing rates", "64.71-85.28", "data movement", "whole model"):
        assert needle in out


def test_a_checkpoint_of_another_model_is_refused(capsys, tmp_path):
    other = GPT2Model(TINY_CONFIG, tiny_params(TINY_CONFIG, np.random.default_rng(0), np.float32))
    snn = convert(other, 2, np.arange(40) % TINY_CONFIG.n_vocab, progress=False)
    path = save_snn(tmp_path / "other.safetensors", snn)
    code, out, err = run_cli(capsys, tmp_path, "--snn", str(path))
    assert code == 2 and out == "" and "does not match" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, needle", [
    (["--data", "{tmp}/missing.txt"], "no such file"),
    (["--data", "{tmp}/empty.txt"], "holds no text"),
    (["--data", "{tmp}/latin1.txt"], "UTF-8"),
    (["--snn", "{tmp}/garbage.safetensors"], "not a safetensors file"),
    (["--snn", str(TINY / "model.safetensors")], "not an snnlm spiking checkpoint"),
    (["--weights", "{tmp}/nowhere"], "no such weights directory"),
    (["--timesteps", "0"], "--timesteps"),
    (["--timesteps", "two"], "--timesteps"),
    (["--max-tokens", "1"], "--max-tokens"),
    (["--window", "1"], "--window"),
    (["--window", "65"], "context window"),
    (["--snn", "x.safetensors", "--no-ffn"], "--ffn"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, needle):
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage!" * 10)
    code, out, err = run_cli(capsys, tmp_path, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1


def test_cli_subprocess_bad_input_has_no_traceback(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "snnlm.evaluate", "--weights", str(TINY),
                          "--data", str(tmp_path / "missing.txt"), "--json"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_the_default_data_ships_with_the_repository():
    assert DEFAULT_DATA.is_file() and DEFAULT_DATA.stat().st_size > 0
    assert DEFAULT_DATA.relative_to(Path(__file__).resolve().parent.parent) == Path("data/wikitext-2-raw/wiki.test.raw")
