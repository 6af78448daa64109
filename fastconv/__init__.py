"""fastconv: fast CPU convolution and pooling kernels with ``torch.nn.functional`` semantics.

Public calls (NCHW, float32/float64):

* ``conv2d``, ``conv2d_backward``
* ``conv2d_relu_max_pool2d``, ``conv2d_relu_max_pool2d_backward`` (the three ops as one)
* ``max_pool2d``, ``max_pool2d_backward``, ``avg_pool2d``, ``avg_pool2d_backward``,
  ``global_avg_pool2d``, ``global_avg_pool2d_backward``
* ``explain`` (which kernel a call would run and why), ``list_kernels``, ``autotune``
* ``set_num_threads``, ``get_num_threads`` (Numba, OpenMP and BLAS together)
* ``set_workspace_limit``, ``set_max_allocation_bytes`` (memory limits)
"""
from . import _waiting  # noqa: F401  (first: thread wait policies before NumPy/BLAS load)

from .conv import conv2d, conv2d_backward
from .dispatch import UnsupportedError, list_kernels
from .dispatch.autotune import enable as autotune
from .explain import explain
from .fused import conv2d_relu_max_pool2d, conv2d_relu_max_pool2d_backward
from .limits import WorkspaceTooLargeError, set_max_allocation_bytes, set_workspace_limit
from .pooling import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward,
                      max_pool2d, max_pool2d_backward)
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_relu_max_pool2d", "conv2d_relu_max_pool2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward",
    "explain", "list_kernels", "autotune", "UnsupportedError", "WorkspaceTooLargeError",
    "set_num_threads", "get_num_threads", "set_workspace_limit", "set_max_allocation_bytes",
]
