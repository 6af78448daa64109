"""pytest-benchmark suite: ``pytest bench/ --benchmark-only`` (not part of the test run).

Uses the same layers and callables as ``fastconv bench``; each (layer, op) is one
benchmark group, so pytest-benchmark's table puts fastconv's kernels beside PyTorch's.
Thread count: ``FASTCONV_NUM_THREADS`` (PyTorch is given the same).
"""
