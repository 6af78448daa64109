"""Every registered kernel and PyTorch on every suite layer, grouped per (layer, op, threads)."""
import pytest

import fastconv
from fastconv.benchmarks import competitors
from fastconv.benchmarks.runner import _fastconv_call, _implementations, _ops_for
from fastconv.benchmarks.suite import CONV_LAYERS, FUSED_LAYERS, POOL_LAYERS, ConvLayer
from fastconv.benchmarks.timing import settle_allocator

THREADS = fastconv.get_num_threads()
CASES = []
for layer in CONV_LAYERS + POOL_LAYERS + FUSED_LAYERS:
    for op in _ops_for(layer, None):
        for label, (algo, backend) in _implementations(op, layer.params(), None, None).items():
            CASES.append(pytest.param(layer, op, algo, backend, id=f"{layer.name}-{op}-{label}"))
        if competitors.available("torch"):
            CASES.append(pytest.param(layer, op, "torch", None, id=f"{layer.name}-{op}-torch"))


@pytest.fixture(scope="module", autouse=True)
def _settled_allocator():
    settle_allocator()   # as fastconv bench: no candidate pays page faults the others do not


@pytest.mark.parametrize("layer,op,algo,backend", CASES)
def test_kernel(benchmark, layer, op, algo, backend):
    benchmark.group = f"{layer.name} {op} ({THREADS} threads)"
    arrays = layer.arrays()
    if algo == "torch":
        competitors.set_threads("torch", THREADS)
        fn = competitors.pinned("torch", THREADS,
                                competitors.conv_op("torch", layer, op, *arrays) if isinstance(layer, ConvLayer)
                                else competitors.pool_op("torch", layer, op, *arrays))
    else:
        fn = _fastconv_call(layer, op, arrays, algo, backend)
    fn()  # JIT compilation and buffer set-up stay out of the timing
    benchmark(fn)
