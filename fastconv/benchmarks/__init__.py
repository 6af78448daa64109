"""The benchmark suite behind ``fastconv bench`` and ``bench/`` (pytest-benchmark).

* ``suite``: the layers and pooling shapes measured (MNIST model, LeNet-5, CIFAR, ResNet,
  depthwise, dilation, stem, pooling).
* ``timing``: interleaved median timing and the machine's sgemm rate.
* ``competitors``: the same ops in PyTorch and TensorFlow, when installed.
* ``runner``: the ``fastconv bench`` command.
"""
