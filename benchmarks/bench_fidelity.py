"""Fidelity of the spiking GPT-2 across timesteps T and what is converted: the FFN only, the SSA only
(weights transferred, no fine-tuning), or both.

For each (T, variant) the model is converted once (`snnlm.snn.convert`, calibrated on the shipped corpus)
and compared with the ANN on the WikiText-2 test text by `snnlm.evaluate.evaluate`, in windows of n_ctx
tokens: mean cosine similarity of the final hidden states, top-1 next-token agreement, perplexity
SNN / ANN (firing rates and energy go to the JSON). `evaluate` runs the ANN beside the SNN on every call,
so the ANN forward is repeated per configuration; its cost, timed once up front, is reported.

    python benchmarks/bench_fidelity.py [--quick] [--weights DIR] [--tokens N] [--timesteps 1,2,4]
                                        [--variants ffn,ssa,both] [--out PATH]

Writes the JSON and, beside it, the markdown table (benchmarks/results/fidelity.json and fidelity.md).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS_DIR, OtherLoad, load_average, machine_info, markdown_table, write_results
from tqdm import tqdm

from snnlm.evaluate import DEFAULT_DATA, eval_windows, evaluate, read_eval_ids
from snnlm.fileio import atomic_write_text
from snnlm.gpt2 import hidden_states, lm_head
from snnlm.snn import convert, corpus_calibration_ids
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import DEFAULT_WEIGHTS_DIR, GPT2Model, load_gpt2

QUICK_WEIGHTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_gpt2"
# Which blocks each variant converts: `convert`'s attention and ffn arguments.
VARIANTS = {"ffn": {"attention": False, "ffn": True},
            "ssa": {"attention": True, "ffn": False},
            "both": {"attention": True, "ffn": True}}
VARIANT_LABELS = {"ffn": "FFN only", "ssa": "SSA only", "both": "SSA + FFN"}
FULL_DEFAULTS = {"weights": DEFAULT_WEIGHTS_DIR, "tokens": 8192, "timesteps": (1, 2, 4, 8, 16, 32)}
QUICK_DEFAULTS = {"weights": QUICK_WEIGHTS, "tokens": 256, "timesteps": (1, 4)}


def time_ann_side(model: GPT2Model, ids) -> float:
    """Seconds of the ANN forward and LM head over every window of ids: what each `evaluate` call repeats."""
    start = time.perf_counter()
    for chunk in eval_windows(ids, model.config.n_ctx):
        lm_head(model.params, hidden_states(model.params, model.config, chunk))
    return time.perf_counter() - start


def run_configs(model: GPT2Model, ids, calibration_ids, timesteps: tuple[int, ...],
                variants: tuple[str, ...]) -> list[dict]:
    """Convert and evaluate each (variant, T); per configuration its `evaluate` result and the seconds of each stage."""
    configs = [(variant, T) for variant in variants for T in timesteps]
    records = []
    with tqdm(configs, desc="fidelity", unit="config") as bar:
        for variant, T in bar:
            bar.set_postfix_str(f"{variant}, T={T}")
            start = time.perf_counter()
            snn = convert(model, T, calibration_ids, progress=False, **VARIANTS[variant])
            converted = time.perf_counter()
            result = evaluate(model, snn, ids)
            records.append({"variant": variant, "timesteps": T, "convert_s": converted - start,
                            "evaluate_s": time.perf_counter() - converted, **result})
    return records


def table_rows(records: list[dict]) -> list[list[object]]:
    rows = []
    for r in records:
        ppl = r["perplexity"]
        rows.append([VARIANT_LABELS[r["variant"]], r["timesteps"], f"{r['cosine_hidden']['mean']:.4f}",
                     f"{r['top1_agreement']:.3f}", f"{ppl['ratio']:.3f}", f"{ppl['snn']:.2f}",
                     f"{r['convert_s']:.1f}", f"{r['evaluate_s']:.1f}"])
    return rows


def time_summary(records: list[dict], ann_side_s: float) -> list[str]:
    """Where the run's time went: by variant, by T, and the ANN forward that every `evaluate` repeats."""
    seconds = [r["convert_s"] + r["evaluate_s"] for r in records]
    total = sum(seconds)

    def shares(key: str, label) -> str:
        groups: dict = {}
        for r, s in zip(records, seconds):
            groups[r[key]] = groups.get(r[key], 0.0) + s
        return ", ".join(f"{label(k)} {s:.1f} s ({s / total:.0%})" for k, s in groups.items())

    return [f"converting and evaluating took {total:.1f} s; by variant: "
            f"{shares('variant', VARIANT_LABELS.__getitem__)}; by T: {shares('timesteps', 'T={}'.format)}",
            f"the ANN forward and LM head that each evaluate call repeats took {ann_side_s:.1f} s once, "
            f"{ann_side_s * len(records):.1f} s over the {len(records)} configurations "
            f"({ann_side_s * len(records) / total:.0%} of the run)"]


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"timesteps must be integers >= 1, got {text!r}")
    return values


def _variant_list(text: str) -> tuple[str, ...]:
    values = tuple(text.split(","))
    unknown = [v for v in values if v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"the test fixture model, {QUICK_DEFAULTS['tokens']} tokens, T in {QUICK_DEFAULTS['timesteps']}")
    parser.add_argument("--weights", type=Path, help=f"GPT-2 weights directory (default: {DEFAULT_WEIGHTS_DIR})")
    parser.add_argument("--tokens", type=int, help=f"evaluate the first N tokens of {DEFAULT_DATA.name} "
                                                   f"(default: {FULL_DEFAULTS['tokens']})")
    parser.add_argument("--timesteps", type=_int_list, help="comma-separated T values (default: 1,2,4,8,16,32)")
    parser.add_argument("--variants", type=_variant_list, default=tuple(VARIANTS),
                        help="comma-separated, of ffn, ssa, both (default: all three)")
    parser.add_argument("--out", type=Path,
                        help="JSON output, the .md beside it (default: benchmarks/results/fidelity.json, "
                             "or fidelity_quick.json)")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    weights = args.weights or defaults["weights"]
    n_tokens = args.tokens or defaults["tokens"]
    timesteps = args.timesteps or defaults["timesteps"]
    if n_tokens < 2:
        parser.error("--tokens must be >= 2")
    out = args.out or RESULTS_DIR / ("fidelity_quick.json" if args.quick else "fidelity.json")

    machine = machine_info()
    other = OtherLoad()
    model = load_gpt2(weights)
    tokenizer = tokenizer_for_weights(weights)
    ids = read_eval_ids(DEFAULT_DATA, tokenizer, n_tokens)
    calibration_ids = corpus_calibration_ids(tokenizer)
    ann_side_s = time_ann_side(model, ids)
    records = run_configs(model, ids, calibration_ids, timesteps, args.variants)
    machine["load_average_end"] = load_average()
    machine["other_processes_cpu_share"] = other.share()

    first = records[0]
    config = model.config
    lines = ["# Fidelity of the spiking GPT-2",
             "",
             f"{weights}: {config.n_layer} layers, d = {config.n_embd}, {config.n_head} heads; {first['tokens']} tokens of "
             f"{DEFAULT_DATA.name} in {first['windows']} windows of up to {first['window']}; calibrated on "
             f"{calibration_ids.size} corpus tokens; ANN perplexity {first['perplexity']['ann']:.2f}.",
             "",
             markdown_table(["converted", "T", "cosine, final hidden", "top-1 agreement", "PPL SNN / ANN", "PPL SNN",
                             "convert s", "evaluate s"], table_rows(records)),
             "",
             *(f"- {line}" for line in time_summary(records, ann_side_s))]
    share = machine["other_processes_cpu_share"]
    lines.append(f"- {machine['usable_cpus']} CPUs, load average {machine['load_average']} -> "
                 f"{machine['load_average_end']}, other processes took {'?' if share is None else f'{share:.0%}'} "
                 "of the CPU time")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    settings = {"weights": str(weights), "data": str(DEFAULT_DATA), "tokens": n_tokens, "timesteps": list(timesteps),
                "variants": list(args.variants), "calibration_tokens": int(calibration_ids.size)}
    write_results(out, "fidelity", settings,
                  {"ann": {"perplexity": first["perplexity"]["ann"], "forward_and_lm_head_s": ann_side_s},
                   "configs": records}, machine)
    atomic_write_text(out.with_suffix(".md"), report)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
