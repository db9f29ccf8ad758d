"""The read-bandwidth kernel against its NumPy reference."""
import numba
import numpy as np
import pytest

from snnlm.kernels.bandwidth import parallel_sum, sum_reference


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 4099])
def test_parallel_sum_matches_reference(n):
    a = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    assert parallel_sum(a) == pytest.approx(sum_reference(a), rel=1e-6, abs=1e-6 * max(n, 1))


def test_parallel_sum_matches_reference_on_one_thread():
    a = np.random.default_rng(0).random(1001, dtype=np.float32)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert parallel_sum(a) == pytest.approx(sum_reference(a), rel=1e-6)
    finally:
        numba.set_num_threads(threads)


def test_parallel_sum_reads_float64():
    a = np.arange(10_000, dtype=np.float64)
    assert parallel_sum(a) == sum_reference(a) == 10_000 * 9_999 / 2
