"""Strided grad_input by phases (``fastconv/kernels/stride_phases.py``), both direct backends.

The geometries stress the phase plan: phases without filter taps (a 1x1 or 2x2 filter at
stride 3), uneven strides and paddings, grad_output taller than the phase planes would be
(a 1x1 filter padded by 2 at stride 2), groups and depthwise. Non-finite weights must take
the scatter, which never multiplies grad_output's zero border.
"""
import numpy as np
import pytest

import fastconv
from fastconv.kernels import stride_phases

from cases import ConvCase, assert_close

BACKENDS = ["cython", "numba"]

PHASE_CASES = [
    ConvCase("stride2_3x3", (2, 5, 12, 11), 6, (3, 3), stride=2, padding=1),
    ConvCase("stride3_1x1_no_tap_phases", (2, 4, 10, 11), 3, (1, 1), stride=3),
    ConvCase("stride3_2x2_no_tap_phases", (1, 3, 11, 10), 4, (2, 2), stride=3, padding=1),
    ConvCase("stride2x3_3x5", (2, 3, 13, 17), 4, (3, 5), stride=(2, 3), padding=(1, 2)),
    ConvCase("stride2_1x1_pad2_tall_output", (1, 3, 4, 5), 2, (1, 1), stride=2, padding=2),
    ConvCase("stride2_7x7_groups", (1, 4, 15, 14), 6, (7, 7), stride=2, padding=3, groups=2),
    ConvCase("stride2_depthwise", (2, 6, 9, 10), 6, (3, 3), stride=2, padding=1, groups=6),
    ConvCase("stride2_4x4_even", (1, 3, 10, 9), 5, (4, 4), stride=2, padding=1),
]


def _reference_grad_input(case, gy, w):
    return fastconv.conv2d_backward(gy.astype(np.float64), np.zeros(case.x), w.astype(np.float64),
                                    **case.kwargs(), needs=("input",), algo="reference")[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda c: c.name)
def test_strided_grad_input_by_phases_matches_oracle(case, dtype, backend, monkeypatch):
    x, w, _, gy = case.arrays(dtype, seed=3)
    calls = []
    real = stride_phases.grad_input
    monkeypatch.setattr(stride_phases, "grad_input", lambda *a: calls.append(1) or real(*a))
    gx = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input",), algo="direct",
                                  backend=backend)[0]
    assert calls, "finite weights at stride > 1 take the phase path"
    assert_close(gx, _reference_grad_input(case, gy, w), dtype, "direct", case.name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_phases_go_by_chunks_of_images_within_the_workspace_limit(backend, monkeypatch):
    from fastconv.kernels import dilation_phases

    case = ConvCase("stride2_batch5", (5, 3, 11, 12), 4, (3, 3), stride=2, padding=1)
    x, w, _, gy = case.arrays("float64", seed=5)
    whole = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input",), algo="direct",
                                     backend=backend)[0]
    images = []
    real = dilation_phases.phase_array
    monkeypatch.setattr(dilation_phases, "phase_array", lambda name, shape, *a: images.append(shape[0])
                        or real(name, shape, *a))
    try:
        fastconv.set_workspace_limit(1)     # one image per chunk
        chunked = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input",), algo="direct",
                                           backend=backend)[0]
    finally:
        fastconv.set_workspace_limit(None)
    assert images == [1] * 5
    np.testing.assert_array_equal(chunked, whole)   # images are independent: the same sums
    assert_close(whole, _reference_grad_input(case, gy, w), "float64", "direct", case.name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_weight_takes_the_scatter(backend, monkeypatch):
    case = PHASE_CASES[0]
    x, w, _, gy = case.arrays("float64", seed=4)
    w[1, 2, 0, 0] = np.inf
    w[4, 0, 2, 1] = -np.inf
    calls = []
    monkeypatch.setattr(stride_phases, "grad_input", lambda *a: calls.append(1))
    gx = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input",), algo="direct",
                                  backend=backend)[0]
    assert not calls
    ref = _reference_grad_input(case, gy, w)
    # The phases would multiply the Inf by grad_output's zero border: NaN where the
    # reference has an Inf or a finite value.
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(gx), np.isinf(ref))
    assert np.isinf(ref).any()
    finite = np.isfinite(ref)
    np.testing.assert_allclose(gx[finite], ref[finite], rtol=1e-10, atol=1e-12)


def test_phase_rule():
    def params(stride, dilation):
        return ConvCase("p", (1, 2, 9, 9), 2, (3, 3), stride=stride, dilation=dilation).params()

    w = np.ones((2, 2, 3, 3))
    assert stride_phases.applies(params(2, 1), w)
    assert stride_phases.applies(params((1, 2), 1), w)
    assert not stride_phases.applies(params(1, 1), w)       # stride 1 has its own gather
    assert not stride_phases.applies(params(2, 2), w)       # dilated and strided: the scatter
    w[0, 0, 0, 0] = np.nan
    assert not stride_phases.applies(params(2, 1), w)
