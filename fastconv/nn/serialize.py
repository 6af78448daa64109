"""Saving and loading models: one ``.npz`` holding the architecture (JSON) and the weights.

File layout: ``__architecture__`` is a 0-d unicode array with the JSON
``{"format": "fastconv.nn", "version": 1, "model": {"type": "Sequential", "args": {"layers":
[{"type": "Conv2d", "args": {...constructor arguments...}}, ...]}}}``; every parameter is an
array named ``"<layer index>.<name>"`` (``"0.weight"``, ``"0.bias"``, ...). Nothing is pickled.

Writes are atomic (a temporary file in the target directory, then ``os.replace``), so a
crash never leaves a half-written model under the target name. Reading a truncated or
corrupt file, or one whose architecture or shapes differ from the model, raises a
ValueError that says which.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from typing import Dict, Tuple

import numpy as np

from .layers import Conv2d, Dropout, Flatten, Linear, ReLU
from .model import Sequential
from .module import Module
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

FORMAT = "fastconv.nn"
VERSION = 1
ARCH_KEY = "__architecture__"

#: layer type name (as saved) -> class
LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, Linear, ReLU, Flatten, Dropout, MaxPool2d,
                                             AvgPool2d, GlobalAvgPool2d, Sequential)}
#: constructor arguments that do not change what a layer computes or which weights it holds
_NON_STRUCTURAL = ("algo", "backend", "dtype")


def architecture(model: Module) -> dict:
    return {"format": FORMAT, "version": VERSION,
            "model": {"type": type(model).__name__, "args": model.config()}}


def save_model(model: Module, path) -> None:
    """Write ``model``'s architecture and weights to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {ARCH_KEY: np.array(json.dumps(architecture(model)))}
    for name, p in model.named_parameters():
        arrays[name] = p.data
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_file(path) -> Tuple[dict, Dict[str, np.ndarray]]:
    """``(architecture, {name: array})`` from a saved model; ValueError if unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    problem = (f"{path!r} is not a readable fastconv model file (truncated, corrupt, or not "
               "written by Sequential.save)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive")
            if ARCH_KEY not in data.files:
                raise ValueError(f"it has no {ARCH_KEY!r} entry")
            arch = json.loads(str(data[ARCH_KEY]))
            arrays = {name: data[name] for name in data.files if name != ARCH_KEY}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{problem}: {exc}") from exc
    except TypeError as exc:  # np.load on garbage
        raise ValueError(f"{problem}: {exc}") from exc
    if not isinstance(arch, dict) or arch.get("format") != FORMAT or "model" not in arch:
        raise ValueError(f"{problem}: its {ARCH_KEY!r} entry is not a {FORMAT} architecture")
    if arch.get("version", 0) > VERSION:
        raise ValueError(f"{path!r} was written by a newer fastconv (format version "
                         f"{arch.get('version')}; this one reads version {VERSION})")
    return arch, arrays


def build(spec: dict) -> Module:
    """A freshly initialised layer/model from ``{"type": ..., "args": ...}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"bad layer description {spec!r}: expected {{'type': ..., 'args': ...}}")
    cls = LAYER_TYPES.get(spec["type"])
    if cls is None:
        raise ValueError(f"unknown layer type {spec['type']!r} (known: {sorted(LAYER_TYPES)})")
    args = dict(spec.get("args", {}))
    if cls is Sequential:
        return Sequential(*[build(layer) for layer in args.get("layers", [])])
    if cls in (Conv2d, Linear):
        args.setdefault("rng", np.random.default_rng(0))  # leave the global seed stream alone
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"cannot build {spec['type']} from {args}: {exc}") from exc


def _structure(spec: dict) -> dict:
    """A layer description without the arguments that do not affect weights or results."""
    args = spec.get("args", {})
    if spec.get("type") == "Sequential":
        args = {"layers": [_structure(layer) for layer in args.get("layers", [])]}
    else:
        args = {k: v for k, v in args.items() if k not in _NON_STRUCTURAL}
    return {"type": spec.get("type"), "args": args}


def _describe(spec: dict) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in spec["args"].items())
    return f"{spec['type']}({args})"


def check_architecture(model: Module, arch: dict, path: str) -> None:
    ours = _structure(json.loads(json.dumps(architecture(model)["model"])))
    theirs = _structure(arch["model"])
    if ours == theirs:
        return
    where = f"{path!r} does not match the model"
    if ours["type"] != theirs["type"]:
        raise ValueError(f"{where}: the file holds a {theirs['type']}, the model is a {ours['type']}")
    ours_l, theirs_l = ours["args"].get("layers", []), theirs["args"].get("layers", [])
    for i, (a, b) in enumerate(zip(ours_l, theirs_l)):
        if a != b:
            raise ValueError(f"{where}: layer {i} is {_describe(b)} in the file but "
                             f"{_describe(a)} in the model")
    raise ValueError(f"{where}: the file has {len(theirs_l)} layers, the model {len(ours_l)}")


def assign_weights(model: Module, arrays: Dict[str, np.ndarray], path: str) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(arrays))
    extra = sorted(set(arrays) - set(params))
    if missing or extra:
        raise ValueError(f"{path!r} does not match the model: parameters missing from the file "
                         f"{missing}, unexpected in the file {extra}")
    for name, p in params.items():
        value = arrays[name]
        if value.shape != p.shape:
            raise ValueError(f"{path!r} does not match the model: parameter {name!r} has shape "
                             f"{value.shape} in the file but {p.shape} in the model")
        if value.dtype.kind != "f":
            raise ValueError(f"{path!r}: parameter {name!r} has dtype {value.dtype}, expected floats")
    for name, p in params.items():  # only after every check passed: all or nothing
        np.copyto(p.data, arrays[name], casting="same_kind")


def load_weights(model: Module, path) -> None:
    """Load the weights saved in ``path`` into ``model`` (same architecture required)."""
    path = os.fspath(path)
    arch, arrays = read_file(path)
    check_architecture(model, arch, path)
    assign_weights(model, arrays, path)


def load_model(path) -> Module:
    """Build the model described in ``path`` and load its weights."""
    path = os.fspath(path)
    arch, arrays = read_file(path)
    try:
        model = build(arch["model"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path!r}: cannot build its model: {exc}") from exc
    assign_weights(model, arrays, path)
    return model
