"""flatminima.measures against exact oracles: dense eigendecompositions, finite differences, closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import flatminima
from flatminima.errors import ConfigError, ConvergenceError
from flatminima.measures import hessian, local_energy, local_entropy, slices

torch.set_num_threads(1)
F64 = torch.float64


def _mlp_landscape(loss="cross_entropy", out=3, P=120, seed=0, dtype=F64, act=nn.Tanh):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, 5, generator=g, dtype=F64)
    y = torch.randint(0, out, (P,), generator=g) if out > 1 else torch.sign(torch.randn(P, generator=g, dtype=F64))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), act(), nn.Linear(8, out))
    # move away from the initialisation so the Hessian is indefinite and its top eigenvalues are spread
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return flatminima.Landscape(model, (X, y), loss=loss, dtype=dtype, chunk=50)


@pytest.fixture(scope="module")
def land():
    return _mlp_landscape()


@pytest.fixture(scope="module")
def dense_H(land):
    return hessian.dense(land)


def _quadratic_landscape(d=5, P=300, seed=0):
    """f(w) = 1/(2P) |X w - y|^2 = 1/2 (w - w0)^T A (w - w0) + c, A = X^T X / P."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, d, generator=g, dtype=F64) * torch.linspace(0.5, 1.5, d, dtype=F64)
    y = torch.randn(P, generator=g, dtype=F64)
    model = nn.Linear(d, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=F64))
    land = flatminima.Landscape(model, (X, y), loss="mse")
    A = X.T @ X / P
    w0 = torch.linalg.solve(A, X.T @ y / P)
    c = float(land.loss(w0))
    return land, A, w0, c


# ------------------------------------------------------------------------------------------ dense / HVP
def test_dense_matches_finite_differences_of_the_gradient(land, dense_H):
    theta = land.theta
    eps = 1e-6
    E = torch.eye(land.n_params, dtype=F64)
    cols = [(land.grad(theta + eps * E[i]) - land.grad(theta - eps * E[i])) / (2 * eps) for i in range(0, land.n_params, 7)]
    fd = torch.stack(cols)
    assert torch.allclose(dense_H[::7], fd, atol=1e-7, rtol=1e-6)
    assert torch.allclose(dense_H, dense_H.T)


# ------------------------------------------------------------------------------------------ Lanczos
def test_lanczos_top5_matches_dense_eigendecomposition(land, dense_H):
    ev, V = torch.linalg.eigh(dense_H)
    top = hessian.top_eigenvalues(land, k=5, tol=1e-10, criterion="residual")  # the vectors are checked too
    want = ev.flip(0)[:5]
    rel = ((top.values - want).abs() / want.abs()).max()
    assert rel < 1e-6, rel
    assert top.converged
    # eigenvectors: orthonormal and H v = lambda v
    assert torch.allclose(top.vectors @ top.vectors.T, torch.eye(5, dtype=F64), atol=1e-8)
    resid = (top.vectors @ dense_H - top.values[:, None] * top.vectors).norm(dim=1)
    assert resid.max() < 1e-7 * want.abs().max()


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_eigenvalue_criterion_makes_tol_the_relative_accuracy_of_the_eigenvalues(land, dense_H, tol):
    want = torch.linalg.eigvalsh(dense_H).flip(0)[:3]
    top = hessian.top_eigenvalues(land, k=3, tol=tol, return_vectors=False)
    assert top.converged and top.criterion == "eigenvalue"
    assert (top.errors <= tol * top.values.abs()).all()  # what it certifies ...
    assert ((top.values - want).abs() <= tol * want.abs()).all()  # ... and what it achieves
    assert (top.errors <= top.residuals).all()
    res = hessian.top_eigenvalues(land, k=3, tol=tol, return_vectors=False, criterion="residual")
    assert top.matvecs <= res.matvecs  # the residual rule asks for much more than eigenvalue accuracy tol
    assert ((res.values - want).abs() <= tol * want.abs()).all()
    with pytest.raises(ConfigError):
        hessian.top_eigenvalues(land, k=1, criterion="nope")


@pytest.mark.parametrize("start", ["auto", "gradient", "random"])
def test_top_eigenvalues_from_each_start_vector(land, dense_H, start):
    want = torch.linalg.eigvalsh(dense_H).flip(0)[:3]
    top = hessian.top_eigenvalues(land, k=3, tol=1e-10, start=start, return_vectors=False)
    assert torch.allclose(top.values, want, rtol=1e-9)


def test_gradient_start_uses_the_retained_gradient_and_needs_it():
    land = _mlp_landscape(P=60)
    op = land.hvp_operator(land.theta)
    assert torch.allclose(op.gradient, land.grad(land.theta), rtol=1e-12, atol=1e-14)
    # a block: the start is the block of the gradient
    blk = hessian.operator(land, block="0.weight")
    assert torch.allclose(blk.gradient, land.grad(land.theta)[: blk.shape[0]], rtol=1e-12, atol=1e-14)
    with pytest.raises(ConfigError):
        hessian.top_eigenvalues(land, start="sideways")
    # an operator that kept no graph computed no gradient: "gradient" refuses, "auto" starts at random
    bare = land.hvp_operator(land.theta, memory=0)
    assert bare.gradient is None and hessian.start_vector(bare, "auto", 0) is None
    with pytest.raises(ConfigError):
        hessian.start_vector(bare, "gradient", 0)


def test_lanczos_restarts_with_a_small_basis(land, dense_H):
    ev = torch.linalg.eigvalsh(dense_H)
    top = hessian.top_eigenvalues(land, k=3, tol=1e-9, ncv=8, max_matvecs=5000)
    assert top.matvecs > 8  # it had to restart
    assert torch.allclose(top.values, ev.flip(0)[:3], rtol=1e-7, atol=1e-12)


def test_bottom_eigenvalues_match_dense(land, dense_H):
    ev = torch.linalg.eigvalsh(dense_H)
    assert ev[0] < 0  # the test point is a saddle-like point
    bot = hessian.bottom_eigenvalues(land, k=3, tol=1e-9, max_matvecs=5000)
    assert torch.allclose(bot.values, ev[:3], rtol=1e-6, atol=1e-10)


def test_convergence_error(land):
    with pytest.raises(ConvergenceError):
        hessian.top_eigenvalues(land, k=5, tol=1e-14, ncv=7, max_matvecs=10)


def test_lanczos_float32_is_close(land, dense_H):
    land32 = _mlp_landscape(dtype=torch.float32)
    ev = torch.linalg.eigvalsh(dense_H)
    top = hessian.top_eigenvalues(land32, k=2, tol=1e-4)
    assert top.values.dtype == torch.float32
    assert torch.allclose(top.values.double(), ev.flip(0)[:2], rtol=1e-4)


def test_per_layer_blocks_match_dense_sub_blocks(land, dense_H):
    for name in land.names:
        idx = hessian.block_indices(land, name)
        sub = dense_H[idx][:, idx]
        k = min(2, idx.numel())
        top = hessian.top_eigenvalues(land, k=k, tol=1e-10, block=name)
        assert torch.allclose(top.values, torch.linalg.eigvalsh(sub).flip(0)[:k], rtol=1e-7, atol=1e-12)
    both = hessian.block_indices(land, "2.")  # a prefix: every tensor of the submodule
    assert torch.allclose(hessian.dense(land, block="2."), dense_H[both][:, both], atol=1e-12)
    with pytest.raises(ConfigError):
        hessian.block_indices(land, "nope")


# ------------------------------------------------------------------------------------------ trace
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors(land, dense_H, method):
    exact = float(torch.trace(dense_H))
    for seed in range(3):
        t = hessian.trace(land, matvecs=60, method=method, seed=seed)
        assert t.stderr > 0
        assert abs(t.value - exact) < 3 * t.stderr, (t, exact)


def test_hutchpp_is_exact_when_the_sketch_spans_the_space(dense_H, land):
    t = hessian.trace(land, matvecs=3 * land.n_params, method="hutch++")
    assert abs(t.value - float(torch.trace(dense_H))) < 1e-8
    blk = hessian.trace(land, matvecs=60, method="hutch++", block="2.bias")  # 3 x 3 block, exact
    assert abs(blk.value - float(torch.trace(dense_H[-3:, -3:]))) < 1e-10


# ------------------------------------------------------------------------------------------ SLQ
def test_slq_single_probe_moments_are_exact_quadratic_forms(land, dense_H):
    dens = hessian.density(land, n_probes=1, steps=10, seed=3)
    g = torch.Generator().manual_seed(3)
    v = (torch.randint(0, 2, (land.n_params,), generator=g) * 2 - 1).to(F64)  # the same draw as the probe
    v = v / v.norm()
    m = dens.moments(range(1, 12))  # Gauss quadrature with 10 nodes is exact up to degree 19
    Hk = v.clone()
    for k in range(1, 12):
        Hk = dense_H @ Hk
        exact = float(v @ Hk)
        assert abs(m[k][0] - exact) < 1e-9 * max(1.0, abs(exact)), (k, m[k][0], exact)


def test_slq_moments_match_the_dense_spectrum(land, dense_H):
    ev = torch.linalg.eigvalsh(dense_H)
    dens = hessian.density(land, n_probes=30, steps=25, seed=0)
    assert torch.allclose(dens.weights.sum(1), torch.ones(30, dtype=F64))
    for k, (est, se) in dens.moments((1, 2, 3, 4)).items():
        exact = float((ev ** k).mean())
        assert abs(est - exact) < 4 * se, (k, est, se, exact)


def test_density_integrates_to_one_in_lambda_and_omega(land):
    dens = hessian.density(land, n_probes=2, steps=20)
    for var in ("lambda", "omega"):
        x, d = dens.evaluate(variable=var, points=4000)
        assert abs(np.trapezoid(d, x) - 1.0) < 1e-3
    x, d = dens.evaluate(counts=True, points=4000)
    assert abs(np.trapezoid(d, x) - land.n_params) < 1e-2 * land.n_params


# ------------------------------------------------------------------------------------------ local energy
@pytest.mark.parametrize("kind", ["multiplicative", "additive", "filter"])
def test_local_energy_of_a_quadratic_matches_the_closed_form(kind):
    land, A, w0, c = _quadratic_landscape()
    th = land.theta
    sig = [0.1, 0.4]
    le = local_energy.local_energy(land, th, sigmas=sig, n_samples=3000, measure="loss", kind=kind, batch=1000)
    if kind == "multiplicative":
        curv = float((torch.diag(A) * th * th).sum())
    elif kind == "additive":
        curv = float(torch.trace(A))
    else:  # one factor for the single output row: theta -> theta (1 + sigma xi)
        curv = float(th @ A @ th)
    for s, d, e in zip(le.sigmas, le.delta, le.stderr):
        exact = 0.5 * s * s * curv
        assert abs(d - exact) < 4 * e, (s, d, e, exact)


def test_local_energy_common_random_numbers_and_batching():
    land = _mlp_landscape()
    a = local_energy.local_energy(land, sigmas=[0.0, 0.2, 0.5], n_samples=40, batch=40, seed=7)
    b = local_energy.local_energy(land, sigmas=[0.5], n_samples=40, batch=7, seed=7)
    assert np.allclose(a.samples[2], b.samples[0], atol=1e-12)  # same draws, whatever the batch / sigma grid
    assert np.allclose(a.delta[0], 0.0) and np.allclose(a.stderr[0], 0.0)  # sigma = 0: nothing moves
    c = local_energy.local_energy(land, sigmas=[0.5], n_samples=40, seed=8)
    assert not np.allclose(a.samples[2], c.samples[0])
    # the error of each sample equals the error of the explicitly perturbed model
    z = local_energy._draws(7, 0, 1, land.n_params, F64, "cpu")[0]
    assert abs(land.error(land.theta * (1 + 0.2 * z)) - a.samples[1, 0]) < 1e-12


def test_local_energy_batchnorm_policy_and_errors():
    X, y = torch.randn(30, 4, dtype=F64), torch.randint(0, 2, (30,))
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).to(F64)
    land = flatminima.Landscape(model, (X, y))
    mask = local_energy.perturbation_mask(land, "exclude")
    idx = hessian.block_indices(land, ["1.weight", "1.bias"])
    assert mask[idx].sum() == 0 and mask.sum() == land.n_params - 12
    le = local_energy.local_energy(land, sigmas=[0.1], n_samples=4, bn="exclude")
    assert le.bn == "exclude"
    with pytest.raises(ConfigError):
        local_energy.local_energy(land, sigmas=[-0.1])
    with pytest.raises(ConfigError):
        local_energy.local_energy(land, kind="nope")
    with pytest.raises(ConfigError):
        local_energy.local_energy(land, bn="recalibrate")


def _teacher_linear_landscape(P=400, d=6, seed=0):
    """A linear binary classifier near a teacher (labels = sign of a nearby direction)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, d, generator=g, dtype=F64)
    model = nn.Linear(d, 1).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=F64))
        model.bias.fill_(0.1)
        teacher = model.weight[0] + 0.3 * torch.randn(d, generator=g, dtype=F64)
    y = torch.sign(X @ teacher)
    return flatminima.Landscape(model, (X, y))


@pytest.mark.parametrize("kind", ["multiplicative", "additive", "filter"])
def test_local_energy_of_a_linear_classifier_matches_the_closed_form(kind):
    """E_z[1{y (w(z) . x + b(z)) <= 0}] = Phi(-y m / s) per example, m = w . x + b and s^2 its noise variance."""
    from scipy.stats import norm

    land = _teacher_linear_landscape()
    X, y = land.X, land.y
    w, b = land.theta[:-1], land.theta[-1]
    m = X @ w + b
    for sigma in (0.2, 0.6):
        if kind == "multiplicative":
            s = sigma * torch.sqrt((X * X) @ (w * w) + b * b)
        elif kind == "additive":
            s = sigma * torch.sqrt((X * X).sum(1) + 1)
        else:  # one factor for the weight row, one for the bias
            s = sigma * torch.sqrt((X @ w) ** 2 + b * b)
        exact = float(np.mean(norm.cdf((-y * m / s).numpy())))
        for method in ("copies", "lrt"):
            le = local_energy.local_energy(land, sigmas=[sigma], n_samples=3000, kind=kind, method=method, batch=1000)
            assert le.method == method
            assert abs(le.base + le.delta[0] - exact) < 4 * le.stderr[0], (kind, sigma, method, le.delta, exact)


@pytest.mark.parametrize("kind", ["multiplicative", "additive", "filter"])
def test_local_energy_lrt_agrees_with_perturbed_copies(kind):
    land = _mlp_landscape(P=150)
    land.l2 = 1e-2
    for measure in ("error", "loss"):
        a = local_energy.local_energy(land, sigmas=[0.1, 0.5], n_samples=2000, kind=kind, measure=measure, batch=500)
        b = local_energy.local_energy(land, sigmas=[0.1, 0.5], n_samples=2000, kind=kind, measure=measure, batch=500,
                                      method="lrt")
        assert a.base == b.base
        close = np.abs(a.delta - b.delta) < 4 * np.sqrt(a.stderr ** 2 + b.stderr ** 2)
        assert close.all(), (measure, a.delta, b.delta)


def test_local_energy_lrt_draws_do_not_depend_on_batching():
    land = _mlp_landscape(P=120)
    a = local_energy.local_energy(land, sigmas=[0.0, 0.2, 0.5], n_samples=40, seed=3, method="lrt")
    b = local_energy.local_energy(land, sigmas=[0.5], n_samples=40, seed=3, method="lrt", batch=16, budget=50)
    c = local_energy.local_energy(land, sigmas=[0.5], n_samples=70, seed=3, method="lrt", budget=3000)
    assert np.allclose(a.samples[2], b.samples[0], atol=1e-12)
    assert np.allclose(a.samples[2], c.samples[0, :40], atol=1e-12)
    assert np.allclose(a.delta[0], 0.0) and np.allclose(a.stderr[0], 0.0)
    assert a.to_dict()["method"] == "lrt"


def test_local_energy_lrt_refuses_where_it_is_not_exact():
    X, y = torch.randn(30, 4, dtype=F64), torch.randint(0, 2, (30,))
    bn = flatminima.Landscape(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).to(F64),
                              (X, y))
    cnn = flatminima.Landscape(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)).to(F64),
                               (torch.randn(30, 1, 4, 4, dtype=F64), y))
    for land in (bn, cnn):
        with pytest.raises(ConfigError):
            local_energy.local_energy(land, sigmas=[0.1], n_samples=4, method="lrt")
        assert local_energy.local_energy(land, sigmas=[0.1], n_samples=4, method="auto").method == "copies"
    with pytest.raises(ConfigError):
        local_energy.local_energy(bn, method="magic")
    # auto takes lrt on wide inputs, copies on small networks where a perturbed copy is cheap
    wide = flatminima.Landscape(nn.Sequential(nn.Linear(400, 4), nn.ReLU(), nn.Linear(4, 2)).to(F64),
                                (torch.randn(30, 400, dtype=F64), y))
    assert local_energy.local_energy(wide, sigmas=[0.1], n_samples=4, method="auto").method == "lrt"
    assert local_energy.local_energy(_mlp_landscape(), sigmas=[0.1], n_samples=4, method="auto").method == "copies"


# ------------------------------------------------------------------------------------------ local entropy
def test_local_entropy_of_a_quadratic_matches_the_closed_form():
    land, A, w0, c = _quadratic_landscape(d=4, P=200)
    th = w0 + 0.3 * torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=F64)
    beta = 5.0
    lam = float(torch.linalg.eigvalsh(A)[-1])
    gammas = np.geomspace(200 * beta * lam, beta * lam / 5, 10)
    R = local_entropy.local_entropy(land, th, gammas=gammas, beta=beta, n_chains=64, steps=150, burn_in=60,
                                    lr=0.03, seed=0)
    assert abs(R.base_loss - float(land.loss(th))) < 1e-12
    for g, m, ms, F, Fs in zip(R.gammas, R.mean_sq_dist, R.mean_sq_dist_stderr, R.free_entropy,
                               R.free_entropy_stderr):
        Fc, mc = local_entropy.quadratic_free_entropy(A, w0, c, th, beta, g)
        assert abs(m - mc) < 4 * ms + 0.03 * mc, (g, m, ms, mc)
        assert abs(F - Fc) < 4 * Fs + 0.05, (g, F, Fs, Fc)
    # flatter neighbourhood (smaller gamma) costs entropy relative to the Gaussian: F decreases as gamma drops
    assert R.free_entropy[0] > R.free_entropy[-1]


def test_batched_loss_and_grad_matches_landscape():
    land = _mlp_landscape()
    T = land.theta + 0.1 * torch.randn(3, land.n_params, dtype=F64)
    f, g = land.batched_loss_and_grad(T)
    for i in range(3):
        fi, gi = land.loss_and_grad(T[i])
        assert abs(float(f[i] - fi)) < 1e-12 and torch.allclose(g[i], gi, atol=1e-12)


# ------------------------------------------------------------------------------------------ slices
def test_slices_match_pointwise_losses_and_filter_normalisation(tmp_path):
    land = _mlp_landscape()
    th = land.theta
    d = slices.random_direction(land, th, seed=1)
    for w, v in zip(land.unflatten(th).values(), land.unflatten(d).values()):
        if w.dim() == 1:
            assert (v == 0).all()
        else:
            assert torch.allclose(v.norm(dim=1), w.norm(dim=1), rtol=1e-8)
    s1 = slices.slice_1d(land, th, d, [-0.5, 0.0, 0.7])
    for a, f, e in zip(s1.alphas, s1.values["loss"], s1.values["error"]):
        assert abs(f - float(land.loss(th + a * d))) < 1e-12
        assert abs(e - land.error(th + a * d)) < 1e-12
    d2 = slices.random_direction(land, th, seed=2, norm="layer")
    s2 = slices.slice_2d(land, th, d, d2, [-0.3, 0.3], [0.0, 0.2, 0.4], rows=4)
    assert s2.values["loss"].shape == (2, 3)
    assert abs(s2.values["loss"][1, 2] - float(land.loss(th + 0.3 * d + 0.4 * d2))) < 1e-12
    slices.plot_1d({"a": s1}, tmp_path / "s1.png")
    slices.plot_2d(s2, tmp_path / "s2.png")
    assert (tmp_path / "s1.png").stat().st_size > 0 and (tmp_path / "s2.png").stat().st_size > 0


def test_interpolation_barrier_of_a_quadratic():
    land, A, w0, c = _quadratic_landscape()
    ta, tb = w0 + 1.0, w0 - 1.0
    path = slices.interpolate(land, ta, tb, np.linspace(0, 1, 11), measures=("loss",))
    # convex: the path never rises above the chord, barrier 0 at the end points
    assert path.barrier["loss"] == pytest.approx(0.0, abs=1e-12)
    t = path.alphas
    exact = [float(0.5 * (ta + s * (tb - ta) - w0) @ A @ (ta + s * (tb - ta) - w0)) + c for s in t]
    assert np.allclose(path.values["loss"], exact, atol=1e-12)
