"""``fastconv bench``: time every kernel on the suite against PyTorch/TensorFlow and the GEMM peak.

All candidates of one (layer, op) are timed interleaved in this one process at the same
thread count, and reported as medians. ``vs torch`` is PyTorch's time divided by the
candidate's: above 1.0 the candidate is faster.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from .. import conv2d, conv2d_backward, dispatch, fused, threads
from .. import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from . import competitors
from .suite import CONV_OPS, FUSED_OPS, POOL_OPS, ConvLayer, FusedLayer, select_layers
from .timing import interleaved_medians, settle_allocator, sgemm_gflops

_DISPATCH_OP = {
    "forward": "conv2d_forward", "grad_input": "conv2d_grad_input", "grad_weight": "conv2d_grad_weight",
    "maxpool_forward": "max_pool2d_forward", "maxpool_backward": "max_pool2d_backward",
    "avgpool_forward": "avg_pool2d_forward", "avgpool_backward": "avg_pool2d_backward",
    "fused_forward": fused.FORWARD_OP, "fused_backward": fused.GRAD_WEIGHT_OP,
}
_ALL_OPS = CONV_OPS + POOL_OPS + FUSED_OPS
_OP_GROUPS = {"conv": CONV_OPS, "pool": POOL_OPS, "fused": FUSED_OPS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconv bench",
        description="Time fastconv's kernels on the benchmark suite, side by side with PyTorch/TensorFlow "
                    "(when installed) and the machine's sgemm rate. Ratios > 1 mean fastconv is faster.")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="NAME",
                        help="layer names or tags (mnist, resnet, depthwise, ...; wildcards allowed); default all")
    parser.add_argument("--ops", nargs="*", default=None, metavar="OP",
                        help=f"any of {_ALL_OPS}, or 'conv' / 'pool' / 'fused'; default all")
    parser.add_argument("--algos", nargs="*", default=None, metavar="ALGO",
                        help="fastconv algorithms to time (direct, im2col, winograd_f23, winograd_f43, auto); "
                             "default: every registered one plus auto")
    parser.add_argument("--backends", nargs="*", default=None, metavar="BACKEND",
                        help="fastconv backends to time (cython, numba); default both")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts, e.g. 1,2 (default: fastconv.get_num_threads())")
    parser.add_argument("--compare", default="torch,tf",
                        help="frameworks to compare with: torch, tf, none (default: those installed of torch,tf)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per candidate (median)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per (layer, op) at most")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all rows and settings as JSON")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write a PNG bar chart of the ratios to PyTorch")
    parser.add_argument("--gemm-share", action="store_true",
                        help="instead: for the im2col kernels, the share of each call spent in its GEMMs "
                             "and their rate against the machine's sgemm rate")
    return parser


def _ops_for(layer, wanted: Optional[List[str]]) -> List[str]:
    own = FUSED_OPS if isinstance(layer, FusedLayer) else CONV_OPS if isinstance(layer, ConvLayer) else POOL_OPS
    if not wanted:
        return list(own)
    expanded = set()
    for w in wanted:
        expanded.update(_OP_GROUPS.get(w, [w]))
    unknown = expanded - set(_ALL_OPS)
    if unknown:
        raise ValueError(f"--ops: unknown {sorted(unknown)}; expected {_ALL_OPS} or conv/pool/fused")
    return [op for op in own if op in expanded]


def _implementations(op: str, params, algos, backends) -> Dict[str, tuple]:
    """label -> (algo, backend) for every registered, applicable fastconv kernel (plus auto)."""
    dispatch_op = _DISPATCH_OP[op]
    impls = {}
    for row in dispatch.list_kernels(dispatch_op):
        algo, backend = row["algo"], row["backend"]
        if algo == "reference" or (algos and algo not in algos) or (backends and backend not in backends):
            continue
        try:
            if op in FUSED_OPS:
                if fused.fused_kernel(dispatch_op, params, algo, backend) is None:
                    continue  # the conv's pick on that backend is not direct
            else:
                dispatch.select(dispatch_op, params, algo, backend)
        except ValueError:
            continue  # not applicable to this layer (e.g. Winograd on a strided conv)
        impls[f"{algo}/{backend}"] = (algo, backend)
    if not algos or "auto" in algos:
        impls["auto"] = ("auto", "auto")
    return impls


def _fastconv_call(layer, op, arrays, algo, backend):
    kw = dict(layer.kwargs(), algo=algo, backend=backend)
    if isinstance(layer, FusedLayer):
        x, w, b, gy = arrays
        if op == "fused_forward":
            return lambda: fused.conv2d_relu_max_pool2d(x, w, b, **kw)
        y, idx = fused.conv2d_relu_max_pool2d(x, w, b, **kw)
        return lambda: fused.conv2d_relu_max_pool2d_backward(gy, y, idx, x, w, needs=("weight", "bias"), **kw)
    if isinstance(layer, ConvLayer):
        x, w, b, gy = arrays
        if op == "forward":
            return lambda: conv2d(x, w, b, **kw)
        need = "input" if op == "grad_input" else "weight"
        return lambda: conv2d_backward(gy, x, w, needs=(need,), **kw)
    x, gy = arrays
    if op == "maxpool_forward":
        return lambda: max_pool2d(x, return_indices=True, **kw)
    if op == "maxpool_backward":
        _, idx = max_pool2d(x, return_indices=True, **kw)
        return lambda: max_pool2d_backward(gy, x, indices=idx, **kw)
    if op == "avgpool_forward":
        return lambda: avg_pool2d(x, **kw)
    return lambda: avg_pool2d_backward(gy, x.shape, **kw)


def _auto_kernel(op: str, params) -> str:
    """What ``algo="auto"`` runs for this op, as ``algo/backend``."""
    if op in FUSED_OPS:
        if fused.fused_kernel(_DISPATCH_OP[op], params, "auto", "auto") is None:
            return "unfused"
        c = dispatch.select("conv2d_forward", params)
        return f"{c.algo}/{c.backend}"
    c = dispatch.select(_DISPATCH_OP[op], params)
    return f"{c.algo}/{c.backend}"


def _progress(total: int, what: str):
    """A tqdm bar on stderr, or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=what, unit="case", file=sys.stderr)


def run(args) -> dict:
    from .. import set_num_threads

    layers = select_layers(args.shapes)
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [threads.get_num_threads()]
    frameworks = [] if args.compare == "none" else [f for f in args.compare.split(",") if competitors.available(f)]
    tasks = [(t, layer, op) for t in thread_counts for layer in layers for op in _ops_for(layer, args.ops)]
    meta = {"python": sys.version.split()[0], "machine": platform.machine(), "processor": platform.processor(),
            "numpy": np.__version__, "dtype": args.dtype, "compare": frameworks, "started": time.ctime(),
            "sgemm_gflops": {}}
    settle_allocator()
    rows = []
    progress = _progress(len(tasks), "fastconv bench")
    current_threads = None
    for t, layer, op in tasks:
        if t != current_threads:
            set_num_threads(t)
            for f in frameworks:
                competitors.set_threads(f, t)
            meta["sgemm_gflops"][t] = sgemm_gflops()
            current_threads = t
        params = layer.params(args.dtype)
        arrays = layer.arrays(args.dtype)
        candidates, chosen = {}, {}
        for label, (algo, backend) in _implementations(op, params, args.algos, args.backends).items():
            candidates[label] = _fastconv_call(layer, op, arrays, algo, backend)
            if label == "auto":
                chosen[label] = _auto_kernel(op, params)
        for f in frameworks:
            fn = (competitors.conv_op(f, layer, op, *arrays) if isinstance(layer, ConvLayer)
                  else competitors.pool_op(f, layer, op, *arrays))
            if fn is not None:
                candidates[f] = competitors.pinned(f, t, fn)
        medians = interleaved_medians(candidates, repeats=args.repeats, budget_s=args.budget)
        for label, seconds in medians.items():
            gflops = params.flops / seconds / 1e9
            conv = isinstance(layer, ConvLayer)
            rows.append({
                "threads": t, "layer": layer.name, "op": op, "impl": label, "kernel": chosen.get(label, label),
                "ms": seconds * 1e3, "gflops": gflops,
                "pct_sgemm": 100.0 * gflops / meta["sgemm_gflops"][t] if conv else None,
                **{f"vs_{f}": (medians[f] / seconds if f in medians else None) for f in frameworks},
            })
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return {"meta": meta, "rows": rows}


def format_table(result: dict) -> str:
    frameworks = result["meta"]["compare"]
    header = f"{'threads':>7} {'layer':<20} {'op':<16} {'impl':<20} {'ms':>9} {'GFLOP/s':>8} {'%sgemm':>7}" + \
        "".join(f" {'vs ' + f:>9}" for f in frameworks)
    lines = [header, "-" * len(header)]
    for r in result["rows"]:
        impl = r["impl"] if r["impl"] != "auto" else f"auto={r['kernel']}"
        pct = f"{r['pct_sgemm']:7.1f}" if r["pct_sgemm"] is not None else f"{'-':>7}"
        ratios = "".join(f" {r['vs_' + f]:9.2f}" if r.get("vs_" + f) is not None else f" {'-':>9}"
                         for f in frameworks)
        lines.append(f"{r['threads']:>7} {r['layer']:<20} {r['op']:<16} {impl:<20} {r['ms']:9.3f} "
                     f"{r['gflops']:8.1f} {pct}{ratios}")
    for t, g in result["meta"]["sgemm_gflops"].items():
        lines.append(f"sgemm rate at {t} thread(s): {g:.1f} GFLOP/s (NumPy matmul 1024^3)")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """Which auto rows fall short of PyTorch, if any."""
    if "torch" not in result["meta"]["compare"]:
        return "no PyTorch comparison (install torch==2.13.0 to compare)"
    auto = [r for r in result["rows"] if r["impl"] == "auto" and r.get("vs_torch") is not None]
    short = [r for r in auto if r["vs_torch"] < 1.0]
    if not auto:
        return "no algo=auto rows measured"
    lines = [f"algo=auto vs PyTorch: {len(auto) - len(short)} of {len(auto)} rows at >= 1.0x"]
    for r in short:
        lines.append(f"  short: {r['threads']} thread(s) {r['layer']} {r['op']} ({r['kernel']}): {r['vs_torch']:.2f}x")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    rows = [r for r in result["rows"] if r.get("vs_torch") is not None and r["impl"] not in ("torch", "tf")]
    impls = sorted({r["impl"] for r in rows})
    cases = sorted({(r["threads"], r["layer"], r["op"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 0.5), 5))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        values = {(r["threads"], r["layer"], r["op"]): r["vs_torch"] for r in rows if r["impl"] == impl}
        ax.bar([c + i * width for c in range(len(cases))], [values.get(c, 0) for c in cases], width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    ax.set_xticklabels([f"{l} {o} ({t}t)" for t, l, o in cases], rotation=90, fontsize=7)
    ax.set_ylabel("speed-up over PyTorch (x)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _gemm_share_main(args) -> int:
    from . import gemm_share

    layers = [layer for layer in select_layers(args.shapes)
              if isinstance(layer, ConvLayer) and not isinstance(layer, FusedLayer)]
    ops = gemm_share.conv_ops(args.ops)
    backends = [b for b in gemm_share.BACKENDS if not args.backends or b in args.backends]
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [threads.get_num_threads()]
    progress = _progress(len(thread_counts) * len(layers) * len(ops) * len(backends), "fastconv bench --gemm-share")
    rows = gemm_share.measure(layers, ops, thread_counts, backends, args.dtype, args.repeats, progress)
    if progress is not None:
        progress.close()
    print(gemm_share.format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_share": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gemm_share:
        try:
            return _gemm_share_main(args)
        except ValueError as exc:
            print(f"fastconv bench: {exc}", file=sys.stderr)
            return 2
    try:
        result = run(args)
    except ValueError as exc:
        print(f"fastconv bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
