"""flatminima.linalg against exact oracles: dense eigendecompositions, exact traces and quadratic forms."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator
from scipy.sparse.linalg import eigsh as scipy_eigsh
from torch import nn

import flatminima
from flatminima import linalg
from flatminima.errors import ConfigError, ConvergenceError

F64 = torch.float64


def spectrum_matrix(ev, seed=0):
    """A dense symmetric matrix with eigenvalues ``ev`` and random eigenvectors."""
    n = len(ev)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (Q * torch.as_tensor(ev, dtype=F64)) @ Q.T


@pytest.fixture(scope="module")
def A():
    g = torch.Generator().manual_seed(1)
    return spectrum_matrix(torch.cat([torch.tensor([5.0, 4.0, 3.5]), torch.randn(57, generator=g)]).double())


def test_eigsh_top_bottom_and_largest_magnitude_match_eigh(A):
    ev = torch.linalg.eigvalsh(A)
    top = linalg.eigsh(A, k=3, tol=1e-10, criterion="residual")
    assert torch.allclose(top.values, ev.flip(0)[:3], rtol=1e-9)
    resid = (top.vectors @ A - top.values[:, None] * top.vectors).norm(dim=1)
    assert torch.allclose(resid, top.residuals, atol=1e-9) and resid.max() < 1e-9 * 5
    bot = linalg.eigsh(lambda v: A @ v, 60, k=2, which="SA", tol=1e-10)
    assert torch.allclose(bot.values, ev[:2], rtol=1e-9)
    B = spectrum_matrix([-6.0, 1.0, 2.0, 0.5, 0.1, 3.0])
    assert float(linalg.eigsh(B, k=1, which="LM", tol=1e-12).values[0]) == pytest.approx(-6.0, rel=1e-10)


def test_eigsh_restarts_reproduces_and_reports_failure(A):
    ev = torch.linalg.eigvalsh(A)
    small = linalg.eigsh(A, k=3, tol=1e-10, ncv=8, max_matvecs=5000)
    assert small.matvecs > 8 and torch.allclose(small.values, ev.flip(0)[:3], rtol=1e-9)  # it restarted
    gen = torch.Generator().manual_seed(4)
    again = linalg.eigsh(A, k=3, tol=1e-6, seed=gen)
    assert torch.equal(again.values, linalg.eigsh(A, k=3, tol=1e-6, seed=torch.Generator().manual_seed(4)).values)
    with pytest.raises(ConvergenceError):
        linalg.eigsh(A, k=5, tol=1e-14, ncv=7, max_matvecs=10)
    for bad in ({"which": "XX"}, {"k": 0}, {"tol": 0.0}, {"criterion": "nope"}):
        with pytest.raises(ConfigError):
            linalg.eigsh(A, **bad)
    with pytest.raises(ConfigError):
        linalg.eigsh(lambda v: A @ v)  # a plain callable without its dimension


def test_eigsh_exhausts_a_tiny_space_and_survives_invariant_subspaces():
    D = torch.diag(torch.tensor([3.0, -1.0, 2.0], dtype=F64))
    assert torch.allclose(linalg.eigsh(D, k=3, tol=1e-12).values, torch.tensor([3.0, 2.0, -1.0], dtype=F64))
    # rank 2 in R^40 with a start vector inside the invariant span: Lanczos must leave it to find the zeros
    U = torch.linalg.qr(torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64))[0]
    L = U @ torch.diag(torch.tensor([2.0, 1.0], dtype=F64)) @ U.T
    bot = linalg.eigsh(L, k=2, which="SA", tol=1e-10, v0=U[:, 0] + U[:, 1])
    assert torch.allclose(bot.values, torch.zeros(2, dtype=F64), atol=1e-10)


def test_ritz_error_estimates():
    vals = torch.tensor([3.0, 1.0, 0.9], dtype=F64)
    res = torch.tensor([1e-2, 0.05, 0.2], dtype=F64)
    err = linalg.ritz_errors(vals, res)
    assert err[0] == pytest.approx(1e-4 / (2.1 - 0.2))  # r^2 / gap, each gap shrunk by the neighbour's residual
    assert err[1] == pytest.approx(0.05)  # 0.1 - 0.2 < r: no separation, the plain residual
    assert err[2] == pytest.approx(0.2)
    assert linalg.ritz_errors(vals[:1], res[:1])[0] == res[0]  # one Ritz value: nothing to compare with
    # on an operator with a known spectrum the estimate bounds the true error of the top eigenvalue
    M = spectrum_matrix(torch.cat([torch.tensor([2.0, 1.5, 1.2]), torch.linspace(-0.3, 0.5, 197)]))
    for tol in (1e-2, 1e-5, 1e-8):
        for seed in range(5):
            e = linalg.eigsh(lambda v: M @ v, 200, k=1, tol=tol, seed=seed)
            assert abs(float(e.values[0]) - 2.0) <= float(e.errors[0]) <= tol * 2.0


def test_lanczos_tridiagonal_is_the_projection_batched_or_not(A):
    V = torch.randn(3, 60, generator=torch.Generator().manual_seed(2), dtype=F64)
    T, Q = linalg.lanczos(A, V, 12)
    for k in range(3):
        assert torch.allclose(Q[k] @ Q[k].T, torch.eye(12, dtype=F64), atol=1e-12)
        assert torch.allclose(Q[k] @ A @ Q[k].T, T[k], atol=1e-12)
        assert torch.allclose(T[k].triu(2), torch.zeros(12, 12, dtype=F64), atol=1e-12)  # tridiagonal
    T1, _ = linalg.lanczos(lambda v: A @ v, V[0], 12, dim=60)  # one run, 1-D start vector
    assert torch.allclose(T1, T[0], atol=1e-12)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors_and_exact_when_the_sketch_spans(A, method):
    exact = float(torch.trace(A))
    for seed in range(3):
        t = linalg.trace(A, matvecs=60, method=method, seed=seed)
        assert t.stderr > 0 and abs(t.value - exact) < 3 * t.stderr, (t, exact)
    full = linalg.trace(A, matvecs=180, method="hutch++")
    assert abs(full.value - exact) < 1e-10 and full.matvecs == 180
    with pytest.raises(ConfigError):
        linalg.trace(A, method="exact")


def test_trace_deflated_by_the_krylov_basis_of_eigsh():
    """tr A = tr(Q A Q^T) + tr(P A P): exact when the deflated part is zero, unbiased and with a smaller
    standard error than plain Hutchinson on a spectrum with a few large outliers."""
    g = torch.Generator().manual_seed(0)
    ev = torch.cat([torch.tensor([50.0, 30.0, 20.0, 12.0]), 0.3 * torch.randn(196, generator=g)]).double()
    B = spectrum_matrix(ev, seed=2)
    exact = float(ev.sum())
    top = linalg.eigsh(B, k=4, tol=1e-10)
    Q, T = top.krylov
    assert torch.allclose(Q @ Q.T, torch.eye(Q.shape[0], dtype=F64), atol=1e-10)
    assert torch.allclose(T, Q @ B @ Q.T, atol=1e-9)  # the projected operator, free from the Lanczos run
    plain = [linalg.trace(B, matvecs=40, method="hutchinson", seed=s) for s in range(8)]
    defl = [linalg.trace(B, matvecs=40, method="hutchinson", seed=s, deflate=top) for s in range(8)]
    for t in defl:
        assert abs(t.value - exact) < 4 * t.stderr
    assert max(t.stderr for t in defl) < 0.2 * min(t.stderr for t in plain)
    # low rank: the Krylov basis holds the whole range, the estimate is exact
    low = spectrum_matrix(torch.cat([torch.tensor([3.0, 2.0, 1.0]), torch.zeros(37)]), seed=1)
    full = linalg.eigsh(low, k=3, tol=1e-12)
    t = linalg.trace(low, matvecs=10, method="hutch++", deflate=full)
    assert abs(t.value - 6.0) < 1e-9 and t.stderr < 1e-9
    with pytest.raises(ConfigError):
        linalg.trace(B, deflate=(Q[:, :5], T))


def test_trace_to_a_relative_standard_error_stops_early_and_respects_the_budget():
    A = spectrum_matrix(torch.linspace(0.1, 3.0, 60), seed=3)
    exact = float(torch.trace(A))
    loose = linalg.trace(A, matvecs=3000, method="hutchinson", rtol=0.2, batch=8, seed=1)
    tight = linalg.trace(A, matvecs=3000, method="hutchinson", rtol=0.02, batch=8, seed=1)
    assert loose.stderr <= 0.2 * abs(loose.value) and tight.stderr <= 0.02 * abs(tight.value)
    assert 16 <= loose.matvecs < tight.matvecs <= 3000 and loose.matvecs % 8 == 0
    assert abs(tight.value - exact) < 4 * tight.stderr
    capped = linalg.trace(A, matvecs=24, method="hutch++", rtol=1e-6, batch=4, seed=0)
    assert capped.matvecs == 24 and capped.stderr > 1e-6 * abs(capped.value)  # budget spent, stderr reported
    with pytest.raises(ConfigError):
        linalg.trace(A, rtol=0.0)


def test_slq_single_probe_moments_are_exact_quadratic_forms(A):
    dens = linalg.density(A, n_probes=1, steps=10, seed=3)
    g = torch.Generator().manual_seed(3)
    v = (torch.randint(0, 2, (60,), generator=g) * 2 - 1).to(F64)  # the same draw as the probe
    v = v / v.norm()
    m = dens.moments(range(1, 12))  # Gauss quadrature with 10 nodes is exact up to degree 19
    Ak = v.clone()
    for k in range(1, 12):
        Ak = A @ Ak
        assert abs(m[k][0] - float(v @ Ak)) < 1e-9 * max(1.0, abs(float(v @ Ak))), k


def test_slq_moments_match_the_spectrum_and_the_generator_is_the_only_randomness(A):
    ev = torch.linalg.eigvalsh(A)
    dens = linalg.density(A, n_probes=30, steps=25, seed=0)
    assert torch.allclose(dens.weights.sum(1), torch.ones(30, dtype=F64))
    for k, (est, se) in dens.moments((1, 2, 3, 4)).items():
        assert abs(est - float((ev ** k).mean())) < 4 * se, k
    # more steps than the rank: Lanczos restarts inside the invariant subspace, seeded by the same generator
    L = spectrum_matrix([3.0, 1.0] + [0.0] * 18)
    a = linalg.density(L, n_probes=2, steps=20, seed=torch.Generator().manual_seed(5))
    b = linalg.density(L, n_probes=2, steps=20, seed=5)
    assert torch.equal(a.nodes, b.nodes)
    assert torch.allclose((a.weights * a.nodes).sum(1).mean(), torch.tensor(4.0 / 20, dtype=F64), atol=0.3)


def test_numpy_and_scipy_operators_round_trip(A):
    An = A.numpy()
    op = LinearOperator((60, 60), matvec=lambda v: An @ v, dtype=np.float64)  # a numpy matvec
    assert torch.allclose(linalg.eigsh(op, k=2, tol=1e-10).values, linalg.eigsh(An, k=2, tol=1e-10).values,
                          rtol=1e-10)
    back = linalg.scipy_operator(A, batch=7)
    x = np.random.default_rng(0).standard_normal((60, 3))
    assert np.allclose(back.matvec(x[:, 0]), An @ x[:, 0], atol=1e-12)
    assert np.allclose(back.matmat(x), An @ x, atol=1e-12)
    vals = scipy_eigsh(back, k=2, which="LA", tol=1e-10)[0]
    assert np.allclose(np.sort(vals), torch.linalg.eigvalsh(A)[-2:].numpy(), rtol=1e-8)
    assert torch.allclose(linalg.to_dense(op), A, atol=1e-12)
    with pytest.raises(ConfigError):
        linalg.as_operator(torch.zeros(3, 4, dtype=F64))


def test_gauss_newton_split_sums_to_the_hinge_hessian():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(80, 5, generator=g, dtype=F64), torch.sign(torch.randn(80, generator=g, dtype=F64))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    with torch.no_grad():  # large enough outputs that some margins are satisfied
        for p in model.parameters():
            p.mul_(2.0)
    land = flatminima.Landscape(model, (X, y), loss="hinge2")

    def residuals(t):  # Delta_mu = 1 - y_mu f(x_mu)
        return 1.0 - y * land.forward(t, X).squeeze(-1)

    D = residuals(land.theta)
    assert 0 < int((D > 0).sum()) < 80
    H0, Hp = linalg.gauss_newton_split(residuals, land.theta, torch.relu, lambda d: (d > 0).to(d.dtype), chunk=16)
    assert torch.allclose(H0 + Hp, land.dense_hessian(land.theta), atol=1e-12)
    J = torch.autograd.functional.jacobian(residuals, land.theta)  # H0 = (1/P) J_active^T J_active
    assert torch.allclose(H0, J.T @ ((D > 0).to(F64)[:, None] * J) / 80, atol=1e-12)
    assert torch.linalg.eigvalsh(H0).min() > -1e-12
