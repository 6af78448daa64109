"""The ``fastconv`` command: ``fastconv info``, ``fastconv train``, ``fastconv bench``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: subcommand -> (module with ``main(argv) -> int``, one-line help). Imported only when run.
SUBCOMMANDS = {
    "info": ("fastconv.cli", "versions, thread settings and the registered kernels"),
    "train": ("fastconv.train", "train the MNIST model (fastconv train --help)"),
    "bench": ("fastconv.benchmarks.runner", "benchmark the kernels (fastconv bench --help)"),
}


def info_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastconv info", description=SUBCOMMANDS["info"][1])
    parser.add_argument("--startup", choices=("warm", "cold"), default=None,
                        help="also time `import fastconv` and each conv kernel's first call in a "
                             "fresh process, with Numba's cache as it is (warm) or empty (cold)")
    args = parser.parse_args(argv)
    import numpy

    import fastconv
    from fastconv import threads

    print(f"fastconv {fastconv.__version__}  numpy {numpy.__version__}")
    try:
        from fastconv.kernels.cython import runtime

        print(f"compiled extension: yes (OpenMP: {'yes' if runtime.has_openmp() else 'no'})")
    except ImportError as exc:
        print(f"compiled extension: missing ({exc}); reinstall with `pip install .`")
    for key, value in threads.runtime_info().items():
        print(f"threads[{key}]: {value}")
    print("kernels:")
    for row in fastconv.list_kernels(load=True):
        state = "ok" if row["available"] else f"unavailable: {row['reason']}"
        print(f"  {row['op']:<20} {row['algo']:<13} {row['backend']:<7} {state}")
    if args.startup:
        from fastconv.benchmarks import startup

        print("\n".join(startup.report(args.startup)))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: fastconv {" + ",".join(SUBCOMMANDS) + "} [options]\n")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:<6} {text}")
        known = not argv or argv[0] in ("-h", "--help")
        if not known:
            print(f"\nfastconv: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if known else 2
    name, rest = argv[0], argv[1:]
    if name == "info":
        return info_main(rest)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
