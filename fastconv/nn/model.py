"""``Sequential``: a chain of layers, with explicit fusion of ReLUs into their neighbours.

Fusion (``fuse=True``, the default) rewrites the chain into steps before each forward; the
numbers do not change (``tests/test_nn.py`` checks fused == unfused exactly), only the
number of passes over the activations:

* ``Conv2d`` or ``Linear`` followed by ``ReLU``: the layer applies the ReLU in place on its
  own fresh output, and its backward masks with ``output > 0``. Saves the ReLU's output and
  mask arrays (a read and two writes of the activation) in forward.
* ``ReLU`` (fused or not) followed by ``MaxPool2d``: max pooling commutes with ReLU, so the
  ReLU's gradient mask equals ``pooled_output > 0`` at each window's argmax. The pool masks
  the small pooled gradient before scattering and the ReLU's own backward mask (a pass over
  the 4x larger activation) is skipped.
* ``MaxPool2d`` followed by ``ReLU``: the pool applies the ReLU in place on its small output
  and masks in its backward.

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
    """One executed step: a layer plus the fusion decisions that apply to it."""

    __slots__ = ("layer", "relu", "mask_relu", "pool_mask", "absorbed")

    def __init__(self, layer: Module, relu: bool = False, absorbed: Optional[Module] = None):
        self.layer = layer
        self.relu = relu            # the layer applies a following ReLU in its forward
        self.mask_relu = True       # ... and its backward applies that ReLU's mask
        self.pool_mask = False      # MaxPool2d: mask grad by (output > 0) for a preceding ReLU
        self.absorbed = absorbed    # the ReLU layer this step took over, if any

    @property
    def ends_in_relu(self) -> bool:
        return self.relu or isinstance(self.layer, ReLU)

    def forward(self, x):
        layer = self.layer
        if self.relu:
            return layer.forward(x, relu=True)
        if isinstance(layer, ReLU) and not self.mask_relu:
            return layer.forward(x, keep_mask=False)
        return layer.forward(x)

    def backward(self, grad, need_input_grad: bool, overwrite: bool):
        layer = self.layer
        if isinstance(layer, Sequential):
            return layer.backward(grad, need_input_grad=need_input_grad)
        if isinstance(layer, (Conv2d, Linear)):
            return layer.backward(grad, need_input_grad=need_input_grad,
                                  mask_relu=self.mask_relu, overwrite=overwrite)
        if isinstance(layer, MaxPool2d):
            return layer.backward(grad, relu_mask=self.pool_mask, overwrite=overwrite)
        if isinstance(layer, ReLU) and not self.mask_relu:
            return grad  # the following max pool applied this ReLU's mask
        return layer.backward(grad)


def plan(layers: List[Module], fuse: bool = True) -> List[_Step]:
    """The steps that run ``layers``, with the fusions described in the module docstring."""
    steps: List[_Step] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if fuse and isinstance(nxt, ReLU) and isinstance(layer, (Conv2d, Linear, MaxPool2d)):
            steps.append(_Step(layer, relu=True, absorbed=nxt))
            i += 2
        else:
            steps.append(_Step(layer))
            i += 1
    if fuse:
        for before, pool in zip(steps, steps[1:]):
            if isinstance(pool.layer, MaxPool2d) and not pool.relu and before.ends_in_relu:
                pool.pool_mask = True
                before.mask_relu = False
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
