"""fastconv.nn: a small CNN library with explicit backward passes (no autograd).

Layers call only fastconv's public ops (``conv2d``, ``conv2d_backward``, the pooling ops),
so they run on whatever kernels the registry selects. Typical use::

    from fastconv import nn
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))
    crit = nn.CrossEntropyLoss(); opt = nn.Adam(model.parameters(), lr=1e-3)
    loss = crit.forward(model.forward(x), labels)
    opt.zero_grad(); model.backward(crit.backward()); opt.step()
    model.save("model.npz"); same = nn.load_model("model.npz")

Modules: ``parameter`` (Parameter), ``init`` (PyTorch's default init, seeding), ``layers``
(Conv2d, Linear, ReLU, Flatten, Dropout), ``pooling`` (MaxPool2d, AvgPool2d,
GlobalAvgPool2d), ``losses`` (CrossEntropyLoss), ``optim`` (SGD, Adam, AdamW),
``schedulers`` (StepLR, CosineAnnealingLR, OneCycleLR), ``model`` (Sequential and the ReLU
fusion), ``serialize`` (save/load).
"""
from .init import manual_seed
from .layers import Conv2d, Dropout, Flatten, Linear, ReLU
from .losses import CrossEntropyLoss, log_softmax, softmax
from .model import Sequential
from .module import Module
from .optim import SGD, Adam, AdamW, Optimizer
from .parameter import Parameter
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .schedulers import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR
from .serialize import load_model

__all__ = [
    "manual_seed", "Parameter", "Module", "Sequential",
    "Conv2d", "Linear", "ReLU", "Flatten", "Dropout", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "CrossEntropyLoss", "softmax", "log_softmax",
    "Optimizer", "SGD", "Adam", "AdamW",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR",
    "load_model",
]
