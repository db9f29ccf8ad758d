"""The converted spiking FFN: it approaches the ANN MLP as T grows, its parts compute what the docstrings say."""
import dataclasses

import numpy as np
import pytest

from helpers import TINY, tiny_params
from snnlm.gpt2 import layer_norm, mlp
from snnlm.layers import gelu_forward
from snnlm.neurons import decode, ec_if, ec_if_constant
from snnlm.spiking_ffn import (MSE_SCALES, SpikingFFNWeights, ffn_from_block, spiking_ffn_forward,
                               spiking_ffn_spikes)


@pytest.fixture
def block(rng) -> dict:
    return tiny_params(TINY, rng, np.float32)["blocks"][0]


def _ln2_outputs(rng, block: dict, n_tokens: int) -> np.ndarray:
    """LN2-like inputs (n_tokens, d): LayerNorm of residuals whose channels differ in scale."""
    x = rng.normal(size=(n_tokens, TINY.n_embd)) * rng.uniform(0.5, 2.0, TINY.n_embd)
    return layer_norm(x.astype(np.float32), block["ln_2"], TINY.layer_norm_epsilon)


def _relative_error(out: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sum((out - reference) ** 2, dtype=np.float64) / np.sum(reference.astype(np.float64) ** 2))


def test_error_shrinks_as_t_grows_and_is_small_at_t32(rng, block):
    calibration, held_out = _ln2_outputs(rng, block, 1024), _ln2_outputs(rng, block, 256)
    reference = mlp(held_out, block["mlp"])
    errors = []
    for timesteps in (2, 4, 8, 16, 32):
        layer = ffn_from_block(block["mlp"], calibration, timesteps)
        errors.append(_relative_error(spiking_ffn_forward(held_out, layer, timesteps)[0], reference))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2, errors


def test_percentile_thresholds_cover_the_range_with_the_burst(rng, block):
    u = _ln2_outputs(rng, block, 300)
    hidden = gelu_forward(u @ block["mlp"]["c_fc"]["w"] + block["mlp"]["c_fc"]["b"])[0]
    for burst in (1, 3):
        layer = ffn_from_block(block["mlp"], u, 4, percentile=99.0, burst=burst)
        np.testing.assert_allclose(layer.theta_in, np.percentile(np.abs(u), 99.0, axis=0) / burst, rtol=1e-6)
        np.testing.assert_allclose(layer.theta_h, np.percentile(np.abs(hidden), 99.0, axis=0) / burst, rtol=1e-5)
        np.testing.assert_allclose(layer.w_fc_scaled, layer.theta_in[:, None] * block["mlp"]["c_fc"]["w"], rtol=1e-6)
        np.testing.assert_allclose(layer.w_proj_scaled, layer.theta_h[:, None] * block["mlp"]["c_proj"]["w"], rtol=1e-6)
        assert layer.burst == burst


def test_mse_thresholds_reconstruct_no_worse_than_the_percentile_ones(rng, block):
    """Scale 1 is in the grid, so per channel the chosen threshold is at least as good as the percentile."""
    timesteps = 2
    u = _ln2_outputs(rng, block, 400)
    hidden = gelu_forward(u @ block["mlp"]["c_fc"]["w"] + block["mlp"]["c_fc"]["b"])[0]
    percentile = ffn_from_block(block["mlp"], u, timesteps)
    mse = ffn_from_block(block["mlp"], u, timesteps, method="mse")
    assert 1.0 in MSE_SCALES

    def input_error(theta):
        return ((decode(ec_if_constant(u, timesteps, theta), theta) - u) ** 2).sum(axis=0)

    def hidden_error(theta):
        s_in = ec_if_constant(u, timesteps, mse.theta_in)
        current = s_in.astype(np.float32) @ mse.w_fc_scaled + mse.b_fc
        return ((decode(ec_if(current, theta, activation="gelu"), theta) - hidden) ** 2).sum(axis=0)

    assert np.all(input_error(mse.theta_in) <= input_error(percentile.theta_in) * (1 + 1e-6))
    assert np.all(hidden_error(mse.theta_h) <= hidden_error(percentile.theta_h) * (1 + 1e-6))
    assert np.any(mse.theta_h != percentile.theta_h)


def test_hidden_neurons_code_gelu_of_the_decoded_input(rng, block):
    """With a burst that never binds, the hidden count after T steps is the rounding of
    T GELU(decoded(u) W_fc + b_fc) / theta_h; the output is the decoded c_proj current plus the bias once."""
    timesteps = 6
    u = _ln2_outputs(rng, block, 50)
    # Thresholds calibrated for B = 1, run with the largest burst: counts far from their bound B T.
    layer = dataclasses.replace(ffn_from_block(block["mlp"], _ln2_outputs(rng, block, 300), timesteps), burst=127)
    s_in, s_h = spiking_ffn_spikes(u, layer, timesteps)
    c_fc = block["mlp"]["c_fc"]
    mean_current = decode(s_in, layer.theta_in).astype(np.float64) @ c_fc["w"] + c_fc["b"]
    target = timesteps * gelu_forward(mean_current)[0] / layer.theta_h
    count = s_h.sum(axis=0, dtype=np.int64)
    assert np.all(np.abs(count - target) <= 0.5 + 1e-6)
    assert np.count_nonzero(count) > count.size // 4

    out, _ = spiking_ffn_forward(u, layer, timesteps)
    expected = count @ layer.w_proj_scaled.astype(np.float64) / timesteps + layer.b_proj
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_a_token_gets_the_same_bits_alone_or_among_others(rng, block):
    u = _ln2_outputs(rng, block, 40)
    layer = ffn_from_block(block["mlp"], u, 4)
    together = spiking_ffn_forward(u, layer, 4)[0]
    alone = np.concatenate([spiking_ffn_forward(u[i:i + 1], layer, 4)[0] for i in range(len(u))])
    np.testing.assert_array_equal(together, alone)


def test_stats_count_the_spikes_and_synaptic_operations(rng, block):
    timesteps, burst = 3, 2
    u = _ln2_outputs(rng, block, 20)
    layer = ffn_from_block(block["mlp"], u, timesteps, burst=burst)
    s_in, s_h = spiking_ffn_spikes(u, layer, timesteps)
    _, stats = spiking_ffn_forward(u, layer, timesteps)
    d, hidden = TINY.n_embd, 4 * TINY.n_embd
    assert stats.spikes == {"in": np.count_nonzero(s_in), "hidden": np.count_nonzero(s_h)}
    assert stats.slots == {"in": timesteps * 20 * d, "hidden": timesteps * 20 * hidden}
    assert np.abs(s_h).max() == burst
    assert stats.synaptic_ops == int(np.abs(s_in.astype(int)).sum()) * hidden + int(np.abs(s_h.astype(int)).sum()) * d


def test_tensors_round_trip_and_bad_tensors_are_named(rng, block):
    layer = ffn_from_block(block["mlp"], _ln2_outputs(rng, block, 100), 4, burst=2)
    tensors = layer.to_tensors("h.3.ffn.")
    assert set(tensors) == {f"h.3.ffn.{name}" for name in
                            ("theta_in", "w_fc_scaled", "b_fc", "theta_h", "w_proj_scaled", "b_proj", "burst")}
    back = SpikingFFNWeights.from_tensors(tensors, "h.3.ffn.")
    assert back.burst == 2
    for name in ("theta_in", "w_fc_scaled", "b_fc", "theta_h", "w_proj_scaled", "b_proj"):
        np.testing.assert_array_equal(getattr(back, name), getattr(layer, name))

    with pytest.raises(ValueError, match="h.3.ffn.w_proj_scaled"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.w_proj_scaled": layer.w_proj_scaled[:-1]}, "h.3.ffn.")
    with pytest.raises(ValueError, match="h.3.ffn.theta_h"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.theta_h": -layer.theta_h}, "h.3.ffn.")
    with pytest.raises(ValueError, match="h.3.ffn.b_fc' holds non-finite"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.b_fc": np.full_like(layer.b_fc, np.inf)}, "h.3.ffn.")
    with pytest.raises(ValueError, match="h.3.ffn.theta_in' has dtype int64"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.theta_in": np.ones(layer.width, np.int64)}, "h.3.ffn.")
    with pytest.raises(ValueError, match="burst"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.burst": np.array([0], np.int32)}, "h.3.ffn.")
    with pytest.raises(ValueError, match="burst"):
        SpikingFFNWeights.from_tensors({**tensors, "h.3.ffn.burst": np.array([2.0], np.float32)}, "h.3.ffn.")
    with pytest.raises(KeyError):
        SpikingFFNWeights.from_tensors({k: v for k, v in tensors.items() if not k.endswith("b_fc")}, "h.3.ffn.")


@pytest.mark.parametrize("kwargs, needle", [
    ({"method": "best"}, "method"),
    ({"percentile": 0.0}, "percentile"),
    ({"burst": 0}, "burst"),
])
def test_bad_calibration_arguments(rng, block, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ffn_from_block(block["mlp"], _ln2_outputs(rng, block, 10), 4, **kwargs)
