"""`python -m snnlm.generate` and the sampling it uses."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from snnlm.generate import generate, main
from snnlm.gpt2 import ANNDecoder
from snnlm.sampling import next_token
from snnlm.snn import convert, save_snn
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import load_gpt2

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_gpt2"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_is_deterministic_and_continues_the_prompt(capsys):
    args = ("--weights", str(TINY), "--temperature", "0", "--max-new-tokens", "8", "The meaning of life is")
    code1, out1, _ = run_cli(capsys, *args)
    code2, out2, _ = run_cli(capsys, *args)
    assert code1 == code2 == 0
    assert out1 == out2
    assert out1.startswith("The meaning of life is") and len(out1) > len("The meaning of life is\n")


def test_greedy_decoding_follows_the_reference_argmax():
    model = load_gpt2(TINY)
    ids = [int(i) for i in np.load(TINY / "reference_tokens.npy")]
    argmax = np.load(TINY / "reference_argmax.npy")
    decoder = ANNDecoder(model.params, model.config)
    # Teacher forcing: after each reference token, the greedy choice is transformers' argmax.
    chosen = [next_token(decoder.feed([t]), np.random.default_rng(0), temperature=0) for t in ids]
    assert chosen == list(argmax)


def test_generate_api_returns_text():
    model = load_gpt2(TINY)
    text = generate(model, tokenizer_for_weights(TINY), "Hello", max_new_tokens=5, temperature=0)
    assert isinstance(text, str) and text


def test_same_seed_same_text_different_seed_different_text(capsys):
    base = ("--weights", str(TINY), "--max-new-tokens", "12", "--temperature", "1.5", "--top-k", "0", "Hello")
    a = run_cli(capsys, *base, "--seed", "1")[1]
    b = run_cli(capsys, *base, "--seed", "1")[1]
    c = run_cli(capsys, *base, "--seed", "2")[1]
    assert a == b != c


def test_long_prompt_refused_or_cropped(capsys):
    prompt = "word " * 100  # the tiny model's window is 64 tokens
    code, out, err = run_cli(capsys, "--weights", str(TINY), prompt)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "context window" in err and "--crop" in err
    code, out, err = run_cli(capsys, "--weights", str(TINY), "--crop", "--max-new-tokens", "3", prompt)
    assert code == 0 and "cropped" in err


def test_generation_stops_at_the_context_window(capsys):
    code, out, _ = run_cli(capsys, "--weights", str(TINY), "--temperature", "0", "--max-new-tokens", "500", "Hi")
    assert code == 0
    tokenizer = tokenizer_for_weights(TINY)
    assert len(tokenizer.encode(out.rstrip("\n"))) <= 64


@pytest.mark.parametrize("argv, needle", [
    (["--top-p", "0"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--mode", "quantum"], "--mode"),
])
def test_bad_options_exit_2_with_one_line(capsys, argv, needle):
    assert main(["--weights", str(TINY), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing", "no such weights directory"),
    (lambda d: d, "model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 7) and d, "not a safetensors file"),
])
def test_bad_weights_one_line_exit_2(tmp_path, capsys, make, needle):
    code, out, err = run_cli(capsys, "--weights", str(make(tmp_path)), "hi")
    assert code == 2 and needle in err and err.count("\n") == 1


def test_cli_subprocess_reads_prompt_from_stdin_and_has_no_traceback(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "snnlm.generate", "--weights", str(TINY), "--temperature", "0",
                         "--max-new-tokens", "3"], input="Once upon a time", capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("Once upon a time")
    (tmp_path / "model.safetensors").write_bytes(b"garbage!" * 10)
    bad = subprocess.run([sys.executable, "-m", "snnlm.generate", "--weights", str(tmp_path), "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_sampling_filters():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert next_token(logits, rng, temperature=0) == 1
    picks = {next_token(logits, rng, temperature=1.0, top_k=2) for _ in range(200)}
    assert picks == {1, 2}
    picks = {next_token(logits, rng, temperature=1.0, top_p=0.3) for _ in range(50)}
    assert picks == {1}


def test_snn_mode_converts_the_weights_and_streams_text(capsys):
    code, out, err = run_cli(capsys, "--weights", str(TINY), "--mode", "snn", "--timesteps", "2",
                             "--max-new-tokens", "5", "--temperature", "0", "Hello")
    assert code == 0 and out.startswith("Hello") and len(out) > len("Hello\n")
    assert "converting" in err and "T=2" in err


def test_snn_checkpoint_runs_through_the_spiking_decoder(tmp_path, capsys):
    tokenizer = tokenizer_for_weights(TINY)
    calibration = np.asarray(tokenizer.encode("It was the best of times, it was the worst of times. " * 20))
    snn = convert(load_gpt2(TINY), 3, calibration, progress=False)
    path = save_snn(tmp_path / "snn.safetensors", snn)
    code, out, err = run_cli(capsys, "--weights", str(TINY), "--snn", str(path), "--temperature", "0",
                             "--max-new-tokens", "4", "Hello")
    assert code == 0 and "converting" not in err
    assert out == "Hello" + generate(snn, tokenizer, "Hello", max_new_tokens=4, temperature=0) + "\n"
    code, _, err = run_cli(capsys, "--weights", str(TINY), "--snn", str(path), "--timesteps", "5",
                           "--max-new-tokens", "1", "Hello")
    assert code == 0 and "calibrated for T=3" in err


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.safetensors", "no such file"),
    (lambda d: (d / "bad.safetensors").write_bytes(b"garbage!" * 10) and d / "bad.safetensors",
     "not a safetensors file"),
    (lambda d: TINY / "model.safetensors", "not an snnlm spiking checkpoint"),
])
def test_bad_snn_checkpoint_one_line_exit_2(tmp_path, capsys, make, needle):
    code, out, err = run_cli(capsys, "--weights", str(TINY), "--snn", str(make(tmp_path)), "hi")
    assert code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, needle", [
    (["--mode", "ann", "--snn", "x.safetensors"], "--snn"),
    (["--timesteps", "4"], "--timesteps"),
    (["--mode", "snn", "--timesteps", "0"], "--timesteps"),
])
def test_bad_snn_options_exit_2(capsys, argv, needle):
    assert main(["--weights", str(TINY), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
