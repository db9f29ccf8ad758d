"""`python -m snnlm.evaluate`: what the spiking conversion lost and what it saved, on a text.

Lost: the perplexity of the ANN and of the SNN, the cosine similarity of their final hidden states
(after ln_f) and of their logits, token by token, and how often their top-1 next tokens agree. Saved:
the firing rates and the estimated energy of `snnlm.energy`.

The text is cut into consecutive, non-overlapping windows of `window` tokens (default n_ctx), each run
as a sequence of its own; in each window every token but the first is predicted from the ones before
it. This is simpler than a sliding window and gives a somewhat higher perplexity (tokens early in a
window see little context), in the same way for both models.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from snnlm.energy import EnergyConstants, ModelOps, ann_model_ops, energy_report, firing_rates, snn_model_ops
from snnlm.errors import ArgumentParser, SnnlmError, cli_main
from snnlm.generate import DEFAULT_TIMESTEPS
from snnlm.gpt2 import hidden_states, lm_head
from snnlm.layers import crossentropy_forward
from snnlm.snn import SpikingGPT2, convert, load_snn, snn_forward
from snnlm.tokenizer import GPT2Tokenizer, tokenizer_for_weights
from snnlm.weights import DEFAULT_WEIGHTS_DIR, GPT2Model, load_gpt2

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "wikitext-2-raw" / "wiki.test.raw"
DEFAULT_MAX_TOKENS = 2048
WINDOW_METHOD = "non-overlapping windows; the first token of each window is not predicted"
# Rows of logits turned into float64 at a time for the cosines: 64 x 50257 x 8 bytes = 26 MB.
_COSINE_ROWS = 64


def eval_windows(ids: np.ndarray, window: int) -> list[np.ndarray]:
    """Token ids (N,) -> consecutive non-overlapping windows of `window` tokens, the last one possibly shorter."""
    return [ids[start:start + window] for start in range(0, ids.size, window)]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a and b, (n, m) each -> (n,) float64 in [-1, 1]; a zero row gives 0."""
    cosines = np.empty(a.shape[0])
    for start in range(0, a.shape[0], _COSINE_ROWS):
        x = a[start:start + _COSINE_ROWS].astype(np.float64)
        y = b[start:start + _COSINE_ROWS].astype(np.float64)
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cosines[start:start + _COSINE_ROWS] = np.einsum("ij,ij->i", x, y) / np.where(norms > 0, norms, np.inf)
    # Rounding can carry the quotient of parallel rows a few ulp past 1.
    return np.clip(cosines, -1.0, 1.0)


def _nll_sum(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed negative log-likelihood of ids[1:] under logits[:-1]. logits (n, V) are overwritten."""
    if ids.size < 2:
        return 0.0
    loss, _ = crossentropy_forward(logits[:-1], ids[1:])
    return loss * (ids.size - 1)


def _check_inputs(model: GPT2Model, snn: SpikingGPT2, ids: np.ndarray, window: int) -> None:
    config = model.config
    if snn.config != config:
        raise SnnlmError(f"the spiking model's config {dataclasses.asdict(snn.config)} does not match the ANN's "
                         f"{dataclasses.asdict(config)}")
    if ids.size < 2:
        raise SnnlmError(f"evaluation needs at least 2 tokens, got {ids.size}")
    if ids.min() < 0 or ids.max() >= config.n_vocab:
        raise SnnlmError(f"token ids must lie in 0..{config.n_vocab - 1}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 2 <= window <= config.n_ctx:
        raise SnnlmError(f"the window must be an integer in [2, {config.n_ctx}] (n_ctx), got {window!r}")


def evaluate(model: GPT2Model, snn: SpikingGPT2, ids, window: int | None = None,
             constants: EnergyConstants = EnergyConstants(), progress: bool = False) -> dict:
    """Compare a GPT-2 with its spiking version on token ids (N,), in windows of `window` tokens (default n_ctx).

    Returns a JSON-able dict: tokens, window, windows, predicted_tokens, method, timesteps,
    attention_layers and ffn_layers (the spiking ones); perplexity {ann, snn, ratio = snn / ann};
    cosine_hidden and cosine_logits {mean, min} over tokens; top1_agreement (fraction of tokens);
    firing_rates (per layer, `snnlm.energy.firing_rates`); energy (`snnlm.energy.energy_report`).
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    window = model.config.n_ctx if window is None else window
    _check_inputs(model, snn, ids, window)
    nll = {"ann": 0.0, "snn": 0.0}
    cosine_hidden, cosine_logits, agree, stats = [], [], [], []
    ann_ops: ModelOps | None = None
    snn_ops: ModelOps | None = None
    for chunk in tqdm(eval_windows(ids, window), desc="evaluating", unit="window", disable=not progress):
        ann_hidden = hidden_states(model.params, model.config, chunk)
        snn_hidden, layer_stats = snn_forward(snn, chunk)
        ann_logits, snn_logits = lm_head(model.params, ann_hidden), lm_head(snn.params, snn_hidden)
        cosine_hidden.append(row_cosines(ann_hidden, snn_hidden))
        cosine_logits.append(row_cosines(ann_logits, snn_logits))
        agree.append(ann_logits.argmax(axis=-1) == snn_logits.argmax(axis=-1))
        nll["ann"] += _nll_sum(ann_logits, chunk)
        nll["snn"] += _nll_sum(snn_logits, chunk)
        stats.append(layer_stats)
        ann_chunk, snn_chunk = ann_model_ops(model.config, chunk.size), snn_model_ops(snn, chunk.size, layer_stats)
        ann_ops = ann_chunk if ann_ops is None else ann_ops + ann_chunk
        snn_ops = snn_chunk if snn_ops is None else snn_ops + snn_chunk
    n_windows = len(stats)
    predicted = ids.size - n_windows
    perplexity = {name: float(np.exp(total / predicted)) for name, total in nll.items()}
    hidden, logits = np.concatenate(cosine_hidden), np.concatenate(cosine_logits)
    return {
        "tokens": int(ids.size),
        "window": int(window),
        "windows": n_windows,
        "predicted_tokens": predicted,
        "method": WINDOW_METHOD,
        "timesteps": snn.timesteps,
        "attention_layers": snn.attention_layers,
        "ffn_layers": snn.ffn_layers,
        "perplexity": {**perplexity, "ratio": perplexity["snn"] / perplexity["ann"]},
        "cosine_hidden": {"mean": float(hidden.mean()), "min": float(hidden.min())},
        "cosine_logits": {"mean": float(logits.mean()), "min": float(logits.min())},
        "top1_agreement": float(np.concatenate(agree).mean()),
        "firing_rates": firing_rates(stats),
        "energy": energy_report(ann_ops, snn_ops, constants),
    }


def read_eval_ids(path: str | Path, tokenizer: GPT2Tokenizer, max_tokens: int) -> np.ndarray:
    """The first max_tokens tokens of a UTF-8 text file (all of them for max_tokens 0), (N,) int64."""
    path = Path(path)
    if not path.is_file():
        raise SnnlmError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SnnlmError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    if not text.strip():
        raise SnnlmError(f"{path}: holds no text")
    ids = tokenizer.encode(text)[:max_tokens or None]
    if len(ids) < 2:
        raise SnnlmError(f"{path}: {len(ids)} token; evaluation needs at least 2")
    return np.asarray(ids, dtype=np.int64)


def _format_energy(pj: float) -> str:
    """An energy in picojoules, in the unit that suits it."""
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _energy_cells(part: dict) -> str:
    """ANN and SNN energy per token, their ratio and the saving, as fixed-width table cells."""
    return (f"{_format_energy(part['ann_pj_per_token']):>15}{_format_energy(part['snn_pj_per_token']):>11}"
            f"{part['ratio']:>9.3f}{part['saving_percent']:>8.1f} %")


def _mean_and_min(figures: dict) -> str:
    return f"mean {figures['mean']:.5f}   min {figures['min']:.5f}"


def _describe_layers(indices: list[int], n_layer: int) -> str:
    if not indices:
        return "no layer"
    if indices == list(range(n_layer)):
        return f"all {n_layer} layers"
    return "layers " + ", ".join(map(str, indices))


def format_report(result: dict, data: str) -> str:
    """The human-readable tables of an `evaluate` result on the text file `data`."""
    energy, n_layer = result["energy"], len(result["firing_rates"])
    ppl = result["perplexity"]
    lines = [
        f"{result['tokens']} tokens of {data}: {result['windows']} non-overlapping window(s) of up to "
        f"{result['window']} tokens, T={result['timesteps']}",
        f"spiking attention (SSA): {_describe_layers(result['attention_layers'], n_layer)}; "
        f"spiking FFN: {_describe_layers(result['ffn_layers'], n_layer)}",
        "",
        "fidelity                   ANN          SNN",
        f"  perplexity       {ppl['ann']:>11.3f}  {ppl['snn']:>11.3f}   SNN/ANN {ppl['ratio']:.4f}",
        f"  cosine, final hidden   {_mean_and_min(result['cosine_hidden'])}",
        f"  cosine, logits         {_mean_and_min(result['cosine_logits'])}",
        f"  top-1 agreement        {result['top1_agreement']:.4f}",
        "",
        "firing rates (nonzero spikes per neuron per timestep; - = ANN block)",
        "  layer      u      q      k      v      o     in hidden",
    ]
    for i, rates in enumerate(result["firing_rates"]):
        attention = [rates["attention"][g] if rates["attention"] else None for g in ("u", "q", "k", "v", "o")]
        ffn = [rates["ffn"][g] if rates["ffn"] else None for g in ("in", "hidden")]
        cells = "".join(f"{r:>7.3f}" if r is not None else f"{'-':>7}" for r in attention + ffn)
        lines.append(f"  {i:>5}{cells}")
    constants = energy["constants"]
    lines += [
        "",
        f"energy per token (E_MAC {constants['e_mac_pj']} pJ, E_AC {constants['e_ac_pj']} pJ; {constants['source']})",
        f"  {'layer':<24}{'attention: ANN':>15}{'SNN':>11}{'SNN/ANN':>9}{'saving':>10}"
        f"{'FFN: ANN':>15}{'SNN':>11}{'SNN/ANN':>9}{'saving':>10}",
    ]
    for i, layer in enumerate(energy["layers"]):
        lines.append(f"  {i:<24}{_energy_cells(layer['attention'])}{_energy_cells(layer['ffn'])}")
    lines.append(f"  {'':<24}{'ANN':>15}{'SNN':>11}{'SNN/ANN':>9}{'saving':>10}")
    for name, key in (("attention, all layers", "attention"), ("FFN, all layers", "ffn"),
                      ("whole model", "model"), ("whole model w/o LM head", "model_without_lm_head")):
        lines.append(f"  {name:<24}{_energy_cells(energy[key])}")
    low, high = energy["paper_ssa_saving_percent"]
    lines += [f"  the paper reports SSA energy {low}-{high} % below softmax attention",
              f"  note: {energy['note']}"]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m snnlm.evaluate",
        description="Compare GPT-2 with its spiking version on a text: perplexity of both, cosine similarity of "
                    "their final hidden states and logits, top-1 next-token agreement, firing rates and the "
                    "estimated energy of each. The text is cut into non-overlapping windows. Progress and notes "
                    "go to stderr.",
    )
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR),
                        help="directory with the GPT-2 model.safetensors, config.json and tokenizer files "
                             "(default: the embedded model in %(default)s)")
    parser.add_argument("--snn", metavar="CKPT", default=None,
                        help="spiking checkpoint (written by snnlm.snn.save_snn) of the --weights model; "
                             "without it the --weights model is converted first, calibrated on the shipped corpus")
    parser.add_argument("--data", metavar="FILE", default=str(DEFAULT_DATA),
                        help="UTF-8 text to evaluate on (default: the WikiText-2 test text, %(default)s)")
    parser.add_argument("--timesteps", type=int, default=None, metavar="T",
                        help=f"timesteps per token of the spiking network (default: {DEFAULT_TIMESTEPS}, "
                             "or the checkpoint's T with --snn)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                        help="evaluate the first N tokens of the text; 0 = all of it (default: %(default)s)")
    parser.add_argument("--window", type=int, default=None, metavar="W",
                        help="tokens per window (default: the model's context window n_ctx)")
    parser.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                        help="when converting: make the attention of every layer spiking (default: yes)")
    parser.add_argument("--ffn", action=argparse.BooleanOptionalAction, default=None,
                        help="when converting: make the FFN of every layer spiking (default: yes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")
    args = parser.parse_args(argv)
    if args.timesteps is not None and args.timesteps < 1:
        parser.error("--timesteps must be >= 1")
    if args.max_tokens < 0 or args.max_tokens == 1:
        parser.error("--max-tokens must be 0 (all) or >= 2")
    if args.window is not None and args.window < 2:
        parser.error("--window must be >= 2")
    if args.snn is not None and (args.attention is not None or args.ffn is not None):
        parser.error("--attention and --ffn choose what gets converted; a --snn checkpoint is converted already")
    return args


def _spiking_model(args: argparse.Namespace, model: GPT2Model) -> SpikingGPT2:
    """The checkpoint at the T asked for, or `model` converted as the options say."""
    if args.snn is not None:
        snn = load_snn(args.snn)
        if args.timesteps is not None and args.timesteps != snn.timesteps:
            print(f"snnlm: warning: {args.snn} was calibrated for T={snn.settings.timesteps}; "
                  f"running it at T={args.timesteps}", file=sys.stderr)
            snn = dataclasses.replace(snn, timesteps=args.timesteps)
        return snn
    timesteps = args.timesteps or DEFAULT_TIMESTEPS
    attention, ffn = args.attention is not False, args.ffn is not False
    print(f"converting {args.weights} into a spiking network (T={timesteps}; attention {'yes' if attention else 'no'}, "
          f"FFN {'yes' if ffn else 'no'}), calibrated on the shipped corpus", file=sys.stderr)
    return convert(model, timesteps, attention=attention, ffn=ffn)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    model = load_gpt2(args.weights)
    if args.window is not None and args.window > model.config.n_ctx:
        raise SnnlmError(f"--window {args.window} exceeds the model's context window of {model.config.n_ctx}")
    ids = read_eval_ids(args.data, tokenizer_for_weights(args.weights), args.max_tokens)
    snn = _spiking_model(args, model)
    result = evaluate(model, snn, ids, args.window, progress=True)
    if args.json:
        source = {"weights": args.weights, "snn": args.snn, "data": args.data}
        print(json.dumps({"source": source, **result}))
    else:
        print(format_report(result, args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
