"""How a direct-convolution call copies its input planes and splits its work: shared by the
Numba (``kernels/numba/direct.py``) and Cython (``kernels/cython/direct.pyx``) kernels.

Both sum each output as ``bias + sum over taps t = (c, i, j) of w[k, t] * src[pos + toff[t]]``
over copied (zero-padded, for strided layers phase-split) input planes, a chunk of input
channels at a time, in tasks of (image, group, block of output channels). Output positions
are "wide": ``pos = oh*wq + ow`` over planes ``wq`` columns wide, whose ``wq - out_w``
extra columns per row are computed and dropped. Where that waste is large (short rows of a
wide filter: LeNet conv2's 10 of 14), stride-1 layers copy instead one "column-shifted"
plane per input channel and filter column, ``out_w`` wide: the outputs are then in y's own
order, none wasted. The numbers below decide the layout, chunks and blocks; none of them
changes any result.
"""
from __future__ import annotations

import numpy as np

#: Taps per ``tap_block`` call: the input lines those taps read for one block of outputs stay
#: in L1 for the next block of output channels.
TAP_CHUNK = 128
#: Input-channel planes one ``tap_block`` call reads at most: each is another page (4 KiB)
#: at least, and a core's first-level data TLB holds 64. A 1x1 filter's taps are all in
#: different planes: its forward (256 -> 64 on 56x56) took 0.93-0.95x the time with 64 taps
#: per call against 128, at 1 and 2 threads. Larger filters keep TAP_CHUNK (128 taps of a
#: 3x3 filter read 15 planes; 64 taps made grad_input 1.03-1.10x slower).
TAP_CHANNELS = 64
#: Elements of padded planes a task copies at once (its workspace): 1 MiB of float32. Fewer,
#: larger channel chunks mean fewer passes that reload and store the sums: ResNet 3x3 forward
#: 0.90-0.93x the time of 256 KiB chunks in both backends (1 and 2 threads); 2 and 4 MiB
#: measured the same as 1.
COPY_BUDGET = 262144
#: Tasks wanted per thread when blocks of output channels are split for load balance.
TASKS_PER_THREAD = 4
#: Outputs per tile of a 1x1 filter with several tap chunks: each chunk goes through all the
#: blocks of output channels over this many outputs before the next chunk, so that its 64
#: planes' lines (512 bytes each) stay in L1 between blocks (the 1x1 256->64 forward 0.84x
#: the time in Cython, 0.86-0.91x in Numba; 64 outputs 1.3x slower, 192 or 256 1.1x). Other
#: filters read few lines for many taps and keep every tap per block (the 7x7 stem took
#: 1.02-1.04x the time in the 1x1 order).
ONE_BY_ONE_TILE = 128


def tap_chunk(taps_per_channel: int) -> int:
    """Taps per ``tap_block`` call for filters of ``taps_per_channel`` (r*s) taps each."""
    return min(TAP_CHUNK, TAP_CHANNELS * max(taps_per_channel, 1))


def tap_offsets(channels: int, r: int, s: int, dh: int, dw: int, sh: int, sw: int, hq: int, wq: int,
                plane: int) -> np.ndarray:
    """Where each tap (c, i, j), in that order, starts in the copied planes: (channels*r*s,) intp.

    Stride 1: ``c*plane + i*dh*wq + j*dw`` in padded planes with rows of ``wq``. Larger
    strides read phase planes of ``hq`` x ``wq`` (phase (a, b) holds padded pixels
    (y*sh + a, x*sw + b) at (y, x)): tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw),
    shifted by ((i*dh) // sh, (j*dw) // sw). ``plane`` is one channel's share (all its phases).
    """
    c = np.arange(channels, dtype=np.intp)[:, None, None] * plane
    ri = np.arange(r, dtype=np.intp)[None, :, None] * dh
    sj = np.arange(s, dtype=np.intp)[None, None, :] * dw
    phase = (ri % sh) * sw + sj % sw
    off = c + phase * (hq * wq) + (ri // sh) * wq + sj // sw
    return np.ascontiguousarray(off.ravel(), dtype=np.intp)


def shifted_pays(sh: int, sw: int, wq: int, out_w: int) -> bool:
    """Whether a call copies column-shifted planes: stride 1, and wide rows wasting more than
    an eighth of their columns. Numba: LeNet conv2 forward 0.80x the time, MNIST conv2
    forward 0.89x, their grad_input 0.81-0.91x (no tile to fill and copy out); Cython, whose
    tiles cost less, 0.97-1.05x. Copying filter-width times the input costs little against
    filters x taps of arithmetic per input element."""
    return sh == 1 and sw == 1 and (wq - out_w) * 8 > wq


def shifted_tap_offsets(channels: int, r: int, s: int, dh: int, hq: int, out_w: int) -> np.ndarray:
    """Where tap (c, i, j), in that order, starts in column-shifted planes: plane ``c*s + j``
    (``hq`` x ``out_w``: the padded plane's columns from ``j*dw``), row ``i*dh``."""
    c = np.arange(channels, dtype=np.intp)[:, None, None]
    ri = np.arange(r, dtype=np.intp)[None, :, None]
    sj = np.arange(s, dtype=np.intp)[None, None, :]
    return np.ascontiguousarray((((c * s + sj) * hq + ri * dh) * out_w).ravel(), dtype=np.intp)


def channel_chunk(cg: int, plane_elems: int, taps_per_channel: int) -> int:
    """Input channels whose padded planes are copied together: a bounded workspace, but at
    least enough channels to fill one ``TAP_CHUNK`` (each channel chunk stores its sums and
    the next reloads them; the 7x7 stem's 3 channels in one chunk instead of 3: 0.97x the
    time of its forward and weight gradient)."""
    fill = -(-TAP_CHUNK // max(taps_per_channel, 1))
    return max(1, min(cg, max(COPY_BUDGET // max(plane_elems, 1), fill)))


def task_block(units: int, kg: int, nthreads: int, register_rows: int = 4) -> int:
    """Output channels per task: all of a group's when there are enough (image, group)
    ``units`` for the threads, otherwise fewer (a multiple of ``register_rows``, the
    kernels' register block) so that every thread gets work."""
    want = TASKS_PER_THREAD * nthreads
    if units >= want or kg <= register_rows:
        return kg
    blocks = -(-want // units)
    kbt = -(-kg // blocks)
    kbt = -(-kbt // register_rows) * register_rows
    return max(register_rows, min(kg, kbt))


def tasks_per_take(n_tasks: int, nthreads: int) -> int:
    """Consecutive tasks a thread takes at once from a parallel loop: about eight takes per
    thread (load balance), each over neighbouring planes (depthwise forward and grad input
    0.89-0.93x the time at 2 threads against one task per take, in Cython)."""
    return max(1, n_tasks // (8 * nthreads))
