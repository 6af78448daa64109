"""The cold-start report of ``fastconv info --startup``."""
import pytest

from fastconv.benchmarks import startup


def test_measure_times_the_import_and_each_requested_kernel_in_a_fresh_process():
    rows = startup.measure("warm", kernels=[["reference", "numpy"]])
    assert [r["what"] for r in rows] == ["import fastconv", "conv2d reference/numpy"]
    assert all(r["first_s"] > 0 for r in rows)
    assert rows[1]["second_s"] > 0


def test_every_registered_forward_kernel_is_listed_except_the_reference():
    kernels = startup.conv_forward_kernels()
    assert ["direct", "cython"] in kernels and ["winograd_f43", "numba"] in kernels
    assert all(backend != "numpy" for _, backend in kernels)


def test_bad_cache_mode_is_refused():
    with pytest.raises(ValueError, match="numba_cache"):
        startup.measure("lukewarm")
