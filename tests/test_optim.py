"""Tests of flatminima.optim: Entropy-SGD, Replicated-SGD, SAM and the coupling schedules.

Oracles: closed forms on quadratics (proximal gradient, SAM's perturbed gradient), reductions to
plain SGD (step for step), independent SGD runs, uninterrupted trajectories (state_dict round trips).
"""

from __future__ import annotations

import copy
import io
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from flatminima.errors import ConfigError
from flatminima.optim import SAM, EntropySGD, ReplicatedSGD, schedules
from flatminima.optim.registry import build_optimizer, grad_evals_per_step, options_of
from flatminima.train import MinibatchClosure, MinibatchStream, per_example_loss

torch.set_num_threads(1)
DT = torch.float64


# ------------------------------------------------------------------------------------------ fixtures
def make_data(n=96, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randint(0, classes, (n,), generator=g)
    return X, y


def make_mlp(seed=0, bn=False, d=5, classes=3):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, classes)]
    return nn.Sequential(*layers).to(DT)


def make_closure(model, X, y, batch=16, seed=0):
    return MinibatchClosure(model, MinibatchStream(X, y, batch, seed=seed), per_example_loss("cross_entropy"))


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(a, b, tol=1e-10):
    for x, z in zip(a, b):
        torch.testing.assert_close(x, z, atol=tol, rtol=0)


def quadratic(n=8, seed=0, lo=-2.0, hi=1.0):
    """A spread spectrum H = Q diag(10^lo .. 10^hi) Q^T and the closure of f(x) = x^T H x / 2."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    H = Q @ torch.diag(torch.logspace(lo, hi, n, dtype=DT)) @ Q.T
    x = nn.Parameter(torch.randn(n, generator=g, dtype=DT))

    def closure():
        x.grad = None
        with torch.enable_grad():
            loss = 0.5 * x @ H @ x
            loss.backward()
        return loss.detach()

    return H, x, closure


def save_load(sd):
    """A state_dict through torch.save / torch.load(weights_only=True), as checkpoints go."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ------------------------------------------------------------------------------------------ Entropy-SGD
@pytest.mark.parametrize("gscale", [True, False])
def test_esgd_step_is_the_proximal_gradient_on_a_quadratic(gscale):
    H, x, closure = quadratic()
    gamma, lr = 0.5, 0.7
    x0 = x.detach().clone()
    opt = EntropySGD([x], lr=lr, inner_steps=600, inner_lr=0.1, noise=1e-7, gamma=gamma, scoping=0.0,
                     gscale=gscale, seed=0)
    opt.step(closure)
    step = x0 - x.detach()
    prox = torch.linalg.solve(H + gamma * torch.eye(8, dtype=DT), H @ x0)  # (H + gamma I)^-1 H x
    target = lr * (gamma * prox if gscale else prox)
    rel = float((step - target).norm() / target.norm())
    cos = float(step @ target / (step.norm() * target.norm()))
    assert rel < 0.01 and cos > 0.9999, (rel, cos)
    # the diagnostics' cosine between ∇f(x) = Hx and x - mu is that of Hx and (H + gamma I)^-1 Hx
    d = opt.diagnostics()
    want_cos = float((H @ x0) @ prox / ((H @ x0).norm() * prox.norm()))
    assert d["cos_grad_x_mu"] == pytest.approx(want_cos, rel=1e-3)
    assert d["dist_x_mu"] == pytest.approx(float(prox.norm()), rel=1e-3)
    assert d["gamma"] == gamma


def test_esgd_noise_is_the_generators_randn_scaled_by_sqrt_inner_lr():
    """f = 0, gamma = 0, L = 1, alpha = 1, gscale False, lr = 1: x <- x + sqrt(eta') eps xi, with xi the
    optimizer generator's torch.randn: the same numbers as a fresh generator with that seed draws."""
    x = nn.Parameter(torch.zeros(20000, dtype=DT))

    def closure():
        x.grad = torch.zeros_like(x)
        return torch.zeros(())

    opt = EntropySGD([x], lr=1.0, inner_steps=1, inner_lr=0.04, noise=0.1, alpha=1.0, gamma=0.0, scoping=0.0,
                     gscale=False, seed=11)
    opt.step(closure)
    xi = torch.randn(20000, generator=torch.Generator().manual_seed(11), dtype=DT)
    torch.testing.assert_close(x.detach(), math.sqrt(0.04) * 0.1 * xi, atol=0, rtol=1e-15)
    assert float(x.detach().std()) == pytest.approx(0.02, rel=0.03)


def test_esgd_with_no_inner_steps_and_no_coupling_is_sgd():
    X, y = make_data()
    m1, m2 = make_mlp(), make_mlp()
    opt1 = EntropySGD(m1.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, inner_steps=0,
                      gamma=0.0, scoping=0.0)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    c1, c2 = make_closure(m1, X, y), make_closure(m2, X, y)
    for _ in range(15):
        l1, l2 = opt1.step(c1), opt2.step(c2)
        assert float(l1) == float(l2)
        assert_params_close(params_of(m1), params_of(m2), 0.0)  # torch.optim.SGD's own step
    assert c1.grad_evals == 15


def test_esgd_one_noiseless_inner_step_with_lr_one_is_sgd():
    """L = 1, alpha = 1 (mu = x'), gamma = 0, lr = 1 without the gamma factor: x <- x - eta' ∇f(x)."""
    X, y = make_data()
    m1, m2 = make_mlp(), make_mlp()
    opt1 = EntropySGD(m1.parameters(), lr=1.0, inner_steps=1, inner_lr=0.2, noise=0.0, alpha=1.0, gamma=0.0,
                      scoping=0.0, gscale=False)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.2)
    c1, c2 = make_closure(m1, X, y), make_closure(m2, X, y)
    for _ in range(10):
        opt1.step(c1)
        opt2.step(c2)
    assert_params_close(params_of(m1), params_of(m2), 1e-12)


def test_esgd_inner_loop_costs_L_evaluations_and_the_scoping_clock_advances():
    X, y = make_data()
    m = make_mlp()
    c = make_closure(m, X, y)
    opt = EntropySGD(m.parameters(), lr=1.0, inner_steps=4, gamma=0.03, scoping=0.1)
    for t in range(5):
        assert opt.gamma() == pytest.approx(0.03 * 1.1**t)
        opt.step(c)
        assert opt.diagnostics()["gamma"] == pytest.approx(0.03 * 1.1**t)
    assert c.grad_evals == 20
    assert opt.state_dict()["state"][0]["step"] == 5


@pytest.mark.parametrize("alpha", [0.75, 0.25])
def test_esgd_running_mean_weighs_the_new_iterate_by_alpha(alpha):
    """mu after two noiseless steps of a constant gradient (x'_l = 1 - l eta'), gscale False, lr 1: x <- mu."""
    x = nn.Parameter(torch.ones(3, dtype=DT))

    def closure():
        x.grad = torch.full_like(x, 1.0)
        return torch.zeros(())

    opt = EntropySGD([x], lr=1.0, inner_steps=2, inner_lr=0.1, noise=0.0, alpha=alpha, gamma=0.0, scoping=0.0,
                     gscale=False)
    opt.step(closure)
    mu = 1.0
    for xl in (0.9, 0.8):
        mu = (1 - alpha) * mu + alpha * xl
    torch.testing.assert_close(x.detach(), torch.full((3,), mu, dtype=DT))


@pytest.mark.parametrize("nesterov", [False, True])
def test_esgd_inner_loop_is_torch_sgd_restarted_every_outer_step(nesterov):
    """gamma = 0, no noise, alpha = 1 (mu = x'_L), lr = 1, gscale False: each outer step is L steps of a
    fresh torch.optim.SGD with the inner momentum and weight decay."""
    X, y = make_data()
    m1, m2 = make_mlp(), make_mlp()
    L = 4
    opt = EntropySGD(m1.parameters(), lr=1.0, inner_steps=L, inner_lr=0.05, inner_momentum=0.9,
                     inner_weight_decay=1e-3, nesterov=nesterov, noise=0.0, alpha=1.0, gamma=0.0, scoping=0.0,
                     gscale=False)
    c1, c2 = make_closure(m1, X, y), make_closure(m2, X, y)
    for _ in range(3):
        opt.step(c1)
        sgd = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov)
        for _ in range(L):
            sgd.step(c2)
        assert_params_close(params_of(m1), params_of(m2), 1e-13)  # x - (x - x'_L): rounding only


_TRAJECTORY = """
import sys, torch
from torch import nn
from flatminima.optim import EntropySGD
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
seed = None if sys.argv[1] == "global" else int(sys.argv[1])
if seed is None:
    torch.manual_seed(5)
opt = EntropySGD(model.parameters(), lr=0.5, momentum=0.9, inner_steps=3, noise=0.05, seed=seed)
torch.manual_seed(123)  # the generator was seeded at construction: later use of the global RNG is irrelevant

def closure():
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    return loss

for _ in range(4):
    opt.step(closure)
print(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy().tobytes().hex())
"""


def _trajectory_in_a_fresh_process(seed: str) -> str:
    out = subprocess.run([sys.executable, "-c", _TRAJECTORY, seed], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out.stdout.strip()


def test_esgd_same_seed_gives_bit_identical_trajectories_in_separate_processes():
    a, b = _trajectory_in_a_fresh_process("3"), _trajectory_in_a_fresh_process("3")
    assert a == b and len(a) > 100
    assert _trajectory_in_a_fresh_process("4") != a  # the noise matters: another seed, another trajectory
    g1, g2 = _trajectory_in_a_fresh_process("global"), _trajectory_in_a_fresh_process("global")
    assert g1 == g2 and g1 not in (a, b)  # seed=None: seeded from torch's global generator at construction


def test_esgd_param_groups_each_use_their_own_hyperparameters():
    H, x, closure = quadratic()
    z = nn.Parameter(x.detach().clone())
    x0 = x.detach().clone()

    def both():
        x.grad, z.grad = None, None
        with torch.enable_grad():
            loss = 0.5 * x @ H @ x + 0.5 * z @ H @ z
            loss.backward()
        return loss.detach()

    opt = EntropySGD([{"params": [x]}, {"params": [z], "lr": 0.35, "gamma": 0.5}], lr=0.7, inner_steps=500,
                     inner_lr=0.05, noise=0.0, gamma=0.5, scoping=0.0)
    opt.step(both)
    torch.testing.assert_close(x0 - z.detach(), 0.5 * (x0 - x.detach()))


# ------------------------------------------------------------------------------------------ Replicated-SGD
def _batches(X, y, batch, seed, n):
    s = MinibatchStream(X, y, batch, seed=seed)
    return [s.next() for _ in range(n)]


class ListClosure:
    """A MinibatchClosure-like object that hands out a fixed list of minibatches in order."""

    def __init__(self, model, batches):
        self.model, self.batches, self.i, self.grad_evals = model, batches, 0, 0
        self.loss_fn = per_example_loss("cross_entropy")

    def sample(self):
        b = self.batches[self.i]
        self.i += 1
        return b

    def count(self, n=1):
        self.grad_evals += n

    def __call__(self):
        x, y = self.sample()
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y).mean()
            loss.backward()
        self.count(1)
        return loss.detach()


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_rsgd_without_coupling_is_independent_sgd_runs(mode):
    X, y = make_data()
    Y, T = 3, 6
    batches = _batches(X, y, 16, 0, Y * T)
    m = make_mlp()
    opt = ReplicatedSGD(m.parameters(), lr=0.1, replicas=Y, momentum=0.9, gamma=0.0, scoping=0.0, mode=mode)
    c = ListClosure(m, batches)
    for _ in range(T):
        opt.step(c)
    assert c.grad_evals == Y * T
    finals = []
    for a in range(Y):
        ma = make_mlp()
        sgd = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9)
        ca = ListClosure(ma, [batches[t * Y + a] for t in range(T)])
        for _ in range(T):
            sgd.step(ca)
        assert_params_close(opt.replica_parameters(a), params_of(ma), 1e-10)
        finals.append(params_of(ma))
    # the model (the center) is the replica mean
    assert_params_close(params_of(m), [torch.stack(ps).mean(0) for ps in zip(*finals)], 1e-10)


def test_rsgd_batched_equals_sequential_with_coupling_and_bn():
    X, y = make_data()
    batches = _batches(X, y, 16, 1, 4 * 8)
    out = []
    for mode in ("batched", "sequential"):
        m = make_mlp(bn=True)
        opt = ReplicatedSGD(m.parameters(), lr=0.1, replicas=4, momentum=0.9, nesterov=True, weight_decay=1e-3,
                            gamma=0.5, scoping=0.1, mode=mode, init_noise=0.05, seed=3)
        bn_before = [b.clone() for b in m.buffers()]
        c = ListClosure(m, batches)
        for _ in range(8):
            opt.step(c)
        for b0, b1 in zip(bn_before, m.buffers()):  # the center's BatchNorm statistics are untouched
            assert torch.equal(b0, b1)
        out.append(params_of(m) + [r for a in range(4) for r in opt.replica_parameters(a)])
    assert_params_close(out[0], out[1], 1e-10)


def test_rsgd_large_coupling_collapses_replicas_onto_the_center():
    X, y = make_data()
    dists = {}
    for gamma in (0.0, 1e3):
        m = make_mlp()
        # gamma_max = 1/lr: the elastic pull brings every replica onto the center at each step
        opt = ReplicatedSGD(m.parameters(), lr=0.1, replicas=4, gamma=gamma, scoping=0.0, gamma_max=10.0,
                            init_noise=0.5, seed=0)
        c = make_closure(m, X, y)
        for _ in range(20):
            opt.step(c)
        center = params_of(m)
        dists[gamma] = max(float(torch.cat([(r - p).reshape(-1) for r, p in zip(opt.replica_parameters(a), center)]).norm())
                           for a in range(4))
    assert dists[0.0] > 1.0  # independent replicas stay apart (init noise 0.5 on ~80 weights)
    assert dists[1e3] < 0.05 * dists[0.0]


def test_rsgd_explicit_center_moves_elastically():
    """center='explicit', one step: c <- c - lr gamma sum_a (c - w_a) with the pre-step replicas."""
    X, y = make_data()
    m = make_mlp()
    opt = ReplicatedSGD(m.parameters(), lr=0.05, replicas=2, gamma=2.0, scoping=0.0, center="explicit",
                        init_noise=0.3, seed=1)
    c = make_closure(m, X, y)
    opt.step(c)  # initialises the replicas around the center (center set to their mean), then one step
    c0 = params_of(m)
    w0 = [opt.replica_parameters(a) for a in range(2)]
    w0 = [[t.clone() for t in w] for w in w0]
    opt.step(c)
    for i, p in enumerate(m.parameters()):
        want = c0[i] - 0.05 * 2.0 * (2 * c0[i] - w0[0][i] - w0[1][i])
        torch.testing.assert_close(p.detach(), want, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ SAM
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_on_a_quadratic(adaptive):
    H, x, closure = quadratic()
    x0 = x.detach().clone()
    opt = SAM([x], torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.05)
    opt.step(closure)
    g = H @ x0
    T = x0.abs() if adaptive else torch.ones_like(x0)
    e = 0.1 * T * T * g / (T * g).norm()
    torch.testing.assert_close(x.detach(), x0 - 0.05 * H @ (x0 + e))


def test_sam_with_zero_radius_is_its_base_optimizer_and_uses_one_batch_per_step():
    X, y = make_data()
    m1, m2 = make_mlp(), make_mlp()
    opt1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.0, lr=0.1, momentum=0.9)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    c1, c2 = make_closure(m1, X, y), make_closure(m2, X, y)
    for _ in range(6):
        opt1.step(c1)
        opt2.step(c2)
    assert_params_close(params_of(m1), params_of(m2), 1e-12)
    assert c1.grad_evals == 12 and c1.stream.drawn == 6  # two passes on the same minibatch


# ------------------------------------------------------------------------------------------ BatchNorm
@pytest.mark.parametrize("name", ["entropy-sgd", "sam", "replicated-sgd"])
def test_inner_and_perturbed_passes_leave_batchnorm_statistics_alone(name):
    X, y = make_data()
    m = make_mlp(bn=True)
    opts = {"entropy-sgd": dict(inner_steps=3), "sam": dict(rho=0.5), "replicated-sgd": dict(replicas=2, gamma=0.1)}
    opt = build_optimizer(name, m, lr=0.1, momentum=0.9, **opts[name])
    c = make_closure(m, X, y)
    if name == "sam":  # SAM's first pass is an ordinary training pass at w: only the second is guarded
        ref = copy.deepcopy(m)
        rc = make_closure(ref, X, y)
        rc.stream.load_state_dict(c.stream.state_dict())
        x_, y_ = rc.sample()
        ref(x_)
        opt.step(c)
        for b0, b1 in zip(ref.buffers(), m.buffers()):
            torch.testing.assert_close(b0, b1)
    else:
        before = [b.clone() for b in m.buffers()]
        opt.step(c)
        for b0, b1 in zip(before, m.buffers()):
            assert torch.equal(b0, b1)


# ------------------------------------------------------------------------------------------ state_dict, schedulers
def _opt(name, model, seed):
    return {
        "entropy-sgd": lambda: EntropySGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True, inner_steps=3,
                                          inner_lr=0.05, noise=1e-2, gamma=0.1, scoping=0.05, seed=seed,
                                          inner_momentum=0.5),
        "replicated-sgd": lambda: ReplicatedSGD(model.parameters(), lr=0.1, replicas=3, momentum=0.9, gamma=0.2,
                                                scoping=0.05, init_noise=0.1, seed=seed),
        "sam": lambda: SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
        "sam-adam": lambda: SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=0.01),
    }[name]()


@pytest.mark.parametrize("name", ["entropy-sgd", "replicated-sgd", "sam", "sam-adam"])
def test_state_dict_round_trip_continues_identically(name):
    """Resume from a weights_only checkpoint into an optimizer built with ANOTHER seed: the generator's state
    comes from the checkpoint, so the trajectory continues bit for bit."""
    X, y = make_data()
    m = make_mlp()
    opt = _opt(name, m, seed=7)
    c = make_closure(m, X, y)
    for _ in range(4):
        opt.step(c)
    model_sd = copy.deepcopy(m.state_dict())
    opt_sd = save_load(opt.state_dict())
    stream_sd = c.stream.state_dict()
    for _ in range(5):
        opt.step(c)
    want = params_of(m)

    m2 = make_mlp(seed=123)
    m2.load_state_dict(model_sd)
    opt2 = _opt(name, m2, seed=8)
    opt2.load_state_dict(opt_sd)
    c2 = make_closure(m2, X, y)
    c2.stream.load_state_dict(stream_sd)
    for _ in range(5):
        opt2.step(c2)
    assert_params_close(params_of(m2), want, 0.0)
    if name == "replicated-sgd":
        for a in range(3):
            assert_params_close(opt2.replica_parameters(a), opt.replica_parameters(a), 0.0)
    if name.startswith("sam"):
        assert len(opt_sd["state"]) == len(list(m.parameters()))  # the base optimizer's state is in it


@pytest.mark.parametrize("name", ["entropy-sgd", "replicated-sgd", "sam"])
def test_lr_scheduler_changes_the_step_taken(name):
    X, y = make_data()
    steps = {}
    for factor in (1.0, 0.1):
        m = make_mlp()
        opt = {
            "entropy-sgd": lambda: EntropySGD(m.parameters(), lr=0.5, inner_steps=3, noise=0.0, gamma=0.1),
            "replicated-sgd": lambda: ReplicatedSGD(m.parameters(), lr=0.1, replicas=2, gamma=0.0),
            "sam": lambda: SAM(m.parameters(), torch.optim.SGD, lr=0.1),
        }[name]()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factor)
        assert opt.param_groups[0]["lr"] == pytest.approx((0.5 if name == "entropy-sgd" else 0.1) * factor)
        p0 = params_of(m)
        opt.step(make_closure(m, X, y))
        sched.step()
        steps[factor] = torch.cat([(a - b).reshape(-1) for a, b in zip(params_of(m), p0)])
    # no momentum: the step is linear in the learning rate
    torch.testing.assert_close(steps[0.1], 0.1 * steps[1.0], atol=1e-12, rtol=1e-9)


# ------------------------------------------------------------------------------------------ schedules
def test_schedules_values_and_specs():
    cases = [
        (schedules.Constant(0.2), [0.2, 0.2, 0.2]),
        (schedules.Exponential(0.03, 0.1), [0.03, 0.033, 0.0363]),
        (schedules.Linear(0.1, 0.05), [0.1, 0.15, 0.2]),
        (schedules.Cosine(0.0, 2.0, 2), [0.0, 1.0, 2.0]),
    ]
    for s, vals in cases:
        assert [s(t) for t in range(3)] == pytest.approx(vals)
        assert schedules.from_spec(s.spec()) == s
    assert schedules.Cosine(0.0, 2.0, 2)(10) == 2.0
    assert schedules.Exponential(1.0, 1.0, gamma_max=5.0)(10) == 5.0
    assert schedules.Exponential(1.0, 0.5)(10**6) == math.inf
    f = schedules.Exponential.to_factor(0.01, 1e4, 100)
    assert f(100) == pytest.approx(100.0)
    assert schedules.Exponential("auto", 0.1)(5) == 0.0
    assert schedules.Exponential("auto", 0.1)(2, gamma0=2.0) == pytest.approx(2.0 * 1.1**2)
    for bad in (lambda: schedules.Constant(-1.0), lambda: schedules.Exponential(0.1, -2.0),
                lambda: schedules.Cosine(0.0, 1.0, 0), lambda: schedules.from_spec({"kind": "nope"}),
                lambda: schedules.resolve("big", 0.1), lambda: schedules.Constant("automatic")):
        with pytest.raises(ConfigError):
            bad()


def test_optimizers_accept_schedule_objects_and_calibrate_auto_gamma():
    X, y = make_data()
    m = make_mlp()
    opt = EntropySGD(m.parameters(), lr=0.5, inner_steps=2, gamma=schedules.Linear(0.1, 0.01))
    c = make_closure(m, X, y)
    opt.step(c)
    opt.step(c)
    assert opt.gamma() == pytest.approx(0.12)
    sd = save_load(opt.state_dict())  # the schedule is stored as plain numbers
    assert sd["param_groups"][0]["gamma"]["kind"] == "linear"
    m = make_mlp()
    opt = ReplicatedSGD(m.parameters(), lr=0.1, replicas=2, gamma="auto", scoping=0.0, init_noise=0.1, seed=0)
    c = make_closure(m, X, y)
    assert opt.gamma() == 0.0
    opt.step(c)
    d = opt.diagnostics()
    g0 = d["replica_loss"] / (0.5 * d["replica_dist"] ** 2)
    assert opt.gamma() == pytest.approx(g0)
    assert save_load(opt.state_dict())["state"][0]["gamma0"] == pytest.approx(g0)


# ------------------------------------------------------------------------------------------ registry, validation
def test_registry_builds_validates_and_counts_costs():
    X, y = make_data()
    for name, opts in [("sgd", {"nesterov": True}), ("adam", {}), ("entropy-sgd", {"inner_steps": 3}),
                       ("replicated-sgd", {"replicas": 3}), ("sam", {"rho": 0.1}), ("sam", {"base": "adam"})]:
        m = make_mlp()
        opt = build_optimizer(name, m, lr=0.05, momentum=0.9, **opts)
        c = make_closure(m, X, y)
        opt.step(c)
        assert c.grad_evals == grad_evals_per_step(name, opts), name
    assert "inner_steps" in options_of("entropy-sgd")
    m = make_mlp()
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer("lbfgs2", m, lr=0.1)
    for removed in ("inner_stepz", "noise_source", "noise_table", "averaging", "rho", "dampening"):
        with pytest.raises(ConfigError, match="unknown option"):
            build_optimizer("entropy-sgd", m, lr=0.1, **{removed: 1})
    for name, opts in [("entropy-sgd", {"inner_steps": -1}), ("entropy-sgd", {"alpha": 2.0}),
                       ("entropy-sgd", {"seed": 1.5}), ("replicated-sgd", {"replicas": 0}),
                       ("replicated-sgd", {"center": "median"}), ("sam", {"rho": -0.1}), ("sam", {"base": "rmsprop"}),
                       ("replicated-sgd", {"gamma": "big"}), ("sgd", {"nesterov": "x", "dampening": 0.5})]:
        with pytest.raises(ConfigError):
            build_optimizer(name, m, lr=0.1, momentum=0.9, **opts)
    with pytest.raises(ConfigError):
        EntropySGD(m.parameters(), lr=0.1).step()
    with pytest.raises(ConfigError):
        ReplicatedSGD(m.parameters(), lr=0.1, mode="batched").step(lambda: torch.zeros(()))
    with pytest.raises(ConfigError):
        ReplicatedSGD(m.parameters(), lr=0.1, distributed=True)  # no process group


def test_rsgd_sequential_fallback_works_with_a_plain_closure():
    X, y = make_data()
    m = make_mlp()
    opt = ReplicatedSGD(m.parameters(), lr=0.1, replicas=2, gamma=0.0, scoping=0.0)
    xb, yb = X[:16], y[:16]

    def plain():
        m.zero_grad()
        loss = per_example_loss("cross_entropy")(m(xb), yb).mean()
        loss.backward()
        return loss

    ref = make_mlp()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        opt.step(plain)
        ref.zero_grad()
        per_example_loss("cross_entropy")(ref(xb), yb).mean().backward()
        sgd.step()
    for a in range(2):  # same batch for both replicas: both equal the single SGD run, and so does the center
        assert_params_close(opt.replica_parameters(a), params_of(ref), 1e-12)
    assert_params_close(params_of(m), params_of(ref), 1e-12)
