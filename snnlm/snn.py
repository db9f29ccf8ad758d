"""GPT-2 as a spiking network: conversion, whole-sequence forward, incremental decoding, checkpoints.

A `SpikingGPT2` keeps real-valued what the design keeps real: the embeddings wte and wpe, every
LayerNorm, ln_f and the tied LM head. Per layer, the attention is an SSA block (`snnlm.ssa`) or, when
not converted, the ordinary ANN attention; the feed-forward block is a converted spiking FFN
(`snnlm.spiking_ffn`) or the ANN MLP. `params` has the nested layout of `snnlm.weights`, with each
block holding ln_1 and ln_2, plus "attn" and "mlp" only where the layer keeps them as ANN.

Decoding (`SNNDecoder`) keeps an `SSAState` per SSA layer instead of a KV cache, so an SSA layer's
cost per token does not grow with the context; ANN attention layers keep a KV cache.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from snnlm.config import GPT2Config
from snnlm.data import SAFE_SPLIT, find_text_files
from snnlm.errors import SnnlmError
from snnlm.gpt2 import KVCache, cached_attention, layer_norm, lm_head, mlp
from snnlm.neurons import MAX_BURST
from snnlm.safetensors_io import read_safetensors, write_safetensors
from snnlm.spiking_ffn import (CALIBRATION_METHODS, SpikingFFNStats, SpikingFFNWeights, ffn_from_block,
                               spiking_ffn_forward)
from snnlm.ssa import SSAState, SSAStats, SSAWeights, ssa_forward, ssa_from_block, ssa_step
from snnlm.tokenizer import GPT2Tokenizer, tokenizer_for_weights
from snnlm.weights import DEFAULT_WEIGHTS_DIR, GPT2Model, expected_shapes

CHECKPOINT_FORMAT = "snnlm-spiking-gpt2"
CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"
CALIBRATION_TOKENS = 4096
# Names of the leaves of the params dict in the Hugging Face checkpoint.
_HF_LEAF_NAMES = {"g": "weight", "b": "bias", "w": "weight"}


@dataclasses.dataclass(frozen=True)
class ConversionSettings:
    """How the spiking layers were built.

    timesteps: the T the layers were calibrated for. method, percentile: the FFN threshold calibration
    (`ffn_from_block`; the SSA always uses the percentile). burst: the FFN neurons' burst limit B.
    binary: {0, 1} q, k, v spikes in the SSA. calibration_tokens: how many tokens calibrated them.
    """

    timesteps: int
    method: str = "percentile"
    percentile: float = 99.9
    burst: int = 1
    binary: bool = False
    calibration_tokens: int = CALIBRATION_TOKENS


@dataclasses.dataclass
class SpikingGPT2:
    """A GPT-2 whose attention and FFN blocks are (some or all) spiking; see the module docstring.

    attention[i]: layer i's SSA, or None for the ANN attention in params["blocks"][i]["attn"].
    ffn[i]: layer i's spiking FFN, or None for the ANN MLP in params["blocks"][i]["mlp"].
    timesteps: the T it runs with (`dataclasses.replace` it to run at another T than calibrated).
    """

    config: GPT2Config
    params: dict
    attention: list[SSAWeights | None]
    ffn: list[SpikingFFNWeights | None]
    timesteps: int
    settings: ConversionSettings

    @property
    def attention_layers(self) -> list[int]:
        """Indices of the layers whose attention is an SSA."""
        return [i for i, layer in enumerate(self.attention) if layer is not None]

    @property
    def ffn_layers(self) -> list[int]:
        """Indices of the layers whose FFN is spiking."""
        return [i for i, layer in enumerate(self.ffn) if layer is not None]


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """What one layer's spiking blocks did in a forward pass; None for a block kept as ANN."""

    attention: SSAStats | None
    ffn: SpikingFFNStats | None


def corpus_calibration_ids(tokenizer: GPT2Tokenizer, n_tokens: int = CALIBRATION_TOKENS,
                           corpus: Path = CORPUS_DIR) -> np.ndarray:
    """The first n_tokens tokens of the shipped corpus, (n_tokens,) int64 (fewer if it is shorter).

    The corpus is the `*.txt` files of `corpus` in sorted order, each a document, joined by <|endoftext|>.
    """
    if not corpus.is_dir():
        raise SnnlmError(f"{corpus}: no calibration corpus here; pass calibration_ids to convert()")
    ids: list[int] = []
    for path in find_text_files([corpus]):
        if ids:
            ids.append(tokenizer.eot_id)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SnnlmError(f"{path}: cannot read it as UTF-8 text ({e})") from None
        ids.extend(_leading_tokens(text, tokenizer, n_tokens - len(ids)))
        if len(ids) >= n_tokens:
            break
    return np.asarray(ids[:n_tokens], dtype=np.int64)


def _leading_tokens(text: str, tokenizer: GPT2Tokenizer, n_tokens: int) -> list[int]:
    """At least the first n_tokens tokens of `text` (all of them if it has fewer), encoding only a prefix."""
    size = 8 * max(n_tokens, 1)
    while True:
        # Text cut at a SAFE_SPLIT boundary encodes to exactly the leading tokens of the whole.
        cut = SAFE_SPLIT.search(text, size) if size < len(text) else None
        ids = tokenizer.encode(text[:cut.start()] if cut else text)
        if cut is None or len(ids) >= n_tokens:
            return ids
        size *= 2


def _layer_set(which: bool | Iterable[int], n_layer: int, name: str) -> set[int]:
    """True -> every layer, False -> none, else the given layer indices (checked)."""
    if isinstance(which, bool):
        return set(range(n_layer)) if which else set()
    layers = {int(i) for i in which}
    if not layers <= set(range(n_layer)):
        missing = sorted(layers - set(range(n_layer)))
        raise SnnlmError(f"{name}: layers {missing} do not exist (the model has {n_layer})")
    return layers


def _calibration_windows(ids: np.ndarray, config: GPT2Config) -> np.ndarray:
    """Token ids (N,) -> (B, n) windows of n = min(n_ctx, N) tokens; a last partial window is dropped."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise SnnlmError("no calibration tokens")
    if ids.min() < 0 or ids.max() >= config.n_vocab:
        raise SnnlmError(f"calibration token ids must lie in 0..{config.n_vocab - 1}")
    n = min(config.n_ctx, ids.size)
    return ids[:(ids.size // n) * n].reshape(-1, n)


def convert(model: GPT2Model, timesteps: int = 4, calibration_ids=None, attention: bool | Iterable[int] = True,
            ffn: bool | Iterable[int] = True, method: str = "percentile", percentile: float = 99.9,
            burst: int = 1, binary: bool = False, progress: bool = True) -> SpikingGPT2:
    """Convert a GPT-2 into a SpikingGPT2, calibrating on the ANN's own activations.

    calibration_ids (N,): default the first CALIBRATION_TOKENS tokens of the shipped corpus. They run
    through the ANN in windows of n_ctx tokens; each converted layer is built from the LN1 outputs
    (SSA, `ssa_from_block`, per window: attention is causal) and LN2 outputs (FFN, `ffn_from_block`) that
    the ANN produces at that layer. attention, ffn: convert every layer (True), none (False), or the
    given layer indices. method, percentile, burst: the FFN calibration. binary: {0, 1} SSA spikes.
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise SnnlmError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if method not in CALIBRATION_METHODS:
        raise SnnlmError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if not 0 < percentile <= 100:
        raise SnnlmError(f"percentile must be in (0, 100], got {percentile!r}")
    if isinstance(burst, bool) or not isinstance(burst, (int, np.integer)) or not 1 <= burst <= MAX_BURST:
        raise SnnlmError(f"burst must be an integer in [1, {MAX_BURST}], got {burst!r}")
    config, source = model.config, model.params
    attention_layers = _layer_set(attention, config.n_layer, "attention")
    ffn_layers = _layer_set(ffn, config.n_layer, "ffn")
    if calibration_ids is None:
        calibration_ids = corpus_calibration_ids(tokenizer_for_weights(model.directory or DEFAULT_WEIGHTS_DIR))
    windows = _calibration_windows(calibration_ids, config)
    eps = config.layer_norm_epsilon
    x = source["wte"][windows] + source["wpe"][:windows.shape[1]]  # (B, n, d)
    blocks, ssa_layers, ffn_blocks = [], [], []
    for i in tqdm(range(config.n_layer), desc="converting", unit="layer", disable=not progress):
        block = source["blocks"][i]
        kept = {"ln_1": block["ln_1"], "ln_2": block["ln_2"]}
        u = layer_norm(x, block["ln_1"], eps)
        if i in attention_layers:
            ssa_layers.append(ssa_from_block(block["attn"], u, config.n_head, int(timesteps), percentile=percentile,
                                             binary=binary))
        else:
            ssa_layers.append(None)
            kept["attn"] = block["attn"]
        x = x + np.stack([cached_attention(w, block["attn"], config.n_head, None, 0) for w in u])
        u = layer_norm(x, block["ln_2"], eps)
        if i in ffn_layers:
            ffn_blocks.append(ffn_from_block(block["mlp"], u.reshape(-1, config.n_embd), int(timesteps),
                                             method, percentile, burst))
        else:
            ffn_blocks.append(None)
            kept["mlp"] = block["mlp"]
        x = x + mlp(u, block["mlp"])
        blocks.append(kept)
    params = {"wte": source["wte"], "wpe": source["wpe"], "blocks": blocks, "ln_f": source["ln_f"]}
    settings = ConversionSettings(int(timesteps), method, float(percentile), int(burst), bool(binary),
                                  int(windows.size))
    return SpikingGPT2(config, params, ssa_layers, ffn_blocks, int(timesteps), settings)


class SNNDecoder:
    """Incremental decoding: `feed` new tokens, get the next-token logits.

    SSA layers continue their `SSAState` (constant cost per token in the context length); ANN
    attention layers, if any, keep a KV cache (sized for every layer, used by those only). Feeding a
    sequence in any split gives `snn_logits` of the whole sequence: bit for bit in the final hidden
    states when every block is spiking (the spiking blocks compute each token alone); to float32
    rounding in the logits (the LM head's BLAS product rounds differently for 1 and N rows) and in the
    ANN blocks kept, as for `snnlm.gpt2.ANNDecoder`.
    """

    def __init__(self, snn: SpikingGPT2):
        config = snn.config
        self.snn = snn
        self.states = [SSAState.empty(config.n_head, config.head_dim, snn.timesteps) if layer is not None else None
                       for layer in snn.attention]
        self.cache = KVCache.empty(config) if None in snn.attention else None
        self.length = 0

    def feed(self, ids) -> np.ndarray:
        """Append tokens ids (N,) to the context; return the logits after the last one, (n_vocab,)."""
        h, _ = _forward(self.snn, np.asarray(ids, dtype=np.int64).reshape(-1), self)
        return lm_head(self.snn.params, h[-1:])[0]


def _forward(snn: SpikingGPT2, ids: np.ndarray, decoder: SNNDecoder | None) -> tuple[np.ndarray, list[LayerStats]]:
    """ids (N,) -> final hidden states (N, d) after ln_f, and per-layer stats.

    Without a decoder the ids are a whole sequence (`ssa_forward`, stats of every spiking block);
    with one they continue its context (recurrent SSA core; SSA stats are then None).
    """
    config, params = snn.config, snn.params
    pos0 = decoder.length if decoder is not None else 0
    if pos0 + len(ids) > config.n_ctx:
        raise ValueError(f"sequence of {pos0 + len(ids)} tokens exceeds the context window of {config.n_ctx}")
    eps = config.layer_norm_epsilon
    x = params["wte"][ids] + params["wpe"][pos0:pos0 + len(ids)]  # (N, d)
    stats = []
    for i, block in enumerate(params["blocks"]):
        u = layer_norm(x, block["ln_1"], eps)
        ssa, attention_stats = snn.attention[i], None
        if ssa is None:
            out = cached_attention(u, block["attn"], config.n_head, decoder.cache if decoder else None, i)
        elif decoder is None:
            out, attention_stats = ssa_forward(u, ssa, snn.timesteps)
        else:
            out = ssa_step(u, ssa, decoder.states[i])
        x = x + out
        u = layer_norm(x, block["ln_2"], eps)
        if snn.ffn[i] is None:
            out, ffn_stats = mlp(u, block["mlp"]), None
        else:
            out, ffn_stats = spiking_ffn_forward(u, snn.ffn[i], snn.timesteps)
        x = x + out
        stats.append(LayerStats(attention_stats, ffn_stats))
    if decoder is not None:
        decoder.length += len(ids)
        if decoder.cache is not None:
            decoder.cache.length += len(ids)
    return layer_norm(x, params["ln_f"], eps), stats


def snn_forward(snn: SpikingGPT2, ids) -> tuple[np.ndarray, list[LayerStats]]:
    """A whole sequence. ids (N,) -> final hidden states (N, d) after ln_f, and stats per layer."""
    return _forward(snn, np.asarray(ids, dtype=np.int64).reshape(-1), None)


def snn_hidden_states(snn: SpikingGPT2, ids) -> np.ndarray:
    """A whole sequence. ids (N,) -> final hidden states (N, d) after ln_f."""
    return snn_forward(snn, ids)[0]


def snn_logits(snn: SpikingGPT2, ids) -> np.ndarray:
    """A whole sequence. ids (N,) -> logits (N, n_vocab), by the tied real-valued LM head."""
    return lm_head(snn.params, snn_hidden_states(snn, ids))


def _flatten(tree: dict, prefix: str) -> dict[str, np.ndarray]:
    """Nested params -> Hugging Face names: {"ln_1": {"g": a}} with prefix "h.0." -> {"h.0.ln_1.weight": a}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{_HF_LEAF_NAMES[key]}"] = value
    return flat


def _snnlm_version() -> str:
    try:
        return importlib.metadata.version("snnlm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_snn(path: str | Path, snn: SpikingGPT2) -> Path:
    """Write `snn` to one safetensors file, atomically.

    Tensors: the real-valued params under their Hugging Face names (`wte.weight`, `h.{i}.ln_1.weight`,
    `h.{i}.attn.*` / `h.{i}.mlp.*` of layers kept as ANN, ...), `h.{i}.ssa.*` and `h.{i}.ffn.*` of the
    spiking blocks. Metadata: format, config, T, settings, converted layers, snnlm version.
    """
    path = Path(path)
    params = snn.params
    tensors = {"wte.weight": params["wte"], "wpe.weight": params["wpe"], **_flatten(params["ln_f"], "ln_f.")}
    for i, block in enumerate(params["blocks"]):
        tensors.update(_flatten(block, f"h.{i}."))
        if snn.attention[i] is not None:
            tensors.update(snn.attention[i].to_tensors(f"h.{i}.ssa."))
        if snn.ffn[i] is not None:
            tensors.update(snn.ffn[i].to_tensors(f"h.{i}.ffn."))
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(dataclasses.asdict(snn.config)),
        "timesteps": str(snn.timesteps),
        "settings": json.dumps(dataclasses.asdict(snn.settings)),
        "attention_layers": json.dumps(snn.attention_layers),
        "ffn_layers": json.dumps(snn.ffn_layers),
        "snnlm_version": _snnlm_version(),
    }
    write_safetensors(path, tensors, metadata)
    return path


def load_snn(path: str | Path) -> SpikingGPT2:
    """Read a checkpoint written by `save_snn`. Raises a one-line SnnlmError for a missing, corrupt or
    foreign file."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise SnnlmError(f"{path}: not an snnlm spiking checkpoint (its metadata lacks format={CHECKPOINT_FORMAT!r}; "
                         f"a GPT-2 model.safetensors goes with --weights)")
    try:
        config = GPT2Config(**json.loads(metadata["config"]))
        timesteps = int(metadata["timesteps"])
        settings = ConversionSettings(**json.loads(metadata["settings"]))
        attention_layers = set(json.loads(metadata["attention_layers"]))
        ffn_layers = set(json.loads(metadata["ffn_layers"]))
    except (KeyError, TypeError, ValueError) as e:
        raise SnnlmError(f"{path}: malformed snnlm checkpoint metadata ({type(e).__name__}: {e})") from None
    sizes = [config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer]
    if not all(isinstance(n, int) and n > 0 for n in sizes) or config.n_embd % config.n_head:
        raise SnnlmError(f"{path}: malformed snnlm checkpoint metadata (config {metadata['config']})")
    if timesteps < 1 or not (attention_layers | ffn_layers) <= set(range(config.n_layer)):
        raise SnnlmError(f"{path}: malformed snnlm checkpoint metadata (T={timesteps}, converted layers "
                         f"{sorted(attention_layers)} and {sorted(ffn_layers)} of {config.n_layer})")
    real = _real_tensors(tensors, config, attention_layers, ffn_layers, path)
    used = set(real)
    blocks = [{"ln_1": _leaf_pair(real, f"h.{i}.ln_1"), "ln_2": _leaf_pair(real, f"h.{i}.ln_2")}
              for i in range(config.n_layer)]
    attention: list[SSAWeights | None] = [None] * config.n_layer
    ffn: list[SpikingFFNWeights | None] = [None] * config.n_layer
    for i, block in enumerate(blocks):
        if i in attention_layers:
            attention[i] = _spiking_block(SSAWeights, tensors, f"h.{i}.ssa.", path)
            _check_ssa(attention[i], config, f"h.{i}.ssa.", path)
        else:
            block["attn"] = {name: _leaf_pair(real, f"h.{i}.attn.{name}") for name in ("c_attn", "c_proj")}
        if i in ffn_layers:
            ffn[i] = _spiking_block(SpikingFFNWeights, tensors, f"h.{i}.ffn.", path)
            if ffn[i].width != config.n_embd:
                raise SnnlmError(f"{path}: tensor 'h.{i}.ffn.theta_in' has width {ffn[i].width}, "
                                 f"the config says {config.n_embd}")
        else:
            block["mlp"] = {name: _leaf_pair(real, f"h.{i}.mlp.{name}") for name in ("c_fc", "c_proj")}
    prefixes = tuple([f"h.{i}.ssa." for i in attention_layers] + [f"h.{i}.ffn." for i in ffn_layers])
    used.update(k for k in tensors if k.startswith(prefixes))
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise SnnlmError(f"{path}: unexpected tensor {unexpected[0]!r} for the layers its metadata lists")
    params = {"wte": real["wte.weight"], "wpe": real["wpe.weight"], "blocks": blocks,
              "ln_f": _leaf_pair(real, "ln_f")}
    return SpikingGPT2(config, params, attention, ffn, timesteps, settings)


def _real_tensors(tensors: dict[str, np.ndarray], config: GPT2Config, attention_layers: set[int],
                  ffn_layers: set[int], path: Path) -> dict[str, np.ndarray]:
    """The real-valued tensors the metadata calls for, checked (presence, shape, finiteness), as float32."""
    needed = {}
    for key, shape in expected_shapes(config).items():
        match = re.match(r"h\.(\d+)\.(attn|mlp)\.", key)
        if match and int(match.group(1)) in (attention_layers if match.group(2) == "attn" else ffn_layers):
            continue
        needed[key] = shape
    real = {}
    for key, shape in needed.items():
        if key not in tensors:
            raise SnnlmError(f"{path}: missing tensor {key!r} (expected shape {shape})")
        if tensors[key].shape != shape:
            raise SnnlmError(f"{path}: tensor {key!r} has shape {tensors[key].shape}, expected {shape}")
        real[key] = np.array(tensors[key], dtype=np.float32)
        if not np.isfinite(real[key]).all():
            raise SnnlmError(f"{path}: tensor {key!r} holds non-finite values (NaN or inf)")
    return real


def _leaf_pair(real: dict[str, np.ndarray], name: str) -> dict:
    """{"g", "b"} of a LayerNorm or {"w", "b"} of a linear layer, from its HF-named tensors."""
    weight = "w" if name.rsplit(".", 1)[-1].startswith("c_") else "g"
    return {weight: real[f"{name}.weight"], "b": real[f"{name}.bias"]}


def _spiking_block(kind, tensors: dict[str, np.ndarray], prefix: str, path: Path):
    """kind.from_tensors(tensors, prefix), with its errors as one-line SnnlmErrors."""
    try:
        return kind.from_tensors(tensors, prefix)
    except KeyError as e:
        raise SnnlmError(f"{path}: missing tensor {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise SnnlmError(f"{path}: {e}") from None


def _check_ssa(layer: SSAWeights, config: GPT2Config, prefix: str, path: Path) -> None:
    """The layer's width and heads against the config (`SSAWeights.from_tensors` checked the rest)."""
    if layer.width != config.n_embd:
        raise SnnlmError(f"{path}: tensor {prefix + 'theta_u'!r} has width {layer.width}, "
                         f"the config says {config.n_embd}")
    if layer.n_head != config.n_head:
        raise SnnlmError(f"{path}: tensor {prefix + 'theta_q'!r} has {layer.n_head} heads, "
                         f"the config says {config.n_head}")
