"""What each algorithm can do, and the order ``algo="auto"`` tries them in.

``unsupported_reason`` is a property of the algorithm, identical for every backend: an
algorithm that cannot compute a call says so instead of silently computing something else.
``auto_algos`` is the heuristic order for ``algo="auto"``; the first applicable, registered
and loadable candidate wins, and the reference kernel is always the last resort.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..params import ConvParams, PoolParams

#: Backend preference for ``backend="auto"``: compiled code first (no JIT latency), then Numba.
BACKEND_ORDER = ("cython", "numba", "numpy")

#: (op, algorithm) pairs whose Numba kernels measured faster than their Cython twins.
#: im2col's forward and grad_input: Numba's time over Cython's on the rows that auto sends to
#: im2col (1x1 256->64 forward, the 3x3 stride 2 and 7x7 stem grad_input; ``fastconv bench
#: --threads 1,2 --budget 1.2 --repeats 5``): 0.73-0.95 on 10 of 14 at 1 and 2 threads on the
#: AVX-512 machine; on the AVX2 machine of earlier recordings 0.48-0.96 on 22 of 24 such rows.
#: Not im2col's grad_weight: 1.05-1.18 on the 1x1 and 3x3 stride-2 layers in all three runs
#: of the last recording (``--shapes resnet_1x1_256_64 resnet_3x3_s2 --ops grad_weight
#: --algos im2col --repeats 11 --budget 4`` and two full runs), so it stays Cython-first.
#: The cost: a Numba kernel's first call in a process loads it from Numba's cache (up to
#: 0.65 s; compiling it the first time on a machine takes about 5 s). Winograd stays
#: Cython-first: its Numba kernels ran faster on 7 of its 15 F(4x4,3x3) rows at 1 thread
#: here (10 of 15 at 2), and their first compile on a machine takes a minute (29 + 23 + 12 s
#: for the float32 forward, grad_input and grad_weight).
NUMBA_FIRST = (("conv2d_forward", "im2col"), ("conv2d_grad_input", "im2col"))


def backend_order(op: str, algo: str) -> Tuple[str, ...]:
    """The backends ``backend="auto"`` tries for ``op`` computed by ``algo``, best first."""
    if (op, algo) in NUMBA_FIRST:
        return ("numba", "cython", "numpy")
    return BACKEND_ORDER

#: Ops that some algorithms compute with another algorithm's kernel, and which one.
#: Bias gradients are a plain reduction, the same whatever algorithm ran the convolution.
DELEGATES = {
    ("conv2d_grad_bias", "im2col"): "direct",
    ("conv2d_grad_bias", "winograd_f23"): "direct",
    ("conv2d_grad_bias", "winograd_f43"): "direct",
}


def delegate(op: str, algo: str) -> str:
    """The algorithm whose kernel actually computes ``op`` when ``algo`` is asked for."""
    return DELEGATES.get((op, algo), algo)


def unsupported_reason(op: str, algo: str, params) -> Optional[str]:
    """``None`` if ``algo`` can compute ``op`` for ``params``, else the reason it cannot."""
    if algo.startswith("winograd") and isinstance(params, ConvParams) and op != "conv2d_grad_bias":
        problems = []
        if (params.r, params.s) != (3, 3):
            problems.append(f"a 3x3 kernel (got {params.r}x{params.s})")
        if (params.stride_h, params.stride_w) != (1, 1):
            problems.append(f"stride 1 (got {params.stride_h},{params.stride_w})")
        if problems:
            return f"{algo} needs " + ", ".join(problems)
    return None


#: Measured with ``fastconv bench --threads 1,2 --budget 1.2 --repeats 5 --compare torch``
#: (float32, this project's 2-core machine: Intel Xeon with AVX-512; ratio = PyTorch time /
#: fastconv time at 1 thread, best backend of each algorithm; forward / grad_input /
#: grad_weight), with the register blocks on 64-byte vectors (the direct kernels' on 6-channel
#: x 4-vector blocks in both backends, Cython's weight gradient on 6 taps x 4 filters), 1x1
#: planes summed in their own order, im2col's 8 MiB bands and Winograd's products on
#: ``gemm_block`` at every channel count:
#:
#: ============================  ==================  ==================  ===================
#: layer (reduction c/g*r*s)      direct              im2col              winograd_f43
#: ============================  ==================  ==================  ===================
#: cifar_conv1 3->32 3x3 (27)    1.39/3.90/1.42      0.79/2.61/0.96      0.44/1.13/0.57
#: lenet_conv2 6->16 5x5 (150)   0.92/1.36/1.03      0.31/0.86/0.67      -
#: stem 3->64 7x7 s2 (147)       1.14/0.55/1.02      0.65/3.00/0.89      -
#: 3x3 s2 64->128 (576)          0.94/0.12/0.63      0.81/1.20/1.07      -
#: mnist_conv2 32->64 3x3 (288)  1.01/0.90/0.60      0.58/0.75/0.78      1.17/1.35/1.33
#: resnet 64/128/256 3x3         0.77-0.95/0.76-1.07 0.56-0.67/0.77-0.82 1.49-1.59/1.53-1.72
#:                               /0.46-0.74          /0.67-0.77          /1.09-1.61
#: dilated 64->64 3x3 d2         0.94/1.03/0.84      0.62/0.74/0.75      1.25/1.30/1.17
#: 1x1 256->64 (256)             0.85/1.87/0.42      0.84/1.87/0.99      -
#: ============================  ==================  ==================  ===================
#:
#: At 2 threads the order is the same; CIFAR conv1's grad weight, a close call in earlier
#: runs at 1 thread, is direct's by far at 2 (1.21-1.48 against im2col's 0.71); the 1x1 forward, a
#: tie at 1 thread here (0.85 / 0.84; 1.07 / 0.83 in the run quoted below), is direct's at 2
#: (1.73 / 1.23). (On the AVX2 machine of
#: earlier recordings, where the rules were first derived, Winograd led by far more:
#: 1.5-2.4x PyTorch.) Hence: direct up to a reduction of 160 (its register blocks beat a
#: GEMM with few rows), for grad_input only with filters up to 5x5 (the 7x7 stem's strided
#: grad_input, now per phase of the input (``kernels/stride_phases.py``), reads 13.5 / 8.6 ms
#: direct/cython against im2col/numba's 13.1 / 8.2 at 1 / 2 threads; the 3x3 stride-2
#: grad_input 10.5 / 6.5 against 9.2 / 6.1, where the scatter it replaced took 92 / 52 ms:
#: ``fastconv bench --shapes resnet_3x3_s2 resnet_stem_7x7_s2 --ops grad_input --threads 1,2
#: --budget 2 --repeats 7``), Winograd F(4x4,3x3) for all three passes of
#: 3x3 stride-1 layers (any dilation) from 32 channels per group (3 channels starve its 36
#: GEMMs), im2col otherwise.
#:
#: Strided forward passes go to direct whatever their reduction: with both backends' tap
#: planes on 6-channel x 4-vector blocks (AVX-512) the 3x3 stride-2 forward (reduction 576)
#: read direct/cython 0.89 / 0.94 against im2col/numba 0.83 / 0.62 at 1 / 2 threads
#: (``fastconv bench --shapes resnet_3x3_s2 --ops forward --threads 1,2 --budget 2
#: --repeats 7``; 0.94 / 1.00 against 0.81 / 0.72 in the table's run): direct's phase copies
#: are one pass and it scales with the threads, while the unfold of strided windows does not.
#:
#: So do 1x1 forward passes: with 1x1 planes summed straight into y and 64 taps per
#: ``tap_block`` call, the 1x1 256->64 forward read direct/cython 1.07 / 1.46 of PyTorch against
#: im2col/numba's 0.83 / 1.39 at 1 / 2 threads (``fastconv bench --shapes resnet_1x1_256_64
#: --ops forward --algos direct im2col --threads 1,2 --repeats 15 --budget 5``): OpenBLAS
#: reached 116 GFLOP/s on its 64 x 256 x 3136 products, direct 134.
DIRECT_MAX_REDUCTION = 160
DIRECT_MAX_TAPS = 25
WINOGRAD_MIN_CHANNELS = 32


def auto_algos(op: str, params) -> List[Tuple[str, str]]:
    """Algorithms to try for ``algo="auto"``, best first, each with the rule that put it there."""
    if isinstance(params, PoolParams):
        return [("direct", "pooling has one fast algorithm")]
    if op == "conv2d_grad_bias":
        return [("direct", "a bias gradient is a plain reduction")]
    p: ConvParams = params
    reduction = p.c_per_group * p.r * p.s
    if p.is_depthwise or p.c_per_group == 1:
        why = "one input channel per group: no reduction for a GEMM to amortise"
        return [("direct", why), ("im2col", "fallback")]
    if reduction <= DIRECT_MAX_REDUCTION and (op != "conv2d_grad_input" or p.r * p.s <= DIRECT_MAX_TAPS):
        why = (f"small reduction (c/groups*r*s = {reduction} <= {DIRECT_MAX_REDUCTION}"
               + (f", {p.r}x{p.s} filter" if op == "conv2d_grad_input" else "") + "): direct beats a GEMM")
        return [("direct", why), ("im2col", "fallback")]
    if op == "conv2d_forward" and (p.stride_h, p.stride_w) != (1, 1):
        why = ("strided forward: direct's phase planes beat an unfold of strided windows "
               f"(reduction {reduction})")
        return [("direct", why), ("im2col", "fallback")]
    if op == "conv2d_forward" and (p.r, p.s) == (1, 1):
        why = f"1x1 forward: direct's register blocks over the input planes beat BLAS (reduction {reduction})"
        return [("direct", why), ("im2col", "fallback")]
    order = []
    if unsupported_reason(op, "winograd_f43", p) is None \
            and min(p.c_per_group, p.k_per_group) >= WINOGRAD_MIN_CHANNELS:
        why = f"3x3 stride 1 with >= {WINOGRAD_MIN_CHANNELS} channels per group: Winograd needs fewer multiplies"
        if (p.dil_h, p.dil_w) != (1, 1):
            why += "; dilated, so on its phase images (kernels/dilation_phases.py)"
        order += [("winograd_f43", why), ("winograd_f23", why)]
    order += [("im2col", f"reduction c/groups*r*s = {reduction} is GEMM-sized"), ("direct", "fallback")]
    return order
