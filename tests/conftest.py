"""Fixtures shared by the engine's tests (builders and checkers live in tests/helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed generator per test, so every test is reproducible on its own."""
    return np.random.default_rng(1234)
