"""The suite's ops in other frameworks, on the same values, for side-by-side timing.

PyTorch runs in NCHW like fastconv. TensorFlow's CPU convolutions only take NHWC, so it
gets NHWC copies made before timing (its native layout: the fair comparison).
Each factory returns ``None`` when the framework cannot run that op.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def available(name: str) -> bool:
    try:
        if name == "torch":
            import torch  # noqa: F401
        elif name == "tf":
            import tensorflow  # noqa: F401
        else:
            return False
    except ImportError:
        return False
    return True


def set_threads(name: str, n: int) -> None:
    if name == "torch":
        import torch

        torch.set_num_threads(n)
    elif name == "tf":
        import tensorflow as tf

        try:  # only settable before TensorFlow's first op; later calls raise RuntimeError
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass


def pinned(name: str, n: int, fn: Callable) -> Callable:
    """``fn`` that first restores the framework's thread count to ``n`` if it moved.

    Numba's OpenMP threading layer changes the process-wide OpenMP thread setting that
    PyTorch reads: after the first parallel Numba kernel, ``torch.get_num_threads()`` said 2
    where 1 had been set, so "1-thread" PyTorch timings silently used both cores.
    """
    if name != "torch":
        return fn
    import torch

    def call():
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return fn()
    return call


def conv_op(name: str, layer, op: str, x, w, b, gy) -> Optional[Callable]:
    from .suite import FusedLayer

    if isinstance(layer, FusedLayer):
        return _torch_fused(layer, op, x, w, b, gy) if name == "torch" else None
    if name == "torch":
        return _torch_conv(layer, op, x, w, b, gy)
    if name == "tf":
        return _tf_conv(layer, op, x, w, b, gy)
    return None


def pool_op(name: str, layer, op: str, x, gy) -> Optional[Callable]:
    if name == "torch":
        return _torch_pool(layer, op, x, gy)
    if name == "tf":
        return _tf_pool(layer, op, x, gy)
    return None


def _torch_conv(layer, op, x, w, b, gy):
    import torch
    import torch.nn.functional as F

    tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
    kw = layer.kwargs()
    if op == "forward":
        return lambda: F.conv2d(tx, tw, tb, **kw)
    mask = [op == "grad_input", op == "grad_weight", False]
    stride, padding, dilation = [(v, v) for v in (kw["stride"], kw["padding"], kw["dilation"])]
    # The aten backward op is what autograd runs, without the graph bookkeeping.
    return lambda: torch.ops.aten.convolution_backward(
        tgy, tx, tw, None, stride, padding, dilation, False, [0, 0], kw["groups"], mask)


def _torch_fused(layer, op, x, w, b, gy):
    """conv2d -> relu -> 2x2 max_pool2d, and the backward autograd runs for a first layer
    (grad weight and grad bias) through the aten ops, without the graph bookkeeping."""
    import torch
    import torch.nn.functional as F

    tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
    kw = layer.kwargs()
    if op == "fused_forward":
        return lambda: F.max_pool2d(F.relu(F.conv2d(tx, tw, tb, **kw)), 2, return_indices=True)
    relu = F.relu(F.conv2d(tx, tw, tb, **kw))
    _, idx = F.max_pool2d(relu, 2, return_indices=True)
    stride, padding, dilation = [(v, v) for v in (kw["stride"], kw["padding"], kw["dilation"])]

    def backward():
        g = torch.ops.aten.max_pool2d_with_indices_backward(tgy, relu, [2, 2], [2, 2], [0, 0], [1, 1],
                                                            False, idx)
        g = torch.ops.aten.threshold_backward(g, relu, 0)
        return torch.ops.aten.convolution_backward(g, tx, tw, [tw.shape[0]], stride, padding, dilation,
                                                   False, [0, 0], kw["groups"], [False, True, True])
    return backward


def _torch_pool(layer, op, x, gy):
    import torch
    import torch.nn.functional as F

    tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
    k, s, p = layer.kernel, layer.stride or layer.kernel, layer.padding
    if op == "maxpool_forward":
        return lambda: F.max_pool2d(tx, k, s, p, return_indices=True)
    if op == "maxpool_backward":
        _, idx = F.max_pool2d(tx, k, s, p, return_indices=True)
        return lambda: torch.ops.aten.max_pool2d_with_indices_backward(tgy, tx, [k, k], [s, s], [p, p], [1, 1],
                                                                       False, idx)
    if op == "avgpool_forward":
        return lambda: F.avg_pool2d(tx, k, s, p)
    return lambda: torch.ops.aten.avg_pool2d_backward(tgy, tx, [k, k], [s, s], [p, p], False, True, None)


def _tf_conv(layer, op, x, w, b, gy):
    import tensorflow as tf

    if layer.groups != 1 and layer.groups != layer.c:
        return None
    nhwc = tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    gy_nhwc = tf.constant(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)))
    p, s, d = layer.padding, layer.stride, layer.dilation
    pads = [[0, 0], [p, p], [p, p], [0, 0]]
    if layer.groups == layer.c and layer.groups > 1:  # depthwise: (r, s, c, multiplier)
        filt = tf.constant(np.ascontiguousarray(w.reshape(layer.c, -1, layer.r, layer.r).transpose(2, 3, 0, 1)))
        if op != "forward" or s != 1:
            return None
        return lambda: tf.nn.depthwise_conv2d(nhwc, filt, [1, 1, 1, 1], pads, dilations=[d, d])
    filt = tf.constant(np.ascontiguousarray(w.transpose(2, 3, 1, 0)))  # (r, s, c, k)
    if op == "forward":
        return lambda: tf.nn.conv2d(nhwc, filt, s, pads, dilations=d)
    if op == "grad_input":
        shape = tf.constant(nhwc.shape)
        return lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=shape, filter=filt, out_backprop=gy_nhwc, strides=[1, s, s, 1], padding="EXPLICIT",
            explicit_paddings=sum(pads, []), dilations=[1, d, d, 1])
    shape = tf.constant(filt.shape)
    return lambda: tf.raw_ops.Conv2DBackpropFilter(
        input=nhwc, filter_sizes=shape, out_backprop=gy_nhwc, strides=[1, s, s, 1], padding="EXPLICIT",
        explicit_paddings=sum(pads, []), dilations=[1, d, d, 1])


def _tf_pool(layer, op, x, gy):
    import tensorflow as tf

    k, s, p = layer.kernel, layer.stride or layer.kernel, layer.padding
    if p not in (0, (k - 1) // 2):
        return None
    padding = "VALID" if p == 0 else "SAME"  # same output size as the explicit padding here
    nhwc = tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    gy_nhwc = tf.constant(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)))
    if op == "maxpool_forward":
        return lambda: tf.nn.max_pool2d(nhwc, k, s, padding)
    if op == "maxpool_backward":
        y = tf.nn.max_pool2d(nhwc, k, s, padding)
        return lambda: tf.raw_ops.MaxPoolGrad(orig_input=nhwc, orig_output=y, grad=gy_nhwc, ksize=[1, k, k, 1],
                                              strides=[1, s, s, 1], padding=padding)
    if op == "avgpool_forward":
        return lambda: tf.nn.avg_pool2d(nhwc, k, s, padding)
    shape = tf.constant(nhwc.shape)
    return lambda: tf.raw_ops.AvgPoolGrad(orig_input_shape=shape, grad=gy_nhwc, ksize=[1, k, k, 1],
                                          strides=[1, s, s, 1], padding=padding)
