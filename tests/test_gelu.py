"""GELU (tanh form) in float32 and float64 against a float64 evaluation of the formula."""
import math

import numpy as np
import pytest

from snnlm.kernels.gelu import gelu, gelu_grad


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_gelu_matches_the_formula(dtype, tol):
    x = np.linspace(-8, 8, 1001).astype(dtype)
    exact = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x.astype(float)]
    np.testing.assert_allclose(gelu(x), exact, atol=tol * 8)
    assert gelu(x).dtype == dtype


def test_gelu_grad_matches_finite_differences():
    x = np.linspace(-6, 6, 301)
    h = 1e-6
    np.testing.assert_allclose(gelu_grad(np.ones_like(x), x), (gelu(x + h) - gelu(x - h)) / (2 * h), atol=1e-8)
