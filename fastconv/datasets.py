"""MNIST-format datasets (MNIST, Fashion-MNIST): an IDX file reader, a loader that finds or
downloads the files, and a minibatch helper.

``load_mnist(kind, root=None, split="train")`` looks for the four standard files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not) in the first directory that has
the split's two files, in this order:

1. ``root`` if given (only there; missing files are downloaded into it if allowed);
2. ``$FASTCONV_DATA/<kind>`` or ``$FASTCONV_DATA`` itself; ``$FASTCONV_MNIST_DIR`` (MNIST) or
   ``$FASTCONV_FASHION_DIR`` (Fashion-MNIST);
3. known locations: ``/work/shared/data/mnist`` and ``../shared/data/mnist`` (relative to
   the working directory) for MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's
   ``dataset-fashion-mnist`` package) for Fashion-MNIST;
4. the cache ``$XDG_CACHE_HOME/fastconv/<kind>`` (default ``~/.cache/fastconv/<kind>``).

If none has them, the files are downloaded into the cache (``root`` when given) from the
canonical mirror, unless ``download=False`` or ``FASTCONV_OFFLINE=1``. When that fails, a
``FileNotFoundError`` lists the files needed and where to put them. Malformed files (wrong
magic number, truncated data, image/label count mismatch, labels out of range) raise a
``ValueError`` naming the file and the problem.
"""
from __future__ import annotations

import gzip
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

KINDS = ("mnist", "fashion")
SPLITS = ("train", "test")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRRORS: Dict[str, Tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
KNOWN_LOCATIONS: Dict[str, Tuple[str, ...]] = {
    "mnist": ("/work/shared/data/mnist", "../shared/data/mnist"),
    "fashion": ("/usr/share/datasets/fashion-mnist",),
}
KIND_ENV = {"mnist": "FASTCONV_MNIST_DIR", "fashion": "FASTCONV_FASHION_DIR"}
#: per-pixel mean and std of the training images on the [0, 1] scale (used by normalize=True)
STATS = {"mnist": (0.1307, 0.3081), "fashion": (0.2860, 0.3530)}
NUM_CLASSES = 10
DOWNLOAD_TIMEOUT_S = 10.0

# IDX type codes -> numpy big-endian dtypes
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ---------------------------------------------------------------- IDX files

def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return path.read_bytes()


def read_idx(path: PathLike, expected_ndim: Optional[int] = None) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order.

    Raises ValueError for a bad magic number, an unexpected number of dimensions, or a data
    section whose length does not match the header (truncated or with trailing bytes).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header (truncated?)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad magic number 0x{data[:4].hex()}: not an IDX file "
                         "(expected 0x0000 followed by a type code such as 0x08 for uint8)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: magic number 0x{data[:4].hex()} says {ndim} dimensions, expected "
                         f"{expected_ndim} (an {'image' if expected_ndim == 3 else 'label'} file "
                         f"has magic 0x{0x0800 + expected_ndim:08x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes, the header needs {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise ValueError(f"{path}: truncated: the header declares shape {shape} ({expected} bytes "
                         f"of data) but the file holds {actual}")
    if actual > expected:
        raise ValueError(f"{path}: {actual - expected} unexpected bytes after the {expected} bytes "
                         f"of data that the header (shape {shape}) declares")
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: PathLike, array: np.ndarray, compress: Optional[bool] = None) -> None:
    """Write ``array`` (uint8) as an IDX file; gzipped if ``compress`` (default: name ends .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data) if compress else data)


# ---------------------------------------------------------------- finding the files

def _find_file(directory: Path, name: str) -> Optional[Path]:
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def cache_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastconv" / kind


def search_dirs(kind: str, root: Optional[PathLike] = None) -> List[Path]:
    """The directories ``load_mnist`` looks in, in order (see the module docstring)."""
    if root is not None:
        return [Path(root)]
    dirs: List[Path] = []
    data = os.environ.get("FASTCONV_DATA")
    if data:
        dirs += [Path(data) / kind, Path(data)]
    specific = os.environ.get(KIND_ENV[kind])
    if specific:
        dirs.append(Path(specific))
    dirs += [Path(p) for p in KNOWN_LOCATIONS[kind]]
    dirs.append(cache_dir(kind))
    return dirs


def _check_kind_split(kind: str, split: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")


def download(kind: str, names: Sequence[str], directory: PathLike,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> List[str]:
    """Fetch ``<name>.gz`` for each name into ``directory``; returns the errors (empty: all ok).

    Each file is written to a temporary name, checked to be a readable IDX file, then moved
    into place, so an interrupted download never leaves a broken file behind.
    """
    directory = Path(directory)
    errors = []
    for name in names:
        target = directory / (name + ".gz")
        if target.is_file():
            continue
        for mirror in MIRRORS[kind]:
            url = mirror + name + ".gz"
            tmp = None
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
                directory.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                read_idx(tmp, expected_ndim=3 if "images" in name else 1)
                os.replace(tmp, target)
                tmp = None
                break
            except Exception as exc:  # network, HTTP, disk or format: try the next mirror
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            return errors
    return []


def _not_found(kind: str, split: str, dirs: List[Path], target: Path,
               download_errors: List[str]) -> FileNotFoundError:
    lines = [f"{kind} {split} files not found. Put these two files (gzipped with .gz or not) into {target}:"]
    lines += [f"    {name}.gz" for name in FILES[split]]
    others = [d for d in dirs if d != target]
    if others:
        lines.append("(or into any of these directories, searched first, in this order: "
                     + ", ".join(str(d) for d in others)
                     + "; or pass root=DIR / `fastconv train --data DIR`, or set FASTCONV_DATA=DIR)")
    if download_errors:
        lines.append("Downloading them failed: " + "; ".join(download_errors[:4]))
    else:
        lines.append("Downloading was off (download=False or FASTCONV_OFFLINE=1); "
                     f"the files are at {MIRRORS[kind][0]}")
    return FileNotFoundError("\n".join(lines))


def find_files(kind: str = "mnist", split: str = "train", root: Optional[PathLike] = None,
               download_missing: bool = True) -> Tuple[Path, Path]:
    """The (images, labels) paths of a split, downloading them if needed and allowed."""
    _check_kind_split(kind, split)
    dirs = search_dirs(kind, root)
    names = FILES[split]
    for d in dirs:
        found = [_find_file(d, n) for n in names]
        if all(found):
            return found[0], found[1]
    errors: List[str] = []
    offline = os.environ.get("FASTCONV_OFFLINE", "") not in ("", "0")
    target = dirs[0] if root is not None else cache_dir(kind)
    if download_missing and not offline:
        errors = download(kind, names, target)
        found = [_find_file(target, n) for n in names]
        if all(found) and not errors:
            return found[0], found[1]
        if not errors:
            errors = [f"files still missing in {target}"]
    raise _not_found(kind, split, dirs, target, errors)


# ---------------------------------------------------------------- loading

def load_mnist(kind: str = "mnist", root: Optional[PathLike] = None, split: str = "train", *,
               normalize: bool = False, download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of MNIST (``kind="mnist"``) or Fashion-MNIST (``kind="fashion"``).

    Returns images of shape (N, 28, 28), uint8 — or float32 ``(x/255 - mean) / std`` with the
    training set's mean and std (``STATS``) when ``normalize=True`` — and labels int64 (N,).
    See the module docstring for where the files are looked for.
    """
    images_path, labels_path = find_files(kind, split, root, download_missing=download)
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"{images_path} / {labels_path}: expected uint8 data (IDX type 0x08), got "
                         f"{images.dtype} and {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                         f"{labels.shape[0]} labels")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is out of range 0..{NUM_CLASSES - 1}")
    labels = labels.astype(np.int64)
    if normalize:
        return normalize_images(images, kind), labels
    return images, labels


def normalize_images(images: np.ndarray, kind: str = "mnist") -> np.ndarray:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` with the dataset's training statistics."""
    mean, std = STATS[kind]
    out = images.astype(np.float32)
    out *= np.float32(1.0 / (255.0 * std))
    out -= np.float32(mean / std)
    return out


def minibatches(n: int, batch_size: int, *, shuffle: bool = True, seed=None,
                drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays of consecutive minibatches over ``range(n)``, shuffled (seeded) if asked.

    ``seed`` is an int or a ``numpy.random.Generator`` (reuse one Generator across epochs to
    get a different, reproducible order each epoch).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    if shuffle:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = True,
                    seed=None, drop_last: bool = False) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(images[idx], labels[idx])`` for each index array of ``minibatches``."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for idx in minibatches(len(images), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last):
        yield images[idx], labels[idx]


def random_shifts(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image (N, H, W) moved by its own random integer (dy, dx) in [-max_shift, max_shift],
    the uncovered border filled with zeros (the background of raw MNIST pixels)."""
    if max_shift <= 0:
        return images
    n, h, w = images.shape
    m = int(max_shift)
    padded = np.zeros((n, h + 2 * m, w + 2 * m), dtype=images.dtype)
    padded[:, m:m + h, m:m + w] = images
    dy = rng.integers(-m, m + 1, size=n)
    dx = rng.integers(-m, m + 1, size=n)
    rows = (m - dy)[:, None, None] + np.arange(h)[None, :, None]
    cols = (m - dx)[:, None, None] + np.arange(w)[None, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]
