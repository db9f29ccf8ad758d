"""SNN decode speed against ANN decode in the same run, its time per token across contexts, and where one
SNN decode step spends its time.

(a) The default model (`weights/`), converted at T = 4 with the shipped corpus calibration: SNN decode
    (recurrent SSA state) against ANN decode (KV cache) at one context. The SNN's context and token come
    from WikiText-2, so that its spike densities, on which its speed depends, are those of real text.
(b) GPT-2-124M-shaped random weights (std 0.02), converted at T = 4 with thresholds calibrated on random
    tokens (fidelity is irrelevant here, speed is not): SNN against ANN decode at contexts 64, 256 and
    1023. An SSA layer's cost per token does not depend on the context, so the SNN's time should stay
    flat while the ANN's grows with its KV cache.
(c) The per-op breakdown of one SNN decode step of each model, by timers around the functions it calls.

Each model's ANN and SNN steps, at every context, run interleaved block by block, so that they share
the machine's load; every step starts from the same context (the ANN cache is rewound, the SNN state
restored).

    python benchmarks/bench_snn.py [--quick] [--weights DIR] [--out PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import (RESULTS_DIR, OtherLoad, TimedCall, Timing, after_warmup, decode_call, load_average, machine_info,
                    markdown_table, random_params, time_interleaved, write_results)

import snnlm.snn
import snnlm.spiking_ffn
import snnlm.ssa
from snnlm.config import GPT2Config
from snnlm.evaluate import DEFAULT_DATA, read_eval_ids
from snnlm.gpt2 import ANNDecoder
from snnlm.snn import SNNDecoder, SpikingGPT2, convert
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import DEFAULT_WEIGHTS_DIR, GPT2Model, load_gpt2

QUICK_WEIGHTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_gpt2"
SPEED_TARGET = 0.5  # SNN decode speed / ANN decode speed, GPT-2-124M-shaped, at the first context
FLATNESS_TARGET = 1.5  # SNN time per token at the last context / at the first

# The functions one SNN decode step calls, as (module that calls them, name, key). `op_timers` wraps the
# name in that module, where the step looks it up at each call, so the step runs its own code, timed.
TIMED_OPS = (
    (snnlm.snn, "ssa_step", "ssa"),
    (snnlm.ssa, "ec_if_constant", "ssa_encoder"),
    (snnlm.ssa, "spike_linear", "ssa_spike_matmuls"),
    (snnlm.ssa, "ec_if", "ssa_neurons"),
    (snnlm.ssa, "recurrent_step", "ssa_core"),
    (snnlm.snn, "spiking_ffn_forward", "ffn"),
    (snnlm.spiking_ffn, "ec_if_constant", "ffn_encoder"),
    (snnlm.spiking_ffn, "spike_linear", "ffn_spike_matmuls"),
    (snnlm.spiking_ffn, "ec_if", "ffn_neurons"),
    (snnlm.snn, "layer_norm", "layer_norms"),
    (snnlm.snn, "lm_head", "lm_head"),
)
# The breakdown's rows, in table order. A "rest" row is what its block's timer holds beyond its parts.
BREAKDOWN_ROWS = (
    ("ssa_encoder", "SSA encoder neurons (u)"),
    ("ssa_spike_matmuls", "SSA spike matmuls (c_attn, c_proj)"),
    ("ssa_neurons", "SSA q, k, v and output neurons"),
    ("ssa_core", "SSA core (recurrent step)"),
    ("ssa_rest", "SSA rest (head reshapes, output currents)"),
    ("ffn_encoder", "FFN encoder neurons"),
    ("ffn_spike_matmuls", "FFN spike matmuls (c_fc, c_proj)"),
    ("ffn_neurons", "FFN hidden neurons (GELU)"),
    ("ffn_rest", "FFN rest (mean over T, spike counts for its stats)"),
    ("layer_norms", "LayerNorms (ln_1, ln_2, ln_f)"),
    ("lm_head", "LM head (tied wte, real-valued)"),
    ("rest", "rest (embeddings, residual adds, Python)"),
    ("step", "whole decode step"),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What to time. Contexts count the tokens already seen when one more is decoded."""

    timesteps: int
    random_config: GPT2Config
    contexts: tuple[int, ...]  # of the random model, increasing; the speed target is read at the first
    default_context: int
    calibration_tokens: int  # random ids calibrating the random model
    steps_per_block: int
    rounds: int  # timed steps per context = steps_per_block x rounds
    breakdown_steps: int


# A 1024-token window holds at most 1023 tokens before the one being decoded.
FULL = Sizes(4, GPT2Config(), (64, 256, 1023), default_context=64, calibration_tokens=512, steps_per_block=4, rounds=8,
             breakdown_steps=16)
QUICK = Sizes(4, GPT2Config(n_vocab=2048, n_ctx=128, n_embd=128, n_head=2, n_layer=2), (16, 64, 127),
              default_context=16, calibration_tokens=128, steps_per_block=2, rounds=2, breakdown_steps=4)


def ann_decode_calls(model: GPT2Model, contexts: tuple[int, ...], rng) -> list[TimedCall]:
    """One ANN decoder; per context, the timed call of one decode step after it (random tokens)."""
    decoder = ANNDecoder(model.params, model.config)
    calls = []
    for context in contexts:
        _, step, rewind = decode_call(decoder, context, rng)
        calls.append((f"ANN, context {context}", step, rewind))
    return calls


def snn_decode_calls(snn: SpikingGPT2, ids: np.ndarray, contexts: tuple[int, ...]) -> list[TimedCall]:
    """One SNN decoder fed ids up to each (increasing) context in turn; per context, the timed call of
    one decode step (token ids[context]), whose setup restores the decoder's state at that context."""
    decoder = SNNDecoder(snn)
    calls = []
    for context in contexts:
        decoder.feed(ids[decoder.length:context])
        calls.append(_snn_step(decoder, context, int(ids[context])))
    return calls


def _snn_step(decoder: SNNDecoder, context: int, token: int) -> TimedCall:
    saved = [None if state is None else state.kv_sum.copy() for state in decoder.states]

    def restore():
        decoder.length = context
        if decoder.cache is not None:  # ANN attention layers: their keys up to `context` are intact
            decoder.cache.length = context
        for state, kv_sum in zip(decoder.states, saved):
            if state is not None:
                np.copyto(state.kv_sum, kv_sum)
                state.length = context

    return f"SNN, context {context}", lambda: decoder.feed([token]), restore


def time_decode(ann_calls: list[TimedCall], snn_calls: list[TimedCall], sizes: Sizes) -> dict[str, Timing]:
    """ANN and SNN steps at every context, interleaved in blocks; each block's first step left out."""
    calls = []
    for ann, snn in zip(ann_calls, snn_calls):
        calls += after_warmup(ann, sizes.steps_per_block) + after_warmup(snn, sizes.steps_per_block)
    timings = time_interleaved(calls, rounds=sizes.rounds)
    return {name: t for name, t in timings.items() if not name.endswith("first of a block")}


@contextlib.contextmanager
def op_timers(ops=TIMED_OPS) -> Iterator[dict[str, float]]:
    """Wrap each (module, name, key) of `ops` so that its seconds add up under key; yields the sums."""
    seconds = dict.fromkeys((key for _, _, key in ops), 0.0)
    originals = [(module, name, getattr(module, name)) for module, name, _ in ops]

    def timed(fn, key):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - start
        return run

    try:
        for (module, name, fn), (_, _, key) in zip(originals, ops):
            setattr(module, name, timed(fn, key))
        yield seconds
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def step_breakdown(call: TimedCall, steps: int) -> dict[str, float]:
    """Seconds of each BREAKDOWN_ROWS key in one decode step: the median over `steps` steps, after one untimed.

    Medians, because a step that the scheduler interrupts would weigh on a mean; so the parts need not add
    up exactly to the whole step.
    """
    _, step, restore = call
    restore()
    step()
    samples = []
    for _ in range(steps):
        restore()
        with op_timers() as seconds:
            start = time.perf_counter()
            step()
            seconds["step"] = time.perf_counter() - start
        seconds["ssa_rest"] = seconds["ssa"] - sum(seconds[f"ssa_{part}"] for part in
                                                   ("encoder", "spike_matmuls", "neurons", "core"))
        seconds["ffn_rest"] = seconds["ffn"] - sum(seconds[f"ffn_{part}"] for part in
                                                   ("encoder", "spike_matmuls", "neurons"))
        seconds["rest"] = seconds["step"] - sum(seconds[k] for k in ("ssa", "ffn", "layer_norms", "lm_head"))
        samples.append(seconds)
    return {key: float(np.median([sample[key] for sample in samples])) for key, _ in BREAKDOWN_ROWS}


@dataclasses.dataclass
class ModelRun:
    """One model's timings: ANN and SNN decode steps per context, and the SNN step's breakdown."""

    label: str
    ann: dict[int, Timing]
    snn: dict[int, Timing]
    breakdown: dict[str, float]


def measure_model(label: str, model: GPT2Model, snn: SpikingGPT2, contexts: tuple[int, ...], snn_ids: np.ndarray,
                  sizes: Sizes, rng) -> ModelRun:
    """Time one model's ANN and SNN decode steps at `contexts` (the SNN's context and tokens from snn_ids),
    then break down its SNN step at the first context."""
    if contexts[-1] >= model.config.n_ctx:
        raise SystemExit(f"{label}: context {contexts[-1]} leaves no room in its window of {model.config.n_ctx}")
    ann_calls = ann_decode_calls(model, contexts, rng)
    snn_calls = snn_decode_calls(snn, snn_ids, contexts)
    timings = time_decode(ann_calls, snn_calls, sizes)
    breakdown = step_breakdown(snn_calls[0], sizes.breakdown_steps)
    return ModelRun(label, {c: timings[f"ANN, context {c}"] for c in contexts},
                    {c: timings[f"SNN, context {c}"] for c in contexts}, breakdown)


def measure(sizes: Sizes, weights: Path) -> list[ModelRun]:
    """(a) the model in `weights` on WikiText-2 tokens, (b) the random GPT-2-124M-shaped one on random tokens."""
    rng = np.random.default_rng(0)
    model = load_gpt2(weights)
    context = (sizes.default_context,)
    text_ids = read_eval_ids(DEFAULT_DATA, tokenizer_for_weights(weights), sizes.default_context + 1)
    default = measure_model(f"{weights.name} ({model.config.n_layer} layers, d = {model.config.n_embd})", model,
                            convert(model, sizes.timesteps), context, text_ids, sizes, rng)

    config = sizes.random_config
    model = GPT2Model(config, random_params(config))
    snn = convert(model, sizes.timesteps, calibration_ids=rng.integers(0, config.n_vocab, sizes.calibration_tokens))
    random_ids = rng.integers(0, config.n_vocab, sizes.contexts[-1] + 1)
    shaped = measure_model(f"random, {config.n_layer} layers, d = {config.n_embd}", model, snn, sizes.contexts,
                           random_ids, sizes, rng)
    return [default, shaped]


def summarise(runs: list[ModelRun]) -> tuple[dict, list[list[object]], list[list[object]], list[list[object]]]:
    """JSON results and the rows of the speed, target and breakdown tables."""
    results: dict = {"models": []}
    speed_rows: list[list[object]] = []
    for run in runs:
        record: dict = {"label": run.label, "decode": {}, "breakdown_s": run.breakdown}
        for context in run.snn:
            ann, snn = run.ann[context].median, run.snn[context].median
            record["decode"][context] = {"ann": run.ann[context].to_json(), "snn": run.snn[context].to_json(),
                                         "snn_speed_over_ann": ann / snn}
            speed_rows.append([run.label, context, f"{ann * 1e3:.1f}", f"{snn * 1e3:.1f}", f"{ann / snn:.2f}x"])
        first, last = min(run.snn), max(run.snn)
        if first != last:
            growth = {name: times[last].median / times[first].median for name, times in (("ann", run.ann), ("snn", run.snn))}
            record["time_per_token_growth"] = {"contexts": [first, last], **growth}
            speed_rows.append([run.label, f"{last} / {first}", f"{growth['ann']:.2f}x", f"{growth['snn']:.2f}x", ""])
        results["models"].append(record)

    shaped = runs[-1]
    first, last = min(shaped.snn), max(shaped.snn)
    speed = results["models"][-1]["decode"][first]["snn_speed_over_ann"]
    flatness = results["models"][-1]["time_per_token_growth"]["snn"]
    results["targets"] = {
        "snn_over_ann_decode_speed": {"context": first, "value": speed, "target": SPEED_TARGET,
                                      "met": speed >= SPEED_TARGET},
        "snn_time_per_token_growth": {"contexts": [first, last], "value": flatness, "target": FLATNESS_TARGET,
                                      "met": flatness <= FLATNESS_TARGET},
    }
    target_rows = [[f"SNN / ANN decode speed, {shaped.label}, context {first}", f"{speed:.2f}", f">= {SPEED_TARGET}",
                    "yes" if speed >= SPEED_TARGET else "NO"],
                   [f"SNN time per token, context {last} / {first}, {shaped.label}", f"{flatness:.2f}",
                    f"<= {FLATNESS_TARGET}", "yes" if flatness <= FLATNESS_TARGET else "NO"]]

    breakdown_rows = []
    for key, label in BREAKDOWN_ROWS:
        row: list[object] = [label]
        for run in runs:
            share = run.breakdown[key] / run.breakdown["step"]
            row += [f"{run.breakdown[key] * 1e3:.3f}", f"{share:.0%}"]
        breakdown_rows.append(row)
    return results, speed_rows, target_rows, breakdown_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random config and the test fixture model, for a smoke run")
    parser.add_argument("--weights", type=Path,
                        help=f"model of part (a) (default: {DEFAULT_WEIGHTS_DIR}, with --quick {QUICK_WEIGHTS})")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/snn.json, or snn_quick.json)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    weights = args.weights or (QUICK_WEIGHTS if args.quick else DEFAULT_WEIGHTS_DIR)
    out = args.out or RESULTS_DIR / ("snn_quick.json" if args.quick else "snn.json")

    machine = machine_info()
    other = OtherLoad()
    runs = measure(sizes, weights)
    results, speed_rows, target_rows, breakdown_rows = summarise(runs)
    machine["load_average_end"] = load_average()
    machine["other_processes_cpu_share"] = other.share()

    print(f"Decode at T = {sizes.timesteps}: ANN with a KV cache, SNN with the recurrent SSA state; median ms per "
          f"token of {sizes.steps_per_block * sizes.rounds} steps, interleaved:\n")
    print(markdown_table(["model", "context", "ANN ms/token", "SNN ms/token", "SNN speed / ANN"], speed_rows))
    print()
    print(markdown_table(["target", "value", "needed", "met"], target_rows))
    print(f"\nOne SNN decode step, at context {sizes.default_context} (a) and {sizes.contexts[0]} (b): median of "
          f"{sizes.breakdown_steps} steps per part, by timers around the calls:\n")
    headers = ["part of the step"]
    for run in runs:
        headers += [f"{run.label}, ms", "share"]
    print(markdown_table(headers, breakdown_rows))
    share = machine["other_processes_cpu_share"]
    print(f"\n{machine['usable_cpus']} CPUs, {machine['numba_threads']} Numba threads, load average "
          f"{machine['load_average']} -> {machine['load_average_end']}, other processes took "
          f"{'?' if share is None else f'{share:.0%}'} of the CPU time")
    settings = {**dataclasses.asdict(sizes), "weights": str(weights)}
    write_results(out, "snn", settings, results, machine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
