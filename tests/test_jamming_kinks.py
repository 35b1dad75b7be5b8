"""ReLU kinks of the jamming module against exact oracles: enumeration of active sets, explicit rescaling of
hidden units, finite differences of the loss inside each case of a nested kink, and random directions at
points the active-set SQP certifies."""

import itertools
import math

import numpy as np
import pytest
import torch

from flatminima.errors import ConfigError
from flatminima.jamming import HingeProblem, minimize, network, random_data
from flatminima.jamming.activeset import box_qp, kink_sqp
from flatminima.jamming.certify import certify, kink_cases
from flatminima.jamming.kinks import (
    forced_kink_terms,
    kink_analysis,
    nested_kinks,
    rescaling_modes,
    upstream_kinks,
)
from flatminima.jamming.problem import square_network

torch.set_num_threads(1)


def square_problem(P, h, depth, seed):
    X, y = random_data(P, h, seed=seed)
    return HingeProblem(square_network(h, depth, seed=seed), X, y)


# ----------------------------------------------------------------------------- box QP
def test_box_qp_against_enumeration_of_active_sets():
    """The dual QP solver: the best of all 3^K (lower, upper, free) patterns, also with a singular Q
    (dependent kink normals) and with boxes on either side of zero (units held off or on)."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        K = 5
        A = rng.standard_normal((7, K))
        if trial % 2:
            A[:, 4] = A[:, 0] + A[:, 1]
        Q = A.T @ A
        q = rng.standard_normal(K)
        width = rng.uniform(0.1, 2.0, K)
        on = rng.random(K) < 0.5
        lo, hi = np.where(on, -width, 0.0), np.where(on, 0.0, width)
        t = box_qp(Q, q, lo, hi)
        assert np.all(t >= lo) and np.all(t <= hi)

        def obj(x):
            return 0.5 * x @ Q @ x + q @ x

        best = math.inf
        for pattern in itertools.product((0, 1, 2), repeat=K):
            tt = np.where(np.array(pattern) == 0, lo, hi).astype(float)
            F = [i for i, p in enumerate(pattern) if p == 2]
            if F:
                B = [i for i in range(K) if i not in F]
                tt[F] = np.linalg.lstsq(Q[np.ix_(F, F)], -(q[F] + Q[np.ix_(F, B)] @ tt[B]), rcond=None)[0]
            if np.all(tt >= lo - 1e-12) and np.all(tt <= hi + 1e-12):
                best = min(best, obj(tt))
        assert obj(t) <= best + 1e-9 * max(1.0, abs(best))
    with pytest.raises(ConfigError):
        box_qp(np.eye(2), np.zeros(3), np.zeros(2), np.ones(2))


# ----------------------------------------------------------------------------- rescaling modes
def test_rescaling_modes_are_the_tangents_of_the_unit_rescalings():
    pr = square_problem(P=20, h=3, depth=2, seed=0)
    theta = pr.landscape.theta + 0.1 * torch.randn(pr.N, generator=torch.Generator().manual_seed(1),
                                                   dtype=torch.float64)
    T = rescaling_modes(pr, theta)
    assert T.shape == (pr.N, 6)
    p = pr.landscape.unflatten(theta)
    names = list(p)
    # unit 1 of the second hidden layer, rescaled by a explicitly
    a = 1.0 + 1e-6
    q = {k: v.clone() for k, v in p.items()}
    q[names[2]][1, :] *= a
    q[names[3]][1] *= a
    q[names[4]][:, 1] /= a
    moved = pr.landscape.flatten(q)
    assert torch.allclose((moved - theta) / (a - 1), T[:, 4], rtol=1e-5, atol=1e-9)
    assert torch.allclose(pr.outputs(moved), pr.outputs(theta), rtol=1e-12, atol=1e-12)  # an exact symmetry
    g = pr.loss_and_grad(theta)[1]
    assert float((g @ T).abs().max()) <= 1e-12 * float(g.norm()) * float(T.norm())


# ----------------------------------------------------------------------------- nested kinks
def nested_point():
    """A depth-2 ReLU network (3 units per layer) whose active pattern 0 sits on a kink in both hidden
    layers (unit 0 of each), the second depending on the first (W2[0, 0] = 0.7)."""
    pr = square_problem(P=12, h=3, depth=2, seed=4)
    theta = pr.landscape.theta.clone()
    p = pr.landscape.unflatten(theta)
    W1, b1, W2, b2, W3, b3 = (p[k] for k in p)
    x0 = pr.X[0]
    with torch.no_grad():
        W2[0, 0] = 0.7
        W1[0] = W1[0] + 0.3
        b1[0] = -(W1[0] @ x0)
        a1 = torch.relu(W1 @ x0 + b1)
        b2[0] = -(W2[0] @ a1)
        W3[0, 0] = -1.3 * pr.Y[0]  # switching the later unit on raises the loss: c >= 0
        b3[0] = b3[0] - 2.0 * pr.Y[0]
    return pr, theta


def _in_cone(case, v):
    """Flip v so that every upstream kink stays on its side of the case (n.v >= 0 on, <= 0 off)."""
    for k in torch.nonzero(case["upstream"]).flatten().tolist():
        s = float(case["n"][k] @ v)
        want = 1.0 if bool(case["on"][k]) else -1.0
        if s * want < 0:
            v = v - 2 * s * case["n"][k] / float(case["n"][k] @ case["n"][k])
    return v


def test_nested_kink_cases_predict_the_directional_derivative():
    """Inside each case's cone the loss is g_s . v + sum_leaves c_k relu(n_k . v) to first order (finite
    differences); the additive model of a flat kink set (normals of the all-off piece) is wrong in the
    case with the upstream unit on, which is why the cases exist."""
    pr, x = nested_point()
    assert float(pr.stabilities(x)[0]) > 0
    ka = kink_analysis(pr, x, radius=1e-9 * float(x.norm()))
    assert nested_kinks(pr, ka["index"]) == 1
    up = upstream_kinks(pr, ka["index"])
    assert int(up.sum()) == 1
    cases = kink_cases(pr, ka, x)
    assert len(cases) == 2
    f0 = pr.loss(x)
    gen = torch.Generator().manual_seed(0)
    off_n, _ = forced_kink_terms(pr, ka, x, torch.zeros(ka["index"].numel(), dtype=torch.bool))
    worst_additive = 0.0
    for case in cases:
        leaf = ~case["upstream"]
        for _ in range(6):
            v = _in_cone(case, torch.randn(pr.N, generator=gen, dtype=torch.float64))
            model = float(case["g"] @ v + (case["c"][leaf] * torch.relu(case["n"][leaf] @ v)).sum())
            eps = 1e-7
            fd = (pr.loss(x + eps * v) - f0) / eps
            assert fd == pytest.approx(model, rel=1e-5, abs=1e-8)
            if bool(case["on"].any()):
                additive = float(case["g"] @ v + (case["c"][leaf] * torch.relu(off_n[leaf] @ v)).sum())
                worst_additive = max(worst_additive, abs(additive - fd))
        # the residual: -r is a descent direction of slope -|r| inside the cone when every leaf jump is >= 0
        r = case["r"]
        if float(r.norm()) > 1e-10 and bool((case["c"][leaf] >= 0).all()):
            v = -r / r.norm()
            slope = (pr.loss(x + 1e-7 * v) - f0) / 1e-7
            assert slope == pytest.approx(-float(r.norm()), rel=1e-4)
    assert worst_additive > 1e-3  # the flat model misses the upstream unit's path


# ----------------------------------------------------------------------------- the active-set SQP
def depth1_instance(seed):
    X, y = random_data(60, 4, seed=seed + 2)
    return HingeProblem(network(20, 4, 1, activation="relu", seed=seed), X, y)


def test_kink_sqp_converges_onto_a_kink_minimum_that_random_directions_confirm():
    pr = depth1_instance(1)
    start = minimize(pr, max_iter=4000, polish=0)
    assert start.certificate == "none"  # the first-order stage alone does not reach the kinks
    steps = []
    r = kink_sqp(pr, start.theta, callback=lambda d: steps.append(d["step"]))
    tn = float(r.theta.norm())
    assert r.reason == "stalled" and steps[-1] <= 1e-12 * tn
    # quadratic convergence at the end: each of the last steps far below the one before
    small = [s for s in steps if s < 1e-4 * tn]
    assert any(b <= 1e-2 * a for a, b in zip(small, small[1:]))
    cert = certify(pr, r.theta)
    assert cert.name == "kink_minimum" and cert.kinks >= 1 and cert.kink_residual <= 1e-12
    # oracle: no direction lowers the loss, at several step sizes, generic or tangent to the kinks
    f0 = pr.loss(r.theta)
    ka = kink_analysis(pr, r.theta, radius=1e-9 * tn)
    n = ka["n"]
    Q, _ = torch.linalg.qr(n.T, mode="complete")
    tangent = Q[:, n.shape[0]:]
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        v = torch.randn(pr.N, generator=gen, dtype=torch.float64)
        if i % 2:
            v = tangent @ (tangent.T @ v)
        v = v / v.norm()
        for eps in (1e-6, 1e-4, 1e-2):
            assert pr.loss(r.theta + eps * v) >= f0 * (1 - 1e-13)
    with pytest.raises(ConfigError):
        kink_sqp(HingeProblem(network(20, 4, 1, activation="tanh", seed=0), *random_data(10, 4, seed=0)),
                 torch.zeros(25, dtype=torch.float64))


@pytest.mark.parametrize("seed", [1, 2])
def test_minimiser_certifies_a_square_relu_network_in_the_jammed_phase(seed):
    """A square ReLU network (d = h = 4, two hidden layers, N = 36 weights) on P = 60 random patterns
    (P/N = 1.7, jammed with N_Delta/N ~ 0.6-0.8 for these seeds): the full minimiser (Adam, then the
    active-set SQP polish) ends certified, and the certificate holds from scratch and against random
    directions."""
    pr = square_problem(P=60, h=4, depth=2, seed=seed)
    res = minimize(pr, max_iter=20000, polish_time=30.0)
    assert res.certificate in ("minimum", "kink_minimum"), res.reason
    assert res.loss > 0 and res.n_delta > 0.1 * 36
    assert certify(pr, res.theta).name == res.certificate
    f0 = pr.loss(res.theta)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        v = torch.randn(pr.N, generator=gen, dtype=torch.float64)
        for eps in (1e-6, 1e-3):
            assert pr.loss(res.theta + eps * v / v.norm()) >= f0 * (1 - 1e-13)
