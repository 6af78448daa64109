"""Winograd minimal filtering F(m x m, 3 x 3): the transform matrices and the filter-transform cache.

Both backends (``kernels/numba/winograd.py`` and ``kernels/cython/winograd.pyx``) read their
coefficients from this module, so there is exactly one definition of the algorithm.

The algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
----------------------------------------------------------------------------------
One output tile ``Y`` (m x m) of a 3x3 cross-correlation is computed from the input tile
``d`` (a x a, ``a = m + 2``, overlapping its neighbours by 2) and the filter ``g`` (3 x 3) as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* is the element-wise product)

so a tile costs a*a multiplications instead of 9*m*m: 16 instead of 36 for F(2x2,3x3) and 36
instead of 144 for F(4x4,3x3). Summed over the input channels, the element-wise products
become a*a independent matrix products ``M[xi] = U[xi] @ V[xi]`` (one GEMM per position ``xi``
of the transformed tile), which is where the time goes.

How the matrices are derived (``transform_matrices``)
-----------------------------------------------------
The 1-D algorithm F(m, r) is the transpose of Toom-Cook linear convolution of an m-tap and an
r-tap polynomial, ``s(x) = u(x) h(x)`` of degree ``a - 1`` (``a = m + r - 1``). Toom-Cook
evaluates both factors at ``a - 1`` finite points ``p_j`` and at infinity (the leading
coefficient), multiplies the values, and interpolates:

    s(x) = sum_j s(p_j) N_j(x) / f_j  +  s_inf M(x),
    M(x) = prod_l (x - p_l),  N_j(x) = M(x) / (x - p_j),  f_j = N_j(p_j) = prod_{l != j} (p_j - p_l).

Transposing (correlation ``y_i = sum_k d_{i+k} g_k`` is the transpose of ``s = T(h) u``) gives
``y = A^T [(G g) * (B^T d)]`` with

* ``A^T`` (m x a): column j holds the powers ``p_j^i``; the last column is ``e_{m-1}``
  (infinity picks the leading coefficient);
* ``G`` (a x r): row j is ``(1, p_j, p_j^2, ...) / f_j``; the last row is ``e_{r-1}``;
* ``B^T`` (a x a): row j holds the coefficients of ``N_j(x)`` (constant term first); the last
  row holds those of ``M(x)``.

The divisions by ``f_j`` sit in ``G`` (applied once per filter, in float64), so ``B^T`` and
``A^T`` keep small entries that are exact in binary (integers and halves, quarters, eighths)
and the per-tile transforms round as little as possible.
The matrices are computed with exact rational arithmetic and converted to float64 once.

Points used (``POINTS``):

* F(2x2, 3x3): ``0, 1, -1, inf`` -- Lavin & Gray's matrices up to the signs of two positions.
* F(4x4, 3x3): ``0, 1, -1, 1/2, -2, inf``. F(4,3) takes exactly five finite points
  (``a - 1``), chosen from the usual candidates 0, +-1, +-2, +-1/2. Lavin & Gray use
  ``0, +-1, +-2``; replacing +2 by its reciprocal 1/2 cuts the float32 error 2.5-3x. Max relative
  error of F(4x4,3x3) float32 (forward and grad_input, both backends, 3 random draws; MNIST
  conv2 at batch 32, ResNet 64@56x56 at batch 2, 256@14x14 at batch 8):

  ===================  ==========  ==========  ==========
  finite points        MNIST       ResNet 64   ResNet 256
  ===================  ==========  ==========  ==========
  0, +-1, +-2          7.0e-6      8.1e-6      1.5e-5
  0, +-1, +-1/2        6.8e-6      7.5e-6      1.8e-5
  0, +-1/2, +-2        3.7e-6      4.0e-6      6.7e-6
  0, +-1, 1/2, -2      2.9e-6      3.3e-6      5.1e-6   (used)
  ===================  ==========  ==========  ==========

  Both backends have F(4x4,3x3) transform kernels written out for these matrices (zeros
  skipped, ones added, x1 +- x2 pairs shared); a denser B^T costs them a few operations.

Numerical error of the kernels
------------------------------
Max |y - y_ref| / max |y_ref| against the float64 NumPy oracle (``fastconv.reference``),
x and grad_output ~ N(0, 1), Kaiming-scaled weights ~ N(0, 2 / (9 C)), the larger of the two
backends (they agree to rounding), forward / grad_input, F(4x4,3x3) with its factored
transform kernels:

================================  ===================  ===================  ===================  ===================
layer                             F23 float32          F43 float32          F23 float64          F43 float64
================================  ===================  ===================  ===================  ===================
MNIST conv2 32->64 13x13 b128     2.5e-7 / 2.9e-7      1.9e-6 / 1.6e-6      5.8e-16 / 6.6e-16    3.8e-15 / 3.6e-15
ResNet 64@56x56 pad 1 b8          4.1e-7 / 4.4e-7      3.0e-6 / 2.6e-6      8.4e-16 / 8.3e-16    5.3e-15 / 5.8e-15
ResNet 128@28x28 pad 1 b8         5.3e-7 / 6.0e-7      3.7e-6 / 3.6e-6      1.1e-15 / 1.2e-15    7.6e-15 / 7.6e-15
ResNet 256@14x14 pad 1 b8         6.3e-7 / 6.7e-7      4.6e-6 / 5.6e-6      1.3e-15 / 1.4e-15    8.7e-15 / 8.4e-15
================================  ===================  ===================  ===================  ===================

MNIST conv2's grad_input is the adjoint (``winograd_plan.input_gradient``: it takes fewer
tiles there), the other rows' the flipped-filter convolution.

grad_weight (the adjoint, ``weight_gradient``), same layers and data, against the float64
direct kernel, F23 / F43 float32, measured with the dense transforms: MNIST 5.4e-7 / 3.1e-6,
ResNet 64 6.4e-7 / 3.2e-6, ResNet 128 6.3e-7 / 3.2e-6, ResNet 256 7.3e-7 / 3.3e-6 (float64:
1.2e-15 to 6.6e-15).

F(4x4,3x3) is about 8x less accurate than F(2x2,3x3) in float32 (its transforms reach
entries of 8 and 1/8, and G's rows are scaled by 1/f_j), but stays well inside the 1e-4
float32 bound of the parity tests; the error grows slowly with the number of channels summed.
The filter transform runs in float64 and is rounded once, so G's inexact entries (1/3,
1/15, ...) add no error of their own.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from fractions import Fraction
from typing import Callable, Dict, Hashable, Sequence, Tuple

import numpy as np

#: Filter size: the only one the Winograd kernels implement.
R = 3

#: Finite interpolation points of each output tile size m (infinity is always added).
POINTS: Dict[int, Tuple[Fraction, ...]] = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2)),
}

def _poly_from_roots(roots: Sequence[Fraction]) -> list:
    """Coefficients (constant term first) of prod (x - root)."""
    coeffs = [Fraction(1)]
    for root in roots:
        shifted = [Fraction(0)] + coeffs          # x * poly
        for i, c in enumerate(coeffs):
            shifted[i] -= root * c                # - root * poly
        coeffs = shifted
    return coeffs


def transform_matrices_exact(m: int, r: int, points: Sequence) -> Tuple[list, list, list]:
    """``(A^T, G, B^T)`` of F(m, r) as nested lists of ``Fraction`` (see the module docstring).

    ``points`` are the ``m + r - 2`` distinct finite interpolation points; infinity is the last.
    """
    points = [Fraction(p) for p in points]
    a = m + r - 1
    if len(points) != a - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({m},{r}) needs {a - 1} distinct finite points, got {points}")
    at = [[p ** i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        f = Fraction(1)
        for l, q in enumerate(points):
            if l != j:
                f *= p - q
        g.append([p ** k / f for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt = []
    for j in range(a - 1):
        n_j = _poly_from_roots([q for l, q in enumerate(points) if l != j])
        bt.append(n_j + [Fraction(0)] * (a - len(n_j)))
    bt.append(_poly_from_roots(points))
    return at, g, bt


def transform_matrices(m: int, r: int = R, points: Sequence = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T (m x a), G (a x r), B^T (a x a))`` of F(m, r) as float64 arrays, ``a = m + r - 1``."""
    exact = transform_matrices_exact(m, r, POINTS[m] if points is None else points)
    return tuple(np.array([[float(v) for v in row] for row in mat], dtype=np.float64) for mat in exact)


#: The matrices the kernels use, keyed by the output tile size m: ``(A^T, G, B^T)``.
MATRICES: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {m: transform_matrices(m) for m in POINTS}

for _mats in MATRICES.values():
    for _mat in _mats:
        _mat.setflags(write=False)


def grad_output_transform(m: int) -> np.ndarray:
    """``A`` (a x m, C-contiguous): turns an m x m grad_output tile into ``dL/dM = A dY A^T``.

    The input-transform kernels apply it as they apply B^T, reading as many rows and columns
    of each window as the matrix has columns: m x m windows at stride m, which do not overlap.
    (Padded with zero columns to a x a, it read 1.5x the rows and did 1.5x the arithmetic.)
    """
    t = np.ascontiguousarray(MATRICES[m][0].T)
    t.setflags(write=False)
    return t


def input_transform_offsets(m: int, n_tw: int, groups: int, cg: int,
                            window: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(slot_of_col, down_offs, across_offs)`` of the input-transform kernels, as intp.

    A tile row's input rows are staged channel-last with column ``s*m + ph`` at slot
    ``ph*S + s``, so the j-th columns of all tiles form one contiguous run:
    ``down_offs[i]`` is where staged row i starts, ``across_offs[j]`` where column j's run
    starts within a row (``cg`` channels per group, ``groups`` groups). Each tile reads a
    ``window`` x ``window`` corner (a = m + 2 by default; m for the grad_output transform):
    ``S = n_tw + 1`` slots hold the last tile's columns past n_tw*m, ``S = n_tw`` when the
    windows do not reach past their tile.
    """
    a = m + 2
    window = window or a
    slots = n_tw + (1 if window > m else 0)
    cols = np.arange(m * slots)
    slot_of_col = ((cols % m) * slots + cols // m).astype(np.intp)
    down = (np.arange(window) * (groups * m * slots * cg)).astype(np.intp)
    across = np.array([((j % m) * slots + j // m) * cg for j in range(window)], dtype=np.intp)
    return slot_of_col, down, across


def filters_channel_last(weight: np.ndarray, groups: int, grad_input: bool) -> np.ndarray:
    """The 3x3 filters of the convolution to run, as float64 ``(groups, C_in/groups, 3, 3, C_out/groups)``.

    Forward: ``w (K, C/g, 3, 3)`` itself (in = C, out = K). grad_input is the convolution of
    grad_output with the filters turned by 180 degrees and in/out channels swapped per group
    (in = K, out = C): ``w'[g, k, i, j, c] = w[g*Kg + k, c, 2 - i, 2 - j]``. Output channels
    last, because the filter transform writes ``U[xi, g, c_in, :]`` rows.
    """
    k, cg, r, s = weight.shape
    per_group = weight.reshape(groups, k // groups, cg, r, s).astype(np.float64)
    if grad_input:
        return np.ascontiguousarray(per_group[:, :, :, ::-1, ::-1].transpose(0, 1, 3, 4, 2))
    return np.ascontiguousarray(per_group.transpose(0, 2, 3, 4, 1))


def filter_transform_reference(filters: np.ndarray, m: int) -> np.ndarray:
    """``U[p*a + q, g, c, k] = (G f[g, c, :, :, k] G^T)[p, q]`` in float64 (the test oracle).

    ``filters`` as returned by ``filters_channel_last``; the result is (a*a, G, C_in/G, C_out/G).
    """
    _, g, _ = MATRICES[m]
    u = np.einsum("pi,gcijk,qj->pqgck", g, filters, g)
    return u.reshape((g.shape[0] ** 2,) + u.shape[2:])


class FilterTransformCache:
    """The transformed filters ``U`` of recently used weight arrays.

    Keyed on the weight array's identity (``id``, data pointer, shape, dtype) plus the caller's
    extra key (tile size, forward or grad_input). Identity alone is not enough -- a weight
    array updated in place by an optimiser keeps its id and pointer -- so each entry also keeps
    a copy of the weights it was computed from, and a hit requires the current weights to be
    bit-for-bit equal to that copy (comparing reads the weights once; recomputing U costs far
    more; NaN and signed zeros compare exactly). A mismatch recomputes and replaces the entry.
    At most ``max_entries`` entries and ``max_bytes`` bytes (copies plus results) are kept,
    least recently used first out; a result larger than ``max_bytes`` is not kept at all.
    The returned arrays are shared and read-only.
    """

    def __init__(self, max_entries: int = 16, max_bytes: int = 256 * 2**20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Hashable, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _bits(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1).view(np.uint64 if a.dtype.itemsize == 8 else np.uint32)

    def get(self, weight: np.ndarray, extra_key: Hashable, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``compute(weight)``, or the stored result when ``weight`` holds the same bits."""
        key = (id(weight), weight.__array_interface__["data"][0], weight.shape, weight.dtype.str, extra_key)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and np.array_equal(self._bits(entry[0]), self._bits(weight)):
            return entry[1]
        snapshot = weight.copy()
        result = compute(snapshot)
        result.setflags(write=False)
        if snapshot.nbytes + result.nbytes > self.max_bytes:
            with self._lock:
                self._entries.pop(key, None)
            return result
        with self._lock:
            self._entries[key] = (snapshot, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries or self.nbytes() > self.max_bytes:
                self._entries.popitem(last=False)
        return result

    def nbytes(self) -> int:
        """Bytes held: the weight copies and the results."""
        return sum(w.nbytes + u.nbytes for w, u in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


#: Channel counts (C/G and K/G) up to which a chunk's steps run as one parallel region
#: (``winograd_plan._fused``). At 128 and 256 channels one region against three measured
#: 0.89-1.11x the time for forward and grad input (by backend and thread count) and 1.0-1.44x
#: for the weight gradient, whose per-thread dL/dU grows to 2.4-9.4 MiB.
FUSED_CHUNK_CHANNELS = 64

#: Preferred size of one chunk's V + M buffers: small enough to stay in the last-level cache
#: between the input transform, the GEMMs and the output transform...
CHUNK_TARGET_BYTES = 4 * 2**20
#: ...but with at least this many tiles: every chunk pays its parallel regions' wake-ups
#: (100-150 us each at 2 threads on this project's machine), and chunks of 0.5-2 MiB took
#: 1.1-3.8x the time of these at 2 threads on MNIST conv2 and ResNet 64/128 grad weight
#: (0.8-1.0x at 1 thread)...
CHUNK_MIN_TILES = 256
#: ...and at least this many times the transformed filters, which every chunk's GEMMs read again.
CHUNK_FILTER_FACTOR = 2


def rows_per_chunk(total_rows: int, tiles_per_row: int, c: int, k: int, alpha: int, itemsize: int,
                   limit_bytes: int, filter_bytes: int = 0) -> int:
    """Tile rows per chunk: V (a*a x T x C) + M (a*a x T x K) within ``limit_bytes``.

    Aims at the largest of the three preferences above, never above the limit. Never less
    than one tile row: a single row that exceeds the budget on its own still has to be
    computed.
    """
    per_tile = alpha * alpha * (c + k) * itemsize
    budget = max(CHUNK_TARGET_BYTES, CHUNK_FILTER_FACTOR * filter_bytes, CHUNK_MIN_TILES * per_tile)
    return max(1, min(total_rows, min(limit_bytes, budget) // (per_tile * tiles_per_row)))


class WorkspacePool:
    """Reusable V/M buffers, one set per calling thread.

    Fresh multi-MiB arrays cost page faults on every call (measured: ~5-10% of a ResNet
    layer); reusing the last buffer avoids them. Buffers above ``max_keep_bytes`` are not kept,
    so the memory a thread holds on to stays small.
    """

    def __init__(self, max_keep_bytes: int = 16 * 2**20):
        self.max_keep_bytes = max_keep_bytes
        self._local = threading.local()

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        """A 1-D array of at least ``size`` elements of ``dtype`` (contents undefined)."""
        dtype = np.dtype(dtype)
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (name, dtype.str)
        buf = buffers.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            if buf.nbytes <= self.max_keep_bytes:
                buffers[key] = buf
            else:
                buffers.pop(key, None)
        return buf
