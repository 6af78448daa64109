"""The kernel table: which function implements each (op, algo, backend).

Entries name their function as ``"module:function"`` and are imported only when first
selected, so ``import fastconv`` neither imports Numba nor compiles anything. Adding a kernel
module means adding its rows here; nothing else changes.

Kernel signatures, one per op (all arrays C-contiguous, of the params' dtype, checked by
``fastconv.checks``; the output array is uninitialised and the kernel writes all of it):

================== ==================================================
op                 signature
================== ==================================================
conv2d_forward     ``f(x, weight, bias_or_None, y, params)``
conv2d_grad_input  ``f(grad_output, weight, grad_input, params)``
conv2d_grad_weight ``f(grad_output, x, grad_weight, params)``
conv2d_grad_bias   ``f(grad_output, grad_bias, params)``
max_pool2d_forward ``f(x, y, indices_or_None, params)`` (indices int64)
max_pool2d_backward ``f(grad_output, indices, grad_input, params)``
avg_pool2d_forward ``f(x, y, params)``
avg_pool2d_backward ``f(grad_output, grad_input, params)``
================== ==================================================

``params`` is a ``ConvParams`` or ``PoolParams`` (``fastconv.params``).
"""

_REFERENCE = "fastconv.reference"
_CY = "fastconv.kernels.cython"
_NB = "fastconv.kernels.numba"

KERNEL_TABLE = [
    # op                   algo         backend   "module:function"
    ("conv2d_forward",      "reference", "numpy",  f"{_REFERENCE}:conv2d_forward"),
    ("conv2d_grad_input",   "reference", "numpy",  f"{_REFERENCE}:conv2d_grad_input"),
    ("conv2d_grad_weight",  "reference", "numpy",  f"{_REFERENCE}:conv2d_grad_weight"),
    ("conv2d_grad_bias",    "reference", "numpy",  f"{_REFERENCE}:conv2d_grad_bias"),
    ("max_pool2d_forward",  "reference", "numpy",  f"{_REFERENCE}:max_pool2d_forward"),
    ("max_pool2d_backward", "reference", "numpy",  f"{_REFERENCE}:max_pool2d_backward"),
    ("avg_pool2d_forward",  "reference", "numpy",  f"{_REFERENCE}:avg_pool2d_forward"),
    ("avg_pool2d_backward", "reference", "numpy",  f"{_REFERENCE}:avg_pool2d_backward"),
    # Winograd: one module per backend holds both tile sizes (grad_weight is delegated, see
    # fastconv.dispatch.rules.DELEGATES).
    ("conv2d_forward",      "winograd_f23", "numba",  f"{_NB}.winograd:conv2d_forward_f23"),
    ("conv2d_forward",      "winograd_f43", "numba",  f"{_NB}.winograd:conv2d_forward_f43"),
    ("conv2d_grad_input",   "winograd_f23", "numba",  f"{_NB}.winograd:conv2d_grad_input_f23"),
    ("conv2d_grad_input",   "winograd_f43", "numba",  f"{_NB}.winograd:conv2d_grad_input_f43"),
    ("conv2d_forward",      "winograd_f23", "cython", f"{_CY}.winograd:conv2d_forward_f23"),
    ("conv2d_forward",      "winograd_f43", "cython", f"{_CY}.winograd:conv2d_forward_f43"),
    ("conv2d_grad_input",   "winograd_f23", "cython", f"{_CY}.winograd:conv2d_grad_input_f23"),
    ("conv2d_grad_input",   "winograd_f43", "cython", f"{_CY}.winograd:conv2d_grad_input_f43"),
]
