"""Landscape against exact oracles: finite differences, a dense autograd Hessian, Python loops."""

import pytest
import torch
from torch import nn

from flatminima import Landscape
from flatminima.errors import ConfigError

torch.set_default_dtype(torch.float32)


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Softplus(), nn.Linear(5, 3))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)
    )


def data_for(model_name, P=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, 6, generator=g) if model_name == "mlp" else torch.randn(P, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (P,), generator=g)
    return X, y


@pytest.fixture(params=["mlp", "cnn"])
def land(request):
    model = small_mlp() if request.param == "mlp" else small_cnn()
    # a chunk smaller than P exercises the chunked sums
    return Landscape(model, data_for(request.param), dtype=torch.float64, chunk=7, l2=1e-3)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_grad_matches_central_differences(land):
    theta = land.theta + 0.1 * torch.randn(land.n_params, dtype=torch.float64)
    g = land.grad(theta)
    eps = 1e-6
    fd = torch.empty_like(theta)
    for i in range(land.n_params):
        e = torch.zeros_like(theta)
        e[i] = eps
        fd[i] = (land.loss(theta + e) - land.loss(theta - e)) / (2 * eps)
    assert rel(g, fd) < 1e-6


def test_hvp_matches_dense_autograd_hessian(land):
    theta = land.theta.clone()

    def f(t):  # an independent implementation of the same loss: plain autograd through functional_call
        params = {n: s.view(shape) for n, s, shape in zip(land.names, torch.split(t, land.numels), land.shapes)}
        out = torch.func.functional_call(land.model, params, (land.X,))
        return nn.functional.cross_entropy(out, land.y) + land.l2 * (t * t).sum()

    H = torch.autograd.functional.hessian(f, theta)
    for _ in range(3):
        v = torch.randn_like(theta)
        assert rel(land.hvp(theta, v), H @ v) < 1e-6
    assert rel(land.dense_hessian(theta), H) < 1e-6


def test_hvp_matches_finite_differences_of_grad(land):
    theta = land.theta
    v = torch.randn_like(theta)
    eps = 1e-5
    fd = (land.grad(theta + eps * v) - land.grad(theta - eps * v)) / (2 * eps)
    assert rel(land.hvp(theta, v), fd) < 1e-6


def test_batched_hvp_equals_single(land):
    V = torch.randn(4, land.n_params, dtype=torch.float64)
    HV = land.hvp(land.theta, V)
    for k in range(4):
        assert torch.allclose(HV[k], land.hvp(land.theta, V[k]), rtol=1e-10, atol=1e-12)


def test_batched_loss_and_error_match_python_loop(land):
    thetas = land.theta + 0.3 * torch.randn(9, land.n_params, dtype=torch.float64)
    batched = land.batched_loss(thetas, budget=20)  # tiny budget: several K- and data-chunks
    loop = torch.stack([land.loss(t) for t in thetas])
    assert torch.allclose(batched, loop, rtol=1e-12, atol=1e-12)
    errs = land.batched_error(thetas)
    assert torch.allclose(errs, torch.tensor([land.error(t) for t in thetas], dtype=torch.float64))


def test_loss_is_mean_of_per_example_losses_plus_l2(land):
    theta = land.theta
    expected = land.per_example_losses(theta).mean() + land.l2 * theta.pow(2).sum()
    assert torch.allclose(land.loss(theta), expected, rtol=1e-12)


def test_chunking_does_not_change_results():
    X, y = data_for("mlp", P=50)
    a = Landscape(small_mlp(), (X, y), dtype=torch.float64, chunk=50)
    b = Landscape(small_mlp(), (X, y), dtype=torch.float64, chunk=3)
    t = a.theta
    assert torch.allclose(a.loss(t), b.loss(t), rtol=1e-12)
    assert torch.allclose(a.grad(t), b.grad(t), rtol=1e-10)


def test_to_model_round_trip_and_original_untouched():
    model = small_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    land = Landscape(model, data_for("mlp"))
    theta = torch.randn(land.n_params)
    m2 = land.to_model(theta)
    assert torch.equal(torch.cat([p.reshape(-1) for p in m2.parameters()]), theta)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    X = data_for("mlp")[0]
    assert torch.allclose(m2(X), land.outputs(theta), atol=1e-6)


def test_batchnorm_model_uses_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    model(torch.randn(32, 4))  # populate running stats in train mode
    X, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    land = Landscape(model, (X, y))
    model.eval()
    assert torch.allclose(land.outputs(land.theta), model(X), atol=1e-6)
    thetas = land.theta + 0.01 * torch.randn(3, land.n_params)
    assert torch.allclose(land.batched_loss(thetas), torch.stack([land.loss(t) for t in thetas]), atol=1e-6)


def test_binary_logistic_and_hinge_losses():
    torch.manual_seed(0)
    X = torch.randn(30, 3, dtype=torch.float64)
    y = torch.where(torch.randn(30) > 0, 1.0, -1.0).double()
    model = nn.Linear(3, 1).double()
    for loss, ref in [
        ("cross_entropy", lambda f: nn.functional.softplus(-y * f).mean()),
        ("hinge2", lambda f: 0.5 * torch.relu(1 - y * f).pow(2).mean()),
        ("mse", lambda f: 0.5 * (f - y).pow(2).mean()),
    ]:
        land = Landscape(model, (X, y), loss=loss)
        f = model(X).squeeze(-1)
        assert torch.allclose(land.loss(land.theta), ref(f), rtol=1e-12)
    land = Landscape(model, (X, y))
    assert land.error(land.theta) == pytest.approx(float(((model(X).squeeze(-1) * y) <= 0).double().mean()))


def test_bad_inputs_raise_config_error():
    X, y = data_for("mlp")
    with pytest.raises(ConfigError):
        Landscape(small_mlp(), (X, y[:-1]))
    with pytest.raises(ConfigError):
        Landscape(small_mlp(), (X, y), loss="nope")
    with pytest.raises(ConfigError):
        Landscape(small_mlp(), (X, y), dtype=torch.int32)
    land = Landscape(small_mlp(), (X, y))
    with pytest.raises(ConfigError):
        land.loss(torch.zeros(3))
    with pytest.raises(ConfigError):
        land.batched_loss(torch.zeros(land.n_params))


def test_sequence_losses_average_over_positions():
    torch.manual_seed(0)
    out = torch.randn(3, 5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (3, 5))
    from flatminima.landscape import LOSSES, predictions_error

    ref = nn.functional.cross_entropy(out.reshape(-1, 7), y.reshape(-1), reduction="none").view(3, 5).mean(-1)
    assert torch.allclose(LOSSES["cross_entropy"](out, y), ref, rtol=1e-12)
    assert torch.equal(predictions_error(out, y), (out.argmax(-1) != y).double().mean(-1))


@pytest.mark.parametrize("memory", [None, 0])
def test_hvp_operator_equals_hvp(land, memory):
    op = land.hvp_operator(land.theta, memory=memory)
    V = torch.randn(3, land.n_params, dtype=torch.float64)
    for v in V:
        assert rel(op.matvec(v), land.hvp(land.theta, v)) < 1e-12
    assert rel(op.matmat(V), land.hvp(land.theta, V)) < 1e-12
    assert op.n_products == 6 and op.shape == (land.n_params, land.n_params)


# ------------------------------------------------------------------------------------------ HVP operators
def dense_autograd_hessian(land, theta):
    def f(t):  # plain autograd through functional_call on all the data (no chunks)
        params = {n: s.view(shape) for n, s, shape in zip(land.names, torch.split(t, land.numels), land.shapes)}
        out = torch.func.functional_call(land.model, (params, land.buffers), (land.X,))
        return land.loss_fn(out, land.y).mean() + land.l2 * (t * t).sum()

    return torch.autograd.functional.hessian(f, theta)


@pytest.mark.parametrize("memory", [None, 0])
def test_hvp_operator_equals_the_dense_hessian(land, memory):
    """MLP and CNN, 4 chunks of data, l2 term: H v to round-off, one vector or a block, graphs kept or not."""
    theta = land.theta + 0.2 * torch.randn(land.n_params, dtype=torch.float64)
    H = dense_autograd_hessian(land, theta)
    op = land.hvp_operator(theta, memory=memory)
    V = torch.randn(3, land.n_params, dtype=torch.float64)
    for v in V:
        assert rel(op(v), H @ v) < 1e-10
    assert rel(op(V), V @ H) < 1e-10
    assert op(V[:0]).shape == (0, land.n_params)
    with pytest.raises(ConfigError):
        op(torch.zeros(3))
    idx = torch.tensor([0, 3, 5])  # a diagonal block
    assert rel(op.restrict(idx)(V[:, idx]), V[:, idx] @ H[idx][:, idx]) < 1e-10


def test_retained_hvp_memory_budget_keeps_some_chunks_and_recomputes_the_rest(land):
    theta = land.theta
    H = dense_autograd_hessian(land, theta)
    v = torch.randn(land.n_params, dtype=torch.float64)
    full = land.hvp_operator(theta)
    assert full.kept_bytes > 0 and full.recomputed_chunks == 0
    # the kept graphs hold at least the first layer's activations of every example
    first = next(m for m in land.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    width = first.out_features if isinstance(first, nn.Linear) else first.out_channels * 4 * 4
    assert full.kept_bytes >= land.n_examples * width * 8
    n_chunks = -(-land.n_examples // land.chunk)
    part = land.hvp_operator(theta, memory=full.kept_bytes // 2)
    assert 0 < part.recomputed_chunks < n_chunks and 0 < part.kept_bytes <= full.kept_bytes // 2
    none = land.hvp_operator(theta, memory=0)
    assert none.kept_bytes == 0 and none.recomputed_chunks == n_chunks
    for op in (full, part, none):
        assert rel(op(v), H @ v) < 1e-10
    with torch.no_grad():  # building and using the operator does not need grad mode
        assert rel(land.hvp_operator(theta)(v), H @ v) < 1e-10
    with pytest.raises(ConfigError):
        land.hvp_operator(theta, memory=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_retained_hvp_with_batchnorm_in_eval_mode(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model(torch.randn(32, 4))  # running statistics
    X, y = torch.randn(17, 4), torch.randint(0, 3, (17,))
    land = Landscape(model, (X, y), dtype=dtype, chunk=5)
    H = dense_autograd_hessian(Landscape(model, (X, y), dtype=torch.float64), land.theta.double())
    v = torch.randn(land.n_params, dtype=dtype)
    out = land.hvp_operator(land.theta)(v)
    assert out.dtype == dtype
    assert rel(out.double(), H @ v.double()) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_batched_loss_uses_the_batched_forward_of_any_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.Tanh(), nn.Sequential(nn.Linear(7, 5), nn.Softplus()),
                          nn.Linear(5, 3, bias=False))
    X = torch.randn(11, 2, 3, dtype=torch.float64)
    land = Landscape(model, (X, torch.randint(0, 3, (11,))), dtype=torch.float64)
    assert land.batched_forward.chain is not None and land.batched_forward.names == land.names
    thetas = land.theta + 0.3 * torch.randn(4, land.n_params, dtype=torch.float64)
    out = land.batched_forward(thetas, land.X)
    for k in range(4):
        assert torch.allclose(out[k], land.outputs(thetas[k]), rtol=1e-12, atol=1e-12)
    lin = nn.Linear(4, 4)  # one layer used twice: shared weights, not a chain (and batched_loss still right)
    shared = Landscape(nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(4, 2)),
                       (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,))), dtype=torch.float64)
    assert shared.batched_forward.chain is None
    T = shared.theta + 0.1 * torch.randn(3, shared.n_params, dtype=torch.float64)
    assert torch.allclose(shared.batched_loss(T), torch.stack([shared.loss(t) for t in T]), rtol=1e-12)
    f, g = shared.batched_loss_and_grad(T)
    for k in range(3):
        fk, gk = shared.loss_and_grad(T[k])
        assert torch.allclose(f[k], fk, rtol=1e-12) and torch.allclose(g[k], gk, rtol=1e-10, atol=1e-12)
