"""The energy model: operation counts against hand-computed values, and the report built from them."""
import numpy as np
import pytest

from helpers import TINY, tiny_params
from snnlm.config import GPT2Config
from snnlm.energy import (PAPER_SSA_SAVING_PERCENT, EnergyConstants, ModelOps, OpCounts, ann_ffn_ops,
                          ann_model_ops, asa_ops, energy_report, firing_rates, layer_norm_ops, outside_ops,
                          snn_model_ops, spiking_ffn_ops, ssa_ops, total)
from snnlm.snn import LayerStats, convert, snn_forward
from snnlm.spiking_ffn import SpikingFFNStats
from snnlm.ssa import SSAStats
from snnlm.weights import GPT2Model

# The hand-computed case: N = 3 tokens, d = 4, H = 2 heads; 3 * 4 / 2 = 6 causal (query, key) pairs.
N, D, H = 3, 4, 2


def test_op_counts_energy_uses_the_constants():
    ops = OpCounts(mac=10, ac=100)
    assert ops.energy_pj() == pytest.approx(10 * 4.6 + 100 * 0.9)
    assert ops.energy_pj(EnergyConstants(mac_pj=0.2, ac_pj=0.03)) == pytest.approx(10 * 0.2 + 100 * 0.03)
    assert ops + OpCounts(1, 2) == OpCounts(11, 102) and ops.times(3) == OpCounts(30, 300)


def test_asa_counts_match_the_formulas():
    ops = asa_ops(N, D, H)
    assert ops["projections c_attn, c_proj"] == OpCounts(mac=4 * 3 * 16)  # 4 N d^2 = 192
    assert ops["projection biases"] == OpCounts(ac=4 * 3 * 4)
    assert ops["scores QK^T"] == ops["weighted values AV"] == OpCounts(mac=6 * 4)  # N(N+1)/2 d = 24
    assert ops["softmax"] == OpCounts(mac=2 * 12, ac=3 * 12)  # H N(N+1)/2 = 12 scores, 2 MAC + 3 AC each
    assert total(ops) == OpCounts(mac=192 + 24 + 24 + 24, ac=48 + 36)
    assert total(ops).energy_pj() == pytest.approx(264 * 4.6 + 84 * 0.9)


def test_ann_ffn_and_real_valued_counts_match_the_formulas():
    ffn = ann_ffn_ops(N, D)
    assert ffn["projections c_fc, c_proj"] == OpCounts(mac=8 * 3 * 16)  # 8 N d^2 = 384
    assert ffn["projection biases"] == OpCounts(ac=3 * (16 + 4))
    assert ffn["GELU"] == OpCounts(mac=3 * 16, ac=3 * 16)
    # Per element 3 MAC + 2 AC, per row 3 MAC + 1 AC.
    assert layer_norm_ops(N, D) == OpCounts(mac=12 * 3 + 3 * 3, ac=12 * 2 + 3 * 1)
    config = GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=1)
    outside = outside_ops(N, config)
    assert outside["LM head"] == OpCounts(mac=3 * 4 * 10)
    assert outside["embeddings wte + wpe"] == OpCounts(ac=12)


def _ssa_stats() -> SSAStats:
    # T = 2, N = 3, d = 4: 24 neuron-steps per group.
    spikes = {"u": 5, "q": 6, "k": 7, "v": 8, "o": 2}
    slots = {g: 2 * 3 * 4 for g in spikes}
    return SSAStats(spikes=spikes, slots=slots, synaptic_ops=5 * 12 + 2 * 4, core_adds=40)


def test_ssa_counts_follow_the_measured_stats():
    ops = ssa_ops(_ssa_stats(), timesteps=2)
    assert ops["synaptic ACs c_attn, c_proj"] == OpCounts(ac=68)
    assert ops["q, k, v bias currents"] == OpCounts(ac=3 * 24)
    # IF neurons: 2 AC per neuron-step (integrate, compare), 1 AC per spike (reset).
    assert ops["neurons u, q, k, v, o"] == OpCounts(ac=2 * 5 * 24 + 28)
    assert ops["core integer adds"] == OpCounts(ac=40)
    assert ops["output scale alpha_h a"] == OpCounts(mac=24)
    assert ops["output thresholds theta_o i"] == OpCounts(mac=12)
    assert ops["decode c_proj"] == OpCounts(mac=12, ac=12)
    assert total(ops) == OpCounts(mac=24 + 12 + 12, ac=68 + 72 + 268 + 40 + 12)


def test_more_spikes_cost_more():
    quiet = _ssa_stats()
    busy = SSAStats({g: 2 * n for g, n in quiet.spikes.items()}, quiet.slots, 2 * quiet.synaptic_ops,
                    2 * quiet.core_adds)
    assert total(ssa_ops(busy, 2)).energy_pj() > total(ssa_ops(quiet, 2)).energy_pj()


@pytest.mark.parametrize("burst, encoder", [(1, OpCounts(ac=2 * 24 + 5)), (2, OpCounts(mac=24 + 5, ac=3 * 24))])
def test_spiking_ffn_counts_follow_the_measured_stats(burst, encoder):
    # T = 2, N = 3, d = 4, h = 16.
    stats = SpikingFFNStats(spikes={"in": 5, "hidden": 9}, slots={"in": 24, "hidden": 96}, synaptic_ops=5 * 16 + 9 * 4)
    ops = spiking_ffn_ops(stats, timesteps=2, burst=burst)
    assert ops["synaptic ACs c_fc, c_proj"] == OpCounts(ac=116)
    assert ops["c_fc bias currents"] == OpCounts(ac=96)
    assert ops["encoder neurons"] == encoder
    assert ops["hidden neurons (EC, GELU)"] == OpCounts(mac=3 * 96, ac=5 * 96)
    assert ops["hidden GELU look-ups"] == OpCounts(mac=96, ac=96)
    assert ops["decode c_proj"] == OpCounts(mac=12, ac=12)


def test_windows_add_up_item_by_item_and_attention_grows_quadratically():
    config = GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=2)
    two = ann_model_ops(config, 3) + ann_model_ops(config, 3)
    assert two.n_tokens == 6
    assert two.attention[1]["softmax"] == asa_ops(3, D, H)["softmax"].times(2)
    assert two.outside["LM head"] == OpCounts(mac=6 * D * 10)
    whole = ann_model_ops(config, 6)
    assert total(whole.attention[0]).mac > total(two.attention[0]).mac
    assert whole.ffn == two.ffn and whole.real == two.real


def test_report_of_identical_models_saves_nothing():
    config = GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=2)
    ops = ann_model_ops(config, 5)
    report = energy_report(ops, ops)
    for key in ("attention", "ffn", "model", "model_without_lm_head"):
        assert report[key]["ratio"] == 1.0 and report[key]["saving_percent"] == 0.0
    assert report["model"]["ann_pj"] == pytest.approx(sum(total(b).energy_pj() for b in
                                                          [*ops.attention, *ops.ffn, *ops.real, ops.outside]))
    assert report["model"]["ann_pj_per_token"] == pytest.approx(report["model"]["ann_pj"] / 5)
    assert report["paper_ssa_saving_percent"] == list(PAPER_SSA_SAVING_PERCENT)
    assert "data movement" in report["note"]
    assert len(report["layers"]) == 2 and set(report["layers"][0]) == {"attention", "ffn", "real"}


def test_report_rejects_counts_over_different_tokens():
    config = GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=1)
    with pytest.raises(ValueError):
        energy_report(ann_model_ops(config, 3), ann_model_ops(config, 4))


def _tiny_snn(rng, timesteps=2, **which):
    model = GPT2Model(TINY, tiny_params(TINY, rng, np.float32))
    return convert(model, timesteps, rng.integers(0, TINY.n_vocab, 48), progress=False, **which)


def test_snn_counts_use_ssa_and_spiking_ffn_where_converted_and_ann_elsewhere(rng):
    snn = _tiny_snn(rng, attention=[1], ffn=[0])
    ids = rng.integers(0, TINY.n_vocab, 10)
    _, stats = snn_forward(snn, ids)
    ops = snn_model_ops(snn, 10, stats)
    ann = ann_model_ops(TINY, 10)
    assert ops.attention[0] == ann.attention[0] and ops.ffn[1] == ann.ffn[1]
    assert ops.attention[1] == ssa_ops(stats[1].attention, 2)
    assert ops.ffn[0] == spiking_ffn_ops(stats[0].ffn, 2, 1)
    assert ops.real == ann.real and ops.outside == ann.outside
    report = energy_report(ann, ops)
    assert report["layers"][0]["attention"]["ratio"] == 1.0 and report["layers"][1]["attention"]["ratio"] != 1.0


def test_firing_rates_pool_passes_and_lie_in_0_1(rng):
    snn = _tiny_snn(rng)
    passes = [snn_forward(snn, rng.integers(0, TINY.n_vocab, n))[1] for n in (4, 9)]
    rates = firing_rates(passes)
    for layer, first, second in zip(rates, *passes):
        for block in ("attention", "ffn"):
            a, b = getattr(first, block), getattr(second, block)
            for group, rate in layer[block].items():
                assert 0.0 <= rate <= 1.0
                assert rate == (a.spikes[group] + b.spikes[group]) / (a.slots[group] + b.slots[group])
    assert set(rates[0]["attention"]) == {"u", "q", "k", "v", "o"} and set(rates[0]["ffn"]) == {"in", "hidden"}
    assert any(rate > 0 for layer in rates for rate in layer["ffn"].values())


def test_firing_rates_of_ann_blocks_are_none():
    stats = [LayerStats(None, SpikingFFNStats({"in": 3, "hidden": 0}, {"in": 12, "hidden": 48}, 0))]
    assert firing_rates([stats, stats]) == [{"attention": None, "ffn": {"in": 0.25, "hidden": 0.0}}]


def test_model_ops_of_different_depths_do_not_add():
    a = ann_model_ops(GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=1), 2)
    b = ann_model_ops(GPT2Config(n_vocab=10, n_ctx=8, n_embd=D, n_head=H, n_layer=2), 2)
    with pytest.raises(ValueError):
        a + b
    assert isinstance(a + a, ModelOps)
