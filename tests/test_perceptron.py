"""Tests of flatminima.perceptron against exact oracles (enumeration, closed forms, scipy).

Tolerances of BP against enumeration. BP with the Gaussian (central-limit) factor approximation is
exact only as N -> infinity: on a dense factor graph the Bethe estimate of the *total* log Z carries a
sub-extensive O(1) error, i.e. O(1/N) per weight. The tests therefore compare totals, per instance
|log Z_BP - log Z_exact| <= 1 (about 0.05 per weight at N = 21), and the average over an instance
family (10 random instances per N at alpha = 0.3, deep in the replica-symmetric phase where BP is
asymptotically exact) |mean difference| <= 0.3. Measured when these tests were written: typical
|difference| 0.01-0.2, largest single instance 0.86, largest family mean 0.15 (N = 17).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.special as sp
import torch

from flatminima.errors import ConfigError, ConvergenceError
from flatminima.perceptron import (
    anneal,
    binary_entropy,
    entropy,
    enumerate_solutions,
    fbp,
    legendre,
    local_energy_binary,
    local_energy_continuous,
    local_entropy,
    log_H,
    n_errors,
    patterns,
    random_instance,
    replicated_sgd,
    run_bp,
    sgd_cross_entropy,
    teacher_instance,
)
from flatminima.perceptron import bp as bpmod

LOGZ_TOL = 1.0  # per instance, total log Z (O(1) Bethe error, see module docstring)
MEAN_TOL = 0.3  # mean over an instance family


# ------------------------------------------------------------------------------------ special functions
def test_log_H_matches_scipy_over_the_whole_range():
    x = torch.linspace(-40, 80, 24001, dtype=torch.float64)
    ref = torch.as_tensor(sp.log_ndtr(-x.numpy()))
    got = log_H(x)
    assert torch.isfinite(got).all()
    err = (got - ref).abs() / ref.abs().clamp_min(1.0)
    assert float(err.max()) < 1e-13


def test_tanh_sech2_without_cancellation():
    c = torch.tensor([-300.0, -30.0, -1.0, 0.0, 0.5, 30.0, 300.0], dtype=torch.float64)
    t, s = bpmod._tanh_sech2(c)
    assert torch.allclose(t, torch.tanh(c), atol=1e-15)
    ref = 4.0 * torch.exp(-2 * c.abs()) / (1 + torch.exp(-2 * c.abs())) ** 2
    assert torch.allclose(s, ref, rtol=1e-12, atol=0)
    # beyond |c| = 300 the exponent is capped (no subnormals): sech^2 stays a tiny normal number
    t, s = bpmod._tanh_sech2(torch.tensor([-1e4, 1e4], dtype=torch.float64))
    assert torch.equal(t, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert bool((s > 0).all() and (s < 1e-250).all())


def test_poisson_binomial_tails_match_brute_force():
    g = torch.Generator().manual_seed(0)
    K = 5
    p = torch.rand(3, K, generator=g, dtype=torch.float64) * 0.98 + 0.01
    lp, lq = torch.log(p), torch.log1p(-p)
    logA, logB = bpmod._log_tails_excluding(lp, lq)
    log_all = bpmod._log_sat_all(lp, lq)
    for mu in range(3):
        for k in range(K):
            A = B = 0.0
            others = [l for l in range(K) if l != k]
            for taus in itertools.product([1, -1], repeat=K - 1):
                pr = np.prod([p[mu, l] if t > 0 else 1 - p[mu, l] for l, t in zip(others, taus)])
                A += pr * (sum(taus) >= 0)
                B += pr * (sum(taus) >= 2)
            assert math.isclose(math.exp(logA[mu, k]), A, rel_tol=1e-12)
            assert math.isclose(math.exp(logB[mu, k]), B, rel_tol=1e-12)
        tot = sum(np.prod([p[mu, l] if t > 0 else 1 - p[mu, l] for l, t in enumerate(taus)])
                  for taus in itertools.product([1, -1], repeat=K) if sum(taus) > 0)
        assert math.isclose(math.exp(log_all[mu]), tot, rel_tol=1e-12)


# ------------------------------------------------------------------------------------ BP sweeps
@pytest.mark.parametrize("K,tree,N", [(1, True, 40), (3, True, 30), (3, False, 10)])
def test_vectorised_sweep_equals_per_pattern_loop_and_chunks(K, tree, N):
    X, y = random_instance(N, 0.6, seed=1, K=K, tree=tree)
    pat = patterns(X, y, K=K, tree=tree)
    g = torch.Generator().manual_seed(2)
    u = 0.3 * torch.randn(pat.xi.shape, generator=g, dtype=torch.float64)
    h = 0.5 * torch.randn(pat.K, pat.n, generator=g, dtype=torch.float64)
    full = bpmod.sweep(pat, u, h, chunk_elems=1 << 40)
    assert torch.allclose(full, bpmod.sweep_loop(pat, u, h), atol=1e-13)
    assert torch.allclose(full, bpmod.sweep(pat, u, h, chunk_elems=2 * pat.n_weights), atol=1e-13)


def test_single_factor_message_is_exact_for_a_gaussian_cavity():
    # perceptron, one pattern, other weights with zero field: the cavity sum of n-1 terms +-xi_j
    # is compared with the exact sum over all configurations for n = 13 (Gaussian approximation
    # error is small but not zero, so the check is qualitative: sign and magnitude)
    X, y = random_instance(13, 1 / 13, seed=3)
    pat = patterns(X, y)
    u = bpmod.sweep(pat, torch.zeros_like(pat.xi), torch.zeros(1, 13, dtype=torch.float64))[0, 0]
    xi = pat.xi[0, 0]
    W = torch.tensor(list(itertools.product([1.0, -1.0], repeat=13)), dtype=torch.float64)
    sat = (W @ xi) > 0
    exact = 0.5 * (torch.log(sat[W[:, 0] > 0].double().mean()) - torch.log(sat[W[:, 0] < 0].double().mean()))
    assert torch.sign(u[0]) == torch.sign(exact)
    assert abs(float(u[0] - exact)) < 0.1 * abs(float(exact)) + 0.02


# ------------------------------------------------------------------------------------ enumeration
def test_enumeration_matches_itertools_bruteforce():
    X, y = random_instance(9, 0.5, seed=4, K=3)
    pat = patterns(X, y, K=3)
    ref = torch.tensor([1.0, -1, 1, 1, -1, -1, 1, 1, -1])
    en = enumerate_solutions(pat, reference=ref, chunk=37, keep=5)
    count, hist = 0, np.zeros(10, int)
    for w in itertools.product([-1.0, 1.0], repeat=9):
        wt = torch.tensor(w, dtype=torch.float64)
        if int(n_errors(wt, pat)) == 0:
            count += 1
            hist[int((wt != ref).sum())] += 1
    assert en.count == count and np.array_equal(en.by_distance, hist)
    assert en.solutions.shape == (min(5, count), 9)
    assert int(n_errors(en.solutions.view(-1, 3, 3), pat).max()) == 0
    g = np.array([0.0, 0.7, 2.0])
    phi, q = en.canonical(g)
    k = np.arange(10)
    for gi, ph, qi in zip(g, phi, q):
        Z = (hist * np.exp(gi * (9 - 2 * k))).sum()
        assert math.isclose(ph, math.log(Z) / 9, rel_tol=1e-12)
        assert math.isclose(qi, (hist * (9 - 2 * k) / 9 * np.exp(gi * (9 - 2 * k))).sum() / Z, rel_tol=1e-12)


def test_exact_entropy_counts_all_vectors_without_patterns():
    X = torch.zeros(0, 11, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.float64)
    assert math.isclose(entropy(X, y, method="exact"), 11 * math.log(2))
    assert math.isclose(entropy(X, y, method="bp"), 11 * math.log(2))


# ------------------------------------------------------------------------------------ BP vs enumeration
@pytest.mark.parametrize("N", [15, 17, 21])
def test_bp_entropy_of_perceptron_matches_enumeration(N):
    diffs = []
    for seed in range(10):
        X, y = random_instance(N, 0.3, seed=seed)
        res = run_bp(patterns(X, y))
        assert res.converged
        diffs.append(res.log_z - entropy(X, y, method="exact"))
    diffs = np.array(diffs)
    assert np.abs(diffs).max() <= LOGZ_TOL, diffs
    assert abs(diffs.mean()) <= MEAN_TOL, diffs


@pytest.mark.parametrize("K,tree,N,alpha", [(3, True, 21, 0.3), (3, False, 7, 0.2)])
def test_bp_entropy_of_committee_matches_enumeration(K, tree, N, alpha):
    diffs = []
    for seed in range(6):
        X, y = random_instance(N, alpha, seed=seed, K=K, tree=tree)
        pat = patterns(X, y, K=K, tree=tree)
        res = run_bp(pat, seed=0)
        assert res.converged
        diffs.append(res.log_z - enumerate_solutions(pat).log_count)
    diffs = np.array(diffs)
    assert np.abs(diffs).max() <= LOGZ_TOL, diffs
    assert abs(diffs.mean()) <= MEAN_TOL, diffs


def test_bp_local_entropy_curve_matches_enumeration():
    """The gamma scan (phi, q, S, d) of BP against the exact canonical values at the same gammas,
    and S(d) interpolated at fixed distances against the exact Legendre curve, for references drawn
    uniformly among the solutions (N = 21, alpha = 0.3). Tolerance: 1/N per weight for phi and S
    (the O(1) total Bethe error) and 0.03 for d."""
    N = 21
    dist = np.array([0.08, 0.15, 0.25])
    for seed in range(3):
        X, y = random_instance(N, 0.3, seed=seed)
        en = enumerate_solutions(patterns(X, y), keep=4000)
        w = en.solutions[np.random.default_rng(seed).integers(en.solutions.shape[0])]
        cb = local_entropy(X, y, w, dist, n_gamma=12)
        ce = local_entropy(X, y, w, dist, method="exact", n_gamma=12)
        assert cb.all_converged
        assert np.array_equal(cb.scan_gamma, ce.scan_gamma)
        assert np.abs(cb.scan_phi - ce.scan_phi).max() <= 1.0 / N
        assert np.abs(cb.scan_S - ce.scan_S).max() <= 1.0 / N
        assert np.abs(cb.scan_d - ce.scan_d).max() <= 0.03
        # exact Legendre curve interpolated at the same distances
        order = np.argsort(ce.scan_d)
        S_exact = np.interp(dist, ce.scan_d[order], ce.scan_S[order])
        assert np.all(np.isfinite(cb.entropy))
        assert np.abs(cb.entropy - S_exact).max() <= 1.0 / N + 0.01
        # local entropy never exceeds the count of all vectors at that distance
        assert np.all(cb.entropy <= binary_entropy(dist) + 1e-9)


def test_exact_local_entropy_is_the_microcanonical_count():
    X, y = random_instance(15, 0.3, seed=0)
    en = enumerate_solutions(patterns(X, y), keep=1)
    w = en.solutions[0]
    en = enumerate_solutions(patterns(X, y), reference=w)
    d = np.array([1, 3, 5]) / 15
    c = local_entropy(X, y, w, d, method="exact")
    assert np.allclose(c.entropy, np.log(en.by_distance[[1, 3, 5]]) / 15)


# ------------------------------------------------------------------------------------ Legendre transform
def test_legendre_transform_closed_form_without_patterns():
    """No patterns: Z(gamma) = (2 cosh gamma)^N, q = tanh gamma, and S(d) = H2(d) exactly."""
    N = 25
    X = torch.zeros(0, N, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.float64)
    w = torch.ones(N, dtype=torch.float64)
    dist = np.array([0.01, 0.05, 0.1, 0.3, 0.45])
    c = local_entropy(X, y, w, dist, n_gamma=30)
    assert np.allclose(c.scan_phi, np.log(2 * np.cosh(c.scan_gamma)), atol=1e-12)
    assert np.allclose(c.scan_q, np.tanh(c.scan_gamma), atol=1e-12)
    assert np.allclose(c.scan_S, binary_entropy(c.scan_d), atol=1e-12)
    assert np.allclose(c.entropy, binary_entropy(dist), atol=2e-5)  # Hermite interpolation error
    g = np.linspace(0.0, 3.0, 3001)
    d_ex, S_ex = legendre(g, np.log(2 * np.cosh(g)), np.tanh(g))
    assert np.allclose(S_ex, binary_entropy(d_ex), atol=1e-12)


def test_bp_overlap_is_the_derivative_of_the_free_entropy():
    """At a BP fixed point q = dphi/dgamma up to the small inconsistency of the Gaussian factor
    approximation (measured ~0.01 at N = 21); checked by central differences."""
    X, y = random_instance(21, 0.3, seed=0)
    pat = patterns(X, y)
    w = enumerate_solutions(pat, keep=1).solutions[0].view(1, -1)
    for g in (0.3, 1.0):
        res = run_bp(pat, h_ext=g * w, tol=1e-12)
        q = float((w * res.magnetizations).sum()) / 21
        e = 1e-4
        num = (run_bp(pat, h_ext=(g + e) * w, tol=1e-12).log_z - run_bp(pat, h_ext=(g - e) * w, tol=1e-12).log_z) / (2 * e * 21)
        assert abs(q - num) < 0.02


# ------------------------------------------------------------------------------------ solvers
def test_fbp_solves_perceptron_and_tree_committee():
    X, y = random_instance(301, 0.5, seed=0)
    r = fbp(X, y)
    assert r.solved and int(n_errors(r.w, patterns(X, y))) == 0
    X, y, _ = teacher_instance(99, 0.5, seed=1, K=3)
    r = fbp(X, y, K=3)
    assert r.solved and int(n_errors(r.w, patterns(X, y, K=3))) == 0


def test_anneal_energies_and_replicated_sgd_find_solutions():
    X, y = random_instance(151, 0.3, seed=1)
    pat = patterns(X, y)
    for kw in ({"energy": "errors", "sweeps": 300, "beta": (0.5, 10.0)}, {"energy": "cross-entropy", "sweeps": 150},
               {"energy": "local-energy", "sweeps": 150}):
        r = anneal(X, y, seed=0, **kw)
        assert r.solved and int(n_errors(r.w, pat)) == 0, kw
        assert set(r.w.unique().tolist()) <= {-1.0, 1.0}
    r = replicated_sgd(X, y, seed=0)
    assert r.solved and int(n_errors(r.w, pat)) == 0


def test_sgd_cross_entropy_norm_schedule_and_fit():
    X, y = random_instance(200, 0.5, seed=0)
    r = sgd_cross_entropy(X, y, epochs=60, norm=(8.0, 2.0))
    assert r.solved
    assert math.isclose(r.history[-1]["rho"], 2.0, rel_tol=1e-9)
    assert math.isclose(float(r.w.norm()) / math.sqrt(200), 2.0, rel_tol=1e-9)
    free = sgd_cross_entropy(X, y, epochs=60)
    assert free.history[-1]["rho"] > free.history[0]["rho"]  # the free norm grows while fitting


def test_local_energy_measures_against_exact_values():
    X, y = random_instance(60, 0.5, seed=2)
    pat = patterns(X, y)
    w = torch.where(torch.randn(60, generator=torch.Generator().manual_seed(0)) > 0, 1.0, -1.0).double()
    e0 = int(n_errors(w, pat)) / pat.P
    e_all = int(n_errors(-w, pat)) / pat.P
    le = local_energy_binary(X, y, w, [0.0, 1.0], samples=4)
    assert math.isclose(le[0], e0) and math.isclose(le[1], e_all)
    # one flip: Monte Carlo mean over random single flips vs the exact mean over all N single flips
    W = w.repeat(60, 1)
    W[torch.arange(60), torch.arange(60)] *= -1
    exact = float(n_errors(W.view(60, 1, 60), pat).double().mean()) / pat.P
    mc = local_energy_binary(X, y, w, [1 / 60], samples=4000, seed=1)[0]
    assert abs(mc - exact) < 4 * 0.5 / math.sqrt(4000)
    # continuous: closed form vs Monte Carlo of the Gaussian perturbation
    wc = torch.randn(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = 0.4
    Z = torch.randn(20000, 60, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    Wp = wc + s * wc.norm() / math.sqrt(60) * Z
    mc = float(n_errors(Wp.view(-1, 1, 60), pat).double().mean()) / pat.P
    assert abs(local_energy_continuous(X, y, wc, [s])[0] - mc) < 0.005


# ------------------------------------------------------------------------------------ errors
def test_bad_input_raises_config_errors():
    X, y = random_instance(21, 0.3, seed=0)
    for alpha in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ConfigError):
            random_instance(21, alpha)
    with pytest.raises(ConfigError):
        patterns(X, 2 * y)
    with pytest.raises(ConfigError):
        patterns(X, y, K=2)
    with pytest.raises(ConfigError):
        patterns(X, y, K=5)  # 21 not divisible by 5
    with pytest.raises(ConfigError):
        entropy(X, y, method="magic")
    with pytest.raises(ConfigError):
        local_entropy(X, y, torch.ones(21), [0.7])
    with pytest.raises(ConfigError):
        local_entropy(X, y, 0.5 * torch.ones(21), [0.1])
    with pytest.raises(ConfigError):
        run_bp(patterns(X, y), damping=1.0)
    with pytest.raises(ConfigError):
        enumerate_solutions(patterns(*random_instance(31, 0.1)))
    with pytest.raises(ConfigError):
        anneal(X, y, energy="magic")
    with pytest.raises(ConvergenceError):
        entropy(X, y, max_iters=1)


def test_curve_interpolation_uses_hermite_on_smooth_parts_and_the_hull_across_jumps():
    # smooth: points of H2 with exact slopes 2 gamma, gamma = atanh(1 - 2d) -> cubic Hermite accuracy
    d = np.linspace(0.05, 0.45, 9)
    g = np.arctanh(1 - 2 * d)
    t = np.array([0.07, 0.22, 0.33])
    err = np.abs(bpmod._interp_curve(d, binary_entropy(d), g, t) - binary_entropy(t))
    lin = np.abs(np.interp(t, d, binary_entropy(d)) - binary_entropy(t))
    assert err.max() < 2e-4 and np.all(err < 0.1 * lin)  # the cubic, not the chord
    # a first-order jump: frozen points at d = 0 (S = 0, large gamma) then a branch starting at d = 0.1;
    # between them the concave hull (the chord), not a cubic overshooting with the frozen slopes
    d = np.array([0.0, 0.0, 0.1, 0.2])
    S = np.array([0.0, 0.0, 0.2, 0.3])
    g = np.array([3.0, 1.2, 0.9, 0.4])
    out = bpmod._interp_curve(d, S, g, np.array([0.01, 0.05, 0.3]))
    assert np.allclose(out[:2], [0.02, 0.1]) and np.isnan(out[2])


def test_bp_local_entropy_of_tree_committee_matches_enumeration():
    """Same check as for the perceptron on a K = 3 tree committee (21 weights): total log Z within
    1 (phi within 1/N per weight) and d within 0.03 at every gamma of the scan."""
    N = 21
    for seed in range(2):
        X, y = random_instance(N, 0.3, seed=seed, K=3)
        en = enumerate_solutions(patterns(X, y, K=3), keep=2000)
        w = en.solutions[np.random.default_rng(seed).integers(en.solutions.shape[0])]
        cb = local_entropy(X, y, w, [0.08, 0.15, 0.25], K=3, n_gamma=10)
        ce = local_entropy(X, y, w, [0.08, 0.15, 0.25], K=3, n_gamma=10, method="exact")
        assert cb.all_converged
        assert np.abs(cb.scan_phi - ce.scan_phi).max() <= 1.0 / N
        assert np.abs(cb.scan_S - ce.scan_S).max() <= 1.0 / N
        assert np.abs(cb.scan_d - ce.scan_d).max() <= 0.03
