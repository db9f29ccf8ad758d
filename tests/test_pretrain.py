"""`python -m snnlm.pretrain` end to end on a tiny model: learning, export, determinism, stop/resume,
signals, divergence and damaged checkpoints."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snnlm import pretrain
from snnlm.pretrain import CHECKPOINT_FILE, LOG_FILE, MODEL_DIR, TRAINING_FILE, build_parser, load_checkpoint, main
from snnlm.safetensors_io import read_safetensors
from snnlm.weights import load_gpt2

# Public-domain English (Austen, Pride and Prejudice, chapter 1), a few KB once repeated.
PARAGRAPHS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife.",
    "However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families, that he is considered as the "
    "rightful property of some one or other of their daughters.",
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at "
    "last?\" Mr. Bennet replied that he had not.",
    "\"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" "
    "Mr. Bennet made no answer.",
]
TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--n-ctx", "32", "--seq-len", "16",
        "--batch-size", "4", "--lr", "3e-3", "--warmup", "2", "--eval-every", "10", "--eval-batches", "2",
        "--val-fraction", "0.1", "--save-dtype", "float32", "--checkpoint-every", "100"]
STEPS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for name in ("austen.txt", "more_austen.txt"):
        order = rng.permutation(len(PARAGRAPHS) * 6) % len(PARAGRAPHS)
        (folder / name).write_text("\n\n".join(PARAGRAPHS[i] for i in order) + "\n", encoding="utf-8")
    return folder


def run(corpus: Path, out: Path, *extra: str) -> int:
    return main(["--data", str(corpus), "--out", str(out), *TINY, "--steps", str(STEPS), *extra])


def checkpoint_tensors(out: Path) -> dict[str, np.ndarray]:
    tensors, _ = read_safetensors(out / CHECKPOINT_FILE)
    return {k: np.array(v) for k, v in tensors.items()}


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    """A finished uninterrupted 20-step run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("straight")
    assert run(corpus, out) == 0
    return out


def test_run_learns_and_writes_a_loadable_model(straight):
    steps = [r for r in log_records(straight) if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    losses = [r["train_loss"] for r in steps]
    assert losses[0] == pytest.approx(math.log(50257), abs=0.3)
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    assert [r["step"] for r in steps if "val_loss" in r] == [10]

    model = load_gpt2(straight / MODEL_DIR)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head, model.config.n_ctx) == (2, 32, 2, 32)
    checkpoint = load_checkpoint(straight / CHECKPOINT_FILE)
    assert checkpoint.state.step == STEPS
    np.testing.assert_array_equal(model.params["wte"], checkpoint.params["wte"])
    for name in ("vocab.json", "merges.txt"):
        assert (straight / MODEL_DIR / name).is_file()

    training = json.loads((straight / MODEL_DIR / TRAINING_FILE).read_text())
    assert training["steps"] == STEPS and training["tokens_seen"] == STEPS * 4 * 16
    assert [Path(d["path"]).name for d in training["data"]] == ["austen.txt", "more_austen.txt"]
    assert all(len(d["sha256"]) == 64 for d in training["data"])
    assert training["val_perplexity"] == pytest.approx(math.exp(training["val_loss"]))
    assert training["val_loss"] < math.log(50257) - 1.0
    assert 1.0 < training["unigram_val_perplexity"] < 50257
    assert "--steps 20" in training["commands"][0]


def test_same_seed_same_result_other_seed_differs(corpus, straight, tmp_path):
    assert run(corpus, tmp_path / "same") == 0
    assert_same_tensors(checkpoint_tensors(straight), checkpoint_tensors(tmp_path / "same"))
    assert run(corpus, tmp_path / "other", "--seed", "1", "--steps", "1") == 0
    assert not np.array_equal(checkpoint_tensors(tmp_path / "other")["params.wte.weight"],
                              checkpoint_tensors(straight)["params.wte.weight"])


def test_stop_and_resume_equals_uninterrupted(corpus, straight, tmp_path, capsys):
    out = tmp_path / "split"
    assert run(corpus, out, "--stop-at", "10") == 0
    assert "--resume" in last_error_line(capsys)
    assert load_checkpoint(out / CHECKPOINT_FILE).state.step == 10
    assert not (out / MODEL_DIR).exists()
    assert run(corpus, out, "--resume") == 0
    assert_same_tensors(checkpoint_tensors(straight), checkpoint_tensors(out))
    assert [r["step"] for r in log_records(out) if "train_loss" in r] == list(range(1, STEPS + 1))
    training = json.loads((out / MODEL_DIR / TRAINING_FILE).read_text())
    assert len(training["commands"]) == 2 and training["tokens_seen"] == STEPS * 4 * 16


def test_existing_checkpoint_is_not_overwritten(corpus, straight, capsys):
    before = (straight / CHECKPOINT_FILE).read_bytes()
    assert run(corpus, straight) == 2
    line = last_error_line(capsys)
    assert line.startswith("snnlm: error:") and "--resume" in line
    assert (straight / CHECKPOINT_FILE).read_bytes() == before


def test_resume_refuses_other_shape_or_data(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(corpus, out, "--stop-at", "2") == 0
    assert run(corpus, out, "--resume", "--n-embd", "64") == 2
    assert "--n-embd is 64 but the checkpoint has 32" in last_error_line(capsys)
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in corpus.iterdir():
        (changed / f.name).write_text(f.read_text() + "One more sentence.\n")
    assert run(changed, out, "--resume") == 2
    assert "austen.txt changed" in last_error_line(capsys)
    assert run(corpus, tmp_path / "nothing", "--resume") == 2
    assert "no checkpoint" in last_error_line(capsys)


def test_truncated_checkpoint_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(corpus, out, "--stop-at", "2") == 0
    path = out / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert run(corpus, out, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snnlm: error:") and "truncated" in err[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = pretrain.loss_and_grads
    calls = []

    def poisoned(params, config, ids, targets, need_grads=True):
        loss, grads = real(params, config, ids, targets, need_grads)
        if need_grads:
            calls.append(1)
            if len(calls) == 8:
                return float("nan"), grads
        return loss, grads

    monkeypatch.setattr(pretrain, "loss_and_grads", poisoned)
    assert run(corpus, out, "--checkpoint-every", "5") == 2
    line = last_error_line(capsys)
    assert line.startswith("snnlm: error: step 8:") and "step 5) is kept" in line
    monkeypatch.undo()
    assert load_checkpoint(out / CHECKPOINT_FILE).state.step == 5
    assert not (out / MODEL_DIR).exists()
    reference = tmp_path / "reference"
    assert run(corpus, reference, "--stop-at", "5") == 0
    assert_same_tensors(checkpoint_tensors(reference), checkpoint_tensors(out))


def test_divergent_learning_rate_is_a_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(corpus, out, "--lr", "1e30", "--min-lr", "0", "--warmup", "0") == 2
    line = last_error_line(capsys)
    assert "diverged" in line and "no checkpoint had been written yet" in line
    assert not (out / CHECKPOINT_FILE).exists()


def test_sigint_saves_a_checkpoint_and_exits_130(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = pretrain.loss_and_grads
    calls = []

    def interrupted(params, config, ids, targets, need_grads=True):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(params, config, ids, targets, need_grads)

    monkeypatch.setattr(pretrain, "loss_and_grads", interrupted)
    handler_before = signal.getsignal(signal.SIGINT)
    assert run(corpus, out) == 130
    assert "stopped by SIGINT after step 3" in capsys.readouterr().err
    assert load_checkpoint(out / CHECKPOINT_FILE).state.step == 3
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_sigterm_to_a_running_process_leaves_a_valid_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "snnlm.pretrain", "--data", str(corpus), "--out", str(out), *TINY,
               "--steps", "100000"]
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 300  # a ceiling for a loaded machine, not a timing test
            while not ((out / LOG_FILE).exists() and len((out / LOG_FILE).read_text().splitlines()) >= 3):
                assert process.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 143
        finally:
            if process.poll() is None:
                process.kill()
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    assert checkpoint.state.step == log_records(out)[-1]["step"] >= 3
    assert "--resume" in stderr_path.read_text()


def test_time_limit_stops_with_checkpoint_and_export(corpus, tmp_path):
    out = tmp_path / "run"
    assert run(corpus, out, "--time-limit", "1e-6") == 0
    assert load_checkpoint(out / CHECKPOINT_FILE).state.step == 1
    training = json.loads((out / MODEL_DIR / TRAINING_FILE).read_text())
    assert training["steps"] == 1 and training["stopped_early"] == "time-limit"


def test_too_little_text_for_seq_len(corpus, tmp_path, capsys):
    assert main(["--data", str(corpus), "--out", str(tmp_path), *TINY, "--val-fraction", "0.003"]) == 2
    assert "validation split has" in last_error_line(capsys)


def test_bad_flags_exit_2_with_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n-ctx", "32", "--seq-len", "64"]) == 2
    err = capsys.readouterr().err
    assert "--seq-len 64 exceeds --n-ctx 32" in err and err.count("\n") == 1


def test_help_documents_every_flag():
    parser = build_parser()
    text = parser.format_help()
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    assert len(flags) > 20
    for action in parser._actions:
        assert action.help, action.option_strings
    for flag in flags:
        assert flag in text
