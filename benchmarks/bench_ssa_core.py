"""SSA core speed: the bit-packed Numba kernel against float BLAS, and the recurrent step per token.

Parallel core over a whole sequence of N tokens, H heads x T timesteps: the bit-packed kernel, its
NumPy twin (q k^T by float32 BLAS, causal mask, @ v; exact at these sizes) and the recurrent kernel fed
the whole sequence at once (same integers, linear in N). Decode: one new token after a context of C
tokens, by the recurrent step (state S, independent of C) and by a float "spike KV cache" (q against
all cached k and v, growing with C). Spikes come from EC-IF neurons with 99.9th-percentile thresholds
on Gaussian inputs, so their density is that of a calibrated layer.

    python benchmarks/bench_ssa_core.py [--quick] [--out PATH]

On a shared machine, `OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1` gives the steadier per-core comparison:
a thread pool that waits for a descheduled worker stalls for a scheduler slice, BLAS's more than Numba's.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from common import RESULTS_DIR, OtherLoad, load_average, machine_info, markdown_table, time_interleaved, write_results

from snnlm.kernels.ssa_core import causal_core, causal_core_numpy, recurrent_step
from snnlm.neurons import ec_if_constant


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What to time. Contexts count the tokens already in the state when one more is fed."""

    sequence_lengths: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    n_head: int
    head_dim: int
    timesteps: int
    rounds: int
    decode_steps: int


FULL = Sizes((64, 256, 1024), (64, 256, 1024), n_head=12, head_dim=64, timesteps=4, rounds=7, decode_steps=50)
QUICK = Sizes((16, 64), (16, 64), n_head=2, head_dim=64, timesteps=2, rounds=1, decode_steps=5)


def calibrated_spikes(rng: np.random.Generator, sizes: Sizes, n_tokens: int) -> np.ndarray:
    """Ternary spikes of one of q, k, v, grouped as the core wants them: (H * T, N, d_h) int8."""
    H, D, T = sizes.n_head, sizes.head_dim, sizes.timesteps
    x = rng.standard_normal((n_tokens, H * D), dtype=np.float32)
    threshold = np.percentile(np.abs(x), 99.9, axis=0)
    spikes = ec_if_constant(x, T, threshold)  # (T, N, H * D)
    return np.ascontiguousarray(spikes.reshape(T, n_tokens, H, D).transpose(2, 0, 1, 3)).reshape(H * T, n_tokens, D)


def time_parallel(sizes: Sizes, rng) -> tuple[list[dict], list[list[object]]]:
    results, rows = [], []
    D = sizes.head_dim
    for n_tokens in sizes.sequence_lengths:
        q, k, v = (calibrated_spikes(rng, sizes, n_tokens) for _ in range(3))
        expected = causal_core_numpy(q, k, v)
        if not (np.array_equal(causal_core(q, k, v), expected)
                and np.array_equal(recurrent_step(q, k, v, np.zeros((q.shape[0], D, D), np.int32)), expected)):
            raise AssertionError(f"the kernels disagree with the NumPy twin at N = {n_tokens}")
        timings = time_interleaved([
            ("blas", lambda: causal_core_numpy(q, k, v), None),
            ("packed", lambda: causal_core(q, k, v), None),
            ("recurrent", lambda: recurrent_step(q, k, v, np.zeros((q.shape[0], D, D), np.int32)), None),
        ], rounds=sizes.rounds)
        blas = timings["blas"].median
        density = float(np.count_nonzero(q)) / q.size
        results.append({"n_tokens": n_tokens, "spike_density": density,
                        **{f"{name}_s": t.to_json() for name, t in timings.items()},
                        "packed_speedup_over_blas": blas / timings["packed"].median,
                        "recurrent_speedup_over_blas": blas / timings["recurrent"].median})
        rows.append([n_tokens, f"{density:.2f}", f"{blas * 1e3:.2f}", f"{timings['packed'].median * 1e3:.2f}",
                     f"{blas / timings['packed'].median:.2f}x", f"{timings['recurrent'].median * 1e3:.2f}",
                     f"{blas / timings['recurrent'].median:.2f}x"])
    return results, rows


def time_decode(sizes: Sizes, rng) -> tuple[list[dict], list[list[object]]]:
    results, rows = [], []
    D, steps = sizes.head_dim, sizes.decode_steps
    for context in sizes.decode_contexts:
        q, k, v = (calibrated_spikes(rng, sizes, context + steps) for _ in range(3))
        G = q.shape[0]
        state = np.zeros((G, D, D), np.int32)
        recurrent_step(q[:, :context], k[:, :context], v[:, :context], state)
        prefilled = state.copy()
        keys, values = k.astype(np.float32), v.astype(np.float32)

        def recurrent_decode():
            for i in range(context, context + steps):
                recurrent_step(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], state)

        def kv_cache_decode():
            for i in range(context, context + steps):
                scores = q[:, i:i + 1].astype(np.float32) @ np.swapaxes(keys[:, :i + 1], 1, 2)
                scores @ values[:, :i + 1]

        timings = time_interleaved([
            ("kv_cache", kv_cache_decode, None),
            ("recurrent", recurrent_decode, lambda: np.copyto(state, prefilled)),
        ], rounds=sizes.rounds)
        per_token = {name: t.median / steps for name, t in timings.items()}
        results.append({"context": context, "decode_steps": steps,
                        **{f"{name}_s": t.to_json() for name, t in timings.items()},
                        **{f"{name}_per_token_s": s for name, s in per_token.items()}})
        rows.append([context, f"{per_token['kv_cache'] * 1e6:.1f}", f"{per_token['recurrent'] * 1e6:.1f}",
                     f"{per_token['kv_cache'] / per_token['recurrent']:.2f}x"])
    return results, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path,
                        help="JSON output (default: benchmarks/results/ssa_core.json, or ssa_core_quick.json)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or RESULTS_DIR / ("ssa_core_quick.json" if args.quick else "ssa_core.json")

    machine = machine_info()
    other = OtherLoad()
    rng = np.random.default_rng(0)
    parallel, parallel_rows = time_parallel(sizes, rng)
    decode, decode_rows = time_decode(sizes, rng)
    machine["load_average_end"] = load_average()
    machine["other_processes_cpu_share"] = other.share()

    groups = f"H = {sizes.n_head}, T = {sizes.timesteps}, d_h = {sizes.head_dim}"
    print(f"Parallel core over N tokens ({groups}), median ms:\n")
    print(markdown_table(["N", "spike density", "float BLAS", "bit-packed", "speed-up", "recurrent kernel", "speed-up"],
                         parallel_rows))
    print(f"\nOne decoded token after C tokens of context ({groups}), median µs per token:\n")
    print(markdown_table(["C", "float spike KV cache", "recurrent step", "speed-up"], decode_rows))
    share = machine["other_processes_cpu_share"]
    print(f"\n{machine['usable_cpus']} CPUs, {machine['numba_threads']} Numba threads, load average "
          f"{machine['load_average']} -> {machine['load_average_end']}, other processes took "
          f"{'?' if share is None else f'{share:.0%}'} of the CPU time")
    write_results(out, "ssa_core", dataclasses.asdict(sizes), {"parallel": parallel, "decode": decode}, machine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
