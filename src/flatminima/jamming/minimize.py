"""Certified full-batch minimisation of the hinge loss.

:func:`minimize` drives one of several steppers (fast Adam with plateau decay, L-BFGS,
Levenberg-Marquardt, FIRE, trust-region Newton-CG on exact Hessian-vector products, or the published
Adam protocol) and stops only with a *certificate*:

``"zero_loss"``
    every stability is <= 0 at the returned theta, so L = 0 exactly (a SAT, over-parametrised point);
``"stationary"``
    L > 0, the gradient norm is below ``gtol`` and N_Delta did not change over the last ``stable``
    checks (a jammed minimum of a smooth loss);
``"plateau"``
    L > 0 and the loss and N_Delta stopped moving (a jammed minimum on a ReLU kink, where the gradient
    need not vanish).

Otherwise the result says ``certificate="none"`` (budget exhausted). Over-parametrised runs reach L = 0
in finitely many steps thanks to a *push*: the first phase minimises the loss at the slightly larger
margin kappa (1 + push); any point where that loss vanishes has every Delta <= -kappa * push < 0 at the
true margin, which certifies L = 0 exactly (the certificate is always checked at the true margin). If
the pushed problem gets stuck at L > 0, a second phase minimises the true loss from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from .problem import HingeProblem

__all__ = ["MinimizeResult", "minimize", "adam_protocol", "METHODS"]

METHODS = ("fast", "lbfgs", "lm", "fire", "newton-cg", "adam")


@dataclass
class MinimizeResult:
    """Outcome of :func:`minimize`. ``theta`` (N,) is the final point; numbers are at the true margin."""

    theta: Tensor
    loss: float
    grad_norm: float
    n_delta: int
    train_errors: int
    certificate: str
    iterations: int
    evaluations: int
    seconds: float
    method: str
    history: dict[str, list] = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        return self.certificate != "none"

    @property
    def jammed(self) -> bool:
        """True when the run certified a minimum with L > 0 ("stationary" or "plateau")."""
        return self.certificate in ("stationary", "plateau")

    @property
    def sat(self) -> bool:
        """True when the run certified zero loss (all constraints satisfied)."""
        return self.certificate == "zero_loss"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record without theta."""
        return {
            "loss": self.loss, "grad_norm": self.grad_norm, "n_delta": self.n_delta,
            "train_errors": self.train_errors, "certificate": self.certificate, "iterations": self.iterations,
            "evaluations": self.evaluations, "seconds": self.seconds, "method": self.method,
        }


# ---------------------------------------------------------------------------------- steppers
class _Stepper:
    """Runs ``n`` iterations of a method on the loss at margin ``kappa``; keeps its own state."""

    evaluations = 0

    def reset(self) -> None:  # called when the objective changes (phase switch)
        pass

    # subclasses define run(problem, theta, kappa, n) -> (theta, iterations done)


class _LBFGS(_Stepper):
    """torch.optim.LBFGS with a strong-Wolfe line search on the flat parameter vector."""

    def __init__(self, history: int = 100) -> None:
        self.history = history
        self.opt = None
        self.param = None

    def reset(self) -> None:
        self.opt = None

    def run(self, problem, theta, kappa, n):
        if self.opt is None or self.param is None or self.param.data.data_ptr() != theta.data_ptr():
            self.param = theta.detach().clone().requires_grad_(True)
            self.opt = torch.optim.LBFGS(
                [self.param], lr=1.0, max_iter=n, max_eval=int(n * 1.5) + 10, tolerance_grad=0.0,
                tolerance_change=0.0, history_size=self.history, line_search_fn="strong_wolfe",
            )
        group = self.opt.param_groups[0]
        group["max_iter"], group["max_eval"] = n, int(n * 1.5) + 10
        count = [0]

        def closure():
            count[0] += 1
            f, g = problem.loss_and_grad(self.param.detach(), kappa)
            self.param.grad = g
            return f

        before = self.opt.state[self.opt._params[0]].get("n_iter", 0)
        self.opt.step(closure)
        self.evaluations += count[0]
        done = self.opt.state[self.opt._params[0]].get("n_iter", 0) - before
        return self.param.detach(), max(done, 1)


class _FIRE(_Stepper):
    """FIRE (Bitzek et al. 2006): damped dynamics with velocity mixing and adaptive time step."""

    def __init__(self, dt: float = 0.1, dt_max: float = 1.0, n_min: int = 5, f_inc: float = 1.1,
                 f_dec: float = 0.5, alpha0: float = 0.1, f_alpha: float = 0.99) -> None:
        self.dt0, self.dt_max, self.n_min = dt, dt_max, n_min
        self.f_inc, self.f_dec, self.alpha0, self.f_alpha = f_inc, f_dec, alpha0, f_alpha
        self.reset()

    def reset(self) -> None:
        self.v, self.dt, self.alpha, self.n_pos = None, self.dt0, self.alpha0, 0

    def run(self, problem, theta, kappa, n):
        x = theta.detach().clone()
        if self.v is None:
            self.v = torch.zeros_like(x)
        _, g = problem.loss_and_grad(x, kappa)
        for _ in range(n):
            F = -g
            power = float(F @ self.v)
            if power > 0:
                fn, vn = F.norm(), self.v.norm()
                self.v = (1 - self.alpha) * self.v + self.alpha * vn * F / fn.clamp_min(1e-300)
                self.n_pos += 1
                if self.n_pos > self.n_min:
                    self.dt = min(self.dt * self.f_inc, self.dt_max)
                    self.alpha *= self.f_alpha
            else:
                self.v.zero_()
                self.dt *= self.f_dec
                self.alpha, self.n_pos = self.alpha0, 0
            self.v += self.dt * F  # semi-implicit Euler (unit mass)
            x += self.dt * self.v
            _, g = problem.loss_and_grad(x, kappa)
            self.evaluations += 1
        return x, n


class _NewtonCG(_Stepper):
    """Trust-region Newton-CG (Steihaug) from scipy, on exact forward-over-reverse Hessian-vector products."""

    def __init__(self) -> None:
        self.radius = 1.0

    def reset(self) -> None:
        self.radius = 1.0

    def run(self, problem, theta, kappa, n):
        import numpy as np
        from scipy.optimize import minimize as sp_minimize

        land = problem.landscape
        dev, dt = theta.device, theta.dtype
        count = [0]
        if kappa != problem.kappa:  # the landscape's loss is at the problem's margin: use a shifted copy
            land = HingeProblem(land.model, problem.X, problem.Y, kappa=kappa, dtype=dt, device=dev).landscape

        def fg(x):
            count[0] += 1
            f, g = problem.loss_and_grad(torch.from_numpy(x).to(dev, dt), kappa)
            return float(f), g.cpu().numpy()

        def hessp(x, p):
            return land.hvp(torch.from_numpy(x).to(dev, dt), torch.from_numpy(p).to(dev, dt)).cpu().numpy()

        res = sp_minimize(fg, theta.detach().cpu().numpy(), jac=True, hessp=hessp, method="trust-ncg",
                          options={"maxiter": n, "gtol": 0.0, "initial_trust_radius": self.radius})
        self.evaluations += count[0]
        return torch.from_numpy(np.asarray(res.x)).to(dev, dt), max(int(res.nit), 1)


class _Adam(_Stepper):
    """Full-batch Adam. Defaults: the published protocol (lr 1e-4 divided by 10 every 250k steps, floor
    1e-7). With ``plateau=K`` the learning rate is instead multiplied by ``decay`` whenever the loss has
    not improved by a relative 1e-4 for K steps (the fast default of :func:`minimize`)."""

    def __init__(self, lr: float = 1e-4, decay_every: int = 250_000, decay: float = 0.1, lr_min: float = 1e-7,
                 plateau: int | None = None, eps: float = 1e-8) -> None:
        if lr <= 0 or lr_min <= 0 or not 0 < decay < 1 or decay_every < 1 or (plateau is not None and plateau < 1):
            raise ConfigError("Adam needs lr > 0, lr_min > 0, 0 < decay < 1, decay_every >= 1, plateau >= 1")
        self.lr0, self.decay_every, self.decay, self.lr_min, self.plateau, self.eps = (
            lr, decay_every, decay, lr_min, plateau, eps)
        self.param, self.opt, self.steps = None, None, 0
        self.lr, self.best, self.since = lr, math.inf, 0

    def reset(self) -> None:
        self.best, self.since = math.inf, 0  # new objective: keep the moments and the learning rate

    def run(self, problem, theta, kappa, n):
        if self.param is None or self.param.data_ptr() != theta.data_ptr():
            self.param = theta.detach().clone().requires_grad_(True)
            self.opt = torch.optim.Adam([self.param], lr=self.lr0, eps=self.eps)
        for _ in range(n):
            if self.plateau is None:
                self.lr = max(self.lr0 * self.decay ** (self.steps // self.decay_every), self.lr_min)
            self.opt.param_groups[0]["lr"] = self.lr
            f, g = problem.loss_and_grad(self.param.detach(), kappa)
            if self.plateau is not None:
                fl = float(f)
                if fl < self.best * (1 - 1e-4):
                    self.best, self.since = fl, 0
                else:
                    self.since += 1
                    if self.since >= self.plateau:
                        self.lr, self.since = max(self.lr * self.decay, self.lr_min), 0
            self.param.grad = g
            self.opt.step()
            self.steps += 1
            self.evaluations += 1
        return self.param.detach(), n


class _LevenbergMarquardt(_Stepper):
    """Levenberg-Marquardt on the residuals r_mu = max(0, Delta_mu) / sqrt(P) (L = |r|^2 / 2).

    Each iteration builds the per-example Jacobian of the active patterns (vmapped reverse mode) and
    solves (J^T J + lam * (diag(J^T J) + eps)) s = -J^T r by Cholesky; lam shrinks on accepted steps and
    grows on rejected ones. Cost per iteration O(N_Delta N^2 + N^3): for the dense regime of the jamming
    studies (N up to a few thousand).
    """

    def __init__(self, lam: float = 1e-3, lam_up: float = 4.0, lam_down: float = 3.0, max_tries: int = 30) -> None:
        self.lam0, self.up, self.down, self.max_tries = lam, lam_up, lam_down, max_tries
        self.lam = lam

    def reset(self) -> None:
        self.lam = self.lam0

    def run(self, problem, theta, kappa, n):
        x = theta.detach().clone()
        sqrtP = math.sqrt(problem.P)
        f, g = problem.loss_and_grad(x, kappa)
        self.evaluations += 1
        done = 0
        for _ in range(n):
            if float(f) == 0.0:
                break
            delta = problem.stabilities(x, kappa).reshape(-1)
            active = delta > 0
            J = problem.jacobian(x)[active] * (-problem.Y.reshape(-1)[active]).unsqueeze(1) / sqrtP
            r = delta[active] / sqrtP
            A = J.T @ J
            gvec = J.T @ r
            diag = A.diagonal().clone() + 1e-12 * float(A.diagonal().max()) + 1e-300
            accepted = False
            for _ in range(self.max_tries):
                M = A + torch.diag(self.lam * diag)
                chol, info = torch.linalg.cholesky_ex(M)
                if int(info) != 0:
                    self.lam *= self.up
                    continue
                s = torch.cholesky_solve(-gvec.unsqueeze(1), chol).squeeze(1)
                f_new, g_new = problem.loss_and_grad(x + s, kappa)
                self.evaluations += 1
                if float(f_new) < float(f):
                    x, f, g = x + s, f_new, g_new
                    self.lam = max(self.lam / self.down, 1e-15)
                    accepted = True
                    break
                self.lam *= self.up
            done += 1
            if not accepted:  # no decrease at any damping: numerically stationary
                break
        return x, max(done, 1)


def _stepper(method: str, options: dict[str, Any]) -> _Stepper:
    try:
        cls = {"lbfgs": _LBFGS, "fire": _FIRE, "newton-cg": _NewtonCG, "lm": _LevenbergMarquardt,
               "adam": _Adam}[method]
    except KeyError:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise ConfigError(f"bad options for {method}: {e}") from None


# ---------------------------------------------------------------------------------- driver
#: Options of the default method "fast": full-batch Adam at a large step size, halved on loss plateaus.
FAST_OPTIONS = {"lr": 1e-2, "plateau": 100, "decay": 0.5, "lr_min": 1e-7}


def minimize(
    problem: HingeProblem,
    theta0: Tensor | None = None,
    method: str = "fast",
    max_iter: int = 200_000,
    gtol: float = 1e-10,
    ftol: float = 1e-3,
    push: float = 1e-3,
    check_every: int | None = None,
    stable: int = 10,
    time_limit: float | None = None,
    options: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    polish: int = 2000,
) -> MinimizeResult:
    """Minimise the hinge loss of ``problem`` from ``theta0`` (default: the model's parameters) until certified.

    Certificates (checked every ``check_every`` iterations, at the true margin for ``"zero_loss"``):

    - ``"zero_loss"``: every Delta <= 0, so L = 0 exactly.
    - ``"stationary"``: L > 0, |grad L| <= ``gtol`` and N_Delta constant over the last ``stable`` checks.
    - ``"plateau"``: L > 0, the loss fell by less than a relative ``ftol`` over the last ``stable`` checks
      and N_Delta moved by at most max(2, 5 %) over them. A ReLU network's minimum can sit on a kink of
      the activation, where the gradient does not vanish; this is the certificate such minima get.
    - ``"none"``: the budget (``max_iter`` or ``time_limit``) ran out first.

    Parameters
    ----------
    method : "fast" | "lbfgs" | "lm" | "fire" | "newton-cg" | "adam"
        ``"fast"`` (default): full-batch Adam with lr 1e-2 halved on plateaus (fastest in our measurements,
        ``benchmarks/jamming.py``); ``"lbfgs"``: torch L-BFGS with strong-Wolfe line search; ``"lm"``:
        Levenberg-Marquardt on the hinge residuals; ``"fire"``: FIRE; ``"newton-cg"``: trust-region
        Newton-CG on exact HVPs (scipy); ``"adam"``: the published protocol (see :func:`adam_protocol`).
    max_iter : int
        Budget of iterations (optimizer steps) over both phases.
    gtol, ftol : float
        Thresholds of the ``"stationary"`` and ``"plateau"`` certificates.
    push : float
        Relative extra margin of the first phase (0 disables it).
    check_every : int
        Iterations between checks (default 100 for the Adam methods, 25 otherwise).
    stable : int
        Number of consecutive checks the stationarity and plateau criteria look at.
    time_limit : float, optional
        Wall-clock budget in seconds.
    options : dict
        Keyword options of the stepper (e.g. ``{"lr": 1e-3}`` for Adam, ``{"history": 50}`` for L-BFGS).
    callback : callable, optional
        Called after every check with a dict (iteration, loss, n_delta, grad_norm, phase).
    polish : int
        After a ``"plateau"`` of a first-order method, up to this many L-BFGS iterations on the true loss
        (0: none; never beyond ``max_iter`` in total); their result replaces the plateau when it is not worse, with its own certificate.
    """
    if max_iter < 1 or gtol <= 0 or ftol < 0 or push < 0 or stable < 1:
        raise ConfigError(
            f"need max_iter >= 1, gtol > 0, ftol >= 0, push >= 0, stable >= 1; got {max_iter}, {gtol}, {ftol}, "
            f"{push}, {stable}")
    opts = dict(FAST_OPTIONS if method == "fast" else {})
    opts.update(options or {})
    stepper = _stepper("adam" if method == "fast" else method, opts)
    check_every = int(check_every or (100 if method in ("fast", "adam") else 25))
    if check_every < 1:
        raise ConfigError(f"check_every must be >= 1, got {check_every}")
    theta = (problem.landscape.theta if theta0 is None else torch.as_tensor(theta0)).detach()
    theta = theta.to(problem.device, problem.dtype).clone()
    if theta.shape != (problem.N,):
        raise ConfigError(f"theta0 must have shape ({problem.N},), got {tuple(theta.shape)}")
    kappa = problem.kappa
    phases = [kappa * (1 + push), kappa] if push > 0 else [kappa]
    phase = 0
    hist: dict[str, list] = {"iteration": [], "loss": [], "n_delta": [], "grad_norm": [], "phase": []}
    t0 = time.perf_counter()
    it = 0
    certificate = "none"
    window: list[tuple[float, int]] = []
    while True:
        f, g = problem.loss_and_grad(theta)
        nd, gn, fl = problem.n_delta(theta), float(g.norm()), float(f)
        for k, v in zip(hist, (it, fl, nd, gn, phase)):
            hist[k].append(v)
        if callback is not None:
            callback({"iteration": it, "loss": fl, "n_delta": nd, "grad_norm": gn, "phase": phase})
        if nd == 0:
            certificate = "zero_loss"
            break
        if not math.isfinite(fl):
            break
        # criteria on the current phase's objective
        if phases[phase] == kappa:
            f_ph, g_ph, nd_ph = fl, gn, nd
        else:
            fp, gp = problem.loss_and_grad(theta, phases[phase])
            f_ph, g_ph, nd_ph = float(fp), float(gp.norm()), problem.n_delta(theta, phases[phase])
        window = (window + [(f_ph, nd_ph)])[-(stable + 1):]
        full = len(window) == stable + 1
        nds = [w[1] for w in window]
        verdict = None
        if f_ph > 0 and g_ph <= gtol and len(window) >= stable and len(set(nds[-stable:])) == 1:
            verdict = "stationary"
        elif (f_ph > 0 and full and window[0][0] - f_ph <= ftol * window[0][0]
              and max(nds) - min(nds) <= max(2, 0.05 * nd_ph)):
            verdict = "plateau"
        if verdict is not None:
            if phase == len(phases) - 1:
                certificate = verdict
                break
            phase, window = phase + 1, []
            stepper.reset()
            continue
        if it >= max_iter or (time_limit is not None and time.perf_counter() - t0 > time_limit):
            break
        theta, done = stepper.run(problem, theta, phases[phase], min(check_every, max_iter - it))
        it += done
    evaluations = stepper.evaluations
    polish = min(polish, max_iter - it)  # the polish counts against the budget
    if certificate == "plateau" and polish > 0 and method != "lbfgs":
        left = None if time_limit is None else max(time_limit - (time.perf_counter() - t0), 1.0)
        pol = minimize(problem, theta, method="lbfgs", max_iter=polish, gtol=gtol, ftol=ftol, push=0.0,
                       stable=stable, time_limit=left, polish=0)
        if pol.loss <= fl:
            theta, fl, gn, nd = pol.theta, pol.loss, pol.grad_norm, pol.n_delta
            certificate = pol.certificate if pol.certified else "plateau"
            for k in hist:
                hist[k].extend(v + it if k == "iteration" else v for v in pol.history[k])
        it += pol.iterations
        evaluations += pol.evaluations
    secs = time.perf_counter() - t0
    return MinimizeResult(
        theta=theta, loss=fl, grad_norm=gn, n_delta=nd, train_errors=problem.train_errors(theta),
        certificate=certificate, iterations=it, evaluations=evaluations, seconds=secs, method=method,
        history=hist,
    )


def adam_protocol(
    problem: HingeProblem,
    theta0: Tensor | None = None,
    max_steps: int = 2_000_000,
    lr: float = 1e-4,
    decay_every: int = 250_000,
    gtol: float = 1e-10,
    ftol: float = 1e-3,
    time_limit: float | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> MinimizeResult:
    """The published protocol (Geiger et al., ``adam0``): full-batch Adam, lr 1e-4 divided by 10 every
    250k steps (floor 1e-7), no push (it stops at N_Delta = 0), checked every 1000 steps, with the same
    certificates as :func:`minimize`."""
    return minimize(problem, theta0, method="adam", max_iter=max_steps, gtol=gtol, ftol=ftol, push=0.0,
                    check_every=1000, time_limit=time_limit, options={"lr": lr, "decay_every": decay_every},
                    callback=callback)
