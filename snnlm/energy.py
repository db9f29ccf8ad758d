"""Energy model: the arithmetic operations of GPT-2 and of its spiking version, and their estimated energy.

    E = E_MAC · #MAC + E_AC · #AC,   E_MAC = 4.6 pJ, E_AC = 0.9 pJ

(45 nm, 32-bit float: Horowitz, ISSCC 2014; a float multiply is 3.7 pJ and a float add 0.9 pJ, so a
multiply-accumulate is 4.6 pJ). `EnergyConstants` overrides them, e.g. for int8 arithmetic.

Operation classes. Anything that multiplies (or divides, or evaluates a transcendental) is a MAC;
an add, subtract, compare, round or clip alone is an AC. The integer adds of the SSA core and of the
spike counters are counted as ACs too, although an integer add costs less than a float add.

Per-element costs of what is not a matrix product (this module's choices, each a constant below):
- softmax, per causal score: max compare, subtract the max, exp, add to the sum, multiply by the
  reciprocal of the sum = 2 MAC + 3 AC. An exp as one MAC is optimistic for the ANN, so the savings
  are, if anything, understated. The 1/sqrt(d_h) scale is taken as folded into W_q (free).
- GELU, per evaluation: a table look-up with linear interpolation, 1 MAC + 1 AC. The same figure is
  used for an ANN hidden unit and for the GELU inside a spiking hidden neuron, which evaluates it at
  every timestep.
- LayerNorm, per element: add to the mean, subtract the mean, square-accumulate, multiply by 1/sigma,
  gain and bias = 3 MAC + 2 AC; per row: scale the two sums by 1/d, add eps, rsqrt = 3 MAC + 1 AC.
- Neurons, per neuron per timestep (the spiking model's neurons, `snnlm.neurons`):
  - EC-IF with f = identity and B = 1 (SSA encoder, q, k, v and output neurons; FFN encoder when
    B = 1): it is exactly a signed IF neuron with soft reset, and runs as one: integrate the input,
    compare |v| with theta/2 = 2 AC; each nonzero spike then subtracts theta, 1 AC. Binary SSA
    layers use IF neurons with the same costs.
  - EC-IF with f = identity and B > 1: integrate, multiply by 1/theta, round, clip = 1 MAC + 3 AC;
    each nonzero spike subtracts theta·s, 1 MAC.
  - EC-IF with f = GELU (FFN hidden neurons), s = clip(round(t f(m/t) / theta) - n, -B, B): integrate
    m, multiply by 1/t (a table), multiply by t and by 1/theta, round, subtract n, clip, add s to n
    = 3 MAC + 5 AC, plus one GELU evaluation (listed as its own item).
- Spike-driven layers: each nonzero spike adds its weight row, |s| times (the measured synaptic
  operations, `snnlm.spike_linear.synaptic_ops`). The bias enters the neurons' current at every
  timestep (1 AC per neuron per step). A layer whose output is decoded accumulates its T steps in one
  register, then divides by T (1 MAC) and adds the bias (1 AC) once per output.
- SSA output neurons: the current alpha_h·a_i[t] is 1 MAC per neuron per timestep; the threshold
  theta_o·i is 1 MAC per token and channel.

Real-valued everywhere, and counted alike for both models: the embeddings (one add of wte and wpe
per element), the LayerNorms, the residual adds, ln_f and the tied LM head (N·d·V MAC).

Estimates of this kind count arithmetic only: they ignore data movement (reading weights, activations
and spikes from memory), which on real hardware often costs more than the arithmetic.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from snnlm.config import GPT2Config
from snnlm.snn import LayerStats, SpikingGPT2
from snnlm.spiking_ffn import SpikingFFNStats
from snnlm.ssa import SSAStats

PAPER_SSA_SAVING_PERCENT = (64.71, 85.28)
DATA_MOVEMENT_NOTE = ("Estimates count arithmetic only and ignore data movement (reading weights, activations "
                      "and spikes from memory), which on real hardware often costs more.")
CONSTANTS_SOURCE = "Horowitz, ISSCC 2014: 45 nm, 32-bit float"


@dataclasses.dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation, in picojoules: a multiply-accumulate (MAC) and an accumulate (AC)."""

    mac_pj: float = 4.6
    ac_pj: float = 0.9


@dataclasses.dataclass(frozen=True)
class OpCounts:
    """A number of MACs and ACs."""

    mac: int = 0
    ac: int = 0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(self.mac + other.mac, self.ac + other.ac)

    def times(self, k: int) -> "OpCounts":
        """These counts, k times over."""
        return OpCounts(self.mac * k, self.ac * k)

    def energy_pj(self, constants: EnergyConstants = EnergyConstants()) -> float:
        """E_MAC · #MAC + E_AC · #AC, in picojoules."""
        return constants.mac_pj * self.mac + constants.ac_pj * self.ac


# Item name -> its operations, for one block or one group of real-valued ops.
Breakdown = dict[str, OpCounts]

SOFTMAX_PER_SCORE = OpCounts(mac=2, ac=3)
GELU_PER_EVALUATION = OpCounts(mac=1, ac=1)
LAYERNORM_PER_ELEMENT = OpCounts(mac=3, ac=2)
LAYERNORM_PER_ROW = OpCounts(mac=3, ac=1)
IF_STEP = OpCounts(ac=2)
IF_RESET = OpCounts(ac=1)
BURST_IF_STEP = OpCounts(mac=1, ac=3)
BURST_IF_RESET = OpCounts(mac=1)
EC_GELU_STEP = OpCounts(mac=3, ac=5)


def total(items: Breakdown) -> OpCounts:
    """The sum of a breakdown's items."""
    return sum(items.values(), OpCounts())


def add_breakdowns(a: Breakdown, b: Breakdown) -> Breakdown:
    """Item-wise sum; an item missing from one side counts as zero there."""
    return {name: a.get(name, OpCounts()) + b.get(name, OpCounts()) for name in {**a, **b}}


def layer_norm_ops(n_tokens: int, width: int) -> OpCounts:
    """One LayerNorm over (N, d)."""
    return LAYERNORM_PER_ELEMENT.times(n_tokens * width) + LAYERNORM_PER_ROW.times(n_tokens)


def causal_pairs(n_tokens: int) -> int:
    """(query, key) pairs of causal attention over N tokens: N(N+1)/2."""
    return n_tokens * (n_tokens + 1) // 2


def asa_ops(n_tokens: int, width: int, n_head: int) -> Breakdown:
    """ANN softmax attention ("ASA") of one layer over N tokens of width d, H heads (after ln_1)."""
    pairs = causal_pairs(n_tokens)
    return {
        "projections c_attn, c_proj": OpCounts(mac=4 * n_tokens * width * width),
        "projection biases": OpCounts(ac=4 * n_tokens * width),
        "scores QK^T": OpCounts(mac=pairs * width),
        "softmax": SOFTMAX_PER_SCORE.times(n_head * pairs),
        "weighted values AV": OpCounts(mac=pairs * width),
    }


def ann_ffn_ops(n_tokens: int, width: int) -> Breakdown:
    """ANN feed-forward block of one layer over N tokens of width d, hidden width 4d (after ln_2)."""
    hidden = 4 * width
    return {
        "projections c_fc, c_proj": OpCounts(mac=2 * n_tokens * width * hidden),
        "projection biases": OpCounts(ac=n_tokens * (hidden + width)),
        "GELU": GELU_PER_EVALUATION.times(n_tokens * hidden),
    }


def _neurons(spikes: int, slots: int, burst: int) -> OpCounts:
    """Identity EC-IF neurons: `slots` neuron-steps that emitted `spikes` nonzero spikes."""
    if burst == 1:
        return IF_STEP.times(slots) + IF_RESET.times(spikes)
    return BURST_IF_STEP.times(slots) + BURST_IF_RESET.times(spikes)


def _decode(outputs: int) -> OpCounts:
    """Decoding `outputs` accumulated currents: divide by T, add the bias."""
    return OpCounts(mac=outputs, ac=outputs)


def ssa_ops(stats: SSAStats, timesteps: int) -> Breakdown:
    """The spiking attention of one layer, from what it measurably did in a forward pass (`ssa_forward`)."""
    groups = ("u", "q", "k", "v", "o")
    outputs = stats.slots["o"] // timesteps  # N·d
    return {
        "synaptic ACs c_attn, c_proj": OpCounts(ac=stats.synaptic_ops),
        "q, k, v bias currents": OpCounts(ac=stats.slots["q"] + stats.slots["k"] + stats.slots["v"]),
        "neurons u, q, k, v, o": _neurons(sum(stats.spikes[g] for g in groups), sum(stats.slots[g] for g in groups), 1),
        "core integer adds": OpCounts(ac=stats.core_adds),
        "output scale alpha_h a": OpCounts(mac=stats.slots["o"]),
        "output thresholds theta_o i": OpCounts(mac=outputs),
        "decode c_proj": _decode(outputs),
    }


def spiking_ffn_ops(stats: SpikingFFNStats, timesteps: int, burst: int) -> Breakdown:
    """The spiking FFN of one layer, from what it measurably did (`spiking_ffn_forward`); burst B of its neurons."""
    hidden_steps = stats.slots["hidden"]
    return {
        "synaptic ACs c_fc, c_proj": OpCounts(ac=stats.synaptic_ops),
        "c_fc bias currents": OpCounts(ac=hidden_steps),
        "encoder neurons": _neurons(stats.spikes["in"], stats.slots["in"], burst),
        "hidden neurons (EC, GELU)": EC_GELU_STEP.times(hidden_steps),
        "hidden GELU look-ups": GELU_PER_EVALUATION.times(hidden_steps),
        "decode c_proj": _decode(stats.slots["in"] // timesteps),
    }


def layer_real_ops(n_tokens: int, width: int) -> Breakdown:
    """The real-valued ops of one layer outside its blocks, the same in both models: ln_1, ln_2, two residual adds."""
    return {
        "LayerNorms ln_1, ln_2": layer_norm_ops(n_tokens, width).times(2),
        "residual adds": OpCounts(ac=2 * n_tokens * width),
    }


def outside_ops(n_tokens: int, config: GPT2Config) -> Breakdown:
    """The real-valued ops outside the layers, the same in both models: embeddings, ln_f, the tied LM head."""
    return {
        "embeddings wte + wpe": OpCounts(ac=n_tokens * config.n_embd),
        "final LayerNorm ln_f": layer_norm_ops(n_tokens, config.n_embd),
        "LM head": OpCounts(mac=n_tokens * config.n_embd * config.n_vocab),
    }


@dataclasses.dataclass(frozen=True)
class ModelOps:
    """Itemised operations of one model over n_tokens tokens (summed over forward passes).

    attention[i], ffn[i]: layer i's attention and FFN blocks; real[i]: its LayerNorms and residual adds;
    outside: embeddings, ln_f and the LM head.
    """

    attention: tuple[Breakdown, ...]
    ffn: tuple[Breakdown, ...]
    real: tuple[Breakdown, ...]
    outside: Breakdown
    n_tokens: int

    def __add__(self, other: "ModelOps") -> "ModelOps":
        def pairwise(a, b):
            return tuple(add_breakdowns(x, y) for x, y in zip(a, b, strict=True))

        return ModelOps(pairwise(self.attention, other.attention), pairwise(self.ffn, other.ffn),
                        pairwise(self.real, other.real), add_breakdowns(self.outside, other.outside),
                        self.n_tokens + other.n_tokens)


def ann_model_ops(config: GPT2Config, n_tokens: int) -> ModelOps:
    """GPT-2 over one sequence of N tokens (one forward pass, logits for every token)."""
    d, L = config.n_embd, config.n_layer
    return ModelOps(tuple(asa_ops(n_tokens, d, config.n_head) for _ in range(L)),
                    tuple(ann_ffn_ops(n_tokens, d) for _ in range(L)),
                    tuple(layer_real_ops(n_tokens, d) for _ in range(L)),
                    outside_ops(n_tokens, config), n_tokens)


def snn_model_ops(snn: SpikingGPT2, n_tokens: int, stats: list[LayerStats]) -> ModelOps:
    """The spiking GPT-2 over one sequence of N tokens, from the stats of its forward pass (`snn_forward`).

    A block kept as ANN (its stats None) is counted as in `ann_model_ops`.
    """
    config, T, d = snn.config, snn.timesteps, snn.config.n_embd
    attention = tuple(asa_ops(n_tokens, d, config.n_head) if layer.attention is None else ssa_ops(layer.attention, T)
                      for layer in stats)
    ffn = tuple(ann_ffn_ops(n_tokens, d) if layer.ffn is None else spiking_ffn_ops(layer.ffn, T, snn.ffn[i].burst)
                for i, layer in enumerate(stats))
    return ModelOps(attention, ffn, tuple(layer_real_ops(n_tokens, d) for _ in stats),
                    outside_ops(n_tokens, config), n_tokens)


def firing_rates(stats_per_pass: Iterable[list[LayerStats]]) -> list[dict]:
    """Spikes per neuron per timestep, per layer and neuron group, over forward passes.

    -> [{"attention": {"u": r, "q": r, "k": r, "v": r, "o": r} or None, "ffn": {"in": r, "hidden": r} or None}]
    per layer, each r in [0, 1] (the fraction of neuron-steps with a nonzero spike).
    """
    tallies: list[dict] | None = None
    for stats in stats_per_pass:
        if tallies is None:
            tallies = [{"attention": None, "ffn": None} for _ in stats]
        for tally, layer in zip(tallies, stats, strict=True):
            for block in ("attention", "ffn"):
                measured = getattr(layer, block)
                if measured is None:
                    continue
                counts = tally[block] or {g: [0, 0] for g in measured.spikes}
                for group, pair in counts.items():
                    pair[0] += measured.spikes[group]
                    pair[1] += measured.slots[group]
                tally[block] = counts
    return [{block: None if counts is None else {g: spikes / slots if slots else 0.0
                                                 for g, (spikes, slots) in counts.items()}
             for block, counts in tally.items()} for tally in tallies or []]


def _itemised(items: Breakdown, constants: EnergyConstants) -> dict:
    return {name: {"mac": ops.mac, "ac": ops.ac, "pj": ops.energy_pj(constants)} for name, ops in items.items()}


def _comparison(ann: Breakdown, snn: Breakdown, n_tokens: int, constants: EnergyConstants,
                itemise: bool) -> dict:
    """ANN vs SNN energy of the same part: totals, per token, ratio SNN/ANN, saving in %."""
    ann_pj, snn_pj = total(ann).energy_pj(constants), total(snn).energy_pj(constants)
    ratio = snn_pj / ann_pj if ann_pj else 1.0
    figures = {"ann_pj": ann_pj, "snn_pj": snn_pj, "ann_pj_per_token": ann_pj / n_tokens,
               "snn_pj_per_token": snn_pj / n_tokens, "ratio": ratio, "saving_percent": 100.0 * (1.0 - ratio)}
    if itemise:
        figures.update(ann_ops=_itemised(ann, constants), snn_ops=_itemised(snn, constants))
    return figures


def _sum_breakdowns(parts: Iterable[Breakdown]) -> Breakdown:
    summed: Breakdown = {}
    for part in parts:
        summed = add_breakdowns(summed, part)
    return summed


def _whole_model(model: ModelOps, with_lm_head: bool) -> Breakdown:
    outside = model.outside if with_lm_head else {k: v for k, v in model.outside.items() if k != "LM head"}
    return _sum_breakdowns([*model.attention, *model.ffn, *model.real, outside])


def energy_report(ann: ModelOps, snn: ModelOps, constants: EnergyConstants = EnergyConstants()) -> dict:
    """ANN vs SNN energy over the same tokens, as a JSON-able dict.

    Keys: constants, note (data movement), tokens, paper_ssa_saving_percent; layers (per layer:
    attention, ffn, real, each with ann_pj, snn_pj, per-token figures, ratio = SNN/ANN, saving_percent
    and the itemised ops); outside (embeddings, ln_f, LM head); attention and ffn (all layers); model
    (everything, LM head included) and model_without_lm_head.
    """
    if ann.n_tokens != snn.n_tokens or len(ann.attention) != len(snn.attention):
        raise ValueError("the ANN and SNN counts must cover the same tokens and layers")
    n = ann.n_tokens
    layers = [{part: _comparison(getattr(ann, part)[i], getattr(snn, part)[i], n, constants, True)
               for part in ("attention", "ffn", "real")} for i in range(len(ann.attention))]

    return {
        "constants": {"e_mac_pj": constants.mac_pj, "e_ac_pj": constants.ac_pj, "source": CONSTANTS_SOURCE},
        "note": DATA_MOVEMENT_NOTE,
        "tokens": n,
        "paper_ssa_saving_percent": list(PAPER_SSA_SAVING_PERCENT),
        "layers": layers,
        "outside": _comparison(ann.outside, snn.outside, n, constants, True),
        "attention": _comparison(_sum_breakdowns(ann.attention), _sum_breakdowns(snn.attention), n, constants, False),
        "ffn": _comparison(_sum_breakdowns(ann.ffn), _sum_breakdowns(snn.ffn), n, constants, False),
        "model": _comparison(_whole_model(ann, True), _whole_model(snn, True), n, constants, False),
        "model_without_lm_head": _comparison(_whole_model(ann, False), _whole_model(snn, False), n, constants,
                                             False),
    }
