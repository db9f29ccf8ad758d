"""Neuron kernels and the spike-driven matmul: fused Numba kernels against NumPy, snnTorch and
SpikingJelly, and event-driven against dense BLAS products, with the density crossover.

(a) EC-IF neurons, T = 4 on (128, 3072): the fused kernel against its NumPy twin and against the
    natural NumPy version (library np.tanh; the twin computes tanh with the kernel's arithmetic).
(b) LIF neurons on the same shape: fused kernel, NumPy twin, snnTorch's Leaky looped over T and
    SpikingJelly's multi-step LIFNode, when those are installed (torch on CPU, same thread count).
(c) spikes @ weight, K = 768, M = 3072: event-driven against dense BLAS for decode (R = 1, 4) and prefill
    (R = 512). A pool of weights larger than the last-level cache is cycled through, so that every
    product reads its weight from memory, as a model's layers do.

    python benchmarks/bench_neurons.py [--quick] [--out PATH]

Thread counts come from the environment (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS; torch is given
Numba's). On a loaded machine a parallel region waits for its slowest thread to be scheduled, so
compare one core with one core: OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from common import RESULTS_DIR, Timing, load_average, machine_info, markdown_table, time_call, write_results

from snnlm.kernels import gelu as ann_gelu
from snnlm.kernels.neurons import GELU, IDENTITY, ec_if_numba, ec_if_numpy, lif_numba, lif_numpy
from snnlm.kernels.spike_matmul import spike_matmul_dense, spike_matmul_events

GELU_KERNEL_TARGET = 3.0  # fused EC-IF GELU over its NumPy twin
LIF_TARGET = 2.0  # fused LIF over snnTorch and SpikingJelly
EVENTS_TARGET_DENSITY = 0.05  # event-driven must beat dense BLAS up to this density
LIF_BETA = 0.5  # SpikingJelly's tau = 2 leaks by the same factor


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What to time."""

    steps: int
    neuron_shape: tuple[int, int]  # (M, C) neurons per step
    matmul_k: int
    matmul_m: int
    matmul_rows: tuple[int, ...]  # those <= 8 are decode-shaped
    densities: tuple[float, ...]
    weight_pool_bytes: int
    repeats: int


FULL = Sizes(4, (128, 3072), 768, 3072, (1, 4, 512), (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
             weight_pool_bytes=96 * 2**20, repeats=7)
QUICK = Sizes(4, (16, 768), 768, 3072, (1, 64), (0.01, 0.05, 0.2), weight_pool_bytes=32 * 2**20, repeats=3)


def _single_thread(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(threads)
    return run


def _row(name: str, timing: Timing, neuron_steps: int, baseline: Timing | None) -> list[object]:
    speedup = f"{baseline.median / timing.median:.1f}x" if baseline is not None else ""
    return [name, f"{timing.median * 1e3:.2f} ms", f"{neuron_steps / timing.median / 1e9:.2f}", speedup]


def bench_ec_if(sizes: Sizes, rng) -> tuple[dict, list[list[object]]]:
    """(a): fused EC-IF against its NumPy twin and the library-tanh NumPy version."""
    rows_, channels = sizes.neuron_shape
    current = rng.normal(0.0, 1.0, (sizes.steps, rows_, channels)).astype(np.float32)
    threshold = rng.uniform(0.2, 1.5, channels)
    neuron_steps = current.size
    results: dict = {}
    table: list[list[object]] = []
    for name, code in (("gelu", GELU), ("identity", IDENTITY)):
        twin = time_call(lambda: ec_if_numpy(current, threshold, 1, code), repeats=sizes.repeats)
        fused = time_call(lambda: ec_if_numba(current, threshold, 1, code), repeats=sizes.repeats)
        results[name] = {"numpy_twin": twin.to_json(), "fused": fused.to_json(),
                         "speedup_over_twin": twin.median / fused.median}
        table.append(_row(f"EC-IF {name}, NumPy twin", twin, neuron_steps, None))
        if code == GELU:
            library = time_call(lambda: ec_if_numpy(current, threshold, 1, GELU, gelu=ann_gelu.gelu), repeats=sizes.repeats)
            results[name]["numpy_library_tanh"] = library.to_json()
            results[name]["speedup_over_library_tanh"] = library.median / fused.median
            table.append(_row("EC-IF gelu, NumPy with np.tanh", library, neuron_steps, None))
            table.append(_row("EC-IF gelu, fused Numba", fused, neuron_steps, twin)[:3]
                         + [f"{twin.median / fused.median:.1f}x twin, {library.median / fused.median:.1f}x np.tanh"])
        else:
            table.append(_row(f"EC-IF {name}, fused Numba", fused, neuron_steps, twin))
        if numba.get_num_threads() > 1:
            fused_1 = time_call(_single_thread(lambda: ec_if_numba(current, threshold, 1, code)), repeats=sizes.repeats)
            results[name]["fused_1_thread"] = fused_1.to_json()
            table.append(_row(f"EC-IF {name}, fused Numba, 1 thread", fused_1, neuron_steps, twin))
    return results, table


def _torch_baselines(current: np.ndarray, repeats: int) -> dict[str, Timing]:
    """snnTorch and SpikingJelly multi-step LIF on the same currents, for those that import."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(numba.get_num_threads())
    x = torch.from_numpy(current)
    timings: dict[str, Timing] = {}
    try:
        import snntorch
    except ImportError:
        pass
    else:
        leaky = snntorch.Leaky(beta=LIF_BETA, threshold=1.0, reset_mechanism="subtract")

        def run_snntorch():
            with torch.no_grad():
                mem = leaky.init_leaky()
                for t in range(x.shape[0]):
                    _, mem = leaky(x[t], mem)
        timings["snnTorch Leaky"] = time_call(run_snntorch, repeats=repeats)
    try:
        from spikingjelly.activation_based import neuron
    except ImportError:
        pass
    else:
        node = neuron.LIFNode(tau=1 / LIF_BETA, v_threshold=1.0, v_reset=None, step_mode="m")

        def run_spikingjelly():
            with torch.no_grad():
                node.reset()
                node(x)
        timings["SpikingJelly LIFNode"] = time_call(run_spikingjelly, repeats=repeats)
    return timings


def bench_lif(sizes: Sizes, rng) -> tuple[dict, list[list[object]]]:
    """(b): fused LIF against its NumPy twin, snnTorch and SpikingJelly, in G neuron-steps/s."""
    rows_, channels = sizes.neuron_shape
    current = rng.normal(0.3, 1.0, (sizes.steps, rows_, channels)).astype(np.float32)
    beta = np.full(channels, LIF_BETA, np.float32)
    threshold = np.ones(channels, np.float32)
    neuron_steps = current.size
    fused = time_call(lambda: lif_numba(current, beta, threshold, True), repeats=sizes.repeats)
    baselines = {"NumPy twin": time_call(lambda: lif_numpy(current, beta, threshold, True), repeats=sizes.repeats),
                 **_torch_baselines(current, sizes.repeats)}
    results: dict = {"fused": fused.to_json(), "fused_g_neuron_steps_s": neuron_steps / fused.median / 1e9,
                     "baselines": {}}
    table = []
    for name, timing in baselines.items():
        results["baselines"][name] = {**timing.to_json(), "g_neuron_steps_s": neuron_steps / timing.median / 1e9,
                                      "fused_speedup": timing.median / fused.median}
        table.append(_row(f"LIF, {name}", timing, neuron_steps, None))
    speedups = ", ".join(f"{t.median / fused.median:.1f}x {name}" for name, t in baselines.items())
    table.append(_row("LIF, fused Numba", fused, neuron_steps, None)[:3] + [speedups])
    if numba.get_num_threads() > 1:
        fused_1 = time_call(_single_thread(lambda: lif_numba(current, beta, threshold, True)), repeats=sizes.repeats)
        results["fused_1_thread"] = fused_1.to_json()
        table.append(_row("LIF, fused Numba, 1 thread", fused_1, neuron_steps, None)[:3]
                     + [f"{baselines['NumPy twin'].median / fused_1.median:.1f}x NumPy twin"])
    return results, table


def _random_spikes(rng, rows: int, k: int, density: float) -> np.ndarray:
    nonzero = rng.random((rows, k)) < density
    return np.where(nonzero, rng.choice(np.array([-1, 1], np.int8), (rows, k)), 0).astype(np.int8)


def _cycling(fn: Callable[[np.ndarray], object], weights: list[np.ndarray]) -> Callable[[], object]:
    """fn applied to the next weight of the pool at each call."""
    state = {"next": 0}

    def run():
        weight = weights[state["next"] % len(weights)]
        state["next"] += 1
        return fn(weight)
    return run


def crossover_density(densities: list[float], dense_over_events: list[float]) -> float:
    """The density where dense BLAS starts to win, interpolating log(time ratio) against log(density)
    between the last measured density where events win and the next one; 1.0 past the last measured
    density when events win everywhere, and the first density when they never do."""
    for i, ratio in enumerate(dense_over_events):
        if ratio <= 1.0:
            if i == 0:
                return densities[0]
            d0, d1 = math.log(densities[i - 1]), math.log(densities[i])
            r0, r1 = math.log(dense_over_events[i - 1]), math.log(ratio)
            return math.exp(d0 + (d1 - d0) * r0 / (r0 - r1))
    return 1.0


def bench_spike_matmul(sizes: Sizes, rng) -> tuple[dict, list[list[object]]]:
    """(c): event-driven against dense BLAS across densities; the crossover per shape."""
    k, m = sizes.matmul_k, sizes.matmul_m
    weight_bytes = k * m * 4
    weights = [rng.normal(0.0, 0.02, (k, m)).astype(np.float32)
               for _ in range(max(1, sizes.weight_pool_bytes // weight_bytes))]
    results: dict = {"weight_pool": len(weights), "by_rows": {}}
    table = []
    for rows in sizes.matmul_rows:
        ratios = []
        per_density = {}
        for density in sizes.densities:
            spikes = _random_spikes(rng, rows, k, density)
            events = time_call(_cycling(lambda w: spike_matmul_events(spikes, w), weights), repeats=sizes.repeats,
                               warmup=2)
            dense = time_call(_cycling(lambda w: spike_matmul_dense(spikes, w), weights), repeats=sizes.repeats,
                              warmup=2)
            ratio = dense.median / events.median
            ratios.append(ratio)
            per_density[density] = {"events": events.to_json(), "dense": dense.to_json(), "dense_over_events": ratio}
            table.append([f"R = {rows}", f"{density:.0%}", f"{events.median * 1e3:.3f} ms",
                          f"{dense.median * 1e3:.3f} ms", f"{ratio:.2f}x"])
        crossover = crossover_density(list(sizes.densities), ratios)
        results["by_rows"][rows] = {"densities": per_density, "crossover": crossover}
        table.append([f"R = {rows}", "crossover", "", "", f"{crossover:.1%}"])
    return results, table


def targets(ec_if: dict, lif: dict, matmul: dict) -> dict:
    """Whether each acceptance target holds in this run."""
    out = {"gelu_fused_over_twin": {"value": ec_if["gelu"]["speedup_over_twin"], "target": GELU_KERNEL_TARGET}}
    for name in ("snnTorch Leaky", "SpikingJelly LIFNode"):
        if name in lif["baselines"]:
            out[f"lif_fused_over_{name}"] = {"value": lif["baselines"][name]["fused_speedup"], "target": LIF_TARGET}
    for rows, by_rows in matmul["by_rows"].items():
        slowest = min(v["dense_over_events"] for d, v in by_rows["densities"].items() if d <= EVENTS_TARGET_DENSITY)
        out[f"events_over_dense_up_to_5pct_R{rows}"] = {"value": slowest, "target": 1.0}
    for record in out.values():
        record["met"] = record["value"] >= record["target"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path,
                        help="JSON output (default: benchmarks/results/neurons.json, neurons_quick.json with --quick)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or RESULTS_DIR / ("neurons_quick.json" if args.quick else "neurons.json")

    machine = machine_info()
    rng = np.random.default_rng(0)
    ec_if, ec_if_table = bench_ec_if(sizes, rng)
    lif, lif_table = bench_lif(sizes, rng)
    matmul, matmul_table = bench_spike_matmul(sizes, rng)
    met = targets(ec_if, lif, matmul)
    machine["load_average_end"] = load_average()

    shape = f"T = {sizes.steps} x {sizes.neuron_shape}"
    print(markdown_table([f"neurons, {shape}", "median", "G neuron-steps/s", "speedup"], ec_if_table + lif_table))
    print()
    print(markdown_table([f"spikes @ weight, K = {sizes.matmul_k}, M = {sizes.matmul_m}", "density", "event-driven",
                          "dense BLAS", "dense / events"], matmul_table))
    print()
    print(markdown_table(["target", "value", "needed", "met"],
                         [[name, f"{r['value']:.2f}", f"{r['target']:.2f}", "yes" if r["met"] else "NO"]
                          for name, r in met.items()]))
    blas = machine["blas"]
    print(f"\n{machine['usable_cpus']} CPUs, {machine['numba_threads']} Numba threads, "
          f"BLAS {blas.get('name')} {blas.get('version')} threads {blas.get('openblas_threads')}, "
          f"load average {machine['load_average']} -> {machine['load_average_end']}")
    write_results(out, "neurons", dataclasses.asdict(sizes),
                  {"ec_if": ec_if, "lif": lif, "spike_matmul": matmul, "targets": met}, machine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
