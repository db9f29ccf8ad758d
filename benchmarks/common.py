"""Helpers shared by the benchmark scripts: timing, random GPT-2-shaped weights and ANN decode steps, peak
memory, machine description, table and JSON output.

The machine is shared and noisy, so every script compares against a baseline timed in the same run
and records the conditions (load average, thread counts, BLAS) next to its numbers.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from snnlm.config import GPT2Config
from snnlm.fileio import atomic_write_text
from snnlm.gpt2 import ANNDecoder
from snnlm.weights import expected_shapes, params_from_tensors, params_to_tensors

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


# (name, fn, setup): `fn()` is timed, `setup()` (or nothing) runs untimed before it.
TimedCall = tuple[str, Callable[[], object], Callable[[], object] | None]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed runs of one call."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def to_json(self) -> dict:
        return {"median_s": self.median, "best_s": self.best, "runs": len(self.seconds)}


def time_interleaved(calls: list[TimedCall], rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Time calls round-robin, so that they share whatever load the machine has.

    Each round runs the list in order (a name listed k times gets k samples per round). The first
    `warmup` rounds are not recorded.
    """
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in calls}
    for round_ in range(warmup + rounds):
        for name, fn, setup in calls:
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                seconds[name].append(elapsed)
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
              setup: Callable[[], object] | None = None) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls; `setup()` runs untimed before each call."""
    return time_interleaved([("call", fn, setup)], repeats, warmup)["call"]


def after_warmup(call: TimedCall, repeats: int) -> list[TimedCall]:
    """`call` `repeats` times, after one run of it recorded under another name, so left out of its timing.

    The first decode step after other work, or even after a pause, runs up to ~40% slower than the
    ones that follow it (measured), so each block of steps starts with one set aside.
    """
    name, fn, setup = call
    return [(f"{name}, first of a block", fn, setup)] + [call] * repeats


def random_params(config: GPT2Config, seed: int = 0) -> dict:
    """Params of `config`'s shape: N(0, 0.02) matrices, unit LayerNorm gains, zero biases."""
    zeros = {key: np.broadcast_to(np.float32(0), shape) for key, shape in expected_shapes(config).items()}
    # The loader copies the zero views into writable arrays laid out as real checkpoints are.
    params = params_from_tensors(zeros, config, Path("<random>"))
    rng = np.random.default_rng(seed)
    for key, t in params_to_tensors(params).items():
        if t.ndim == 2:
            rng.standard_normal(dtype=np.float32, out=t)
            t *= np.float32(0.02)
        elif key.endswith(".weight"):
            t.fill(1.0)
    return params


def decode_call(decoder: ANNDecoder, context: int, rng) -> TimedCall:
    """Fill the cache with `context` tokens; return the timed call of one decode step after them.

    Its setup rewinds the cache, so every step sees the same `context`.
    """
    n_vocab = decoder.config.n_vocab
    decoder.cache.length = 0
    decoder.feed(rng.integers(0, n_vocab, context))
    token = [int(rng.integers(n_vocab))]

    def rewind():
        decoder.cache.length = context

    return "decode", lambda: decoder.feed(token), rewind


class OtherLoad:
    """How much of the machine's CPU time other processes take from creation on (Linux; else None).

    Busy time from /proc/stat minus this process's own CPU time, as a fraction of wall time x cores.
    """

    def __init__(self):
        self._start = _cpu_times()

    def share(self) -> float | None:
        end = _cpu_times()
        if self._start is None or end is None:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def _cpu_times() -> tuple[float, float, float] | None:
    """(wall s, busy CPU s of the whole machine, CPU s of this process)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            # user nice system idle iowait irq softirq steal; the guest fields after are already in user.
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def _openblas_query(name: str, restype):
    """Call OpenBLAS's `openblas_<name>` in the copy NumPy loaded (Linux), or return None."""
    with contextlib.suppress(OSError):
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1]})
        for path in paths:
            lib = ctypes.CDLL(path)
            # NumPy's wheels rename the symbols (scipy_openblas_...64_ for the ILP64 build).
            for symbol in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}64_",
                           f"openblas_{name}"):
                fn = getattr(lib, symbol, None)
                if fn is not None:
                    fn.restype = restype
                    return fn()
    return None


def blas_info() -> dict:
    """NumPy's BLAS: name and version from its build config, plus OpenBLAS's run-time kernel set and threads."""
    info: dict = {}
    with contextlib.suppress(Exception):  # show_config's dict form varies across NumPy versions
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info = {"name": blas.get("name"), "version": blas.get("version")}
    core = _openblas_query("get_corename", ctypes.c_char_p)
    if core is not None:
        info["openblas_core"] = core.decode()
        info["openblas_threads"] = _openblas_query("get_num_threads", ctypes.c_int)
    return info


def machine_info() -> dict:
    """What the numbers depend on: library versions, CPUs, threads, BLAS, thread env vars, current load."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "blas": blas_info(),
        "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores), if known."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table, columns padded to their widest cell."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_results(path: Path, benchmark: str, settings: dict, results: dict, machine: dict) -> None:
    """Write one run's results as JSON, atomically, with when and where it ran."""
    record = {
        "benchmark": benchmark,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "results": results,
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
