"""Kernel selection: explicit choice, automatic choice, and the explanation of either.

The choice is made once per configuration ``(op, params, algo, backend)`` and cached; the
cache empties itself when the registry changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from . import autotune, registry, rules


class UnsupportedError(ValueError):
    """The requested algorithm or backend cannot compute this call (says why)."""


@dataclass(frozen=True)
class Choice:
    """The kernel that will run one op, and why it was picked."""

    op: str
    algo: str
    backend: str
    function: Callable
    reason: str

    def __str__(self) -> str:
        return f"{self.op}: {self.algo}/{self.backend} ({self.reason})"


@dataclass(frozen=True)
class Candidate:
    """One (algo, backend) considered for an op: ``status`` is 'ok' or why it was passed over."""

    algo: str
    backend: str
    status: str
    rule: str


def check_algo(op: str, algo) -> None:
    valid = ("auto",) + registry.algos_for(op)
    if op in registry.CONV_OPS:
        valid += tuple(registry.ALGO_ALIASES)
    if not isinstance(algo, str) or algo not in valid:
        raise ValueError(f"algo={algo!r}: expected one of {valid}")


def check_backend(backend) -> None:
    valid = ("auto",) + registry.BACKENDS
    if not isinstance(backend, str) or backend not in valid:
        raise ValueError(f"backend={backend!r}: expected one of {valid}")


def _requested_algos(op: str, params, algo: str) -> List[Tuple[str, str]]:
    if algo == "auto":
        return rules.auto_algos(op, params) + [("reference", "last resort: the NumPy oracle")]
    return [(a, f"algo={algo!r} requested") for a in registry.ALGO_ALIASES.get(algo, (algo,))]


def candidates(op: str, params, algo: str = "auto", backend: str = "auto") -> List[Candidate]:
    """Every registered (algo, backend) the selection considers, in order, with its status."""
    check_algo(op, algo)
    check_backend(backend)
    seen = set()
    result = []
    for wanted, rule in _requested_algos(op, params, algo):
        actual = rules.delegate(op, wanted)
        if actual != wanted:
            rule = f"{rule}; {op} of {wanted} is computed by {actual}"
        reason = rules.unsupported_reason(op, wanted, params)
        for b in (rules.backend_order(op, actual) if backend == "auto" else (backend,)):
            if (actual, b) in seen:
                continue
            seen.add((actual, b))
            entry = registry.lookup(op, actual, b)
            if entry is None:
                continue
            if reason is not None:
                status = f"not applicable: {reason}"
            else:
                status = entry.unavailable_reason() or "ok"
                if status != "ok":
                    status = f"not available: {status}"
            result.append(Candidate(actual, b, status, rule))
    return result


_cache: Dict[tuple, Choice] = {}
registry.on_change(_cache.clear)


def select(op: str, params, algo: str = "auto", backend: str = "auto") -> Choice:
    """The kernel for ``op`` on ``params``; raises ``UnsupportedError`` if none can run it."""
    tuning = algo == "auto" and autotune.enabled()
    nthreads = _threads() if tuning else None
    key = (op, params, algo, backend, nthreads)
    choice = _cache.get(key)
    if choice is not None:
        return choice
    considered = candidates(op, params, algo, backend)
    if algo != "auto":
        # What the algorithm cannot do is the answer, whether or not a kernel is registered.
        reasons = [rules.unsupported_reason(op, a, params) for a, _ in _requested_algos(op, params, algo)]
        if all(reasons):
            raise UnsupportedError(f"algo={algo!r} cannot compute {op} for {params.describe()}: "
                                   + "; ".join(sorted(set(reasons))))
    usable = [c for c in considered if c.status == "ok"]
    if not usable:
        details = "; ".join(f"{c.algo}/{c.backend}: {c.status}" for c in considered) \
            or "no kernel of that algorithm and backend is registered"
        raise UnsupportedError(
            f"no kernel can compute {op} with algo={algo!r}, backend={backend!r} for {params.describe()} "
            f"({details})")
    if tuning and len(usable) > 1:
        choice = _autotuned(op, params, usable, nthreads)
    else:
        first = usable[0]
        choice = Choice(op, first.algo, first.backend,
                        registry.lookup(op, first.algo, first.backend).function(), first.rule)
    _cache[key] = choice
    return choice


def _threads() -> int:
    from .. import threads

    return threads.get_num_threads()


def _autotuned(op: str, params, usable: List[Candidate], nthreads: int) -> Choice:
    """The fastest usable candidate, measured now or remembered from an earlier measurement."""
    # The oracle is never the fastest; timing it would only slow the first call down.
    fast = [c for c in usable if c.algo != "reference"] or usable
    by_label = {f"{c.algo}/{c.backend}": c for c in fast}
    tuned = autotune.lookup(op, params, nthreads)
    if tuned is not None:
        algo, backend, entry = tuned
        if f"{algo}/{backend}" in by_label:
            return Choice(op, algo, backend, registry.lookup(op, algo, backend).function(),
                          f"autotuned earlier: {_timings_text(entry.get('ms', {}))}")
    kernels = [(c.algo, c.backend, registry.lookup(op, c.algo, c.backend).function()) for c in fast]
    timings = autotune.time_kernels(op, params, kernels)
    best = min(timings, key=timings.get)
    winner = by_label[best]
    autotune.record(op, params, nthreads, winner.algo, winner.backend, timings)
    return Choice(op, winner.algo, winner.backend, registry.lookup(op, winner.algo, winner.backend).function(),
                  f"autotuned: {_timings_text(timings)}")


def _timings_text(timings: Dict[str, float]) -> str:
    return ", ".join(f"{label} {ms:.3g} ms" for label, ms in sorted(timings.items(), key=lambda kv: kv[1]))


def describe(op: str, params, algo: str = "auto", backend: str = "auto") -> str:
    """A readable account of the selection: every candidate, its status, and the winner."""
    lines = [f"{op}: {params.describe()}  [algo={algo!r}, backend={backend!r}]"]
    try:
        choice = select(op, params, algo, backend)
    except UnsupportedError as exc:
        choice = None
        failure = str(exc)
    for cand in candidates(op, params, algo, backend):
        mark = "->" if choice and (cand.algo, cand.backend) == (choice.algo, choice.backend) else "  "
        lines.append(f"  {mark} {cand.algo + '/' + cand.backend:<20} {cand.status:<4}  ({cand.rule})")
    lines.append(f"  chosen: {choice.algo}/{choice.backend}: {choice.reason}" if choice
                 else f"  no kernel can run this call: {failure}")
    return "\n".join(lines)
