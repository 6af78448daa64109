"""``fastconv bench --gemm-share``: how much of an im2col call is GEMM, and how fast its GEMMs run.

For each selected conv layer, op, thread count and backend, ``im2col_plan.phase_report``
times the im2col kernel and, apart, the GEMMs of the same shapes on scratch matrices: the
rest is unfold/fold/scatter/gather work and call overhead. The GEMM rate is compared with
the machine's sgemm rate (NumPy matmul on 1024^3 float32, at the same thread count). Both
times are medians of separate runs, so a share near 100% can read above the truth.
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..dispatch import registry
from ..kernels import im2col_plan
from .suite import CONV_OPS, ConvLayer
from .timing import sgemm_gflops

BACKENDS = ("cython", "numba")


def _kernel_call(backend: str, layer: ConvLayer, op: str, dtype: str):
    # Through the registry, which limits the BLAS a kernel module loads (SciPy's, for the
    # Cython kernels) to fastconv's thread count: imported directly, its GEMMs ran on every
    # core in the 1-thread rows.
    kernel = registry.lookup(f"conv2d_{op}", "im2col", backend).function()
    p = layer.params(dtype)
    x, w, b, gy = layer.arrays(dtype)
    if op == "forward":
        return p, kernel, (x, w, b, np.empty(p.output_shape, p.dtype), p)
    if op == "grad_input":
        return p, kernel, (gy, w, np.empty(p.input_shape, p.dtype), p)
    return p, kernel, (gy, x, np.empty(p.weight_shape, p.dtype), p)


def measure(layers: List[ConvLayer], ops: List[str], thread_counts: List[int], backends=BACKENDS,
            dtype: str = "float32", repeats: int = 5, progress=None) -> List[dict]:
    """One row per (threads, layer, op, backend): total and GEMM seconds, share, GEMM rate."""
    from .. import set_num_threads

    rows = []
    for t in thread_counts:
        set_num_threads(t)
        peak = sgemm_gflops()
        for layer in layers:
            for op in ops:
                for backend in backends:
                    p, kernel, args = _kernel_call(backend, layer, op, dtype)
                    r = im2col_plan.phase_report(kernel, args, p, op, repeats=repeats, sgemm_gflops=peak)
                    rows.append({"threads": t, "layer": layer.name, "op": op, "impl": f"im2col/{backend}",
                                 "total_ms": r["total_s"] * 1e3, "gemm_ms": r["gemm_s"] * 1e3,
                                 "gemm_share": r["gemm_share"], "gemm_vs_sgemm": r["gemm_vs_sgemm"],
                                 "sgemm_gflops": peak})
                    if progress is not None:
                        progress.update(1)
    return rows


def format_table(rows: List[dict]) -> str:
    header = (f"{'threads':>7} {'layer':<20} {'op':<12} {'impl':<14} {'total ms':>9} {'GEMM ms':>8} "
              f"{'GEMM share':>10} {'GEMM/sgemm':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['threads']:>7} {r['layer']:<20} {r['op']:<12} {r['impl']:<14} {r['total_ms']:9.2f} "
                     f"{r['gemm_ms']:8.2f} {100 * r['gemm_share']:9.0f}% {100 * r['gemm_vs_sgemm']:9.0f}%")
    return "\n".join(lines)


def conv_ops(wanted) -> List[str]:
    """The conv ops of ``--ops`` (all three by default; pooling ops have no GEMM)."""
    return [op for op in CONV_OPS if not wanted or op in wanted or "conv" in wanted]
