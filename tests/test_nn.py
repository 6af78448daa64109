"""fastconv.nn: finite-difference gradients (float64), fusion, optimisers, init, save/load."""
import json
import os
import zipfile

import numpy as np
import pytest

from fastconv import nn
from fastconv.nn import model as nn_model

try:
    import torch
except ImportError:  # the torch comparisons are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
F64 = np.float64


# ---------------------------------------------------------------- finite differences

def numeric_grad(f, array, eps=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every element of ``array`` (in place)."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, what):
    scale = max(1.0, float(np.max(np.abs(numeric))))
    err = float(np.max(np.abs(analytic - numeric))) / scale
    assert err < 1e-6, f"{what}: max relative error {err:.3g}"


def check_layer(layer, x, forward_kw=None, backward_kw=None, seed=0):
    """Check d(sum(G * layer(x)))/dx and /dparams against finite differences."""
    forward_kw, backward_kw = forward_kw or {}, backward_kw or {}
    y = layer.forward(x, **forward_kw)
    g = np.random.default_rng(seed).standard_normal(y.shape)

    def loss():
        return float(np.sum(layer.forward(x, **forward_kw) * g))

    for p in layer.parameters():
        p.zero_grad()
    layer.forward(x, **forward_kw)
    gx = layer.backward(g.copy(), **backward_kw)
    assert gx.shape == x.shape
    analytic = {name: p.grad.copy() for name, p in layer.named_parameters()}
    assert_grad_close(gx, numeric_grad(loss, x), f"{type(layer).__name__} input")
    for name, p in layer.named_parameters():
        assert_grad_close(analytic[name], numeric_grad(loss, p.data), f"{type(layer).__name__} {name}")


def away_from_zero(shape, seed=0, gap=0.05):
    """Random values with |v| >= gap, so a ReLU kink is never within the finite difference."""
    v = np.random.default_rng(seed).standard_normal(shape)
    return np.where(v >= 0, v + gap, v - gap)


CONV_CASES = [
    dict(in_channels=2, out_channels=3, kernel_size=3),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=(3, 2), groups=2, dilation=(2, 1), padding="same"),
    dict(in_channels=3, out_channels=3, kernel_size=3, groups=3, padding=1, bias=False),
]


@pytest.mark.parametrize("kwargs", CONV_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_conv2d_gradients(kwargs):
    layer = nn.Conv2d(**kwargs, dtype=F64, rng=1)
    x = np.random.default_rng(2).standard_normal((2, kwargs["in_channels"], 6, 5))
    check_layer(layer, x)


def test_conv2d_fused_relu_gradients():
    layer = nn.Conv2d(2, 3, 3, padding=1, dtype=F64, rng=3)
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 5))
    y = layer.forward(x, relu=True)
    assert np.all(y >= 0) and np.any(y == 0)
    check_layer(layer, x, forward_kw=dict(relu=True))


def test_conv2d_first_layer_skips_input_gradient():
    layer = nn.Conv2d(1, 2, 3, dtype=F64, rng=0)
    layer.forward(np.ones((1, 1, 4, 4)))
    assert layer.backward(np.ones((1, 2, 2, 2)), need_input_grad=False) is None
    assert np.all(layer.weight.grad == 4.0)  # each weight saw four inputs of 1


@pytest.mark.parametrize("relu", [False, True])
def test_linear_gradients(relu):
    layer = nn.Linear(7, 4, dtype=F64, rng=5)
    check_layer(layer, away_from_zero((3, 7), seed=6), forward_kw=dict(relu=relu))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(2, 3), stride=1)])
def test_max_pool_gradients(kwargs):
    # distinct values far apart: the argmax cannot change within the finite difference
    x = np.random.default_rng(7).permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) * 0.1
    check_layer(nn.MaxPool2d(**kwargs), x.astype(F64))


def test_max_pool_with_fused_relu():
    """pool(relu=True) is relu(maxpool(x)) == maxpool(relu(x)), forward and backward."""
    x = away_from_zero((2, 2, 6, 6), seed=8)
    check_layer(nn.MaxPool2d(3, stride=2, padding=1), x, forward_kw=dict(relu=True))
    fused, plain = nn.MaxPool2d(2), nn.MaxPool2d(2)
    y = fused.forward(x, relu=True)
    np.testing.assert_array_equal(y, plain.forward(np.maximum(x, 0)))
    g = np.random.default_rng(9).standard_normal(y.shape)
    np.testing.assert_array_equal(fused.backward(g.copy()), plain.backward(g.copy()) * (x > 0))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)])
def test_avg_pool_gradients(kwargs):
    x = np.random.default_rng(10).standard_normal((2, 2, 7, 6))
    check_layer(nn.AvgPool2d(**kwargs), x)


def test_global_avg_pool_gradients():
    layer = nn.GlobalAvgPool2d()
    x = np.random.default_rng(11).standard_normal((2, 3, 4, 5))
    assert layer.forward(x).shape == (2, 3, 1, 1)
    check_layer(layer, x)


def test_relu_and_flatten_gradients():
    check_layer(nn.ReLU(), away_from_zero((2, 3, 4, 4), seed=12))
    check_layer(nn.Flatten(), np.random.default_rng(13).standard_normal((2, 3, 2, 2)))


def test_dropout_gradient_with_fixed_mask():
    layer = nn.Dropout(0.4, seed=3)
    x = np.random.default_rng(14).standard_normal((4, 6))

    class Fixed(nn.Module):  # re-seed before every forward: the same mask each time
        def forward(self, v):
            layer.rng = np.random.default_rng(99)
            return layer.forward(v)

        def backward(self, g):
            return layer.backward(g)

    check_layer(Fixed(), x)
    assert np.any(layer.mask == 0) and np.any(layer.mask != 0)


def test_dropout_modes_and_statistics():
    x = np.ones((200, 500), dtype=np.float32)
    layer = nn.Dropout(0.25, seed=0)
    y = layer.forward(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    again = nn.Dropout(0.25, seed=0).forward(x)
    np.testing.assert_array_equal(y, again)  # seeded: reproducible
    layer.eval()
    assert layer.forward(x) is x and layer.backward(x) is x
    assert np.all(nn.Dropout(1.0, seed=0).forward(x) == 0)


@pytest.mark.parametrize("reduction,smoothing", [("mean", 0.0), ("sum", 0.0), ("mean", 0.1)])
def test_cross_entropy_gradient(reduction, smoothing):
    crit = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    logits = np.random.default_rng(15).standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    crit.forward(logits, labels)
    grad = crit.backward()
    numeric = numeric_grad(lambda: crit.forward(logits, labels), logits)
    assert_grad_close(grad, numeric, "cross entropy")


def test_cross_entropy_values_and_stability():
    crit = nn.CrossEntropyLoss()
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss = crit.forward(logits, np.array([1, 2]))
    assert np.isclose(loss, (1e4 + np.log(3)) / 2, rtol=1e-6)
    grad = crit.backward()
    assert np.all(np.isfinite(grad)) and grad.dtype == np.float32
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [1 / 6, 1 / 6, -1 / 3]], atol=1e-7)
    with pytest.raises(ValueError, match="labels must lie in"):
        crit.forward(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels have shape"):
        crit.forward(logits, np.array([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        crit.backward()


@needs_torch
def test_cross_entropy_matches_torch():
    logits = np.random.default_rng(16).standard_normal((6, 10)) * 4
    labels = np.random.default_rng(17).integers(0, 10, 6)
    for smoothing in (0.0, 0.2):
        crit = nn.CrossEntropyLoss(label_smoothing=smoothing)
        t = torch.tensor(logits, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=smoothing)
        ref.backward()
        assert np.isclose(crit.forward(logits, labels), ref.item(), rtol=1e-12)
        np.testing.assert_allclose(crit.backward(), t.grad.numpy(), rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------- whole models

def small_model(dtype=F64, seed=0, fuse=True, dropout=False):
    nn.manual_seed(seed)
    layers = [nn.Conv2d(2, 4, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(4, 6, 3, dtype=dtype), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
              nn.Linear(6, 5, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3, seed=1))
    layers.append(nn.Linear(5, 3, dtype=dtype))
    return nn.Sequential(*layers, fuse=fuse)


def test_whole_model_gradients():
    model = small_model(dropout=True)
    x = np.random.default_rng(18).standard_normal((3, 2, 8, 8))
    labels = np.array([0, 2, 1])
    crit = nn.CrossEntropyLoss()
    dropout = model[9]

    def loss():
        dropout.rng = np.random.default_rng(5)  # the same dropout mask every time
        return crit.forward(model.forward(x), labels)

    loss()
    model.zero_grad()
    gx = model.backward(crit.backward(), need_input_grad=True)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert set(grads) == {"0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                          "10.weight", "10.bias"}
    assert_grad_close(gx, numeric_grad(loss, x), "model input")
    for name, p in model.named_parameters():
        assert_grad_close(grads[name], numeric_grad(loss, p.data), f"model {name}")


FUSION_LAYOUTS = {
    "conv-relu-maxpool": lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1),
                                  nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)],
    "maxpool-relu": lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                             nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(12, 3)],
    "relu-alone-maxpool": lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.AvgPool2d(2), nn.ReLU(),
                                   nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3), nn.ReLU()],
    "conv-relu-conv": lambda: [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(),
                               nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(5, 3)],
}


@pytest.mark.parametrize("layout", sorted(FUSION_LAYOUTS))
def test_fused_equals_unfused(layout):
    """Fusion changes memory traffic only: outputs and every gradient are bit-identical."""
    results = []
    for fuse in (True, False):
        nn.manual_seed(21)
        model = nn.Sequential(*FUSION_LAYOUTS[layout](), fuse=fuse)
        x = np.random.default_rng(22).standard_normal((4, 2, 8, 8)).astype(np.float32)
        y = model.forward(x)
        g = np.random.default_rng(23).standard_normal(y.shape).astype(np.float32)
        g_before = g.copy()
        gx = model.backward(g, need_input_grad=True)
        np.testing.assert_array_equal(g, g_before)  # the caller's gradient is left alone
        results.append((y, gx, [p.grad.copy() for p in model.parameters()]))
    (y1, gx1, g1), (y2, gx2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gx1, gx2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


def test_fusion_plan():
    def summary(layout):
        return [(type(s.layer).__name__, s.relu) for s in nn_model.plan(FUSION_LAYOUTS[layout]())]

    # ReLU + max pool: the pool applies the ReLU to its small output; Linear + ReLU: in place
    assert summary("conv-relu-maxpool") == [
        ("Conv2d", False), ("MaxPool2d", True), ("Conv2d", False), ("MaxPool2d", True),
        ("Flatten", False), ("Linear", True), ("Linear", False)]
    assert summary("maxpool-relu")[:3] == [("Conv2d", False), ("MaxPool2d", True), ("Conv2d", False)]
    assert summary("relu-alone-maxpool")[1:3] == [("AvgPool2d", False), ("MaxPool2d", True)]
    assert summary("conv-relu-conv")[:2] == [("Conv2d", True), ("Conv2d", True)]
    layers = FUSION_LAYOUTS["conv-relu-maxpool"]()
    assert [s.layer for s in nn_model.plan(layers, fuse=False)] == layers


def test_training_reduces_loss():
    """A few Adam steps on a small separable problem: the loss falls and the model learns it."""
    rng = np.random.default_rng(30)
    labels = rng.integers(0, 2, 64)
    x = rng.normal(0, 0.3, (64, 1, 8, 8)).astype(np.float32)
    x[labels == 0, :, :4] += 1.0  # class 0: bright top half, class 1: bright bottom half
    x[labels == 1, :, 4:] += 1.0
    nn.manual_seed(31)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 2))
    crit, opt = nn.CrossEntropyLoss(), nn.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        losses.append(crit.forward(model.forward(x), labels))
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    assert np.mean(np.argmax(model(x), axis=1) == labels) > 0.95


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        nn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        small_model().backward(np.zeros((1, 3)))


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="groups=2"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="expected \\(N, 8\\)"):
        nn.Linear(8, 2).forward(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout(1.5)


# ---------------------------------------------------------------- init

def test_default_init_matches_pytorch_bounds_and_is_seeded():
    nn.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    lin = nn.Linear(400, 50)
    for layer, fan_in in ((conv, 16 * 9), (lin, 400)):
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert p.dtype == np.float32
            assert np.abs(p).max() <= bound
        assert np.abs(layer.weight.data).max() > 0.95 * bound
        assert abs(layer.weight.data.std() - bound / np.sqrt(3)) < 0.05 * bound  # U(-b, b)
    nn.manual_seed(0)
    np.testing.assert_array_equal(nn.Conv2d(16, 32, 3).weight.data, conv.weight.data)
    assert not np.array_equal(nn.Conv2d(16, 32, 3).weight.data, conv.weight.data)
    np.testing.assert_array_equal(nn.Linear(3, 2, rng=5).weight.data, nn.Linear(3, 2, rng=5).weight.data)


# ---------------------------------------------------------------- optimisers vs torch.optim

OPTIMISERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-3)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
]


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,kwargs", OPTIMISERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMISERS)])
def test_optimiser_matches_torch(name, kwargs, dtype):
    rng = np.random.default_rng(40)
    init = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    ours = [nn.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = getattr(nn, name)(ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    for _ in range(6):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in init]
        opt.zero_grad()
        topt.zero_grad()
        for p, t, g in zip(ours, theirs, grads):
            p.accumulate(g)
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), **tol)


def test_sgd_update_equations_by_hand():
    p = nn.Parameter(np.array([1.0]))
    opt = nn.SGD([p], lr=0.1, momentum=0.5, weight_decay=0.1)
    p.grad[:] = 2.0
    opt.step()  # g = 2 + 0.1 * 1 = 2.1; buf = 2.1; p = 1 - 0.21
    assert np.isclose(p.data[0], 0.79)
    opt.step()  # g = 2 + 0.079 = 2.079; buf = 0.5 * 2.1 + 2.079 = 3.129; p = 0.79 - 0.3129
    assert np.isclose(p.data[0], 0.79 - 0.3129)


def test_adam_first_step_is_lr_times_sign():
    p = nn.Parameter(np.array([1.0, -2.0, 3.0]))
    opt = nn.Adam([p], lr=0.01)
    p.grad[:] = [0.5, -3.0, 1e-3]
    opt.step()  # bias-corrected m / sqrt(v) = sign(g) on the first step (up to eps)
    np.testing.assert_allclose(p.data, [0.99, -1.99, 2.99], rtol=1e-6)


@needs_torch
def test_model_training_steps_match_torch():
    """The same model, weights and batches in fastconv.nn and PyTorch stay together."""
    from fastconv.train import torch_model

    nn.manual_seed(50)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    twin = torch_model(model)
    crit, opt = nn.CrossEntropyLoss(), nn.Adam(model.parameters(), lr=1e-2)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    rng = np.random.default_rng(51)
    for _ in range(4):
        x = rng.standard_normal((8, 1, 10, 10)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        loss = crit.forward(model.forward(x), y)
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert np.isclose(loss, tloss.item(), rtol=1e-4)
    theirs = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.data, theirs[name].detach().numpy(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- schedulers

@needs_torch
def test_one_cycle_matches_torch():
    param = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([param], lr=1.0)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=3e-3, total_steps=40, pct_start=0.2,
                                                 cycle_momentum=False)
    sched = nn.OneCycleLR(nn.SGD([nn.Parameter(np.zeros(1))], lr=1.0), 3e-3, 40, pct_start=0.2)
    for _ in range(40):
        assert np.isclose(sched.optimizer.lr, topt.param_groups[0]["lr"], rtol=1e-12)
        topt.step()
        tsched.step()
        sched.step()


def test_step_and_cosine_schedules():
    opt = nn.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    step = nn.StepLR(opt, step_size=2, gamma=0.5)
    assert [opt.lr] + [step.step() for _ in range(4)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    opt = nn.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    cos = nn.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    assert np.allclose([cos.lr_at(i) for i in (0, 2, 4, 9)], [1.0, 0.55, 0.1, 0.1])


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path):
    model = small_model(dtype=np.float32, seed=60, dropout=True)
    path = tmp_path / "model.npz"
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind
    other = small_model(dtype=np.float32, seed=61, dropout=True)
    x = np.random.default_rng(62).standard_normal((2, 2, 8, 8)).astype(np.float32)
    model.eval()
    other.eval()
    assert not np.array_equal(model(x), other(x))
    other.load(path)
    np.testing.assert_array_equal(model(x), other(x))
    built = nn.load_model(path)
    built.eval()
    assert [type(layer) for layer in built] == [type(layer) for layer in model]
    np.testing.assert_array_equal(model(x), built(x))
    model.save(path)  # overwriting an existing file works too
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_load_casts_to_the_model_dtype(tmp_path):
    small_model(dtype=np.float32, seed=63).save(tmp_path / "m.npz")
    model = small_model(dtype=np.float64, seed=64).load(tmp_path / "m.npz")
    assert model[0].weight.dtype == np.float64
    np.testing.assert_array_equal(model[0].weight.data,
                                  small_model(dtype=np.float32, seed=63)[0].weight.data)


def test_load_architecture_mismatch(tmp_path):
    path = tmp_path / "m.npz"
    small_model(seed=65).save(path)
    wider = small_model(seed=65)
    wider.layers[-1] = nn.Linear(5, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"layer 9 is Linear\(in_features=5, out_features=3"):
        wider.load(path)
    shorter = nn.Sequential(*small_model(seed=65).layers[:-1])
    with pytest.raises(ValueError, match="the file has 10 layers, the model 9"):
        shorter.load(path)
    before = wider[0].weight.data.copy()
    np.testing.assert_array_equal(wider[0].weight.data, before)  # nothing half-loaded


def test_load_shape_mismatch(tmp_path):
    path = tmp_path / "m.npz"
    model = small_model(seed=66)
    model.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["3.weight"] = np.zeros((6, 4, 2, 2))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"parameter '3.weight' has shape \(6, 4, 2, 2\) in the file"):
        small_model(seed=66).load(path)
    del arrays["3.weight"]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="missing from the file \\['3.weight'\\]"):
        nn.load_model(path)


def test_load_corrupt_or_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    small_model(seed=67).save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a model" * 10)
    flipped = tmp_path / "flipped.npz"
    with zipfile.ZipFile(path) as z:
        offset = z.getinfo("0.weight.npy").header_offset + 200
    corrupt = bytearray(data)
    corrupt[offset] ^= 0xFF
    flipped.write_bytes(bytes(corrupt))
    no_arch = tmp_path / "no_arch.npz"
    np.savez(no_arch, w=np.zeros(3))
    for bad in (truncated, garbage, flipped, no_arch):
        with pytest.raises(ValueError, match="not a readable fastconv model file"):
            small_model(seed=67).load(bad)
        with pytest.raises(ValueError, match="not a readable fastconv model file"):
            nn.load_model(bad)
    with pytest.raises(FileNotFoundError):
        nn.load_model(tmp_path / "missing.npz")


def test_saved_architecture_is_plain_json(tmp_path):
    path = tmp_path / "m.npz"
    small_model(seed=68).save(path)
    with np.load(path, allow_pickle=False) as data:
        arch = json.loads(str(data["__architecture__"]))
    layers = arch["model"]["args"]["layers"]
    assert layers[0] == {"type": "Conv2d", "args": {
        "in_channels": 2, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
        "dilation": 1, "groups": 1, "bias": True, "algo": "auto", "backend": "auto", "dtype": "float64"}}
    assert [layer["type"] for layer in layers][-3:] == ["Linear", "ReLU", "Linear"]
