"""The training kernels (GELU, softmax cross-entropy) against their NumPy references."""
import numpy as np
import pytest

from snnlm.kernels.crossentropy import (
    crossentropy_grad_inplace, crossentropy_grad_numpy, logsumexp, logsumexp_numpy,
)
from snnlm.kernels.gelu import PARALLEL_MIN_SIZE, gelu, gelu_grad, gelu_grad_numpy, gelu_numpy


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_gelu_kernels_match_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, PARALLEL_MIN_SIZE // 8)) * 4).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    np.testing.assert_allclose(gelu(x), gelu_numpy(x), rtol=tol, atol=tol)
    np.testing.assert_allclose(gelu_grad(dout, x), gelu_grad_numpy(dout, x), rtol=tol, atol=tol)
    assert gelu(x).dtype == dtype and gelu(x).shape == x.shape


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_crossentropy_kernels_match_numpy(dtype, tol):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(9, 301)) * 10).astype(dtype)
    targets = rng.integers(0, 301, 9)
    lse = logsumexp(logits)
    np.testing.assert_allclose(lse, logsumexp_numpy(logits), rtol=tol)
    expected = crossentropy_grad_numpy(logits, lse, targets, 0.25)
    crossentropy_grad_inplace(logits, lse, targets, 0.25)
    np.testing.assert_allclose(logits, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(logits.sum(axis=1), 0.0, atol=1e-5)
