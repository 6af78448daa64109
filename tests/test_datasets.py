"""fastconv.datasets on small IDX files written by the tests (never the real MNIST)."""
import gzip
import io
import os

import numpy as np
import pytest

from fastconv import datasets


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real data, no network: env, known locations and cache point into tmp_path."""
    for name in ("FASTCONV_DATA", "FASTCONV_MNIST_DIR", "FASTCONV_FASHION_DIR", "FASTCONV_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets, "KNOWN_LOCATIONS", {"mnist": (), "fashion": ()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)


def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_split(directory, split="train", n=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    img_name, lbl_name = datasets.FILES[split]
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    datasets.write_idx(directory / (img_name + suffix), images)
    datasets.write_idx(directory / (lbl_name + suffix), labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_root(tmp_path, gz):
    images, labels = make_split(tmp_path / "d", "train", n=7, gz=gz)
    test_images, test_labels = make_split(tmp_path / "d", "test", n=3, gz=gz, seed=1)
    x, y = datasets.load_mnist("mnist", root=tmp_path / "d")
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == np.int64 and y.shape == (7,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    x, y = datasets.load_mnist("fashion", root=tmp_path / "d", split="test")
    np.testing.assert_array_equal(x, test_images)
    np.testing.assert_array_equal(y, test_labels)
    assert (tmp_path / "d" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()[:2] \
        == (b"\x1f\x8b" if gz else b"\x00\x00")


def test_normalized_images(tmp_path):
    images, _ = make_split(tmp_path, n=4)
    x, _ = datasets.load_mnist(root=tmp_path, normalize=True)
    mean, std = datasets.STATS["mnist"]
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_read_idx_gzip_detected_by_content(tmp_path):
    path = tmp_path / "plain-name"  # gzipped data without a .gz suffix
    path.write_bytes(gzip.compress(idx_bytes(np.arange(6).reshape(2, 3))))
    np.testing.assert_array_equal(datasets.read_idx(path), np.arange(6).reshape(2, 3))


def test_bad_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x01\x02\x08\x03" + bytes(100))
    with pytest.raises(ValueError, match="bad magic number 0x01020803"):
        datasets.read_idx(path)
    make_split(tmp_path / "r")
    # a labels file (1 dimension) where the images file (3 dimensions) belongs
    os.replace(tmp_path / "r" / "train-labels-idx1-ubyte.gz", tmp_path / "r" / "train-images-idx3-ubyte.gz")
    datasets.write_idx(tmp_path / "r" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="says 1 dimensions, expected 3"):
        datasets.load_mnist(root=tmp_path / "r")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 28, 28)))
    path = tmp_path / ("x.gz" if gz else "x")
    if gz:
        path.write_bytes(gzip.compress(data)[:-30])  # the gzip stream itself is cut
        with pytest.raises(ValueError, match="corrupt or truncated gzip"):
            datasets.read_idx(path)
        path.write_bytes(gzip.compress(data[:-100]))  # a complete gzip of a cut IDX file
    else:
        path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"truncated: the header declares shape \(4, 28, 28\)"):
        datasets.read_idx(path)
    path.write_bytes(data[:10])
    with pytest.raises(ValueError, match="truncated header"):
        datasets.read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros(3)) + b"junk")
    with pytest.raises(ValueError, match="4 unexpected bytes"):
        datasets.read_idx(path)


def test_count_mismatch(tmp_path):
    make_split(tmp_path, n=5)
    datasets.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="has 5 images but .* has 4 labels"):
        datasets.load_mnist(root=tmp_path)


def test_label_out_of_range(tmp_path):
    make_split(tmp_path, n=3)
    datasets.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 12, 3], np.uint8))
    with pytest.raises(ValueError, match="label 12 is out of range"):
        datasets.load_mnist(root=tmp_path)


def test_missing_files_message(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist(root=root, split="test", download=False)
    text = str(info.value)
    assert f"into {root}" in text
    assert "t10k-images-idx3-ubyte.gz" in text and "t10k-labels-idx1-ubyte.gz" in text
    # without a root: the cache is the place to put them, the other searched places are listed
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist("fashion")  # download attempted, the network is off
    text = str(info.value)
    assert str(tmp_path / "cache" / "fastconv" / "fashion") in text
    assert "train-images-idx3-ubyte.gz" in text and "network disabled in tests" in text


def test_search_order_env(tmp_path, monkeypatch):
    make_split(tmp_path / "data" / "mnist", n=2, seed=1)
    make_split(tmp_path / "specific", n=3, seed=2)
    monkeypatch.setenv("FASTCONV_MNIST_DIR", str(tmp_path / "specific"))
    assert len(datasets.load_mnist()[0]) == 3
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "data"))  # FASTCONV_DATA/<kind> comes first
    assert len(datasets.load_mnist()[0]) == 2
    with pytest.raises(FileNotFoundError):
        datasets.load_mnist("fashion", download=False)  # the mnist dirs are not used for fashion


def test_known_locations_and_cache(tmp_path, monkeypatch):
    make_split(tmp_path / "known", n=4)
    monkeypatch.setattr(datasets, "KNOWN_LOCATIONS", {"mnist": (str(tmp_path / "known"),), "fashion": ()})
    assert len(datasets.load_mnist()[0]) == 4
    make_split(tmp_path / "cache" / "fastconv" / "fashion", n=6)
    assert len(datasets.load_mnist("fashion")[0]) == 6


def test_download_into_cache(tmp_path, monkeypatch):
    images = np.random.default_rng(3).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([1, 2, 3], np.uint8)
    served = {"train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
              "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels))}
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        assert timeout <= 30
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(datasets.urllib.request, "urlopen", fake_urlopen)
    x, y = datasets.load_mnist("mnist")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert all(url.startswith(datasets.MIRRORS["mnist"][0]) for url in requested)
    cache = tmp_path / "cache" / "fastconv" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(served)  # no partial files left
    monkeypatch.setenv("FASTCONV_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Downloading was off"):
        datasets.load_mnist("mnist", split="test")


def test_download_rejects_a_bad_file(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>"))
    with pytest.raises(FileNotFoundError, match="bad magic number"):
        datasets.load_mnist("mnist", root=tmp_path / "r")
    assert not (tmp_path / "r").exists() or os.listdir(tmp_path / "r") == []


def test_minibatches():
    batches = list(datasets.minibatches(10, 4, seed=0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = list(datasets.minibatches(10, 4, seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(np.concatenate(batches), np.arange(10))
    assert [len(b) for b in datasets.minibatches(10, 4, seed=0, drop_last=True)] == [4, 4]
    ordered = np.concatenate(list(datasets.minibatches(10, 3, shuffle=False)))
    np.testing.assert_array_equal(ordered, np.arange(10))
    rng = np.random.default_rng(1)  # one generator over epochs: a new order each epoch
    first = np.concatenate(list(datasets.minibatches(10, 5, seed=rng)))
    second = np.concatenate(list(datasets.minibatches(10, 5, seed=rng)))
    assert not np.array_equal(first, second)
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    for xb, yb in datasets.iterate_batches(x, y, 3, seed=2):
        np.testing.assert_array_equal(xb[:, 0] // 2, yb)


def test_random_shifts():
    rng = np.random.default_rng(0)
    images = np.zeros((50, 10, 10), np.uint8)
    images[:, 4, 5] = 255  # one bright pixel per image
    shifted = datasets.random_shifts(images, 2, rng)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    for img in shifted:
        (r,), (c,) = np.nonzero(img)
        assert abs(r - 4) <= 2 and abs(c - 5) <= 2
    offsets = {tuple(np.argwhere(img)[0] - (4, 5)) for img in shifted}
    assert len(offsets) > 10  # many different shifts are drawn
    assert datasets.random_shifts(images, 0, rng) is images
