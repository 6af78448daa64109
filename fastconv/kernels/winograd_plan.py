"""How a Winograd call walks the batch, shared by both backends.

The Numba (``kernels/numba/winograd.py``) and Cython (``kernels/cython/winograd.pyx``)
modules supply the per-chunk steps (``WinogradSteps``: the input transform, the two batched
GEMMs and the output transform); this module plans the chunks of tile rows, hands out the
reused V/M buffers and runs the steps in order, so the plan is written once. Every step is
a compiled function; the Python loop here runs once per chunk (a few per call).
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Tuple

import numpy as np

from .. import limits
from . import dilation_phases as phases
from . import winograd_tables as tables

#: V/M buffers reused between calls (per calling thread; see ``WorkspacePool``).
WORKSPACE = tables.WorkspacePool()


class WinogradSteps(NamedTuple):
    """A backend's per-chunk functions (signatures as in either backend module).

    The batched GEMMs run one whole product per thread on the backends' register blocks,
    which scales where BLAS splitting each small product (K and C/G of 32-256) did not
    (MNIST conv2 at 2 threads: 3.3 -> 3.0 ms); no step calls BLAS.
    """

    input_transform: Callable
    batched_gemm: Callable
    batched_gemm_tn: Callable
    output_transform: Callable
    input_transform_adjoint: Callable
    #: The forward's three steps of one chunk in one parallel region (``_fused`` channel counts).
    forward_chunk: Callable
    #: grad_input's three steps of one chunk (adjoint formulation) in one parallel region.
    input_gradient_chunk: Callable
    #: grad_weight's two input transforms and products of one chunk in one parallel region.
    weight_gradient_chunk: Callable
    #: grad_weight = G^T dL/dU G per channel pair (the adjoint of the filter transform).
    filter_gradient: Callable
    #: A dilated layer's phase images from its input (or grad_output), and back.
    split_phases: Callable
    merge_phases: Callable


def _fused(c_per_group: int, k_per_group: int) -> bool:
    """Whether a chunk's steps run as one parallel region per chunk (``forward_chunk``,
    ``input_gradient_chunk``, ``weight_gradient_chunk``), each thread taking its own tile
    rows through all of them. Threads wait passively, so every region pays their wake-up:
    one region instead of three took 0.93x (forward) and 0.94x (grad input) the time of
    MNIST conv2 at 2 threads in Cython, 0.97x / 1.00x in Numba, 0.96-0.99x on ResNet 64, and
    the weight gradient's 0.82-0.89x; level at 1 thread. Past ``FUSED_CHUNK_CHANNELS`` it
    did not pay (see there)."""
    return max(c_per_group, k_per_group) <= tables.FUSED_CHUNK_CHANNELS


def _tile_chunks(n_images: int, n_th: int, n_tw: int, c: int, k: int, groups: int, m: int, dtype,
                 filter_bytes: int = 0) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """``(first tile row, V (a*a, G, T, C/G), M (a*a, G, T, K/G))`` per chunk of tile rows.

    Chunks are sized by ``winograd_tables.rows_per_chunk`` within the workspace limit; the
    views come from the reused buffers, so their contents are undefined.
    """
    a = m + 2
    aa = a * a
    total_rows = n_images * n_th
    rows = tables.rows_per_chunk(total_rows, n_tw, c, k, a, np.dtype(dtype).itemsize,
                                 limits.workspace_limit_bytes(), filter_bytes)
    v_buf = WORKSPACE.get("V", aa * c * rows * n_tw, dtype)
    m_buf = WORKSPACE.get("M", aa * k * rows * n_tw, dtype)
    for r0 in range(0, total_rows, rows):
        nt = min(rows, total_rows - r0) * n_tw
        yield (r0, v_buf[:aa * c * nt].reshape(aa, groups, nt, c // groups),
               m_buf[:aa * k * nt].reshape(aa, groups, nt, k // groups))


def _phase_chunks(x_shape, y_shape, dilation: Tuple[int, int], phase_hw: Tuple[int, int], dtype,
                  x_arrays: int = 1) -> Iterator[slice]:
    """Batch slices for a dilated call: ``x_arrays`` x-sized and one y-sized phase array per image."""
    a, b = phase_hw
    per_image = dilation[0] * dilation[1] * (x_arrays * x_shape[1] * (a + 2) * (b + 2) + y_shape[1] * a * b)
    return phases.image_chunks(x_shape[0], per_image * np.dtype(dtype).itemsize)


def _summed_over_chunks(total, chunks) -> Iterator[tuple]:
    """``(chunk, part)`` per chunk, where each chunk's kernel writes its partial result to
    ``part``: the first chunk's is ``total`` itself, later ones are added into it after
    their turn. ``total`` None (nothing to sum) gives ``part`` None."""
    for i, chunk in enumerate(chunks):
        if total is None or i == 0:
            yield chunk, total
        else:
            part = np.empty_like(total)
            yield chunk, part
            total += part


def convolve(steps: WinogradSteps, x, u, bias, y, pad_top: int, pad_left: int, m: int, workers: int,
             dilation: Tuple[int, int] = (1, 1)) -> None:
    """y (N, K, OH, OW) = 3x3 stride-1 correlation of x (N, C, H, W) with transformed filters u.

    ``u`` is (a*a, G, C/G, K/G); output (oy, ox) reads the 3x3 input window starting at
    (oy - pad_top, ox - pad_left), zeros outside x. ``bias`` is (K,) or None. Per chunk:
    V = B^T d B of the input tiles, M[xi] = V[xi] @ U[xi], y = A^T M A + bias.
    With a dilation, the window's taps are ``dilation`` apart and the correlation runs on
    the phase images (``dilation_phases``).
    """
    if phases.dilated(dilation):
        a, b = phases.phase_output_shape(y.shape[2:], dilation)
        for s in _phase_chunks(x.shape, y.shape, dilation, (a, b), y.dtype):
            z = phases.split(steps.split_phases, x[s], (pad_top, pad_left), dilation, (a + 2, b + 2), workers,
                             "x")
            yz = phases.phase_array("y", y[s].shape, dilation, (a, b), y.dtype)
            convolve(steps, z, u, bias, yz, 0, 0, m, workers)
            phases.merge(steps.merge_phases, yz, y[s], (0, 0), dilation, workers)
        return
    c_in, (k_out, oh, ow), groups = x.shape[1], y.shape[1:], u.shape[1]
    a = m + 2
    n_th, n_tw = -(-oh // m), -(-ow // m)
    at, _, bt = (mat.astype(x.dtype) for mat in tables.MATRICES[m])
    bias = bias if bias is not None else np.zeros(k_out, dtype=x.dtype)
    slot_of_col, in_down, in_across = tables.input_transform_offsets(m, n_tw, groups, c_in // groups)
    out_across = (np.arange(a) * (k_out * n_tw)).astype(np.intp)
    for r0, v, mm in _tile_chunks(x.shape[0], n_th, n_tw, c_in, k_out, groups, m, x.dtype, u.nbytes):
        out_down = (np.arange(a) * (a * mm[0].size)).astype(np.intp)
        if _fused(c_in // groups, k_out // groups):
            steps.forward_chunk(x, v, u, mm, y, bias, r0, pad_top, pad_left, n_th, n_tw, bt, slot_of_col,
                                in_down, in_across, at, out_down, out_across, workers)
            continue
        steps.input_transform(x, v, r0, pad_top, pad_left, n_th, n_tw, bt, slot_of_col, in_down, in_across,
                              workers)
        steps.batched_gemm(v, u, mm, workers)
        steps.output_transform(mm, y, bias, r0, n_th, n_tw, at, out_down, out_across, workers)


def weight_gradient(steps: WinogradSteps, grad_output, x, grad_weight, pad_top: int, pad_left: int, m: int,
                    workers: int, dilation: Tuple[int, int] = (1, 1)) -> None:
    """grad_weight (K, C/G, 3, 3) of the 3x3 stride-1 correlation y = x (*) w, by F(m x m, 3x3).

    The adjoint of ``convolve``: per chunk of tile rows, V = B^T d B of x's tiles (as in the
    forward) and D = A dY A^T of grad_output's tiles; dL/dU[xi] = sum over tiles of
    V[xi]^T D[xi] (one GEMM per position, accumulated over chunks); grad_weight = G^T dL/dU G
    (``filter_gradient``). A dilated layer's is that of its phase images.
    """
    if phases.dilated(dilation):
        a, b = phases.phase_output_shape(grad_output.shape[2:], dilation)
        chunks = _phase_chunks(x.shape, grad_output.shape, dilation, (a, b), x.dtype)
        for s, part in _summed_over_chunks(grad_weight, chunks):
            z = phases.split(steps.split_phases, x[s], (pad_top, pad_left), dilation, (a + 2, b + 2), workers,
                             "x")
            gz = phases.split(steps.split_phases, grad_output[s], (0, 0), dilation, (a, b), workers, "y")
            weight_gradient(steps, gz, z, part, 0, 0, m, workers)
        return
    c_in, (k_out, oh, ow), cg = x.shape[1], grad_output.shape[1:], grad_weight.shape[1]
    groups = c_in // cg
    n_th, n_tw = -(-oh // m), -(-ow // m)
    bt = tables.MATRICES[m][2].astype(x.dtype)
    dt = tables.grad_output_transform(m).astype(x.dtype)
    slot_of_col, in_down, in_across = tables.input_transform_offsets(m, n_tw, groups, cg)
    gy_slots, gy_down, gy_across = tables.input_transform_offsets(m, n_tw, groups, k_out // groups, window=m)
    fused = _fused(cg, k_out // groups)
    # One partial dL/dU per worker where each takes its own tiles through the whole chunk.
    dm = np.zeros((workers if fused else 1, (m + 2) ** 2, groups, cg, k_out // groups), dtype=x.dtype)
    for r0, v, d in _tile_chunks(x.shape[0], n_th, n_tw, c_in, k_out, groups, m, x.dtype):
        if fused:
            steps.weight_gradient_chunk(x, grad_output, v, d, dm, r0, pad_top, pad_left, n_th, n_tw, bt,
                                        slot_of_col, in_down, in_across, dt, gy_slots, gy_down, gy_across,
                                        workers)
            continue
        steps.input_transform(x, v, r0, pad_top, pad_left, n_th, n_tw, bt, slot_of_col, in_down, in_across,
                              workers)
        steps.input_transform(grad_output, d, r0, 0, 0, n_th, n_tw, dt, gy_slots, gy_down, gy_across,
                              workers)
        steps.batched_gemm_tn(v, d, dm[0], workers)
    steps.filter_gradient(dm[0] if len(dm) == 1 else dm.sum(axis=0), tables.MATRICES[m][1].astype(x.dtype),
                          grad_weight, workers)


def adjoint_pays(out_hw: Tuple[int, int], in_hw: Tuple[int, int], m: int,
                 dilation: Tuple[int, int] = (1, 1)) -> bool:
    """Whether ``input_gradient`` (tiles over grad_output) beats ``convolve`` on the flipped
    filters (tiles over grad_input) for grad_input.

    The adjoint's last step writes a x a values per tile where the flipped convolution writes
    m x m, so it pays only with fewer tiles: when the layer shrinks its input (padding below
    1), e.g. 13x13 -> 11x11 takes 9 F(4x4) tiles per image against 16. A dilated layer's
    tiles cover its phase images.
    """
    out_hw = phases.phase_output_shape(out_hw, dilation)
    in_hw = phases.phase_output_shape(in_hw, dilation)
    tiles_out = -(-out_hw[0] // m) * -(-out_hw[1] // m)
    tiles_in = -(-in_hw[0] // m) * -(-in_hw[1] // m)
    return tiles_out < tiles_in


def input_gradient(steps: WinogradSteps, grad_output, ut, grad_input, pad_top: int, pad_left: int, m: int,
                   workers: int, x=None, grad_weight=None, dilation: Tuple[int, int] = (1, 1)) -> None:
    """grad_input (N, C, H, W) of the 3x3 stride-1 correlation y = x (*) w, by F(m x m, 3x3).

    The adjoint of ``convolve`` with the forward's transformed filters ``ut`` (a*a, G, K/G,
    C/G; U with its channel axes swapped): per chunk of grad_output's tile rows,
    D = A dY A^T (as in ``weight_gradient``), dV[xi] = D[xi] @ U[xi]^T, and every tile adds
    B dV B^T to grad_input where the forward read its input tile (the first tile row to reach
    a row stores, the next adds: ``input_transform_adjoint`` writes grad_input, and only the
    pixels no tile reaches are zeroed beforehand).

    Given ``x`` and ``grad_weight`` (K, C/G, 3, 3), also writes grad_weight as
    ``weight_gradient`` does, from the same D: one transform of grad_output serves both.
    A dilated layer's gradients are those of its phase images.
    """
    if phases.dilated(dilation):
        a, b = phases.phase_output_shape(grad_output.shape[2:], dilation)
        sub_hw = (a + 2, b + 2)
        dtype = grad_input.dtype
        chunks = _phase_chunks(grad_input.shape, grad_output.shape, dilation, (a, b), dtype,
                               2 if x is not None else 1)
        for s, part in _summed_over_chunks(grad_weight, chunks):
            gz = phases.split(steps.split_phases, grad_output[s], (0, 0), dilation, (a, b), workers, "y")
            z = None if x is None else phases.split(steps.split_phases, x[s], (pad_top, pad_left), dilation,
                                                    sub_hw, workers, "x")
            gxz = phases.phase_array("grad_input", grad_input[s].shape, dilation, sub_hw, dtype)
            input_gradient(steps, gz, ut, gxz, 0, 0, m, workers, z, part)
            phases.merge(steps.merge_phases, gxz, grad_input[s], (pad_top, pad_left), dilation, workers)
        return
    c_in, (k_out, oh, ow), groups = grad_input.shape[1], grad_output.shape[1:], ut.shape[1]
    a = m + 2
    n_th, n_tw = -(-oh // m), -(-ow // m)
    dtype = grad_input.dtype
    b = np.ascontiguousarray(tables.MATRICES[m][2].T.astype(dtype))
    bt = tables.MATRICES[m][2].astype(dtype)
    dt = tables.grad_output_transform(m).astype(dtype)
    slot_of_col, x_down, x_across = tables.input_transform_offsets(m, n_tw, groups, c_in // groups)
    gy_slots, gy_down, gy_across = tables.input_transform_offsets(m, n_tw, groups, k_out // groups, window=m)
    across = (np.arange(a) * (c_in * n_tw)).astype(np.intp)
    dm = None if grad_weight is None else np.zeros((a * a, groups, c_in // groups, k_out // groups), dtype=dtype)
    in_h, in_w = grad_input.shape[2:]
    if n_th * m + 2 - pad_top < in_h or n_tw * m + 2 - pad_left < in_w:
        grad_input[...] = 0     # pixels past the last tiles: none is read by the forward
    for r0, v, d in _tile_chunks(grad_output.shape[0], n_th, n_tw, c_in, k_out, groups, m, dtype, ut.nbytes):
        down = (np.arange(a) * (a * v[0].size)).astype(np.intp)
        if dm is None and _fused(c_in // groups, k_out // groups):
            steps.input_gradient_chunk(grad_output, d, ut, v, grad_input, r0, pad_top, pad_left, n_th, n_tw, dt,
                                       gy_slots, gy_down, gy_across, b, down, across, workers)
            continue
        steps.input_transform(grad_output, d, r0, 0, 0, n_th, n_tw, dt, gy_slots, gy_down, gy_across, workers)
        steps.batched_gemm(d, ut, v, workers)
        steps.input_transform_adjoint(v, grad_input, r0, pad_top, pad_left, n_th, n_tw, b, down, across, workers)
        if dm is not None:  # v is free again: x's tiles, as in the forward
            steps.input_transform(x, v, r0, pad_top, pad_left, n_th, n_tw, bt, slot_of_col, x_down, x_across,
                                  workers)
            steps.batched_gemm_tn(v, d, dm, workers)
    if dm is not None:
        steps.filter_gradient(dm, tables.MATRICES[m][1].astype(dtype), grad_weight, workers)
