"""How the environment fastconv sets up changes PyTorch's own times.

``import fastconv`` sets ``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` unless
the user has set them (``fastconv/_waiting.py``). A process holds one libgomp, the first one
loaded, and PyTorch's kernels use it too, so in ``fastconv bench`` PyTorch's threads wait
passively like fastconv's. This times PyTorch alone on the suite's layers in two fresh
processes, one that loads PyTorch before anything sets those variables (its defaults) and
one that imports fastconv first (as the bench does), and prints the ratio of the two times
per row: above 1.0, PyTorch ran slower under fastconv's settings, and the bench's ratios
for that row flatter fastconv by that factor.

    python -m fastconv.benchmarks.torch_environment --threads 1,2 [--shapes ...] [--json F]
        [--bench bench.json]

With ``--bench`` (a ``fastconv bench --json`` result) it also divides each ``algo="auto"``
ratio by its row's factor: the ratio against PyTorch at its own defaults, and how many rows
stay at or above 1.0 on that reading.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Dict, List, Optional

# The child process: PyTorch first (default environment) or fastconv first (the bench's).
_CHILD = """
import json, sys
order, threads, shapes, budget, repeats = json.loads(sys.argv[1])
if order == "torch-first":
    import torch
import fastconv
import torch
from fastconv.benchmarks.torch_environment import time_torch
print(json.dumps(time_torch(threads, shapes, budget, repeats)))
"""


def time_torch(thread_counts: List[int], shapes: Optional[List[str]], budget: float, repeats: int) -> List[dict]:
    """Median ms of PyTorch's call of every op of the selected layers, per thread count."""
    from . import competitors
    from .runner import _ops_for
    from .suite import ConvLayer, select_layers
    from .timing import interleaved_medians, settle_allocator

    settle_allocator()
    rows = []
    for t in thread_counts:
        competitors.set_threads("torch", t)
        for layer in select_layers(shapes):
            for op in _ops_for(layer, None):
                arrays = layer.arrays("float32")
                fn = (competitors.conv_op("torch", layer, op, *arrays) if isinstance(layer, ConvLayer)
                      else competitors.pool_op("torch", layer, op, *arrays))
                if fn is None:
                    continue
                seconds = interleaved_medians({"torch": competitors.pinned("torch", t, fn)}, repeats=repeats,
                                              budget_s=budget)["torch"]
                rows.append({"threads": t, "layer": layer.name, "op": op, "ms": seconds * 1e3})
    return rows


def _run_child(order: str, thread_counts: List[int], shapes, budget: float, repeats: int) -> List[dict]:
    from .._waiting import SETTINGS

    env = dict(os.environ)
    if order == "torch-first":      # PyTorch's own defaults: none of fastconv's settings
        for name in SETTINGS:
            env.pop(name, None)
    payload = json.dumps([order, thread_counts, shapes, budget, repeats])
    done = subprocess.run([sys.executable, "-c", _CHILD, payload], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the {order} timing process failed (exit {done.returncode}):\n"
                           + "\n".join(done.stderr.strip().splitlines()[-10:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(thread_counts: List[int], shapes=None, budget: float = 1.0, repeats: int = 7) -> List[dict]:
    """Rows with PyTorch's ms under its defaults and under fastconv's settings, and their ratio."""
    print("timing PyTorch under its own defaults...", file=sys.stderr, flush=True)
    default = _run_child("torch-first", thread_counts, shapes, budget, repeats)
    print("timing PyTorch under fastconv's settings...", file=sys.stderr, flush=True)
    ours = {(r["threads"], r["layer"], r["op"]): r["ms"] for r in
            _run_child("fastconv-first", thread_counts, shapes, budget, repeats)}
    return [dict(r, ms_fastconv_env=ours[(r["threads"], r["layer"], r["op"])],
                 slowdown=ours[(r["threads"], r["layer"], r["op"])] / r["ms"]) for r in default]


def format_rows(rows: List[dict]) -> str:
    lines = [f"{'threads':>7} {'layer':22s} {'op':16s} {'default ms':>10} {'fastconv env ms':>15} {'ratio':>6}"]
    for r in rows:
        lines.append(f"{r['threads']:>7} {r['layer']:22s} {r['op']:16s} {r['ms']:>10.3f} "
                     f"{r['ms_fastconv_env']:>15.3f} {r['slowdown']:>6.2f}")
    by_threads: Dict[int, List[float]] = {}
    for r in rows:
        by_threads.setdefault(r["threads"], []).append(r["slowdown"])
    for t, ratios in sorted(by_threads.items()):
        geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append(f"{t} thread(s): PyTorch's time under fastconv's settings / its own: "
                     f"{min(ratios):.2f}-{max(ratios):.2f}, geometric mean {geomean:.3f} over {len(ratios)} rows")
    return "\n".join(lines)


def corrected_auto(rows: List[dict], bench: dict) -> str:
    """The bench's ``algo="auto"`` ratios divided by PyTorch's slowdown under fastconv's settings."""
    factor = {(r["threads"], r["layer"], r["op"]): r["slowdown"] for r in rows}
    lines, counts = [], {}
    for r in bench["rows"]:
        key = (r["threads"], r["layer"], r["op"])
        if not r["impl"].startswith("auto") or r.get("vs_torch") is None or key not in factor:
            continue
        ratio = r["vs_torch"] / factor[key]
        ok, total = counts.get(r["threads"], (0, 0))
        counts[r["threads"]] = (ok + (ratio >= 1.0), total + 1)
        if ratio < 1.0:
            lines.append(f"  short: {r['threads']} thread(s) {r['layer']} {r['op']} ({r['kernel']}): "
                         f"{r['vs_torch']:.2f}x in the bench, {ratio:.2f}x against PyTorch at its defaults")
    head = [f"{t} thread(s): algo=auto at or above PyTorch at its own defaults on {ok} of {total} rows"
            for t, (ok, total) in sorted(counts.items())]
    return "\n".join(head + lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv.benchmarks.torch_environment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--shapes", nargs="*", default=None, help="layer names or patterns (default: all)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per row, roughly (default 1.0)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row (default 7)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--bench", default=None, help="a `fastconv bench --json` result to correct by the factors")
    args = parser.parse_args(argv)
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: expected comma-separated positive ints")
    if min(thread_counts) <= 0:
        parser.error(f"--threads {args.threads!r}: expected comma-separated positive ints")
    from . import competitors

    if not competitors.available("torch"):
        print("PyTorch is not installed: nothing to compare", file=sys.stderr)
        return 1
    bench = None
    if args.bench:
        try:
            with open(args.bench) as f:
                bench = json.load(f)
        except (OSError, ValueError) as exc:
            parser.error(f"--bench {args.bench!r}: {exc}")
    rows = compare(thread_counts, args.shapes, args.budget, args.repeats)
    print(format_rows(rows))
    if bench is not None:
        print(corrected_auto(rows, bench))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
