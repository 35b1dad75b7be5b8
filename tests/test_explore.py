"""Tests of flatminima.explore against exact oracles: finite differences, published Lennard-Jones energies,
an independent dense root search of the Mueller-Brown surface, finite-difference Hessians for saddle indices,
enumeration of network symmetries, and a SIGKILLed search that must resume."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from flatminima import Landscape
from flatminima.errors import ConfigError
from flatminima.explore import (
    Database,
    LennardJones,
    MullerBrown,
    NetworkPotential,
    Potential,
    basin_hopping,
    export_pathsample,
    hessian_summary,
    import_pathsample,
    lbfgs_batch,
    tanh_network_potential,
)
from flatminima.explore.basinhopping import exchange_probability, replica_exchange, saturation, temperature_ladder
from flatminima.explore.connect import connect_all, connected, double_ended_connect
from flatminima.explore.graph import dg_tree, disconnectivity_graph
from flatminima.explore.metrics import (
    frustration_index,
    landscape_metrics,
    minimax_to_gmin,
    monotonic_sequence_basins,
)
from flatminima.explore.optimize import escape_saddle
from flatminima.explore.saddles import dneb, lowest_mode, refine_ts, refine_ts_hybrid

LJ7 = [-16.505384, -15.935043, -15.593211, -15.533060]
LJ13 = -44.326801


def fd_gradient(f, x, eps=1e-6):
    e = np.eye(x.size)
    return np.array([(f(x + eps * e[i]) - f(x - eps * e[i])) / (2 * eps) for i in range(x.size)])


def fd_hessian(grad, x, eps=1e-5):
    e = np.eye(x.size)
    H = np.stack([(grad(x + eps * e[i]) - grad(x - eps * e[i])) / (2 * eps) for i in range(x.size)])
    return 0.5 * (H + H.T)


def small_network(hidden=(3, 2), seed=0, l2=1e-2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 4))
    y = rng.integers(0, 3, 40)
    return tanh_network_potential(X, y, hidden=hidden, l2=l2)


# ----------------------------------------------------------------------------- potentials
@pytest.mark.parametrize("make", [lambda: LennardJones(5), MullerBrown, lambda: small_network()])
def test_gradient_and_hvp_match_finite_differences(make):
    pot = make()
    rng = np.random.default_rng(1)
    x = pot.random_coords(rng)
    if isinstance(pot, LennardJones):  # spread the atoms so the energy is moderate
        x = x * 1.6
    g = pot.gradient(x)
    assert np.allclose(g, fd_gradient(pot.energy, x), rtol=1e-5, atol=1e-6 * max(1, np.abs(g).max()))
    V = rng.normal(size=(3, pot.ndim))
    H = fd_hessian(pot.gradient, x)
    scale = max(1.0, np.abs(H).max())
    assert np.allclose(pot.hvp(x, V), V @ H, atol=1e-5 * scale)
    assert np.allclose(pot.hvp(x, V[0]), H @ V[0], atol=1e-5 * scale)
    E, G = pot.energy_gradient_batch(np.stack([x, x + 0.01]))
    assert E[0] == pytest.approx(pot.energy(x), rel=1e-12) and np.allclose(G[0], g, atol=1e-12 * scale)


def test_network_batch_matches_one_point_at_a_time():
    """Walkers in one pass of the closed-form tanh/cross-entropy kernel against the landscape's single-point
    autograd gradient, row by row; a network the kernel does not cover (ReLU) takes the autograd path."""
    pot = small_network(hidden=(3, 3))
    assert pot.kernel is not None
    X = np.random.default_rng(0).normal(size=(5, pot.ndim))
    E, G = pot.energy_gradient_batch(X)
    for k in range(5):
        f, g = pot.landscape.loss_and_grad(torch.as_tensor(X[k]))
        assert E[k] == pytest.approx(float(f), abs=1e-13) and np.allclose(G[k], g.numpy(), atol=1e-13)
    rng = np.random.default_rng(1)
    X, y = torch.as_tensor(rng.normal(size=(30, 4))), torch.as_tensor(rng.integers(0, 3, 30))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3))
    relu = NetworkPotential(Landscape(model, (X, y), dtype=torch.float64, l2=1e-2))
    assert relu.kernel is None
    theta = rng.normal(size=(2, relu.ndim))
    E, G = relu.energy_gradient_batch(theta)
    f, g = relu.landscape.loss_and_grad(torch.as_tensor(theta[1]))
    assert E[1] == pytest.approx(float(f), abs=1e-13) and np.allclose(G[1], g.numpy(), atol=1e-13)


def test_lennard_jones_dimer_closed_form():
    lj = LennardJones(2)
    r = 2 ** (1 / 6)
    x = np.array([0, 0, 0, r, 0, 0.0])
    assert lj.energy(x) == pytest.approx(-1.0, abs=1e-12)
    assert np.abs(lj.gradient(x)).max() < 1e-12
    assert lj.zero_modes(x).shape[1] == 5  # linear: 3 translations + 2 rotations


def test_lbfgs_batch_on_quadratic():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    A = A @ A.T + np.eye(6)
    b = rng.normal(size=6)
    r = lbfgs_batch(lambda X: (0.5 * np.einsum("ki,ij,kj->k", X, A, X) - X @ b, X @ A - b),
                    rng.normal(size=(3, 6)), gtol=1e-10)
    assert r.converged.all()
    assert np.allclose(r.x, np.linalg.solve(A, b), atol=1e-8)


@pytest.mark.parametrize("n_atoms, seed", [(7, 1), (13, 3)])
def test_lbfgs_batch_matches_scipy_on_a_random_lennard_jones_start(n_atoms, seed):
    """The same minimum as scipy's L-BFGS-B from a random start: energy to 1e-8 and coordinates up to
    translation, rotation and permutation. Batched with other starts, the row's result is unchanged. (From a
    random start two minimisers need not fall into the same basin; these seeds are starts where they do.)"""
    lj = LennardJones(n_atoms)
    rng = np.random.default_rng(seed)
    X0 = np.stack([lj.random_coords(rng) for _ in range(3)])
    ref = minimize(lj.energy_gradient, X0[0], jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10000})
    one = lbfgs_batch(lj.energy_gradient_batch, X0[:1], gtol=1e-10)
    many = lbfgs_batch(lj.energy_gradient_batch, X0, gtol=1e-10)
    assert one.converged.all() and many.converged.all()
    assert one.energy[0] == pytest.approx(ref.fun, abs=1e-8)
    assert lj.distance(one.x[0], ref.x) < 1e-6
    assert np.array_equal(one.x[0], many.x[0])  # rows are independent
    assert one.nfev[0] >= one.iterations[0] > 10


def test_lbfgs_batch_backtracks_on_energy_rise():
    """A 1-D double well with a step cap wider than the wells: steps that raise the energy are halved (more
    evaluations than iterations), and both quenches still converge to a minimum at |x| = 1."""
    r = lbfgs_batch(lambda X: (((X ** 2 - 1) ** 2).sum(1), 4 * X * (X ** 2 - 1)), np.array([[0.3], [2.3]]),
                    gtol=1e-10, max_step=5.0)
    assert r.converged.all() and np.allclose(np.abs(r.x), 1.0, atol=1e-8)
    assert (r.nfev > r.iterations + 1).any()


# ----------------------------------------------------------------------------- basin-hopping
def test_replica_exchange_obeys_detailed_balance():
    """Exchange acceptance: a(x -> y) / a(y -> x) equals the ratio of the joint Boltzmann weights; and a
    parallel-tempering chain on a five-state toy (symmetric single-replica Metropolis moves + the library's
    neighbour exchanges) samples each temperature's Boltzmann distribution."""
    rng = np.random.default_rng(0)
    Ei, Ej = rng.normal(size=100) * 3, rng.normal(size=100) * 3
    Ti, Tj = rng.uniform(0.2, 1, 100), rng.uniform(1, 3, 100)
    joint = lambda a, b: np.exp(-a / Ti - b / Tj)  # noqa: E731  weight of (E_i at T_i, E_j at T_j)
    ratio = exchange_probability(Ei, Ej, Ti, Tj) / exchange_probability(Ej, Ei, Ti, Tj)
    assert np.allclose(ratio, joint(Ej, Ei) / joint(Ei, Ej), rtol=1e-10)
    assert np.all(exchange_probability(Ei, Ej, Ti, Tj) <= 1)

    levels = np.array([0.0, 0.3, 0.5, 1.2, 2.0])
    T = temperature_ladder(0.3, 2.0, 4)
    assert T[0] == pytest.approx(0.3) and T[-1] == pytest.approx(2.0) and np.allclose(T[1:] / T[:-1], T[1] / T[0])
    state = np.zeros(4, dtype=int)
    counts = np.zeros((4, levels.size))
    n_sweeps = 60000
    for t in range(n_sweeps):
        prop = (state + rng.choice([-1, 1], size=4)) % levels.size  # symmetric proposal on a ring
        dE = levels[prop] - levels[state]
        state = np.where(rng.uniform(size=4) < np.exp(-np.maximum(dE, 0) / T), prop, state)
        state = state[replica_exchange(levels[state], T, t % 2, rng.uniform(size=4))]
        counts[np.arange(4), state] += 1
    p = np.exp(-levels[None] / T[:, None])
    p /= p.sum(1, keepdims=True)
    assert np.abs(counts / n_sweeps - p).max() < 0.015
    # without exchanges the same chain is right too; a wrong exchange rule (always swap) is not
    state[:] = 0
    counts[:] = 0
    for t in range(20000):
        prop = (state + rng.choice([-1, 1], size=4)) % levels.size
        dE = levels[prop] - levels[state]
        state = np.where(rng.uniform(size=4) < np.exp(-np.maximum(dE, 0) / T), prop, state)
        state = state[replica_exchange(levels[state], T, t % 2, np.zeros(4) - 1.0)]  # u < 0: every swap taken
        counts[np.arange(4), state] += 1
    assert np.abs(counts / 20000 - p).max() > 0.05


def test_replica_exchange_pairs_alternate():
    E, T = np.array([3.0, 2.0, 1.0, 0.0]), np.array([1.0, 2.0, 3.0, 4.0])  # lower energy at higher T: swaps taken
    assert replica_exchange(E, T, 0, np.zeros(4)).tolist() == [1, 0, 3, 2]
    assert replica_exchange(E, T, 1, np.zeros(4)).tolist() == [0, 2, 1, 3]


def test_surface_move_relocates_the_least_bound_atoms_onto_the_surface():
    lj = LennardJones(13)
    x = basin_hopping(lj, steps=5, temperature=0.8, seed=0, walkers=2).minima()[0].coords  # the icosahedron
    rng = np.random.default_rng(0)
    e = lj.atom_energies(x)
    assert e.sum() == pytest.approx(lj.energy(x), rel=1e-12)
    y = lj.surface_move(x, rng, n_move=1)
    R, Ry = x.reshape(13, 3), y.reshape(13, 3)
    moved = int(np.argmax(e))
    keep = np.arange(13) != moved
    # the others only shifted together (recentring), the moved atom sits outside them and bonds on the quench
    shift = (Ry[keep] - R[keep]).mean(0)
    assert np.allclose(Ry[keep] - R[keep], shift, atol=1e-12)
    c = Ry[keep].mean(0)
    u = (Ry[moved] - c) / np.linalg.norm(Ry[moved] - c)
    assert (Ry[moved] - c) @ u > ((Ry[keep] - c) @ u).max()
    q = lbfgs_batch(lj.energy_gradient_batch, y[None])
    assert q.converged[0] and lj.is_valid(q.x[0])


def test_basin_hopping_strategy_options_run_and_resume_the_same_trajectory(tmp_path):
    """Parallel tempering + surface moves + restarts: a search run in two pieces through the database equals
    the search run at once."""
    lj = LennardJones(13)
    kw = dict(temperature=0.8, max_temperature=2.0, surface_moves=0.2, reseed_after=3, walkers=4, seed=5)
    whole = basin_hopping(lj, steps=12, **kw)
    db = Database(tmp_path / "lj.sqlite", lj)
    basin_hopping(lj, steps=5, database=db, **kw)
    basin_hopping(lj, steps=12, database=db, **kw)
    assert [m.energy for m in db.minima()] == pytest.approx([m.energy for m in whole.minima()], abs=1e-12)
    state = db.get_state("basin_hopping")
    assert state["done"] == 12 and np.allclose(state["temperatures"], temperature_ladder(0.8, 2.0, 4))
    by_energy = lambda d: sorted((round(d.minimum(i).energy, 9), s) for i, s in d.found_steps().items())  # noqa: E731
    assert by_energy(db) == by_energy(whole)  # the discovery steps survive the resume
    with pytest.raises(ConfigError):
        basin_hopping(MullerBrown(), surface_moves=0.5)  # no surface_move on a 2-D surface
    with pytest.raises(ConfigError):
        basin_hopping(lj, temperature=1.0, max_temperature=0.5)


def test_discovery_steps_are_the_steps_at_which_the_minima_first_appear():
    """Oracle: a search of k steps is the first k steps of a longer one (same seed), so the minima it holds
    are exactly those the longer search records as found at a step <= k."""
    lj = LennardJones(7)
    kw = dict(temperature=0.8, seed=3, walkers=3)
    full = basin_hopping(lj, steps=20, **kw)
    found = full.found_steps()
    assert set(found) == {m.id for m in full.minima()} and min(found.values()) == 0 and max(found.values()) <= 20
    for k in (0, 1, 4, 9):
        prefix = sorted(round(m.energy, 8) for m in basin_hopping(lj, steps=k, **kw).minima())
        assert prefix == sorted(round(full.minimum(i).energy, 8) for i, s in found.items() if s <= k)
    sat = saturation(found, 20)
    late = sum(1 for s in found.values() if s > 10)
    assert sat == {"n_found": len(found), "n_late": late, "late_fraction": late / len(found)}


def test_saturation_counts_the_second_half_and_rejects_bad_steps():
    assert saturation([0, 0, 3, 5, 6, 10], 10) == {"n_found": 6, "n_late": 2, "late_fraction": 2 / 6}
    assert saturation({1: 0, 2: 7}, 15)["n_late"] == 0  # 7 <= 7.5: first half
    assert saturation([], 10) == {"n_found": 0, "n_late": 0, "late_fraction": 0.0}
    for steps, found in ((0, [0]), (10, [11]), (10, [-1]), (True, [0])):
        with pytest.raises(ConfigError):
            saturation(found, steps)
    db = Database()
    with pytest.raises(ConfigError):
        db.add_minimum(0.0, np.zeros(2), found_at=-1)
    m, _ = db.add_minimum(0.0, np.zeros(2))  # stored without a step (e.g. by a connection search) ...
    db.add_minimum(0.0, np.zeros(2), found_at=4)  # ... then found by a search: its first step is recorded
    db.add_minimum(0.0, np.zeros(2), found_at=9)
    assert db.found_steps() == {m.id: 4}


def test_basin_hopping_stops_at_the_target_energy():
    lj = LennardJones(13)
    db = basin_hopping(lj, steps=10000, temperature=0.8, seed=0, walkers=4, target=LJ13)
    assert db.lowest_energy() == pytest.approx(LJ13, abs=1e-5)
    assert db.get_state("basin_hopping")["done"] < 10000


def test_basin_hopping_finds_lj13_global_minimum():
    db = basin_hopping(LennardJones(13), steps=40, temperature=0.8, seed=0, walkers=4)
    ms = db.minima()
    assert [m.energy for m in ms] == sorted(m.energy for m in ms)
    assert ms[0].energy == pytest.approx(LJ13, abs=2e-6)
    assert len(ms) > 5  # it really searched: many distinct minima on the way


def test_basin_hopping_finds_all_four_lj7_minima():
    lj = LennardJones(7)
    db = basin_hopping(lj, steps=25, temperature=0.8, seed=1, walkers=4)
    energies = [m.energy for m in db.minima()]
    assert len(energies) == 4  # all four, each once (permutation/rotation copies merged)
    assert np.allclose(energies, LJ7, atol=2e-6)
    for m in db.hessian_summaries():  # computed on demand, then stored
        assert m.n_neg == 0 and np.abs(lj.gradient(m.coords)).max() < 1e-4
    assert all(m.n_neg == 0 and m.log_prod is not None for m in db.minima())


def test_basin_hopping_validates_arguments():
    with pytest.raises(ConfigError):
        basin_hopping(MullerBrown(), steps=-1)
    with pytest.raises(ConfigError):
        basin_hopping(MullerBrown(), temperature=0)
    with pytest.raises(ConfigError):
        basin_hopping(MullerBrown(), x0=np.zeros(3))


# ----------------------------------------------------------------------------- Mueller-Brown
def _mb_reference():
    """Stationary points of the Mueller-Brown surface from an independent implementation of its formula
    and a dense Newton root search (all starting points at once) on finite-difference derivatives;
    classified by the signs of the finite-difference Hessian's eigenvalues."""
    A = np.array([-200, -100, -170, 15.0])[:, None]
    a = np.array([-1, -1, -6.5, 0.7])[:, None]
    b = np.array([0, 0, 11, 0.6])[:, None]
    c = np.array([-10, -10, -6.5, 0.7])[:, None]
    x0 = np.array([1, 0, -0.5, -1.0])[:, None]
    y0 = np.array([0, 0.5, 1.5, 1.0])[:, None]

    def V(P):  # P: (2, M) -> (M,)
        dx, dy = P[0] - x0, P[1] - y0
        return (A * np.exp(a * dx * dx + b * dx * dy + c * dy * dy)).sum(0)

    h = 1e-5
    E = np.eye(2)[:, :, None]

    def grad(P):
        return np.stack([(V(P + h * E[i]) - V(P - h * E[i])) / (2 * h) for i in range(2)])

    def hess(P):
        H = np.stack([(grad(P + 1e-4 * E[i]) - grad(P - 1e-4 * E[i])) / 2e-4 for i in range(2)])  # (2, 2, M)
        return 0.5 * (H + H.transpose(1, 0, 2))

    gx, gy = np.meshgrid(np.linspace(-1.5, 1.1, 40), np.linspace(-0.4, 2.0, 40))
    P = np.stack([gx.ravel(), gy.ravel()])
    for _ in range(60):
        H = hess(P).transpose(2, 0, 1)
        step = np.linalg.solve(H, grad(P).T[:, :, None])[:, :, 0].T
        P = P - np.clip(step, -0.1, 0.1)
    ok = (np.abs(grad(P)).max(0) < 1e-6) & (P[0] > -1.6) & (P[0] < 1.2) & (P[1] > -0.5) & (P[1] < 2.1)
    found = []
    for p in P[:, ok].T:
        if not any(np.linalg.norm(p - q) < 1e-4 for q in found):
            found.append(p)
    found = np.array(found).T
    index = (np.linalg.eigvalsh(hess(found).transpose(2, 0, 1)) < 0).sum(1)
    order = np.argsort(V(found))
    minima = [found[:, i] for i in order if index[i] == 0]
    saddles = [found[:, i] for i in order if index[i] == 1]
    return minima, saddles


@pytest.fixture(scope="module")
def mb_reference():
    return _mb_reference()


def test_muller_brown_reference_search_sees_three_minima_two_saddles(mb_reference):
    minima, saddles = mb_reference
    assert len(minima) == 3 and len(saddles) == 2
    # agrees with the values quoted in the literature to the 3 digits given there
    assert np.allclose(minima[0], [-0.558, 1.442], atol=1e-3)
    assert np.allclose(saddles[0], [0.212, 0.293], atol=1e-3)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no runaway band image overflows on the way
def test_muller_brown_minima_and_saddles(mb_reference):
    ref_min, ref_ts = mb_reference
    mb = MullerBrown()
    db = basin_hopping(mb, steps=30, temperature=40.0, seed=0, walkers=3)
    got = [m.coords for m in db.minima()]
    assert len(got) == 3
    for p, q in zip(got, ref_min):
        assert np.allclose(p, q, atol=1e-5)
    n = connect_all(mb, db, max_cycles=3, n_images=12)
    assert n == 3
    ts = sorted(db.transition_states(), key=lambda t: t.energy)
    assert len(ts) == 2
    for t, q in zip(sorted(ts, key=lambda t: mb.energy(t.coords)), ref_ts):
        assert np.allclose(t.coords, q, atol=1e-5)
    for t in ts:  # index 1 from a finite-difference Hessian (independent of the HVP code)
        assert np.sum(np.linalg.eigvalsh(fd_hessian(mb.gradient, t.coords)) < 0) == 1


def test_every_lj7_transition_state_has_index_one():
    lj = LennardJones(7)
    db = basin_hopping(lj, steps=15, temperature=0.8, seed=1, walkers=4)
    connect_all(lj, db, max_cycles=3, n_images=8)
    tss = db.transition_states()
    assert len(tss) >= 3
    assert connected(db, db.minima()[0].id, db.minima()[-1].id)
    for t in tss:
        lam = np.linalg.eigvalsh(fd_hessian(lj.gradient, t.coords))
        tol = 1e-4 * np.abs(lam).max()
        assert np.sum(lam < -tol) == 1  # one negative eigenvalue; 6 zero modes sit in (-tol, tol)
        assert np.sum(np.abs(lam) < tol) == 6
        e1, e2 = db.minimum(t.min1).energy, db.minimum(t.min2).energy
        assert t.energy > max(e1, e2)


def test_double_ended_connect_network():
    pot = small_network(hidden=(2,), l2=1e-2)
    db = basin_hopping(pot, steps=10, temperature=0.05, seed=0, walkers=4, step_size=0.8)
    ms = db.minima()
    assert len(ms) >= 2
    ok = double_ended_connect(pot, db, ms[0].id, ms[1].id, max_cycles=4, n_images=8)
    assert ok
    for t in db.transition_states():
        lam = np.linalg.eigvalsh(pot.landscape.dense_hessian(torch.as_tensor(t.coords)).numpy())
        assert np.sum(lam < -1e-8 * np.abs(lam).max()) == 1


def test_dneb_batched_equals_one_by_one():
    mb = MullerBrown()
    a, b = np.array([-0.558, 1.442]), np.array([-0.050, 0.467])
    b1 = dneb(mb, a, b, n_images=8, max_iter=60, batched=True)
    b2 = dneb(mb, a, b, n_images=8, max_iter=60, batched=False)
    assert np.allclose(b1.images, b2.images, atol=1e-10)
    ts = refine_ts(mb, b1.images[b1.climbing])
    assert ts.converged and ts.eigenvalue < 0


def test_hybrid_ef_and_dense_ef_reach_the_same_index_one_saddle():
    lj = LennardJones(7)
    ms = basin_hopping(lj, steps=15, temperature=0.8, seed=1, walkers=4).minima()
    band = dneb(lj, ms[0].coords, ms[1].coords, n_images=8, max_iter=40)  # a rough band
    i = band.climbing
    tau = band.images[i + 1] - band.images[i - 1]
    a = refine_ts(lj, band.images[i])
    b = refine_ts_hybrid(lj, band.images[i], v0=tau / np.linalg.norm(tau))
    assert a.converged and b.converged
    assert a.energy == pytest.approx(b.energy, abs=1e-9) and lj.distance(a.x, b.x) < 1e-5
    assert hessian_summary(lj, a.x)[1] == 1 and hessian_summary(lj, b.x)[1] == 1  # one negative eigenvalue
    lam = np.linalg.eigvalsh(fd_hessian(lj.gradient, b.x))
    assert b.eigenvalue == pytest.approx(lam[0], rel=1e-4)  # Lanczos on exact HVPs vs finite differences
    lam0, v = lowest_mode(lj, b.x)
    assert lam0 == pytest.approx(lam[0], rel=1e-4) and abs(v @ b.eigvec) == pytest.approx(1, abs=1e-5)


# ----------------------------------------------------------------------------- symmetry
def _hidden_symmetry_copy(pot, x, rng):
    """x with random permutations and sign flips of the hidden units of every layer (tanh is odd)."""
    land = pot.landscape
    p = {k: v.clone() for k, v in land.unflatten(torch.as_tensor(x)).items()}
    for (w_in, b_in), (w_out, _) in zip(pot._layers[:-1], pot._layers[1:]):
        h = p[w_in].shape[0]
        perm = torch.as_tensor(rng.permutation(h))
        s = torch.as_tensor(rng.choice([-1.0, 1.0], size=h))
        p[w_in] = (p[w_in] * s[:, None])[perm]
        p[b_in] = (p[b_in] * s)[perm]
        p[w_out] = (p[w_out] * s[None, :])[:, perm]
    return land.flatten(p).numpy()


def test_permuted_and_sign_flipped_networks_merge():
    pot = small_network(hidden=(3, 3))
    rng = np.random.default_rng(0)
    r = lbfgs_batch(pot.energy_gradient_batch, rng.normal(size=(2, pot.ndim)))
    x = r.x[0]
    db = Database(potential=pot)
    m0, new = db.add_minimum(r.energy[0], x)
    assert new
    for _ in range(6):
        y = _hidden_symmetry_copy(pot, x, rng)
        assert np.linalg.norm(y - x) > 0.1  # a genuinely different weight vector
        assert pot.energy(y) == pytest.approx(r.energy[0], abs=1e-12)
        assert np.allclose(pot.canonical(y), pot.canonical(x), atol=1e-12)
        m, new = db.add_minimum(pot.energy(y), y)
        assert not new and m.id == m0.id
    if abs(r.energy[1] - r.energy[0]) > 1e-6:  # a different minimum stays separate
        assert db.add_minimum(r.energy[1], r.x[1])[1]


def _all_hidden_copies(pot, x):
    """Every copy of a one-hidden-layer network x under permutations and sign flips of its hidden units."""
    import itertools

    land = pot.landscape
    p = land.unflatten(torch.as_tensor(x))
    (w_in, b_in), (w_out, _) = pot._layers
    h = p[w_in].shape[0]
    for perm in itertools.permutations(range(h)):
        for signs in itertools.product([-1.0, 1.0], repeat=h):
            s, i = torch.tensor(signs), torch.tensor(perm)
            q = dict(p)
            q[w_in], q[b_in], q[w_out] = (p[w_in] * s[:, None])[i], (p[b_in] * s)[i], (p[w_out] * s[None, :])[:, i]
            yield land.flatten(q).numpy()


def test_network_alignment_is_the_exact_minimum_over_symmetries_for_one_hidden_layer():
    pot = small_network(hidden=(3,))
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=(2, pot.ndim))
        brute = min(np.linalg.norm(a - c) for c in _all_hidden_copies(pot, b))  # 3! * 2^3 copies
        d, a2, b2 = pot.align(a, b)
        assert d == pytest.approx(brute, abs=1e-10) and np.linalg.norm(a2 - b2) == pytest.approx(d, abs=1e-12)
        assert pot.energy(a2) == pytest.approx(pot.energy(a), abs=1e-12)
        assert pot.energy(b2) == pytest.approx(pot.energy(b), abs=1e-12)


def test_near_copies_merge_where_the_canonical_form_is_discontinuous():
    """Two units with nearly equal biases (one near zero): a tiny perturbation swaps their canonical order and
    flips a sign, so the canonical forms lie far apart; the alignment still sees one minimum."""
    pot = small_network(hidden=(3, 2))
    rng = np.random.default_rng(2)
    x = rng.normal(size=pot.ndim)
    land = pot.landscape
    p = land.unflatten(torch.as_tensor(x).clone())
    _, b_in = pot._layers[0]
    p[b_in][:] = torch.tensor([0.3, 0.3 + 1e-4, 1e-5])
    x = land.flatten(p).numpy()
    y = x.copy()
    y[land.numels[0] : land.numels[0] + 3] = [0.3 + 2e-4, 0.3, -1e-5]  # order of units 0/1 and sign of 2 change
    y = _hidden_symmetry_copy(pot, y, rng)
    assert np.linalg.norm(pot.canonical(x) - pot.canonical(y)) > 0.5
    d, _, _ = pot.align(x, y)
    assert d < 1e-3 and pot.same_minimum(x, y, pot.dist_tol)
    for _ in range(3):  # deeper nets: a symmetric copy with a little noise is found within the noise
        z = _hidden_symmetry_copy(pot, x, rng) + 1e-4 * rng.normal(size=pot.ndim)
        assert pot.distance(x, z) < 1e-4 * np.sqrt(pot.ndim) * 2


def test_cluster_alignment_undoes_rotation_and_permutation():
    lj = LennardJones(7)
    rng = np.random.default_rng(3)
    x = basin_hopping(lj, steps=2, seed=0).minima()[0].coords
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    y = (x.reshape(7, 3)[rng.permutation(7)] @ Q.T + rng.normal(size=3)).ravel()
    assert lj.distance(x, y) < 1e-6
    assert lj.same_minimum(x, y, 1e-8)
    assert lj.distance(x, lj.perturb(x, 0.3, rng)) > 1e-2


# ----------------------------------------------------------------------------- crash safety
def test_sigkilled_search_opens_and_resumes(tmp_path):
    path = tmp_path / "lj.sqlite"
    script = textwrap.dedent(f"""
        from flatminima.explore import Database, LennardJones, basin_hopping
        lj = LennardJones(13)
        basin_hopping(lj, steps=100000, temperature=0.8, seed=0, walkers=2, database=Database({str(path)!r}, lj))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        done = 0
        while time.time() < deadline and done < 3:
            time.sleep(0.2)
            if path.exists():
                try:
                    con = sqlite3.connect(path, timeout=5)
                    row = con.execute("SELECT value FROM state WHERE key='basin_hopping'").fetchone()
                    con.close()
                except sqlite3.OperationalError:
                    row = None
                if row:
                    import json
                    done = json.loads(row[0])["done"]
        assert done >= 3, "the search did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    lj = LennardJones(13)
    db = Database(path, lj)
    assert db.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n0 = db.n_minima()
    state = db.get_state("basin_hopping")
    assert n0 >= 1 and state["done"] >= 3
    before = {m.id: m.energy for m in db.minima()}
    basin_hopping(lj, steps=state["done"] + 3, temperature=0.8, seed=0, walkers=2, database=db)
    assert db.get_state("basin_hopping")["done"] == state["done"] + 3
    after = {m.id: m.energy for m in db.minima()}
    assert all(after[k] == v for k, v in before.items())  # nothing committed was lost
    db.close()


# ----------------------------------------------------------------------------- PATHSAMPLE
def test_pathsample_roundtrip(tmp_path):
    mb = MullerBrown()
    db = basin_hopping(mb, steps=20, temperature=40.0, seed=0, walkers=3)
    connect_all(mb, db, max_cycles=3, n_images=12)
    files = export_pathsample(db, tmp_path)
    lines = files["min.data"].read_text().splitlines()
    assert len(lines) == db.n_minima() and len(lines[0].split()) == 6
    assert files["points.min"].stat().st_size == 8 * 2 * db.n_minima()
    db2 = Database(potential=mb)
    assert import_pathsample(tmp_path, db2, ndim=2) == (db.n_minima(), db.n_ts())
    assert [m.energy for m in db2.minima()] == pytest.approx([m.energy for m in db.minima()], abs=1e-10)
    e1 = sorted(round(e, 8) for *_, e in db.edges())
    e2 = sorted(round(e, 8) for *_, e in db2.edges())
    assert e1 == e2
    with pytest.raises(ConfigError):
        import_pathsample(tmp_path, Database(potential=mb), ndim=3)


# ----------------------------------------------------------------------------- graphs and metrics
# hand-made landscape: 1 (E=0) -2.0- 3 (E=0.5) -1.5- 2 (E=1) -3.0- 4 (E=2); 5 (E=0.2) -2.5- 4 (second funnel)
ENERGIES = {1: 0.0, 2: 1.0, 3: 0.5, 4: 2.0, 5: 0.2}
EDGES = [(1, 3, 2.0), (3, 2, 1.5), (2, 4, 3.0), (5, 4, 2.5)]


def test_minimax_and_funnels_on_hand_made_landscape():
    assert minimax_to_gmin(ENERGIES, EDGES) == {1: 0.0, 3: 2.0, 2: 2.0, 4: 3.0, 5: 3.0}
    msb = monotonic_sequence_basins(ENERGIES, EDGES)
    assert msb == {1: 1, 3: 1, 2: 1, 4: 5, 5: 5}  # 4's lowest lower neighbour is 5
    m = landscape_metrics(ENERGIES, EDGES, temperature=1.0)
    assert m["n_funnels"] == 2 and m["n_minima"] == 5 and m["n_ts"] == 4
    assert m["barrier_to_gmin"]["max"] == pytest.approx(2.8)
    assert m["fraction_in_gmin_funnel"] == pytest.approx(3 / 5)


def test_frustration_index_closed_form():
    T = 0.7
    E = np.array([ENERGIES[k] for k in (1, 2, 3, 4, 5)])
    edag = np.array([0.0, 2.0, 2.0, 3.0, 3.0])
    p = np.exp(-E / T) / np.exp(-E / T).sum()
    want = sum(p[i] * (edag[i] - 0.0) / (E[i] - 0.0) for i in range(1, 5))
    assert frustration_index(ENERGIES, EDGES, temperature=T) == pytest.approx(want, rel=1e-12)


def test_disconnectivity_tree_levels():
    tree = dg_tree(ENERGIES, EDGES, n_levels=30)
    # below 1.5 no transition state is crossed: every minimum present is its own basin
    for L, basins in zip(tree.levels, tree.basins):
        if L <= 1.5:
            assert all(len(b) == 1 for b in basins)
        if L > 3.0:
            assert len(basins) == 1 and basins[0] == frozenset(ENERGIES)
    assert set(tree.x) == set(ENERGIES) and len(set(tree.x.values())) == 5
    fig = disconnectivity_graph(ENERGIES, EDGES, color_by={k: v for k, v in ENERGIES.items()})
    assert len(fig.axes) == 2  # graph + colour bar


class _DoubleWell(Potential):
    """E = (x0^2 - 1)^2 + x1^2: minima (+-1, 0) at E = 0, a saddle at the origin (E = 1, Hessian diag(-4, 2))."""

    ndim = 2

    def energy_gradient_batch(self, X):
        X = np.asarray(X, dtype=np.float64)
        E = (X[:, 0] ** 2 - 1) ** 2 + X[:, 1] ** 2
        G = np.stack([4 * X[:, 0] * (X[:, 0] ** 2 - 1), 2 * X[:, 1]], axis=1)
        return E, G

    def hvp(self, x, v):
        H = np.array([[12 * x[0] ** 2 - 4, 0.0], [0.0, 2.0]])
        return np.asarray(v) @ H.T

    def random_coords(self, rng):
        return np.zeros(2)  # every start sits on the saddle, where a quench stops at once


def test_escape_saddle_pushes_a_stationary_saddle_into_a_minimum():
    pot = _DoubleWell()
    x, e, ok, log_prod, n_neg = escape_saddle(pot, np.zeros(2), dict(gtol=1e-10, max_step=pot.default_max_step))
    assert ok and n_neg == 0
    assert abs(abs(x[0]) - 1) < 1e-8 and abs(x[1]) < 1e-8 and e < 1e-15
    assert log_prod == pytest.approx(np.log(8.0 * 2.0))  # Hessian diag(8, 2) at (+-1, 0)
    for side in (-1.0, 1.0):  # a point leaning to one side of the saddle goes down that side
        x, e, ok, _, _ = escape_saddle(pot, np.array([side * 1e-7, 0.3]), dict(gtol=1e-10, max_step=0.2))
        assert ok and x[0] == pytest.approx(side, abs=1e-8)
    x, e, ok, log_prod, n_neg = escape_saddle(pot, np.array([1.0, 0.0]), {})  # a minimum stays as it is
    assert ok and n_neg == 0 and np.array_equal(x, [1.0, 0.0])


def test_basin_hopping_stores_no_saddle_where_a_quench_stops_on_one():
    pot = _DoubleWell()
    unchecked = basin_hopping(pot, steps=0, walkers=2)  # the default: no check
    assert [round(m.energy, 12) for m in unchecked.minima()] == [1.0]  # the quench stopped on the saddle
    db = basin_hopping(pot, steps=3, walkers=2, step_size=1e-9, check_index=True)
    assert db.n_minima() >= 1
    for m in db.minima():
        assert m.energy < 1e-10 and abs(abs(m.coords[0]) - 1) < 1e-6  # quenched to the default gtol
