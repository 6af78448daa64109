"""``Sequential``: a chain of layers, with explicit fusion of ReLUs into their neighbours.

Fusion (``fuse=True``, the default) rewrites the chain into steps before each forward. It
changes the number of passes over the activations; except for the conv + ReLU + max pool
fusion below, never the numbers: ``tests/test_nn.py`` checks that fused and unfused runs
give bit-identical outputs and gradients.

* ``ReLU`` followed by ``MaxPool2d``: ReLU commutes with max pooling (``max(relu(x)) ==
  relu(max(x))``, NaN included, padding is never chosen), so the pool runs first and
  applies the ReLU in place on its 4x smaller output; its backward masks the small pooled
  gradient with ``output > 0`` before scattering it to the argmax positions (where the
  ReLU's own mask would have been the same). The full-size ReLU pass disappears in both
  directions. The same holds for ``MaxPool2d`` followed by ``ReLU``.
* ``Conv2d`` + ``ReLU`` + ``MaxPool2d(2)`` where the convolution has one input channel per
  group, a 3x3 kernel, stride and dilation 1 (the first layer of MNIST/LeNet-style models):
  one op, ``fastconv.conv2d_relu_max_pool2d``, whose fused kernel pools each convolution
  plane while it is in cache, so the 4x larger convolution output and its gradient are never
  stored. This is the one fusion that changes numbers, by float rounding only: the weight
  and bias gradients are the same sums in another order (``tests/test_fused.py``).
* ``Conv2d`` or ``Linear`` followed by ``ReLU`` (and no max pool after it): the layer applies
  the ReLU in place on its own fresh output, and its backward masks with ``output > 0``, so
  no separate ReLU output or mask array is made.

Backward stops at the first layer with parameters and does not compute that layer's input
gradient (nobody needs it) unless ``backward(grad, need_input_grad=True)``.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np

from .layers import Conv2d, Linear, ReLU
from .module import Module
from .parameter import Parameter
from .pooling import MaxPool2d


class _Step:
    """One executed step: a layer, and whether it also applies a ReLU (fused)."""

    __slots__ = ("layer", "relu", "absorbed", "pool")

    def __init__(self, layer: Module, relu: bool = False, absorbed: Optional[Module] = None,
                 pool: Optional[MaxPool2d] = None):
        self.layer = layer
        self.relu = relu            # the layer applies the absorbed ReLU to its output
        self.absorbed = absorbed    # the ReLU layer this step took over, if any
        self.pool = pool            # the 2x2 max pool a Conv2d step took over, if any

    def forward(self, x):
        if self.pool is not None:
            return self.layer.forward(x, relu=True, max_pool=True)
        return self.layer.forward(x, relu=True) if self.relu else self.layer.forward(x)

    def backward(self, grad, need_input_grad: bool, overwrite: bool):
        layer = self.layer
        if isinstance(layer, Sequential):
            return layer.backward(grad, need_input_grad=need_input_grad)
        if isinstance(layer, (Conv2d, Linear)):
            return layer.backward(grad, need_input_grad=need_input_grad, overwrite=overwrite)
        if isinstance(layer, MaxPool2d):
            return layer.backward(grad, overwrite=overwrite)
        return layer.backward(grad)


def _plain_2x2(layer) -> bool:
    """A ``MaxPool2d(2)`` (stride 2, no padding) that leaves its kernel choice to fastconv."""
    return (isinstance(layer, MaxPool2d) and layer.kernel_size == (2, 2) and layer.stride == (2, 2)
            and layer.padding == (0, 0) and layer.algo == "auto" and layer.backend == "auto")


def plan(layers: List[Module], fuse: bool = True) -> List[_Step]:
    """The steps that run ``layers``, with the fusions described in the module docstring."""
    steps: List[_Step] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        if fuse and isinstance(layer, Conv2d) and isinstance(nxt, ReLU) and _plain_2x2(after) \
                and layer.fuses_relu_max_pool():
            steps.append(_Step(layer, relu=True, absorbed=nxt, pool=after))
            i += 3
        elif fuse and isinstance(layer, ReLU) and isinstance(nxt, MaxPool2d):
            steps.append(_Step(nxt, relu=True, absorbed=layer))  # pool first, ReLU on its output
            i += 2
        elif (fuse and isinstance(nxt, ReLU) and isinstance(layer, (Conv2d, Linear, MaxPool2d))
              and not isinstance(after, MaxPool2d)):  # (that ReLU goes into the pool instead)
            steps.append(_Step(layer, relu=True, absorbed=nxt))
            i += 2
        else:
            steps.append(_Step(layer))
            i += 1
    return steps


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    Example::

        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(32 * 13 * 13, 10))
        logits = model(x); loss = crit.forward(logits, y)
        opt.zero_grad(); model.backward(crit.backward()); opt.step()

    ``fuse=False`` runs every layer on its own (same results, more memory traffic).
    """

    def __init__(self, *layers: Module, fuse: bool = True):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is a {type(layer).__name__}: expected a fastconv.nn layer")
        self.layers: List[Module] = list(layers)
        self.fuse = bool(fuse)
        self._steps: Optional[List[_Step]] = None

    # ------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index], fuse=self.fuse)
        return self.layers[index]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p

    def train(self, mode: bool = True) -> "Sequential":
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    # ------------------------------------------------------------ compute
    def forward(self, x: np.ndarray) -> np.ndarray:
        steps = plan(self.layers, self.fuse)
        for step in steps:
            x = step.forward(x)
        self._steps = steps
        return x

    def backward(self, grad: np.ndarray, need_input_grad: bool = False) -> Optional[np.ndarray]:
        """Backpropagate ``grad`` (d loss / d output); parameters' ``.grad`` accumulate.

        Returns d loss / d input if ``need_input_grad``, else ``None``. ``grad`` itself is
        never modified.
        """
        if self._steps is None:
            raise RuntimeError("Sequential.backward called without a preceding forward")
        steps, self._steps = self._steps, None
        first = 0
        if not need_input_grad:  # nothing below the first parameterised layer needs a gradient
            first = next((i for i, s in enumerate(steps) if s.layer.parameters()), len(steps))
        given = grad
        for i in range(len(steps) - 1, first - 1, -1):
            # A step may mask in place a gradient made by a later step, never the caller's.
            grad = steps[i].backward(grad, need_input_grad=need_input_grad or i > first,
                                     overwrite=not np.may_share_memory(grad, given))
        return grad if need_input_grad else None

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"layers": [{"type": type(layer).__name__, "args": layer.config()}
                           for layer in self.layers]}

    def save(self, path) -> None:
        """Write the architecture and weights to one .npz file, atomically."""
        from .serialize import save_model
        save_model(self, path)

    def load(self, path) -> "Sequential":
        """Load weights saved by ``save``; a different architecture is a ValueError."""
        from .serialize import load_weights
        load_weights(self, path)
        return self

    def __repr__(self) -> str:
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())
