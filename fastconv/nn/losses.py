"""Softmax cross-entropy (``CrossEntropyLoss``) and the softmax helpers it is built on."""
from __future__ import annotations

from typing import Optional

import numpy as np


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """``logits - logsumexp(logits)`` computed stably (the row maximum is subtracted first)."""
    z = logits - np.max(logits, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


class CrossEntropyLoss:
    """Softmax + negative log-likelihood of integer labels, as ``torch.nn.CrossEntropyLoss``.

    ``forward(logits (N, K), labels (N,))`` returns the loss as a Python float (mean over the
    batch, or sum with ``reduction="sum"``); ``backward()`` returns its gradient w.r.t. the
    logits in one fused expression, ``(softmax - target) / N`` with ``target`` the one-hot
    labels (smoothed by ``label_smoothing``: ``(1 - e) onehot + e / K``, as PyTorch).
    The log-sum-exp subtracts each row's maximum, so large logits do not overflow.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r}: expected a value in [0, 1]")
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self._probs: Optional[np.ndarray] = None
        self._labels: Optional[np.ndarray] = None

    def __call__(self, logits, labels) -> float:
        return self.forward(logits, labels)

    def forward(self, logits, labels) -> float:
        logits = np.asarray(logits)
        if logits.dtype not in (np.float32, np.float64):
            logits = logits.astype(np.float64)
        if logits.ndim != 2:
            raise ValueError(f"logits have shape {logits.shape}: expected (N, classes)")
        n, k = logits.shape
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels have shape {labels.shape} and dtype {labels.dtype}: "
                             f"expected integers of shape ({n},)")
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must lie in [0, {k}); got values in "
                             f"[{labels.min()}, {labels.max()}]")
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        total = e.sum(axis=1, keepdims=True)
        log_probs = z - np.log(total)
        rows = np.arange(n)
        nll = -log_probs[rows, labels].astype(np.float64)
        if self.label_smoothing:
            e_ls = self.label_smoothing
            nll = (1.0 - e_ls) * nll - e_ls * log_probs.mean(axis=1, dtype=np.float64)
        self._probs = e / total
        self._labels = labels
        loss = nll.sum()
        return float(loss / n if self.reduction == "mean" and n else loss)

    def backward(self) -> np.ndarray:
        """Gradient of the last ``forward``'s loss w.r.t. its logits, shape (N, K)."""
        if self._probs is None:
            raise RuntimeError("CrossEntropyLoss.backward called without a preceding forward")
        grad, labels = self._probs, self._labels
        self._probs = self._labels = None
        n, k = grad.shape
        if self.label_smoothing:
            grad -= self.label_smoothing / k
        grad[np.arange(n), labels] -= 1.0 - self.label_smoothing
        if self.reduction == "mean" and n:
            grad /= n
        return grad
