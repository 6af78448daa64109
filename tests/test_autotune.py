"""Autotuning picks the measured winner, remembers it on disk, and survives bad cache files."""
import json
import time
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.checks import conv_params
from fastconv.dispatch import autotune, registry, selection

CALLS = {"slow": 0}
PARAMS = conv_params((1, 2, 6, 6), (3, 2, 3, 3), 1, 0, 1, 1, "float64")


def slow_conv2d_forward(x, w, b, y, p):
    """The reference, made 20 ms slower: the autotuner must notice."""
    CALLS["slow"] += 1
    time.sleep(0.02)
    reference.conv2d_forward(x, w, b, y, p)


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """A registry with a slow 'direct/numpy' kernel (the rules' first choice for PARAMS) and a
    fast 'im2col/numpy' one (the reference under another name), tuning on. The tests ask for
    backend="numpy" so that only these two (and the reference) compete."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("conv2d_forward", "direct", "numpy", "test_autotune:slow_conv2d_forward")
    registry.register("conv2d_forward", "im2col", "numpy", "fastconv.reference:conv2d_forward")
    path = tmp_path / "autotune.json"
    autotune.enable(True, cache_path=str(path))
    autotune.clear()
    CALLS["slow"] = 0
    yield path
    autotune.enable(False, cache_path="")
    autotune.clear()
    selection._cache.clear()


def test_rules_alone_pick_the_slow_kernel(tuning):
    autotune.enable(False)
    assert selection.select("conv2d_forward", PARAMS, backend="numpy").algo == "direct"


def test_autotune_picks_the_faster_kernel_and_saves_it(tuning):
    choice = selection.select("conv2d_forward", PARAMS, backend="numpy")
    assert (choice.algo, choice.backend) == ("im2col", "numpy")
    assert "autotuned" in choice.reason and "direct/numpy" in choice.reason
    data = json.loads(tuning.read_text())
    (entry,) = data["entries"].values()
    assert entry["algo"] == "im2col" and entry["ms"]["direct/numpy"] > entry["ms"]["im2col/numpy"]


def test_a_new_process_reuses_the_file_without_timing(tuning):
    selection.select("conv2d_forward", PARAMS, backend="numpy")
    autotune.clear()  # as if the process restarted: memory empty, file kept
    selection._cache.clear()
    CALLS["slow"] = 0
    choice = selection.select("conv2d_forward", PARAMS, backend="numpy")
    assert choice.algo == "im2col" and "earlier" in choice.reason
    assert CALLS["slow"] == 0


def test_signature_includes_threads(tuning):
    selection.select("conv2d_forward", PARAMS, backend="numpy")
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(before + 1)
        CALLS["slow"] = 0
        selection.select("conv2d_forward", PARAMS, backend="numpy")
        assert CALLS["slow"] > 0  # a new thread count is a new signature: measured again
    finally:
        fastconv.set_num_threads(before)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 99, "entries": {}}), json.dumps([1, 2])])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_a_warning(tuning, content):
    tuning.write_text(content)
    with pytest.warns(RuntimeWarning, match="autotune cache"):
        choice = selection.select("conv2d_forward", PARAMS, backend="numpy")
    assert choice.algo == "im2col"


def test_a_stale_entry_naming_a_vanished_kernel_is_retuned(tuning):
    key = autotune.signature("conv2d_forward", PARAMS, fastconv.get_num_threads())
    tuning.write_text(json.dumps({"version": 1, "fastconv": fastconv.__version__,
                                  "entries": {key: {"algo": "winograd_f43", "backend": "cython"}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = selection.select("conv2d_forward", PARAMS, backend="numpy")
    assert choice.algo == "im2col" and CALLS["slow"] > 0


def test_public_call_uses_the_tuned_kernel_and_gives_the_right_answer(tuning):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    y = fastconv.conv2d(x, w, backend="numpy")
    np.testing.assert_allclose(y, fastconv.conv2d(x, w, algo="reference"))
    assert "autotuned" in fastconv.explain("conv2d", x, w, backend="numpy")


def test_enable_checks_its_argument():
    with pytest.raises(TypeError, match="on='yes'"):
        fastconv.autotune("yes")
