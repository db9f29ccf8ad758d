"""`python -m snnlm.pretrain`: train a GPT-2-architecture model from scratch on text files, in NumPy.

The run is deterministic for a given seed: the batches of step s come from `default_rng([seed, s])`,
so a run that is stopped and resumed from its checkpoint ends bit-identical to one that never stopped.
The result is a Hugging Face-layout GPT-2 directory, `OUT/model/`, with a `training.json` record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import snnlm
from snnlm.config import GPT2Config
from snnlm.data import eval_window_starts, iter_eval_batches, load_token_splits, sample_batch, token_fingerprint
from snnlm.errors import ArgumentParser, SnnlmError, cli_main
from snnlm.fileio import atomic_write_bytes, atomic_write_text
from snnlm.gpt2_train import loss_and_grads
from snnlm.optim import AdamW, clip_grad_norm, cosine_lr
from snnlm.safetensors_io import read_safetensors, write_safetensors
from snnlm.tokenizer import load_tokenizer
from snnlm.weights import DEFAULT_WEIGHTS_DIR, params_from_tensors, params_to_tensors, save_gpt2

DEFAULT_DATA = Path(snnlm.__file__).resolve().parent.parent / "data" / "corpus"
DEFAULT_OUT = Path("runs") / "pretrain"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
TRAINING_FILE = "training.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "LICENSE.gpt2-tokenizer")
CHECKPOINT_FORMAT = "snnlm-pretrain-checkpoint/1"
SAVE_DTYPES = {"float16": np.float16, "float32": np.float32}
INIT_STD = 0.02
# Flags that fix the model or the stream of batches: a resumed run must use the same values.
RESUME_MUST_MATCH = ("n_layer", "n_embd", "n_head", "n_ctx", "batch_size", "seq_len", "seed", "val_fraction")
# Flags recorded in the checkpoint and in training.json.
HYPERPARAMETERS = RESUME_MUST_MATCH + ("steps", "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2",
                                      "grad_clip", "eval_every", "eval_batches", "checkpoint_every", "save_dtype")
_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


@dataclasses.dataclass
class TrainState:
    """Progress that a checkpoint carries from one session to the next."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    last_loss: float = float("nan")
    commands: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: config, fp32 params, optimizer state, progress and the run's recorded flags."""

    config: GPT2Config
    params: dict
    optimizer_tensors: dict[str, np.ndarray]
    optimizer_metadata: dict[str, str]
    state: TrainState
    hyperparameters: dict
    data_sha256: str
    sources: list[dict]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m snnlm.pretrain`."""
    p = ArgumentParser(
        prog="python -m snnlm.pretrain",
        description="Train a GPT-2-architecture model from scratch on text files (NumPy, CPU). "
                    "Writes OUT/checkpoint.safetensors while it runs, OUT/log.jsonl, and at the end a "
                    "Hugging Face-layout model in OUT/model/ with a training.json record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", nargs="+", type=Path, default=[DEFAULT_DATA], metavar="PATH",
                      help="text files, or folders whose *.txt files (recursively) are used; each file is one document")
    data.add_argument("--val-fraction", type=float, default=0.02,
                      help="the last fraction of every file's tokens is held out for validation")
    data.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                      help="output folder: token cache, checkpoint, log and the final model/")
    model = p.add_argument_group("model shape")
    model.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    model.add_argument("--n-embd", type=int, default=256, help="width d of the residual stream")
    model.add_argument("--n-head", type=int, default=4, help="attention heads (must divide --n-embd)")
    model.add_argument("--n-ctx", type=int, default=256, help="longest context the model accepts (position table size)")
    train = p.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    train.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence (at most --n-ctx)")
    train.add_argument("--steps", type=int, default=2000, help="optimizer steps of the whole schedule")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, reached after the warmup")
    train.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end of the cosine decay")
    train.add_argument("--warmup", type=int, default=100, help="steps of linear learning-rate warmup")
    train.add_argument("--weight-decay", type=float, default=0.1,
                       help="AdamW decoupled weight decay, applied to matrices and embeddings only")
    train.add_argument("--beta1", type=float, default=0.9, help="AdamW first-moment decay")
    train.add_argument("--beta2", type=float, default=0.95, help="AdamW second-moment decay")
    train.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    train.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every batch")
    run = p.add_argument_group("evaluation, checkpoints and stopping")
    run.add_argument("--eval-every", type=int, default=200,
                     help="steps between validation losses (the final one uses the whole validation split)")
    run.add_argument("--eval-batches", type=int, default=20, help="batches of evenly spaced windows per validation loss")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.safetensors; model shape, data, seed, --batch-size, "
                          "--seq-len and --val-fraction must match it, the other flags may change")
    run.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                     help="stop after this step with a checkpoint, without finishing the schedule or exporting "
                          "the model; continue later with --resume (splits a long run into sessions)")
    run.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                     help="stop cleanly once this session has run this long: checkpoint, final evaluation and export")
    run.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="float16",
                     help="dtype of the exported OUT/model/model.safetensors (checkpoints are always float32)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and range-check the flags; a bad value exits with argparse's usage message (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    positive = ("n_layer", "n_embd", "n_head", "n_ctx", "batch_size", "seq_len", "steps", "eval_every",
                "eval_batches", "checkpoint_every")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.n_embd % args.n_head:
        parser.error(f"--n-head {args.n_head} does not divide --n-embd {args.n_embd}")
    if args.seq_len > args.n_ctx:
        parser.error(f"--seq-len {args.seq_len} exceeds --n-ctx {args.n_ctx}")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if not (args.lr > 0 and 0 <= args.min_lr <= args.lr):
        parser.error(f"need --lr > 0 and 0 <= --min-lr <= --lr, got --lr {args.lr} --min-lr {args.min_lr}")
    if args.warmup < 0 or args.weight_decay < 0 or args.grad_clip < 0:
        parser.error("--warmup, --weight-decay and --grad-clip must not be negative")
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        parser.error(f"--beta1 and --beta2 must be in [0, 1), got {args.beta1} and {args.beta2}")
    if args.stop_at is not None and args.stop_at < 1:
        parser.error(f"--stop-at must be at least 1, got {args.stop_at}")
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit}")
    return args


def init_params(config: GPT2Config, rng: np.random.Generator) -> dict:
    """GPT-2's initialisation, float32: N(0, 0.02) matrices and embeddings, N(0, 0.02/sqrt(2 L)) for the
    projections that write into the residual stream, zero biases, unit LayerNorm gains."""
    d = config.n_embd
    residual_std = INIT_STD / math.sqrt(2 * config.n_layer)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def layernorm() -> dict:
        return {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32)}

    wte = normal((config.n_vocab, d), INIT_STD)
    wpe = normal((config.n_ctx, d), INIT_STD)
    blocks = [
        {
            "ln_1": layernorm(),
            "attn": {"c_attn": {"w": normal((d, 3 * d), INIT_STD), "b": np.zeros(3 * d, np.float32)},
                     "c_proj": {"w": normal((d, d), residual_std), "b": np.zeros(d, np.float32)}},
            "ln_2": layernorm(),
            "mlp": {"c_fc": {"w": normal((d, 4 * d), INIT_STD), "b": np.zeros(4 * d, np.float32)},
                    "c_proj": {"w": normal((4 * d, d), residual_std), "b": np.zeros(d, np.float32)}},
        }
        for _ in range(config.n_layer)
    ]
    return {"wte": wte, "wpe": wpe, "blocks": blocks, "ln_f": layernorm()}


def evaluate(params: dict, config: GPT2Config, tokens: np.ndarray, batch_size: int, seq_len: int,
             max_batches: int | None) -> tuple[float, int]:
    """Mean next-token loss over deterministic evenly spaced windows of `tokens` (N,); returns (loss, targets counted).

    `max_batches` None covers the whole stream with non-overlapping windows.
    """
    total, count = 0.0, 0
    for ids, targets in iter_eval_batches(tokens, batch_size, seq_len, max_batches):
        loss, _ = loss_and_grads(params, config, ids, targets, need_grads=False)
        total += loss * targets.size
        count += targets.size
    return total / count, count


def unigram_perplexity(train: np.ndarray, targets: np.ndarray, n_vocab: int) -> float:
    """Perplexity on `targets` (K,) of the add-one-smoothed unigram distribution of `train` (N,)."""
    counts = np.bincount(train, minlength=n_vocab).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[targets].mean()))


def save_checkpoint(path: Path, config: GPT2Config, optimizer: AdamW, params: dict, state: TrainState,
                    hyperparameters: dict, data_sha256: str, sources: list[dict]) -> None:
    """Write fp32 params, AdamW moments and the run's progress to `path`, atomically."""
    tensors = {f"params.{k}": v for k, v in params_to_tensors(params).items()}
    opt_tensors, opt_metadata = optimizer.state_dict()
    tensors.update({f"adam.{k}": v for k, v in opt_tensors.items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(dataclasses.asdict(config)),
        "hyperparameters": json.dumps(hyperparameters),
        "state": json.dumps(dataclasses.asdict(state)),
        "data_sha256": data_sha256,
        "sources": json.dumps([{"name": Path(s["path"]).name, "sha256": s["sha256"]} for s in sources]),
        **{f"adam.{k}": v for k, v in opt_metadata.items()},
    }
    write_safetensors(path, tensors, metadata)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check a checkpoint written by `save_checkpoint`; anything wrong is a one-line SnnlmError."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise SnnlmError(f"{path}: not a snnlm pretraining checkpoint (format {metadata.get('format')!r})")
    try:
        config = GPT2Config(**json.loads(metadata["config"]))
        state = TrainState(**json.loads(metadata["state"]))
        hyperparameters = json.loads(metadata["hyperparameters"])
        sources = json.loads(metadata["sources"])
        data_sha256 = metadata["data_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise SnnlmError(f"{path}: malformed checkpoint metadata ({type(e).__name__}: {e})") from None
    params = params_from_tensors({k.removeprefix("params."): v for k, v in tensors.items() if k.startswith("params.")},
                                 config, path)
    return Checkpoint(
        config=config, params=params,
        optimizer_tensors={k.removeprefix("adam."): v for k, v in tensors.items() if k.startswith("adam.")},
        optimizer_metadata={k.removeprefix("adam."): v for k, v in metadata.items() if k.startswith("adam.")},
        state=state, hyperparameters=hyperparameters, data_sha256=data_sha256, sources=sources,
    )


def check_resumable(checkpoint: Checkpoint, path: Path, config: GPT2Config, hyperparameters: dict,
                    data_sha256: str, sources: list[dict]) -> None:
    """Refuse to resume when the model shape, batch stream or data differ from the checkpoint's."""
    differences = []
    for name in RESUME_MUST_MATCH:
        was, now = checkpoint.hyperparameters.get(name), hyperparameters[name]
        if was != now:
            differences.append(f"--{name.replace('_', '-')} is {now} but the checkpoint has {was}")
    if dataclasses.asdict(checkpoint.config) != dataclasses.asdict(config):
        differences.append(f"the model config is {config} but the checkpoint has {checkpoint.config}")
    if differences:
        raise SnnlmError(f"{path}: cannot resume: " + "; ".join(differences))
    if checkpoint.data_sha256 != data_sha256:
        was = {s["name"]: s["sha256"] for s in checkpoint.sources}
        now = {Path(s["path"]).name: s["sha256"] for s in sources}
        changes = [f"{n} was added" for n in now if n not in was]
        changes += [f"{n} is missing" for n in was if n not in now]
        changes += [f"{n} changed" for n in now if n in was and now[n] != was[n]]
        detail = ", ".join(changes) or "the files are the same but their tokens differ (tokenizer or file order changed)"
        raise SnnlmError(f"{path}: cannot resume: the training data differs from the checkpoint's: {detail}")


def export_model(model_dir: Path, config: GPT2Config, params: dict, dtype, training: dict) -> None:
    """Write the Hugging Face-layout model: weights, config.json, tokenizer files and training.json."""
    save_gpt2(model_dir, config, params, dtype=dtype)
    for name in TOKENIZER_FILES:
        source = DEFAULT_WEIGHTS_DIR / name
        if source.is_file():
            atomic_write_bytes(model_dir / name, source.read_bytes())
    atomic_write_text(model_dir / TRAINING_FILE, json.dumps(training, indent=2) + "\n")


class StopSignals:
    """While active, SIGINT and SIGTERM only record themselves, so the loop can finish its step and save.

    A second signal raises KeyboardInterrupt at once, for a user who does not want to wait.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        for signum in _SIGNAL_NAMES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


class PretrainRun:
    """One session of a training run: the data, the model and optimizer, and the loop that trains them."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.session_start = time.monotonic()
        self.args, self.argv = args, argv
        self.out = args.out
        self.checkpoint_path = self.out / CHECKPOINT_FILE
        if self.checkpoint_path.exists() and not args.resume:
            raise SnnlmError(f"{self.checkpoint_path} already exists: add --resume to continue that run, "
                             f"or choose another --out")
        if args.resume and not self.checkpoint_path.exists():
            raise SnnlmError(f"--resume: there is no checkpoint {self.checkpoint_path} to continue")
        # Read before tokenizing, so that a damaged checkpoint is reported at once.
        checkpoint = load_checkpoint(self.checkpoint_path) if args.resume else None

        tokenizer = load_tokenizer(DEFAULT_WEIGHTS_DIR)
        self.config = GPT2Config(n_vocab=tokenizer.n_vocab, n_ctx=args.n_ctx, n_embd=args.n_embd,
                                 n_head=args.n_head, n_layer=args.n_layer)
        self.train, self.val, self.sources = load_token_splits(args.data, self.out, tokenizer, args.val_fraction)
        for split, tokens in (("training", self.train), ("validation", self.val)):
            if len(tokens) < args.seq_len + 1:
                raise SnnlmError(f"the {split} split has {len(tokens)} tokens, too few for --seq-len "
                                 f"{args.seq_len}; give more text or a smaller --seq-len")
        self.data_sha256 = token_fingerprint(self.train, self.val)
        self.hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS}

        if checkpoint is None:
            self.params = init_params(self.config, np.random.default_rng(args.seed))
            self.state = TrainState()
        else:
            check_resumable(checkpoint, self.checkpoint_path, self.config, self.hyperparameters,
                            self.data_sha256, self.sources)
            if args.stop_at is not None and args.stop_at <= checkpoint.state.step:
                raise SnnlmError(f"--stop-at {args.stop_at}: the checkpoint is already at step {checkpoint.state.step}")
            self.params, self.state = checkpoint.params, checkpoint.state
        self.optimizer = AdamW(self.params, (args.beta1, args.beta2), weight_decay=args.weight_decay)
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer_tensors, checkpoint.optimizer_metadata,
                                           str(self.checkpoint_path))
        # Steps logged after the checkpoint belong to a session that was lost; they will be redone.
        _rewrite_log(self.out / LOG_FILE, up_to_step=self.state.step)
        self.prior_elapsed_s = self.state.elapsed_s
        self.state.commands.append(shlex.join(["python", "-m", "snnlm.pretrain", *argv]))

    def elapsed(self) -> float:
        """Wall seconds of the whole run: earlier sessions plus this one."""
        return self.prior_elapsed_s + time.monotonic() - self.session_start

    def save(self) -> None:
        """Checkpoint the current state, unless the weights have gone non-finite."""
        if not all(np.isfinite(p).all() for p in self.optimizer.params):
            raise SnnlmError(f"step {self.state.step}: the weights hold NaN or inf; training diverged, try a lower "
                             f"--lr. Nothing was saved; {_last_good(self.checkpoint_path)}")
        self.state.elapsed_s = self.elapsed()
        save_checkpoint(self.checkpoint_path, self.config, self.optimizer, self.params, self.state,
                        self.hyperparameters, self.data_sha256, self.sources)

    def train_loop(self, signals: StopSignals) -> str | None:
        """Train until the schedule ends or a stop condition holds; returns why it stopped early, or None."""
        args, state = self.args, self.state
        tokens_per_step = args.batch_size * args.seq_len
        train_seconds, session_steps = 0.0, 0
        stop_reason = None
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as log, \
                tqdm(total=args.steps, initial=min(state.step, args.steps), desc="pretrain", unit="step",
                     dynamic_ncols=True) as bar:
            while state.step < args.steps and stop_reason is None:
                step = state.step + 1
                t0 = time.perf_counter()
                ids, targets = sample_batch(self.train, args.batch_size, args.seq_len,
                                            np.random.default_rng([args.seed, step]))
                lr = cosine_lr(step - 1, args.lr, args.min_lr, args.warmup, args.steps)
                loss, grads = loss_and_grads(self.params, self.config, ids, targets)
                grad_norm = clip_grad_norm(grads, args.grad_clip)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    raise SnnlmError(f"step {step}: the loss is {loss} and the gradient norm {grad_norm}; training "
                                     f"diverged, try a lower --lr. Nothing was saved; "
                                     f"{_last_good(self.checkpoint_path)}")
                self.optimizer.step(grads, lr)
                del grads
                train_seconds += time.perf_counter() - t0
                session_steps += 1
                state.step, state.tokens_seen, state.last_loss = step, state.tokens_seen + tokens_per_step, loss
                record = {"step": step, "train_loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens": state.tokens_seen, "elapsed_s": round(self.elapsed(), 3)}
                # The last step gets the full validation pass of the final report instead.
                if step % args.eval_every == 0 and step < args.steps:
                    val_loss, _ = evaluate(self.params, self.config, self.val, args.batch_size, args.seq_len,
                                           args.eval_batches)
                    record.update(val_loss=val_loss, val_perplexity=math.exp(val_loss))
                    bar.write(f"step {step}: train loss {loss:.4f}, val loss {val_loss:.4f}, "
                              f"val perplexity {math.exp(val_loss):.1f}")
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}",
                                tok_s=f"{session_steps * tokens_per_step / train_seconds:.0f}")
                if signals.signum is not None:
                    stop_reason = _SIGNAL_NAMES[signals.signum]
                elif args.stop_at is not None and step >= args.stop_at:
                    stop_reason = "stop-at"
                elif args.time_limit is not None and time.monotonic() - self.session_start >= args.time_limit * 60:
                    stop_reason = "time-limit"
                if step % args.checkpoint_every == 0 or step == args.steps or stop_reason is not None:
                    self.save()
        return stop_reason

    def finish(self, stop_reason: str | None) -> None:
        """Final evaluation, export of OUT/model/ with training.json, and a last log record."""
        training = self.final_report(stop_reason)
        model_dir = self.out / MODEL_DIR
        export_model(model_dir, self.config, self.params, SAVE_DTYPES[self.args.save_dtype], training)
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps({"step": self.state.step, "final_val_loss": training["val_loss"],
                                  "final_val_perplexity": training["val_perplexity"],
                                  "elapsed_s": round(self.elapsed(), 3)}) + "\n")
        print(f"step {self.state.step}: val loss {training['val_loss']:.4f}, val perplexity "
              f"{training['val_perplexity']:.1f} (unigram baseline {training['unigram_val_perplexity']:.1f}); "
              f"model written to {model_dir}", file=sys.stderr)

    def final_report(self, stop_reason: str | None) -> dict:
        """The final evaluation (the whole validation split) and everything training.json records."""
        args, config, state = self.args, self.config, self.state
        with tqdm(total=2, desc="final evaluation", leave=False) as bar:
            val_loss, val_tokens = evaluate(self.params, config, self.val, args.batch_size, args.seq_len, None)
            bar.update(1)
            train_loss, _ = evaluate(self.params, config, self.train, args.batch_size, args.seq_len,
                                     args.eval_batches)
            bar.update(1)
        starts = eval_window_starts(len(self.val), args.seq_len, None)
        val_targets = self.val[starts[:, None] + 1 + np.arange(args.seq_len)].reshape(-1)
        return {
            "data": [{k: s[k] for k in ("path", "size", "sha256", "n_tokens", "n_train", "n_val")}
                     for s in self.sources],
            "commands": state.commands,
            "config": dataclasses.asdict(config),
            "hyperparameters": self.hyperparameters,
            "steps": state.step,
            "stopped_early": stop_reason,
            "tokens_seen": state.tokens_seen,
            "wall_time_s": round(self.elapsed(), 1),
            "final_train_loss": train_loss,
            "last_step_loss": state.last_loss,
            "val_loss": val_loss,
            "val_perplexity": math.exp(val_loss),
            "val_tokens": val_tokens,
            "unigram_val_perplexity": unigram_perplexity(self.train, val_targets, config.n_vocab),
            "notes": "final_train_loss and val_loss are mean next-token cross-entropies (nats) over evenly spaced "
                     f"windows of {args.seq_len} tokens: the whole validation split, and {args.eval_batches} "
                     "batches of the training split. The unigram baseline is the add-one-smoothed token "
                     "distribution of the training split, scored on the same validation targets.",
        }

    def resume_hint(self, stop_reason: str) -> str:
        """The stderr lines that say where the checkpoint is and how to continue."""
        argv = _without_stop_at(self.argv) if stop_reason == "stop-at" else self.argv
        command = shlex.join(["python", "-m", "snnlm.pretrain", *argv]) + ("" if self.args.resume else " --resume")
        why = "stopped at --stop-at" if stop_reason == "stop-at" else f"stopped by {stop_reason}"
        return (f"snnlm: {why} after step {self.state.step} of {self.args.steps}; checkpoint: {self.checkpoint_path}\n"
                f"snnlm: to continue: {command}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m snnlm.pretrain`; returns the exit status (128 + signal number when stopped by one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run = PretrainRun(parse_args(argv), argv)
    # Overflow in a diverging run is caught as a non-finite loss; NumPy's warnings would only add noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        with StopSignals() as signals:
            stop_reason = run.train_loop(signals)
        if signals.signum is not None or stop_reason == "stop-at":
            print(run.resume_hint(stop_reason), file=sys.stderr)
            return 128 + signals.signum if signals.signum is not None else 0
        run.finish(stop_reason)
    return 0


def _last_good(checkpoint_path: Path) -> str:
    if not checkpoint_path.exists():
        return "no checkpoint had been written yet"
    try:
        step = json.loads(read_safetensors(checkpoint_path)[1]["state"])["step"]
    except (SnnlmError, KeyError, ValueError):
        return f"the last checkpoint {checkpoint_path} is kept"
    return f"the last good checkpoint {checkpoint_path} (step {step}) is kept"


def _rewrite_log(path: Path, up_to_step: int) -> None:
    """Keep only the log records of steps up to `up_to_step`; a torn last line is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= up_to_step and "final_val_loss" not in record:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _without_stop_at(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--stop-at":
            skip = True
        elif not arg.startswith("--stop-at="):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    raise SystemExit(main())
