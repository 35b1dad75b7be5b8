"""flatminima.jamming against exact oracles: finite differences, explicit sums, per-example loops,
planted thresholds and synthetic power-law samples."""

import math

import numpy as np
import pytest
import torch

from flatminima.errors import ConfigError
from flatminima.jamming import METHODS, HingeProblem, adam_protocol, hinge_loss, minimize, network, random_data
from flatminima.jamming.certify import certify
from flatminima.jamming.kinks import kink_analysis
from flatminima.jamming.newton import hinge_newton
from flatminima.jamming.problem import fashion_pca_data, n_params
from flatminima.jamming.spectrum import hessian_split, omega_density
from flatminima.jamming.stats import delta_histograms, jamming_exponents, powerlaw_fit, split_sides
from flatminima.jamming.transition import RunConfig, classify, find_threshold, jamming_run

torch.set_num_threads(1)


def small_problem(P=30, d=4, N=40, depth=2, activation="tanh", seed=0, d_out=1):
    X, y = random_data(P, d, seed=seed)
    if d_out > 1:
        y = torch.randint(0, d_out, (P,), generator=torch.Generator().manual_seed(seed))
    model = network(N, d, depth, activation, seed=seed, d_out=d_out)
    return HingeProblem(model, X, y)


# ----------------------------------------------------------------------------- loss and gradient
def test_hinge_loss_matches_explicit_sum():
    delta = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    assert float(hinge_loss(delta)) == pytest.approx((0.25 + 4.0) / 8)
    D = torch.tensor([[0.5, -1.0], [2.0, 1.0]], dtype=torch.float64)  # multi-class: summed over outputs
    assert float(hinge_loss(D)) == pytest.approx((0.25 + 4.0 + 1.0) / 4)


def test_hessian_split_multiclass_sums_to_the_hessian():
    pr = small_problem(P=12, d=3, N=20, depth=1, activation="tanh", d_out=3)
    mats = hessian_split(pr, pr.landscape.theta)
    assert torch.allclose(mats["H"], pr.landscape.dense_hessian(pr.landscape.theta), atol=1e-12)


@pytest.mark.parametrize("d_out", [1, 3])
def test_loss_and_gradient_against_finite_differences(d_out):
    pr = small_problem(d_out=d_out)
    g_ = torch.Generator().manual_seed(3)
    theta = pr.landscape.theta + 0.5 * torch.randn(pr.N, generator=g_, dtype=torch.float64)
    f, g = pr.loss_and_grad(theta)
    # the loss equals (1/2P) sum relu(1 - Y f)^2 computed from the raw outputs
    with torch.no_grad():
        out = pr.landscape.to_model(theta)(pr.X).reshape(pr.P, -1).squeeze(-1)
    expected = 0.5 * (torch.relu(1 - pr.Y * out) ** 2).sum() / pr.P
    assert float(f) == pytest.approx(float(expected), rel=1e-12)
    assert pr.loss(theta) == pytest.approx(float(f), rel=1e-12)
    assert float(pr.landscape.loss(theta)) == pytest.approx(float(f), rel=1e-12)
    for _ in range(3):
        v = torch.randn(pr.N, generator=g_, dtype=torch.float64)
        eps = 1e-6
        fd = (pr.loss(theta + eps * v) - pr.loss(theta - eps * v)) / (2 * eps)
        assert float(g @ v) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_multiclass_targets_and_counts():
    pr = small_problem(d_out=3)
    assert pr.Y.shape == (30, 3)
    assert bool(((pr.Y == 1).sum(1) == 1).all()) and bool(((pr.Y == -1).sum(1) == 2).all())
    theta = pr.landscape.theta
    delta = pr.stabilities(theta)
    assert delta.shape == (30, 3)
    assert pr.n_delta(theta) == int((delta > 0).sum())
    out = pr.outputs(theta)
    assert pr.train_errors(theta) == int((out.argmax(1) != pr.Y.argmax(1)).sum())


def test_bad_labels_raise():
    X, _ = random_data(10, 3)
    with pytest.raises(ConfigError):
        HingeProblem(network(20, 3, 1), X, torch.full((10,), 0.5, dtype=torch.float64))
    with pytest.raises(ConfigError):
        HingeProblem(network(20, 3, 1, d_out=3), X, torch.full((10,), 5))


def test_data_is_centred_on_the_sphere():
    X, y = random_data(50, 7, seed=2)
    assert torch.allclose(X.norm(dim=1), torch.full((50,), math.sqrt(7), dtype=torch.float64))
    assert set(y.tolist()) <= {-1.0, 1.0}
    X2, _ = random_data(50, 7, seed=2)
    assert torch.equal(X, X2)


def test_fashion_pca_data():
    try:
        X, y, Xt, yt = fashion_pca_data(200, d=10, seed=0, P_test=50)
    except Exception as e:  # data not installed on this machine
        pytest.skip(f"Fashion-MNIST not available: {e}")
    assert X.shape == (200, 10) and Xt.shape == (50, 10)
    assert torch.allclose(X.norm(dim=1), torch.full((200,), math.sqrt(10), dtype=torch.float64))
    assert int((y == 1).sum()) == 100  # balanced: 20 per class, five classes labelled +1


def test_network_hits_the_parameter_count():
    for depth in (1, 2, 3, 5):
        m = network(500, 10, depth, seed=0)
        w = n_params(m, "weights")
        assert w <= 500
        # one more neuron would exceed the target (fractional widths: resolution of one neuron)
        assert w + max(m.widths) + 10 + 2 > 500
        assert n_params(m, "all") == sum(p.numel() for p in m.parameters())
        assert n_params(m, "relu") == w - sum(m.widths)


# ----------------------------------------------------------------------------- minimisation
def test_overparametrised_instance_reaches_zero_loss():
    pr = small_problem(P=20, d=5, N=300, depth=2, activation="relu")
    res = minimize(pr, max_iter=20_000)
    assert res.certificate == "zero_loss" and res.sat
    assert res.loss == 0.0 and res.n_delta == 0
    assert bool((pr.stabilities(res.theta) <= 0).all())
    assert pr.train_errors(res.theta) == 0


def _linear_hinge_optimum(X, y):
    """Exact minimum of the (convex) quadratic hinge of a linear predictor w.x + b: active-set Newton."""
    Xt = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    beta = torch.zeros(Xt.shape[1], dtype=X.dtype)
    for _ in range(100):
        A = (1 - y * (Xt @ beta)) > 0
        beta = torch.linalg.lstsq(y[A, None] * Xt[A], torch.ones(int(A.sum()), 1, dtype=X.dtype)).solution.squeeze(1)
        if torch.equal((1 - y * (Xt @ beta)) > 0, A):
            break
    return float((torch.relu(1 - y * (Xt @ beta)) ** 2).sum()) / (2 * X.shape[0])


def linear_problem():
    # a one-hidden-layer *linear* network: its minima are the global minimum of the convex linear hinge
    # problem (any w.x + b is representable), its origin is a known saddle
    X, y = random_data(40, 3, seed=0)
    return HingeProblem(network(15, 3, 1, activation="linear", seed=0), X, y), X, y


def test_certificate_accepts_the_minimum_of_a_deep_linear_network():
    pr, X, y = linear_problem()
    res = minimize(pr, max_iter=300)
    assert res.certificate == "minimum" and res.jammed and res.certified
    assert res.loss == pytest.approx(_linear_hinge_optimum(X, y), rel=1e-12)
    assert res.check["grad_rel"] <= 1e-12
    assert res.check["lambda_min"] >= -1e-12 * res.check["lambda_max"]
    # the same point, certified from scratch
    assert certify(pr, res.theta).name == "minimum"
    # matrix-free (Lanczos on Hessian-vector products) against the dense spectrum
    lanczos = certify(pr, res.theta, dense_max=0)
    ev = torch.linalg.eigvalsh(pr.landscape.dense_hessian(res.theta))
    assert lanczos.name == "minimum" and lanczos.hessian == "lanczos"
    assert lanczos.lambda_max == pytest.approx(float(ev[-1]), rel=1e-8)
    assert lanczos.lambda_min == pytest.approx(float(ev[0]), abs=1e-8 * float(ev[-1]))


def test_certificate_rejects_a_saddle_and_the_polish_escapes_it():
    pr, X, y = linear_problem()
    # all weights and hidden biases 0, output bias at the best constant: stationary (every weight gradient is
    # a product with a zero factor), but the weight-weight cross block of the Hessian makes it indefinite
    b = 0.0
    for _ in range(100):
        A = (1 - y * b) > 0
        b = float(y[A].sum() / A.sum())
    theta = torch.zeros(pr.N, dtype=torch.float64)
    theta[-1] = b
    c = certify(pr, theta)
    assert c.grad_rel <= 1e-12  # first-order stationary ...
    assert c.name == "saddle" and c.ratio < -1e-3  # ... but not a minimum
    H = pr.landscape.dense_hessian(theta)
    assert float(torch.linalg.eigvalsh(H)[0]) == pytest.approx(c.lambda_min, rel=1e-10)
    r = hinge_newton(pr, theta, max_iter=200)
    assert r.loss < pr.loss(theta) - 1e-3
    assert r.loss == pytest.approx(_linear_hinge_optimum(X, y), rel=1e-12)
    assert certify(pr, r.theta).name == "minimum"


def test_stall_is_not_a_certificate():
    # P = 60 patterns against 25 parameters, tanh: first-order methods stall with L > 0, but the stall is
    # no certificate (this landscape keeps descending towards saturated, growing weights)
    X, y = random_data(60, 4, seed=2)
    pr = HingeProblem(network(20, 4, 1, activation="tanh", seed=0), X, y)
    res = minimize(pr, max_iter=2000, polish=0)
    assert res.loss > 0 and res.certificate == "none" and not res.jammed and not res.certified


def relu_jammed_instance(seed=0, depth=2, N=40, P=80, d=5):
    X, y = random_data(P, d, seed=seed + 2)
    return HingeProblem(network(N, d, depth, activation="relu", seed=seed), X, y)


def test_polish_reaches_round_off_and_the_active_stability_gradients_are_dependent():
    pr = relu_jammed_instance()
    res = minimize(pr, max_iter=4000)
    assert res.certificate == "minimum" and res.loss > 0
    assert res.check["grad_rel"] <= 1e-13 and res.grad_norm <= 1e-13
    assert res.check["kinks"] == 0 and res.check["kink_margin"] > 1e-6
    # stationarity with L > 0: the active stabilities' gradients are linearly dependent, N_Delta > rank J_A
    from flatminima.jamming.newton import stabilities_jacobian

    delta, J = stabilities_jacobian(pr, res.theta)
    rank = int(torch.linalg.matrix_rank(J[delta > 0]))
    assert res.n_delta > rank
    # stability: H = H0 + Hp >= 0 with rank H0 <= N_Delta, so Hp has at most N_Delta negative modes
    mats = hessian_split(pr, res.theta)
    hp = torch.linalg.eigvalsh(mats["Hp"])
    assert int((hp < -1e-10 * float(hp.abs().max())).sum()) <= res.n_delta
    assert 0 < pr.effective_params(res.theta) <= pr.N


def test_jammed_minimum_has_at_least_as_many_unsatisfied_constraints_as_effective_parameters():
    # deep in the under-parametrised phase (P = 60 patterns, 25 parameters): a certified jammed minimum
    # (here on activation kinks of the ReLU network) is isostatic or hyperstatic, N_Delta >= N_eff, the
    # numerical rank of the output Jacobian (the effective number of parameters)
    pr = relu_jammed_instance(seed=1, depth=1, N=20, P=60, d=4)
    res = minimize(pr, max_iter=4000)
    assert res.certificate in ("minimum", "kink_minimum") and res.loss > 0
    assert res.n_delta > 0.1 * pr.N  # jammed by the authors' rule
    n_eff = pr.effective_params(res.theta)
    assert 0 < n_eff <= pr.N
    assert res.n_delta >= n_eff


def _masked_depth1_loss(pr, theta, off):
    """Oracle: the hinge loss of a one-hidden-layer ReLU network written out by hand, with the (pattern, unit)
    entries of the boolean (P, h) mask ``off`` held off whatever the sign of their pre-activation."""
    p = pr.landscape.unflatten(theta)
    a = torch.relu(pr.X @ p["1.weight"].T + p["1.bias"]) * (~off)
    out = a @ p["3.weight"].reshape(-1) + p["3.bias"]
    return 0.5 * (torch.relu(1 - pr.Y * out) ** 2).sum() / pr.P


def _kink_mask(pr, ka):
    h = ka["z"].numel() // ka["rows"].numel()
    off = torch.zeros(pr.P, h, dtype=torch.bool)
    off[ka["rows"][ka["index"] // h], ka["index"] % h] = True
    return off


def test_piece_derivatives_against_the_hand_written_masked_loss():
    # the piece with chosen kinks held off: gradient and Hessian against autograd of the explicit formula
    from flatminima.jamming.kinks import piece_derivatives

    pr = relu_jammed_instance(seed=1, depth=1, N=20, P=60, d=4)
    theta = pr.landscape.theta
    ka = kink_analysis(pr, theta, radius=0.05)  # a few entries near their kink, all held off
    assert 0 < ka["index"].numel() < ka["z"].numel()
    off = _kink_mask(pr, ka)
    delta, J, Hp = piece_derivatives(pr, ka, theta)
    A = delta > 0
    g = J[A].T @ delta[A] / pr.P
    th = theta.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(_masked_depth1_loss(pr, th, off), th)
    assert torch.allclose(g, g_ref, rtol=1e-12, atol=1e-14)
    H_ref = torch.autograd.functional.hessian(lambda t: _masked_depth1_loss(pr, t, off), theta)
    assert torch.allclose(J[A].T @ J[A] / pr.P + Hp, H_ref, rtol=1e-10, atol=1e-12)
    # the same piece differs from PyTorch's: the held-off entries have z > 0 for some of them
    assert not torch.allclose(g, pr.loss_and_grad(theta)[1])


def test_kink_model_and_kink_minimum():
    # a ReLU minimum on activation kinks: the first-order model g_off.v + sum c_k relu(n_k.v) of
    # flatminima.jamming.kinks matches finite differences, and the nonsmooth certificate holds
    pr = relu_jammed_instance(seed=1, depth=1, N=20, P=60, d=4)
    res = minimize(pr, max_iter=4000)
    assert res.certificate == "kink_minimum" and res.check["kinks"] >= 1
    assert res.check["kink_residual"] <= 1e-12
    radius = 1e-9 * float(res.theta.norm())
    ka = kink_analysis(pr, res.theta, radius=radius)
    near = ka["index"]
    assert torch.equal(near, torch.nonzero(ka["dist"] <= radius).flatten())
    n, c = ka["n"], ka["c"][near]
    # the normals kept within a radius are those of the full analysis
    full = kink_analysis(pr, res.theta)
    assert torch.allclose(full["n"][near], n)
    assert bool((c >= 0).all())
    # g_off: the gradient with the kinked units held off, from the hand-written loss (at a kink the sign of
    # z is round-off, so PyTorch's gradient may have any of them on)
    th = res.theta.clone().requires_grad_(True)
    (g_off,) = torch.autograd.grad(_masked_depth1_loss(pr, th, _kink_mask(pr, ka)), th)
    f0 = pr.loss(res.theta)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        v = torch.randn(pr.N, generator=gen, dtype=torch.float64)
        eps = 1e-8
        fd = (pr.loss(res.theta + eps * v) - f0) / eps
        assert fd == pytest.approx(float(g_off @ v + (c * torch.relu(n @ v)).sum()), rel=1e-5, abs=1e-9)
        assert fd >= 0  # a local minimum: no first-order descent in any direction


@pytest.mark.parametrize("seed", range(5))
def test_under_parametrised_relu_runs_end_certified(seed):
    # every seed of the under-parametrised ReLU instance ends at a certified jammed minimum (on kinks or
    # not), with its nonsmooth residual at round-off; a stall is never reported as a certificate
    pr = relu_jammed_instance(seed=seed, depth=1, N=20, P=60, d=4)
    res = minimize(pr, max_iter=4000)
    assert res.certificate in ("minimum", "kink_minimum"), res.reason
    assert res.loss > 0 and res.n_delta > 0.1 * pr.N
    if res.certificate == "kink_minimum":
        assert res.check["kink_residual"] <= 1e-12
    else:
        assert res.check["grad_rel"] <= 1e-10
    assert certify(pr, res.theta).name == res.certificate  # the same point, certified from scratch
    assert res.reason.startswith(("polish", "first order"))


def test_a_stall_without_certificate_is_unresolved_with_its_reason():
    # stopping the polish after one iteration leaves a point that is not stationary: no certificate, the
    # run counts as unresolved and says why
    pr = relu_jammed_instance(seed=1, depth=1, N=20, P=60, d=4)
    res = minimize(pr, max_iter=300, polish=1)
    assert res.certificate == "none" and not res.certified
    assert classify(res.certificate, res.n_delta, pr.N) == "unresolved"
    assert res.reason.startswith("polish budget; not stationary")


def test_outcome_classification():
    assert classify("zero_loss", 0, 100) == "sat"
    assert classify("minimum", 11, 100) == "jammed" and classify("kink_minimum", 50, 100) == "jammed"
    assert classify("minimum", 10, 100) == "in_between"
    assert classify("kink", 50, 100) == "kink"
    assert classify("none", 50, 100) == "unresolved" and classify("saddle", 50, 100) == "unresolved"


def test_push_phase_certificate_is_at_the_true_margin():
    pr = small_problem(P=15, d=4, N=200, activation="relu")
    res = minimize(pr, push=0.0, max_iter=20_000)
    assert res.certificate == "zero_loss"
    assert float(pr.stabilities(res.theta).max()) <= 0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_decreases_the_loss(method):
    pr = small_problem(P=20, d=4, N=60, activation="softplus")
    f0 = pr.loss(pr.landscape.theta)
    res = minimize(pr, method=method, max_iter=60, polish=0, options={"lr": 1e-2})
    assert res.loss < 0.5 * f0
    assert res.method == method and res.iterations == 60


def test_adam_protocol_is_torch_adam_with_the_published_schedule():
    # oracle: torch.optim.Adam by hand, full batch, lr divided by 10 every decay_every steps
    pr = small_problem(P=20, d=4, N=60, activation="softplus")
    res = adam_protocol(pr, max_steps=30, lr=1e-2, decay_every=10)
    p = pr.landscape.theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=1e-2)
    for step in range(30):
        opt.param_groups[0]["lr"] = 1e-2 * 0.1 ** (step // 10)
        p.grad = pr.loss_and_grad(p.detach())[1]
        opt.step()
    assert res.iterations == 30 and res.polish_iterations == 0
    assert torch.allclose(res.theta, p.detach(), rtol=0, atol=1e-14)


def test_bad_arguments_raise():
    pr = small_problem()
    with pytest.raises(ConfigError):
        minimize(pr, method="sgd-please")
    with pytest.raises(ConfigError):
        minimize(pr, gtol=-1)
    with pytest.raises(ConfigError):
        minimize(pr, theta0=torch.zeros(3))


def test_jamming_run_record():
    rec = jamming_run(RunConfig(P=20, N=300, depth=2, d=5, seed=0), keep_delta=True)
    assert rec["sat"] and not rec["jammed"] and rec["n_delta"] == 0 and rec["outcome"] == "sat"
    assert len(rec["delta"]) == 20 and rec["N_actual"] <= 300


# ----------------------------------------------------------------------------- N* bisection
@pytest.mark.parametrize("planted,lo,hi", [(137, 100, 200), (137, 10, 20), (137, 600, 1000), (5, 2, 3)])
def test_bisection_finds_a_planted_threshold(planted, lo, hi):
    calls = []

    def oracle(n):
        calls.append(n)
        return n >= planted

    th = find_threshold(oracle, lo, hi, rtol=0.0, x_min=1)
    assert (th.lo, th.hi) == (planted - 1, planted)
    assert len(calls) == len(set(calls))  # no point asked twice
    th2 = find_threshold(oracle, lo, hi, rtol=0.05, x_min=1)
    assert th2.lo < planted <= th2.hi and th2.hi - th2.lo <= max(1, 0.05 * th2.lo)


def test_bisection_reports_missing_threshold():
    with pytest.raises(ConfigError):
        find_threshold(lambda n: False, 2, 4, x_max=64)
    with pytest.raises(ConfigError):
        find_threshold(lambda n: True, 8, 16, x_min=4)


# ----------------------------------------------------------------------------- power laws
@pytest.mark.parametrize("a", [0.3, -0.2, 1.5])
def test_powerlaw_mle_recovers_the_exponent(a):
    rng = np.random.default_rng(0)
    x = rng.random(4000) ** (1 / (a + 1)) * 2.0  # density ~ x^a on (0, 2]
    fit = powerlaw_fit(x, x_max=2.0)
    assert fit.ci[0] <= a <= fit.ci[1]
    assert fit.ci[1] - fit.ci[0] < 0.2
    # automatic range selection on a sample whose power law holds only below 2
    tail = 2.0 + rng.exponential(5.0, 4000)
    fit2 = powerlaw_fit(np.concatenate([x, tail]))
    assert fit2.x_max <= 2.0 + 1e-12
    assert fit2.ci[0] <= a <= fit2.ci[1]


def test_powerlaw_ci_coverage():
    rng = np.random.default_rng(1)
    a, hits, reps = 0.3, 0, 300
    for _ in range(reps):
        x = rng.random(50) ** (1 / (a + 1))
        f = powerlaw_fit(x, x_max=1.0, alpha=0.1)
        hits += f.ci[0] <= a <= f.ci[1]
    assert 0.84 <= hits / reps <= 0.96  # nominal 90 %


def test_exponents_and_histograms_of_pooled_runs():
    rng = np.random.default_rng(2)
    theta, gamma = 0.3, 0.2
    runs, losses = [], []
    for L in (0.01, 0.04):
        pos = rng.random(3000) ** (1 / (theta + 1)) * math.sqrt(L)  # Delta / sqrt(L) ~ x^theta on (0, 1]
        neg = -(rng.random(3000) ** (1 / (1 - gamma)))  # -Delta ~ x^-gamma on (0, 1]
        runs.append(np.concatenate([pos, neg]))
        losses.append(L)
    pos, neg = split_sides(runs, losses)
    assert pos.size == 6000 and neg.size == 6000 and pos.max() <= 1.0
    ex = jamming_exponents(runs, losses)
    assert ex["theta"]["ci"][0] <= theta <= ex["theta"]["ci"][1]
    assert ex["gamma"]["ci"][0] <= gamma <= ex["gamma"]["ci"][1]
    h = delta_histograms(runs, losses)
    widths = np.diff(h["edges"])
    assert np.sum(np.asarray(h["pos_density"]) * widths) == pytest.approx(1.0)
    assert np.sum(np.asarray(h["neg_density"]) * widths) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Hessian at jamming
def test_hessian_split_against_per_example_gradients():
    pr = small_problem(P=25, d=3, N=20, depth=1, activation="tanh", seed=1)
    theta = pr.landscape.theta
    mats = hessian_split(pr, theta)
    H, H0, Hp = mats["H"], mats["H0"], mats["Hp"]
    assert torch.allclose(H0 + Hp, H)
    assert torch.allclose(H, pr.landscape.dense_hessian(theta), atol=1e-12)
    # H0 from an explicit loop over the active patterns: (1/P) sum grad Delta grad Delta^T
    delta = pr.stabilities(theta)
    ref = torch.zeros_like(H0)
    model = pr.landscape.model
    for mu in torch.nonzero(delta > 0).flatten().tolist():
        th = theta.clone().requires_grad_(True)
        from torch.func import functional_call

        out = functional_call(model, (pr.landscape.unflatten(th), {}), (pr.X[mu : mu + 1],)).reshape(())
        (gf,) = torch.autograd.grad(1 - pr.Y[mu] * out, th)
        ref += torch.outer(gf, gf) / pr.P
    assert torch.allclose(H0, ref, atol=1e-12)
    ev0 = torch.linalg.eigvalsh(H0)
    assert float(ev0.min()) > -1e-12
    assert int((ev0 > 1e-10 * float(ev0.max())).sum()) <= pr.n_delta(theta)
    # H against finite differences of the gradient
    v = torch.randn(pr.N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-6
    fd = (pr.loss_and_grad(theta + eps * v)[1] - pr.loss_and_grad(theta - eps * v)[1]) / (2 * eps)
    assert torch.allclose(H @ v, fd, rtol=1e-5, atol=1e-8)


def test_omega_density():
    lam = np.array([0.0, 1e-20, -1e-3, 0.04, 0.25, 1.0])
    om = omega_density(lam, zero_tol=1e-12)
    assert om["n_zero"] == 2 and om["n_negative"] == 1 and om["n"] == 6
    edges = np.logspace(-6, 2, 65)
    counts = np.asarray(om["density"]) * 6 * np.diff(edges)
    assert counts.sum() == pytest.approx(3.0)  # omega = 0.2, 0.5, 1


@pytest.mark.parametrize("field,value", [("P", 0), ("N", -3), ("depth", 1.5), ("max_iter", True), ("polish", -1),
                                         ("seed", -1), ("polish_time", float("nan")), ("time_limit", 0.0),
                                         ("data", "cifar"), ("activation", "swish"), ("method", "lbfgs"),
                                         ("count", "bytes")])
def test_run_config_rejects_each_bad_field(field, value):
    from dataclasses import replace

    good = RunConfig(P=20, N=30, depth=2, d=5)
    good.validate()
    with pytest.raises(ConfigError, match=field):
        replace(good, **{field: value}).validate()


# ----------------------------------------------------------------------------- the published dynamics
from flatminima.jamming.bfgs import lbfgs_bridge  # noqa: E402
from flatminima.jamming.fullbatch import AdamSchedule, adam_fullbatch, relu_layout, relu_loss_grad  # noqa: E402
from flatminima.jamming.problem import square_network  # noqa: E402


def square_problem(P=40, h=3, depth=2, seed=0, activation="relu"):
    X, y = random_data(P, h, seed=seed)
    return HingeProblem(square_network(h, depth, seed=seed, activation=activation), X, y)


def test_square_network_counts_and_rejects_bad_sizes():
    for h, depth in ((3, 1), (5, 2), (4, 5)):
        model = square_network(h, depth, seed=1)
        assert model.d_in == h and model.widths == [h] * depth and model.n_weights == depth * h * h + h
        assert next(model.parameters()).dtype == torch.float64
    a, b = square_network(4, 2, seed=3), square_network(4, 2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    for h, depth in ((0, 2), (3, 0), (2.5, 2)):
        with pytest.raises(ConfigError):
            square_network(h, depth)


@pytest.mark.parametrize("depth", [1, 3])
def test_hand_written_relu_gradient_matches_autograd(depth):
    pr = square_problem(P=25, h=4, depth=depth, seed=depth)
    layout = relu_layout(pr)
    assert layout is not None and layout.n == pr.N
    theta = pr.landscape.theta + 0.3 * torch.randn(pr.N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f, g = pr.loss_and_grad(theta, 1.2)
    for th, X, Y in ((theta.numpy(), pr.X.numpy(), pr.Y.numpy()), (theta, pr.X, pr.Y)):  # numpy and torch
        loss, grad, nd = relu_loss_grad(layout, th, X, Y, 1.2)
        assert loss == pytest.approx(float(f), rel=1e-13)
        assert np.allclose(np.asarray(grad), g.numpy(), rtol=1e-12, atol=1e-15)
        assert nd == pr.n_delta(theta, 1.2)
    assert relu_layout(square_problem(activation="tanh")) is None


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fullbatch_adam_is_torch_adam_with_a_step_decay(activation):
    pr = square_problem(P=30, h=3, depth=2, seed=2, activation=activation)
    sched = AdamSchedule(steps=25, lr=3e-2, decay_every=10, decay=0.5)
    res = adam_fullbatch(pr, sched, record_every=5)
    p = pr.landscape.theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=sched.lr)
    for t in range(sched.steps):
        opt.param_groups[0]["lr"] = sched.lr * 0.5 ** (t // 10)
        p.grad = pr.loss_and_grad(p.detach())[1]
        opt.step()
    assert res.steps == 25 and not res.zero_loss
    assert torch.allclose(res.theta, p.detach(), rtol=1e-10, atol=1e-13)
    assert res.loss == pytest.approx(pr.loss(res.theta), rel=1e-12) and res.history["step"] == [0, 5, 10, 15, 20, 25]
    assert sched.rate(0) == 3e-2 and sched.rate(10) == 1.5e-2 and sched.rate(25) == 7.5e-3


def test_fullbatch_adam_stops_at_exact_zero_loss_and_validates():
    pr = square_problem(P=10, h=6, depth=2, seed=0)  # 78 weights for 10 patterns
    res = adam_fullbatch(pr, AdamSchedule(steps=20_000, lr=1e-2, decay_every=10_000))
    assert res.zero_loss and res.n_delta == 0 and res.steps < 20_000 and pr.n_delta(res.theta) == 0
    for bad in ({"steps": -1}, {"lr": 0.0}, {"decay": 0.0}, {"decay_every": 0}, {"betas": (1.0, 0.9)}):
        with pytest.raises(ConfigError):
            AdamSchedule(**bad)
    with pytest.raises(ConfigError):
        adam_fullbatch(pr, AdamSchedule(steps=1), theta0=torch.zeros(3, dtype=torch.float64))


def test_bridge_reaches_exact_zero_loss_or_a_stationary_point():
    over = square_problem(P=20, h=5, depth=2, seed=1)
    b = lbfgs_bridge(over, over.landscape.theta)
    assert b.zero_loss and over.n_delta(b.theta) == 0 and over.loss(b.theta) == 0.0
    under = square_problem(P=120, h=3, depth=2, seed=1)  # 21 weights for 120 patterns: jammed
    b = lbfgs_bridge(under, under.landscape.theta, push=0.0)
    f0, g0 = under.loss_and_grad(under.landscape.theta)
    f, g = under.loss_and_grad(b.theta)
    assert not b.zero_loss and b.n_delta == under.n_delta(b.theta) > 0 and b.loss == pytest.approx(float(f))
    assert 0 < float(f) < 0.5 * float(f0) and float(g.norm()) < float(g0.norm())
    with pytest.raises(ConfigError):
        lbfgs_bridge(under, under.landscape.theta, push=-1.0)


from flatminima.jamming.bfgs import softplus_homotopy  # noqa: E402


@pytest.mark.parametrize("depth", [2, 3])
def test_softplus_loss_gradient_matches_autograd_and_tends_to_the_relu(depth):
    pr = square_problem(P=25, h=4, depth=depth, seed=depth)
    layout = relu_layout(pr)
    theta = pr.landscape.theta + 0.3 * torch.randn(pr.N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    beta = 3.0

    def smooth_loss(th):  # the same network with every ReLU a softplus, by autograd
        a = pr.X
        views = layout.views(th)
        for k, (W, b) in enumerate(views):
            z = a @ W.T + (0.0 if b is None else b)
            a = torch.nn.functional.softplus(z, beta=beta) if k < len(views) - 1 else z
        r = torch.relu(1.2 - pr.Y.reshape(-1) * z[:, 0])
        return 0.5 * (r * r).sum() / pr.P

    th = theta.clone().requires_grad_(True)
    f = smooth_loss(th)
    (g,) = torch.autograd.grad(f, th)
    f = f.detach()
    for args in ((theta.numpy(), pr.X.numpy(), pr.Y.numpy().reshape(-1)), (theta, pr.X, pr.Y.reshape(-1))):
        loss, grad, _ = relu_loss_grad(layout, *args, 1.2, beta=beta)
        assert loss == pytest.approx(float(f), rel=1e-13)
        assert np.allclose(np.asarray(grad), g.numpy(), rtol=1e-12, atol=1e-15)
    # within 1/beta of the ReLU: the losses agree to round-off at beta = 1e12
    relu = relu_loss_grad(layout, theta.numpy(), pr.X.numpy(), pr.Y.numpy().reshape(-1), 1.2)[0]
    sharp = relu_loss_grad(layout, theta.numpy(), pr.X.numpy(), pr.Y.numpy().reshape(-1), 1.2, beta=1e12)[0]
    assert sharp == pytest.approx(relu, rel=1e-10)


def test_softplus_homotopy_descends_to_a_certified_kink_minimum_or_zero_loss():
    over = square_problem(P=20, h=5, depth=2, seed=1)
    r = softplus_homotopy(over, over.landscape.theta)
    assert r.zero_loss and over.n_delta(r.theta) == 0 and over.loss(r.theta) == 0.0
    # jammed: 21 weights for 90 patterns; the bridge stalls, the homotopy goes on down, the polish certifies
    pr = square_problem(P=90, h=3, depth=2, seed=1)
    b = lbfgs_bridge(pr, pr.landscape.theta, push=0.0)
    r = softplus_homotopy(pr, b.theta)
    assert not r.zero_loss and r.loss <= b.loss and r.loss == pytest.approx(pr.loss(r.theta), rel=1e-13)
    assert [s["beta"] for s in r.stages] == [10.0**k for k in range(2, 13)]
    m = minimize(pr, r.theta, first_order=False, polish=100, polish_time=30.0, gtol=1e-7)
    assert m.certificate in ("minimum", "kink_minimum") and m.n_delta > 0.3 * pr.N
    with pytest.raises(ConfigError):
        softplus_homotopy(square_problem(activation="tanh"), square_problem(activation="tanh").landscape.theta)
    with pytest.raises(ConfigError):
        softplus_homotopy(pr, b.theta, betas=(1.0, -2.0))


# ----------------------------------------------------------------------------- kinks: multipliers
from flatminima.jamming.kinks import box_lsq  # noqa: E402


def test_box_lsq_against_enumeration_of_active_sets():
    """The bounded least squares meets its KKT conditions and matches the best of all 3^K bound patterns,
    also with dependent columns (where scipy's bvls stopped early)."""
    import itertools

    rng = np.random.default_rng(0)
    for trial in range(6):
        K = 5
        A = rng.standard_normal((7, K))
        if trial % 2:
            A[:, 4] = A[:, 0] + A[:, 1]  # dependent columns
            A[:, 3] = 2.0 * A[:, 2]
        b = rng.standard_normal(7)
        ub = rng.uniform(0.0, 2.0, K)
        t = box_lsq(A, b, ub)
        assert np.all(t >= 0) and np.all(t <= ub)
        best = math.inf
        for pattern in itertools.product((0, 1, 2), repeat=K):  # lower, upper, free
            tt = np.where(np.array(pattern) == 1, ub, 0.0)
            F = [i for i, p in enumerate(pattern) if p == 2]
            if F:
                tt[F] = np.linalg.lstsq(A[:, F], b - A @ tt, rcond=None)[0]
            if np.all(tt >= -1e-12) and np.all(tt <= ub + 1e-12):
                best = min(best, float(np.linalg.norm(A @ tt - b)))
        assert np.linalg.norm(A @ t - b) <= best + 1e-10
