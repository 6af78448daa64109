"""The kernel table: which function implements each (op, algo, backend).

Entries name their function as ``"module:function"`` and are imported only when first
selected, so ``import fastconv`` neither imports Numba nor compiles anything. Adding a kernel
module means adding its rows here; nothing else changes.

Kernel signatures, one per op (all arrays C-contiguous, of the params' dtype, checked by
``fastconv.checks``; the output array is uninitialised and the kernel writes all of it):

=================== ==================================================
op                  signature
=================== ==================================================
conv2d_forward      ``f(x, weight, bias_or_None, y, params)``
conv2d_grad_input   ``f(grad_output, weight, grad_input, params)``
conv2d_grad_weight  ``f(grad_output, x, grad_weight, params)``
conv2d_grad_bias    ``f(grad_output, grad_bias, params)``
conv2d_grad_input_  ``f(grad_output, x, weight, grad_input, grad_weight, params)``: both
weight              gradients in one call (optional; only where sharing work pays)
conv2d_relu_max_    ``f(x, weight, bias_or_None, y, codes, params)``: relu(2x2 max pool
pool2d_forward      (conv)) and each window's argmax code, uint8 0-3 (optional; ``fastconv.fused``)
conv2d_relu_max_    ``f(grad_output, output, codes, x, grad_weight, grad_bias_or_None,
pool2d_grad_weight  params)``: the weight and bias gradients of that op
max_pool2d_forward  ``f(x, y, indices_or_None, params)`` (indices int64)
max_pool2d_backward ``f(grad_output, indices, grad_input, params) -> int``: the number of
                    indices outside [0, H*W), which it skips (the op then raises)
avg_pool2d_forward  ``f(x, y, params)``
avg_pool2d_backward ``f(grad_output, grad_input, params)``
=================== ==================================================

``params`` is a ``ConvParams`` or ``PoolParams`` (``fastconv.params``).
"""

_REF = "fastconv.reference"
_CY = "fastconv.kernels.cython"
_NB = "fastconv.kernels.numba"

_CONV = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
_POOL = ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward")
_GEMM_PASSES = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")
_WINOGRAD = _GEMM_PASSES + ("conv2d_grad_input_weight",)
_CONV_RELU_POOL = ("conv2d_relu_max_pool2d_forward", "conv2d_relu_max_pool2d_grad_weight")

# module, algo, backend, the ops it implements (a function of the op's name), suffix of the
# function name. The Numba and Cython rows of each algorithm name modules that mirror each
# other function for function.
_MODULES = [
    (_REF,                 "reference",    "numpy",  _CONV + _POOL, ""),
    (f"{_CY}.direct",      "direct",       "cython", _CONV + _CONV_RELU_POOL, ""),
    (f"{_NB}.direct",      "direct",       "numba",  _CONV + _CONV_RELU_POOL, ""),
    (f"{_CY}.pooling",     "direct",       "cython", _POOL, ""),
    (f"{_NB}.pooling",     "direct",       "numba",  _POOL, ""),
    (f"{_CY}.im2col",      "im2col",       "cython", _GEMM_PASSES, ""),
    (f"{_NB}.im2col",      "im2col",       "numba",  _GEMM_PASSES, ""),
    # Winograd: one module per backend holds both tile sizes; grad_bias is delegated to
    # direct (fastconv.dispatch.rules.DELEGATES).
    (f"{_CY}.winograd",    "winograd_f23", "cython", _WINOGRAD, "_f23"),
    (f"{_CY}.winograd",    "winograd_f43", "cython", _WINOGRAD, "_f43"),
    (f"{_NB}.winograd",    "winograd_f23", "numba",  _WINOGRAD, "_f23"),
    (f"{_NB}.winograd",    "winograd_f43", "numba",  _WINOGRAD, "_f43"),
]

#: (op, algo, backend, "module:function") for every kernel.
KERNEL_TABLE = [(op, algo, backend, f"{module}:{op}{suffix}")
                for module, algo, backend, ops, suffix in _MODULES for op in ops]
