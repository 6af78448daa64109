"""`fastconv train` end to end on a tiny synthetic IDX dataset written in tmp_path."""
import re
import sys

import numpy as np
import pytest

from fastconv import cli, datasets, nn, train


def synthetic_digits(n, seed):
    """Class k: a bright 6x6 block at one of ten places, on a noisy background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + 8 * (k // 4), 2 + 6 * (k % 4)
        images[i, r:r + 6, c:c + 6] = 230
    return images, labels


@pytest.fixture
def data_dir(tmp_path):
    for split, n, seed in (("train", 96, 0), ("test", 40, 1)):
        images, labels = synthetic_digits(n, seed)
        img_name, lbl_name = datasets.FILES[split]
        datasets.write_idx(tmp_path / (img_name + ".gz"), images)
        datasets.write_idx(tmp_path / lbl_name, labels)  # one plain, one gzipped
    return tmp_path


def epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("epoch")]


def test_train_plain_end_to_end(data_dir, tmp_path, capsys):
    saved = tmp_path / "out" / "model.npz"
    saved.parent.mkdir()
    argv = ["--data", str(data_dir), "--recipe", "plain", "--epochs", "2", "--batch-size", "32",
            "--threads", "1", "--seed", "3", "--no-progress", "--save", str(saved)]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    lines = epoch_lines(out)
    assert len(lines) == 2 and "epoch  2/2" in lines[1]
    losses = [float(re.search(r"loss (\d+\.\d+)", line).group(1)) for line in lines]
    assert losses[1] < losses[0]  # it learns
    assert "img/s" in lines[0] and "test acc" in lines[0]
    assert "96 train / 40 test images" in out and "conv2d_forward=" in out
    assert "final: fastconv test accuracy" in out
    model = nn.load_model(saved)
    assert [type(layer).__name__ for layer in model][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    assert model.num_parameters() == 225034  # the brief's model: 1600 -> 128 -> 10

    # the same seed gives the same run
    again = tmp_path / "again.npz"
    assert train.main(argv[:-1] + [str(again)]) == 0
    second = capsys.readouterr().out
    assert [l.split("  ")[1:3] for l in epoch_lines(second)] == [l.split("  ")[1:3] for l in lines]
    with np.load(saved) as a, np.load(again) as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


def test_train_best_recipe_with_limit(data_dir, capsys):
    argv = ["--data", str(data_dir), "--epochs", "1", "--limit", "48", "--test-limit", "20",
            "--batch-size", "16", "--no-progress"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "recipe best" in out and "48 train / 20 test images" in out and "(onecycle)" in out
    assert len(epoch_lines(out)) == 1


def test_compare_with_torch(data_dir, capsys):
    pytest.importorskip("torch")
    argv = ["--data", str(data_dir), "--recipe", "plain", "--epochs", "1", "--batch-size", "32",
            "--compare", "torch", "--no-progress", "--threads", "1"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    line = epoch_lines(out)[0]
    assert "fastconv:" in line and "torch:" in line and "time fastconv/torch" in line
    ours, theirs = (float(v) for v in re.findall(r"loss (\d+\.\d+)", line))
    assert abs(ours - theirs) < 1e-3  # same weights, same batches: the same training run


def test_compare_without_torch(data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    argv = ["--data", str(data_dir), "--recipe", "plain", "--epochs", "1", "--limit", "32",
            "--compare", "torch", "--no-progress"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "torch:" not in epoch_lines(out)[0]


def test_missing_data_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCONV_OFFLINE", "1")
    assert train.main(["--data", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path) in err


def test_cli_dispatch_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--recipe" in text and "one-cycle" in text and "--compare" in text
    with pytest.raises(SystemExit):
        train.main(["--epochs", "0"])
