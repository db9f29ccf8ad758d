"""GPT-2-124M inference speed: prefill, KV-cache decode, the memory-bandwidth bound, a no-cache baseline.

The weights are random (std 0.02) but GPT-2-124M-shaped: speed does not depend on their values.
Batch-1 decode reads every weight once per token, so the machine's read bandwidth divided by the
weight bytes bounds it; the no-cache baseline recomputes the whole sequence per token (picoGPT).

    python benchmarks/bench_ann.py [--quick] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numba
import numpy as np
from common import (RESULTS_DIR, OtherLoad, TimedCall, Timing, after_warmup, decode_call, load_average, machine_info,
                    markdown_table, peak_rss_bytes, random_params, time_call, time_interleaved, write_results)

from snnlm.config import GPT2Config
from snnlm.gpt2 import ANNDecoder, forward
from snnlm.kernels.bandwidth import parallel_sum
from snnlm.weights import params_to_tensors

DECODE_BOUND_TARGET = 0.60  # fraction of the bandwidth bound that decode must reach
KV_SPEEDUP_TARGET = 10.0  # KV-cache decode over recomputing the sequence
DECODE_STEPS_PER_PROBE = 4  # decode steps per bandwidth-probe run when the two are interleaved


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What to time. Contexts count the tokens already in the cache when one more is decoded."""

    prefill_tokens: tuple[int, ...]
    decode_contexts: tuple[int, ...]  # the first one is compared with the bandwidth bound
    recompute_context: int
    decode_steps: int  # timed steps per context
    prefill_repeats: int
    recompute_repeats: int
    bandwidth_mib: int  # the probe's array, well above the last-level cache


# A 1024-token window holds at most 1023 tokens before the one being decoded.
FULL = Sizes((128, 1024), (64, 1023), 512, decode_steps=32, prefill_repeats=3, recompute_repeats=3, bandwidth_mib=256)
QUICK = Sizes((16, 64), (16, 128), 64, decode_steps=8, prefill_repeats=1, recompute_repeats=1, bandwidth_mib=64)


def weight_bytes_per_token(params: dict) -> int:
    """Parameter bytes one decode step reads: all of them (the LM head reads wte once), but one wpe row."""
    tensors = params_to_tensors(params)
    wpe = tensors["wpe.weight"]
    return sum(t.nbytes for t in tensors.values()) - wpe.nbytes + wpe[0].nbytes


def time_prefill(decoder: ANNDecoder, n_tokens: int, repeats: int, rng) -> Timing:
    """Seconds to feed `n_tokens` into an empty cache, logits for the last one only (as generation does)."""
    ids = rng.integers(0, decoder.config.n_vocab, n_tokens)

    def reset():
        decoder.cache.length = 0

    return time_call(lambda: decoder.feed(ids), repeats=repeats, setup=reset)


def recompute_call(params: dict, config: GPT2Config, context: int, rng) -> TimedCall:
    """The timed call of one no-cache step: the whole context plus the new token, run again.

    Only the last position goes through the LM head, so this baseline is a little faster than picoGPT,
    which computes the logits of every position.
    """
    ids = rng.integers(0, config.n_vocab, context + 1)
    return "recompute", lambda: forward(params, config, ids, None, last_only=True), None


def bandwidth_calls(a: np.ndarray) -> list[TimedCall]:
    """Timed calls of the read-bandwidth probe on one thread and on all.

    On a loaded machine a thread that shares its core with another process holds up the whole
    parallel sum, so one thread can then read faster than all of them. All threads come last, so
    that whatever runs after these calls runs on all threads again.
    """
    threads = numba.get_num_threads()
    return [("Numba prange sum, 1 thread", lambda: parallel_sum(a), lambda: numba.set_num_threads(1)),
            ("Numba prange sum, all threads", lambda: parallel_sum(a), lambda: numba.set_num_threads(threads))]


@dataclasses.dataclass
class Measurements:
    """The raw timings of one run."""

    prefill: dict[int, Timing]
    decode: dict[int, Timing]
    recompute: Timing
    bandwidth: dict[str, Timing]  # the Numba probe's runs and the NumPy sum's, by name
    bandwidth_bytes: int
    weight_bytes_per_token: int
    peak_rss_bytes: int


def measure(sizes: Sizes) -> Measurements:
    """Time everything. Each ratio's two sides run interleaved, round by round, so that they share the load."""
    config = GPT2Config()
    rng = np.random.default_rng(0)
    params = random_params(config)
    decoder = ANNDecoder(params, config)

    prefill = {n: time_prefill(decoder, n, sizes.prefill_repeats, rng) for n in sizes.prefill_tokens}
    ctx = sizes.recompute_context
    per_round = max(1, sizes.decode_steps // sizes.recompute_repeats)
    pair = time_interleaved([recompute_call(params, config, ctx, rng), *after_warmup(decode_call(decoder, ctx, rng), per_round)],
                            rounds=sizes.recompute_repeats)
    decode = {ctx: pair["decode"]}
    # Before the bandwidth buffer exists, so that this is the model's own footprint.
    peak_rss = peak_rss_bytes()

    a = np.ones(sizes.bandwidth_mib * 2**20 // 4, np.float32)  # written once so every page is resident
    per_round = min(sizes.decode_steps, DECODE_STEPS_PER_PROBE)
    probe = time_interleaved([*bandwidth_calls(a), *after_warmup(decode_call(decoder, sizes.decode_contexts[0], rng), per_round)],
                             rounds=sizes.decode_steps // per_round)
    decode[sizes.decode_contexts[0]] = probe.pop("decode")
    del probe["decode, first of a block"]
    for context in sizes.decode_contexts[1:]:
        _, step, rewind = decode_call(decoder, context, rng)
        decode[context] = time_call(step, repeats=sizes.decode_steps, warmup=3, setup=rewind)
    probe["NumPy a.sum(), 1 thread"] = time_call(a.sum, repeats=sizes.decode_steps)
    return Measurements(prefill, dict(sorted(decode.items())), pair["recompute"], probe, a.nbytes,
                        weight_bytes_per_token(params), peak_rss)


def summarise(sizes: Sizes, m: Measurements) -> tuple[dict, list[list[object]]]:
    """The JSON results and the table rows of a run."""
    results: dict = {"prefill": {}, "decode": {}}
    rows: list[list[object]] = []
    for n, t in m.prefill.items():
        results["prefill"][n] = {"tokens_per_s": n / t.median, **t.to_json()}
        rows.append([f"prefill {n} tokens", f"{n / t.median:.0f} tok/s", f"{t.median:.3f} s, median of {len(t.seconds)}"])
    for context, t in m.decode.items():
        results["decode"][context] = {"tokens_per_s": 1 / t.median, **t.to_json()}
        rows.append([f"decode, KV cache, context {context}", f"{1 / t.median:.1f} tok/s",
                     f"{t.median * 1e3:.1f} ms/token, median of {len(t.seconds)}"])

    ctx = sizes.recompute_context
    speedup = m.recompute.median / m.decode[ctx].median
    results["recompute"] = {"context": ctx, "tokens_per_s": 1 / m.recompute.median, **m.recompute.to_json()}
    rows.append([f"recompute, no cache, context {ctx}", f"{1 / m.recompute.median:.2f} tok/s",
                 f"{m.recompute.median:.3f} s/token, median of {len(m.recompute.seconds)}, interleaved with decode"])
    rows.append([f"KV-cache speedup at context {ctx}", f"{speedup:.1f}x",
                 f"target >= {KV_SPEEDUP_TARGET:.0f}x: {'met' if speedup >= KV_SPEEDUP_TARGET else 'NOT met'}"])
    results["peak_rss_bytes"] = m.peak_rss_bytes
    rows.append(["peak RSS (weights + inference)", f"{m.peak_rss_bytes / 2**20:.0f} MiB", ""])

    bound_ctx = sizes.decode_contexts[0]
    gb_s = {name: m.bandwidth_bytes / t.best / 1e9 for name, t in m.bandwidth.items()}
    results["bandwidth"] = {"array_bytes": m.bandwidth_bytes,
                            "runs": {name: {"gb_s": gb_s[name], **t.to_json()} for name, t in m.bandwidth.items()}}
    for name, t in m.bandwidth.items():
        where = f", interleaved with decode at {bound_ctx}" if name.startswith("Numba") else ""
        rows.append([f"read bandwidth, {name}", f"{gb_s[name]:.1f} GB/s",
                     f"{m.bandwidth_bytes / 2**20:.0f} MiB float32, best of {len(t.seconds)}{where}"])

    best_gb_s = max(v for name, v in gb_s.items() if name.startswith("Numba"))
    bound = best_gb_s * 1e9 / m.weight_bytes_per_token
    fraction = 1 / m.decode[bound_ctx].median / bound
    fastest = 1 / m.decode[bound_ctx].best / bound
    results["bound"] = {"weight_bytes_per_token": m.weight_bytes_per_token, "bandwidth_gb_s": best_gb_s,
                        "max_tokens_per_s": bound, "context": bound_ctx,
                        "fraction_reached": fraction, "fraction_reached_fastest_step": fastest}
    rows.append(["weight bytes read per token", f"{m.weight_bytes_per_token / 1e6:.1f} MB", "all params, one wpe row"])
    rows.append(["decode bandwidth bound", f"{bound:.1f} tok/s", "best Numba bandwidth / weight bytes"])
    rows.append([f"decode at context {bound_ctx} / bound", f"{fraction:.0%}",
                 f"target >= {DECODE_BOUND_TARGET:.0%}: {'met' if fraction >= DECODE_BOUND_TARGET else 'NOT met'}"
                 f" (fastest step: {fastest:.0%})"])

    results["targets"] = {
        "decode_fraction_of_bound": {"value": fraction, "target": DECODE_BOUND_TARGET, "met": fraction >= DECODE_BOUND_TARGET},
        "kv_speedup": {"value": speedup, "target": KV_SPEEDUP_TARGET, "met": speedup >= KV_SPEEDUP_TARGET},
    }
    return results, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/ann.json, ann_quick.json with --quick)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or RESULTS_DIR / ("ann_quick.json" if args.quick else "ann.json")

    machine = machine_info()
    other = OtherLoad()
    results, rows = summarise(sizes, measure(sizes))
    machine["load_average_end"] = load_average()
    machine["other_processes_cpu_share"] = other.share()
    if machine["other_processes_cpu_share"] is not None:
        rows.append(["CPU taken by other processes", f"{machine['other_processes_cpu_share']:.0%}",
                     "of all cores during the run: the higher, the noisier"])
    print(markdown_table(["measure", "value", "detail"], rows))
    blas = machine["blas"]
    print(f"\n{machine['usable_cpus']} CPUs, {machine['numba_threads']} Numba threads, "
          f"BLAS {blas.get('name')} {blas.get('version')} core {blas.get('openblas_core')} "
          f"threads {blas.get('openblas_threads')}, env {machine['env']}, "
          f"load average {machine['load_average']} -> {machine['load_average_end']}")
    write_results(out, "ann", dataclasses.asdict(sizes), results, machine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
