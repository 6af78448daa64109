"""Benchmark tools: the cold-start report of `fastconv info --startup`, thread pinning of competitors."""
import pytest

from fastconv.benchmarks import startup, timing


def test_measure_times_the_import_and_each_requested_kernel_in_a_fresh_process():
    rows = startup.measure("warm", kernels=[["reference", "numpy"]])
    assert [r["what"] for r in rows] == ["import fastconv", "conv2d reference/numpy"]
    assert all(r["first_s"] > 0 for r in rows)
    assert rows[1]["second_s"] > 0


def test_every_registered_forward_kernel_is_listed_except_the_reference():
    kernels = startup.conv_forward_kernels()
    assert ["direct", "cython"] in kernels and ["winograd_f43", "numba"] in kernels
    assert all(backend != "numpy" for _, backend in kernels)


def test_bad_cache_mode_is_refused():
    with pytest.raises(ValueError, match="numba_cache"):
        startup.measure("lukewarm")


def test_pinned_restores_the_torch_thread_count_that_numba_moves():
    torch = pytest.importorskip("torch")
    import numpy as np
    import fastconv
    from fastconv.benchmarks import competitors

    saved = (torch.get_num_threads(), fastconv.get_num_threads())
    try:
        torch.set_num_threads(1)
        fastconv.set_num_threads(1)
        seen = []
        fn = competitors.pinned("torch", 1, lambda: seen.append(torch.get_num_threads()))
        x = np.ones((1, 2, 6, 6), np.float32)
        fastconv.conv2d(x, np.ones((2, 2, 3, 3), np.float32), algo="direct", backend="numba")
        torch.set_num_threads(2)     # whatever moved it, the wrapped call runs at 1
        fn()
        assert seen == [1]
    finally:
        torch.set_num_threads(saved[0])
        fastconv.set_num_threads(saved[1])


def test_gemm_share_reports_each_im2col_call(tmp_path, capsys):
    import json
    from fastconv.benchmarks import runner

    out = tmp_path / "share.json"
    rc = runner.main(["--gemm-share", "--shapes", "lenet_conv2", "--ops", "forward", "grad_weight",
                      "--backends", "numba", "--threads", "1", "--repeats", "1", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["gemm_share"]
    assert [(r["op"], r["impl"]) for r in rows] == [("forward", "im2col/numba"), ("grad_weight", "im2col/numba")]
    for r in rows:
        assert r["total_ms"] > 0 and r["gemm_ms"] > 0 and 0 < r["gemm_share"] <= 1
        assert r["gemm_vs_sgemm"] > 0 and r["sgemm_gflops"] > 0
    assert "GEMM share" in capsys.readouterr().out
    assert runner.main(["--gemm-share", "--shapes", "no_such_layer"]) == 2


def test_gemm_share_kernels_run_their_blas_at_fastconv_thread_count(tmp_path):
    # A fresh process, so that SciPy's BLAS (the Cython im2col kernels') loads only when the
    # report asks for its kernel, after the thread count was set. It imports the fastconv
    # this process did (run from the repository root, `import fastconv` in a child would
    # find the source tree, without the compiled extension of an installed package).
    import json
    import os
    import subprocess
    import sys

    import fastconv

    code = (
        "import json, fastconv\n"
        "from fastconv.benchmarks import gemm_share, suite\n"
        "from threadpoolctl import threadpool_info\n"
        "fastconv.set_num_threads(1)\n"
        "layer = [l for l in suite.CONV_LAYERS if l.name == 'lenet_conv2'][0]\n"
        "gemm_share._kernel_call('cython', layer, 'forward', 'float32')\n"
        "print(json.dumps([(i['filepath'], i['num_threads']) for i in threadpool_info()\n"
        "                  if i['user_api'] == 'blas']))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastconv.__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    blas = json.loads(done.stdout.strip().splitlines()[-1])
    assert blas and all(n == 1 for _, n in blas), blas


def test_bench_times_the_fused_op_and_its_pytorch_counterpart(tmp_path, capsys):
    import json
    import numpy as np
    from fastconv.benchmarks import competitors, runner
    from fastconv.benchmarks.suite import FUSED_LAYERS

    out = tmp_path / "fused.json"
    compare = "torch" if competitors.available("torch") else "none"
    assert runner.main(["--shapes", "fused", "--threads", "1", "--repeats", "1", "--budget", "0.05",
                        "--compare", compare, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    impls = {(r["op"], r["impl"]) for r in rows}
    for op in ("fused_forward", "fused_backward"):
        assert {(op, "direct/cython"), (op, "direct/numba"), (op, "auto")} <= impls
    assert all(r["kernel"] == "direct/cython" for r in rows if r["impl"] == "auto")
    assert runner.main(["--shapes", "fused", "--ops", "forward"]) == 0  # no fused op: nothing to time
    capsys.readouterr()
    if compare == "torch":
        # PyTorch's counterpart computes the same numbers as the fused op.
        layer = FUSED_LAYERS[0]
        x, w, b, gy = layer.arrays()
        y, _ = competitors.conv_op("torch", layer, "fused_forward", x, w, b, gy)()
        ours = runner._fastconv_call(layer, "fused_forward", (x, w, b, gy), "auto", "auto")()[0]
        np.testing.assert_allclose(ours, y.numpy(), rtol=1e-4, atol=1e-4)
        _, gw, gb = competitors.conv_op("torch", layer, "fused_backward", x, w, b, gy)()
        _, gw0, gb0 = runner._fastconv_call(layer, "fused_backward", (x, w, b, gy), "auto", "auto")()
        np.testing.assert_allclose(gw0, gw.numpy(), rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(gb0, gb.numpy(), rtol=1e-3, atol=1e-2)


def test_bench_settles_the_allocator_before_the_first_timing(monkeypatch):
    """Every candidate is timed after the large block is freed, never before it."""
    from fastconv.benchmarks import runner

    events = []
    monkeypatch.setattr(runner, "settle_allocator", lambda: events.append("settle"))
    real = runner.interleaved_medians

    def timed(candidates, **kwargs):
        events.append("time")
        return real(candidates, **kwargs)

    monkeypatch.setattr(runner, "interleaved_medians", timed)
    assert runner.main(["--shapes", "mnist_pool2", "--ops", "maxpool_forward", "--threads", "1",
                        "--repeats", "1", "--budget", "0.05", "--compare", "none"]) == 0
    assert events[0] == "settle" and events.count("settle") == 1 and "time" in events


def test_interleaved_timing_varies_which_candidate_runs_before_which():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    timing.interleaved_medians(candidates, repeats=12, warmup=1, budget_s=1e9)
    timed = calls[4:]                                     # after one warm-up call each
    assert len(timed) == 48 and all(timed.count(name) == 12 for name in "abcd")
    for name in "abcd":
        before = [timed[i - 1] for i in range(1, len(timed)) if timed[i] == name]
        assert len(set(before) - {name}) == 3                       # each of the others
        assert max(before.count(other) for other in set(before)) <= 6   # none most of the time


def test_torch_environment_times_pytorch_under_both_settings_in_fresh_processes(tmp_path, capsys):
    pytest.importorskip("torch")
    from fastconv.benchmarks import torch_environment

    out = tmp_path / "env.json"
    assert torch_environment.main(["--threads", "1", "--shapes", "mnist_pool2", "--budget", "0.05",
                                   "--repeats", "3", "--json", str(out)]) == 0
    import json
    rows = json.loads(out.read_text())
    assert {r["op"] for r in rows} == {"maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"}
    for r in rows:
        assert r["ms"] > 0 and r["ms_fastconv_env"] > 0
        assert r["slowdown"] == pytest.approx(r["ms_fastconv_env"] / r["ms"])
    assert "geometric mean" in capsys.readouterr().out


def test_corrected_auto_divides_each_auto_ratio_by_its_rows_factor():
    from fastconv.benchmarks.torch_environment import corrected_auto

    factors = [{"threads": 2, "layer": "a", "op": "forward", "slowdown": 1.5},
               {"threads": 2, "layer": "b", "op": "forward", "slowdown": 0.8}]
    bench = {"rows": [
        {"threads": 2, "layer": "a", "op": "forward", "impl": "auto", "kernel": "direct/cython", "vs_torch": 1.2},
        {"threads": 2, "layer": "a", "op": "forward", "impl": "direct/cython", "kernel": "direct/cython",
         "vs_torch": 1.2},
        {"threads": 2, "layer": "b", "op": "forward", "impl": "auto", "kernel": "im2col/numba", "vs_torch": 0.9},
    ]}
    text = corrected_auto(factors, bench)
    assert "on 1 of 2 rows" in text                      # 1.2 / 1.5 = 0.8 falls short, 0.9 / 0.8 passes
    assert "a forward (direct/cython): 1.20x in the bench, 0.80x" in text
    assert " b forward" not in text


def test_torch_environment_refuses_bad_thread_counts():
    from fastconv.benchmarks import torch_environment

    with pytest.raises(SystemExit):
        torch_environment.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        torch_environment.main(["--threads", "two"])


def test_torch_environment_reports_a_failed_timing_process(monkeypatch):
    from fastconv.benchmarks import torch_environment

    monkeypatch.setattr(torch_environment, "_CHILD", "import sys; sys.exit('no PyTorch here')")
    with pytest.raises(RuntimeError, match="(?s)torch-first timing process failed.*no PyTorch here"):
        torch_environment.compare([1], ["mnist_pool2"])
