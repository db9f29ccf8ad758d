"""Where a pretraining step's time goes: tokens/s, peak memory, and BLAS versus everything else.

Runs `loss_and_grads` + gradient clipping + AdamW on the shipped model's shape (random init, random
tokens) with every layer function wrapped by a timer. The baseline, timed in the same run, is the
same step's matrix products alone (every `linear` GEMM at its exact shapes): the floor that BLAS sets.

    python benchmarks/bench_train.py [--quick] [--steps N]
"""
from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

import snnlm.gpt2_train as gpt2_train
from common import RESULTS_DIR, OtherLoad, machine_info, markdown_table, peak_rss_bytes, write_results
from snnlm.config import GPT2Config
from snnlm.optim import AdamW, clip_grad_norm
from snnlm.pretrain import init_params

WRAPPED = {
    "linear (BLAS GEMM)": ("linear_forward", "linear_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "cross-entropy": ("crossentropy_forward", "crossentropy_backward"),
    "embedding": ("embedding_forward", "embedding_backward"),
}


def instrument(seconds: dict[str, float], gemm_shapes: list[tuple]) -> None:
    """Replace the layer functions that gpt2_train calls by timed versions; record linear GEMM shapes."""
    for group, names in WRAPPED.items():
        for name in names:
            original = getattr(gpt2_train, name)

            def timed(*args, _original=original, _group=group, _name=name):
                start = time.perf_counter()
                out = _original(*args)
                seconds[_group] += time.perf_counter() - start
                if _name == "linear_forward":
                    x, w = args[0], args[1]
                    gemm_shapes.append((int(np.prod(x.shape[:-1])), w.shape[0], w.shape[1]))
                return out

            setattr(gpt2_train, name, timed)


def gemm_floor(shapes: list[tuple[int, int, int]], rng: np.random.Generator) -> float:
    """Seconds for the step's GEMMs alone: each forward (R,K)@(K,M) and its two backward products."""
    total = 0.0
    for r, k, m in shapes:
        x = rng.standard_normal((r, k), dtype=np.float32)
        w = rng.standard_normal((k, m), dtype=np.float32)
        dy = rng.standard_normal((r, m), dtype=np.float32)
        start = time.perf_counter()
        x @ w
        x.T @ dy
        dy @ w.T
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, for a smoke run")
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train.json")
    args = parser.parse_args()
    if args.quick:
        config, batch, seq = GPT2Config(n_ctx=64, n_embd=64, n_head=2, n_layer=2), 4, 64
    else:
        config, batch, seq = GPT2Config(n_ctx=256, n_embd=256, n_head=4, n_layer=4), 8, 256
    rng = np.random.default_rng(0)
    params = init_params(config, rng)
    optimizer = AdamW(params, betas=(0.9, 0.95), weight_decay=0.1)
    seconds: dict[str, float] = collections.defaultdict(float)
    shapes: list[tuple[int, int, int]] = []
    instrument(seconds, shapes)
    load = OtherLoad()
    step_times, floors = [], []
    for step in range(args.steps + 1):
        ids = rng.integers(0, config.n_vocab, (batch, seq + 1))
        if step == 1:
            seconds.clear()
        shapes.clear()
        start = time.perf_counter()
        _, grads = gpt2_train.loss_and_grads(params, config, ids[:, :-1], ids[:, 1:])
        mid = time.perf_counter()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads, 1e-4)
        end = time.perf_counter()
        if step >= 1:
            seconds["optimizer (clip + AdamW)"] += end - mid
            step_times.append(end - start)
            floors.append(gemm_floor(shapes, rng))
    step_s = float(np.median(step_times))
    measured = {k: v / args.steps for k, v in seconds.items()}
    measured["other (Python, residual adds, ...)"] = step_s - sum(measured.values())
    tokens = batch * seq
    rows = [[name, f"{s * 1e3:.0f}", f"{100 * s / step_s:.1f} %"] for name, s in measured.items()]
    floor_s = float(np.median(floors))
    print(f"config: {config.n_layer} layers x {config.n_embd} wide, {config.n_head} heads, batch {batch} x {seq} tokens")
    print(markdown_table(["part of a step", "ms", "share"], rows))
    print(f"\nstep: {step_s * 1e3:.0f} ms = {tokens / step_s:.0f} tokens/s; the same GEMMs alone: {floor_s * 1e3:.0f} ms "
          f"({100 * floor_s / step_s:.0f} % of the step); peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")
    share = load.share()
    if share is not None:
        print(f"other processes used {100 * share:.0f} % of the machine's CPU during the run")
    write_results(args.out, "train", {"config": config.__dict__, "batch": batch, "seq_len": seq, "steps": args.steps},
                  {"step_s": step_s, "tokens_per_s": tokens / step_s, "gemm_floor_s": floor_s,
                   "gemm_share_of_step": floor_s / step_s, "parts_s": measured,
                   "peak_rss_bytes": peak_rss_bytes(), "other_load_share": share}, machine_info())


if __name__ == "__main__":
    main()
