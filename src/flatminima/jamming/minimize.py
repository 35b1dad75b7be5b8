"""Certified full-batch minimisation of the hinge loss.

:func:`minimize` runs in two stages and stops only with a *certificate* (:mod:`.certify`):

1. a first-order stage (full-batch Adam: a large step size with plateau decay by default, or the published
   schedule) that either certifies zero loss or stops when the loss stalls (relative change < ``ftol`` over
   ``stable`` checks, or a vanishing gradient). A stall is *not* a certificate: near jamming first-order
   dynamics is critically slow, and such points were found to keep descending, some all the way to zero loss.
2. a second-order polish to round-off, followed by :func:`.certify.certify`: for ReLU MLPs the active-set
   SQP of :mod:`.activeset` (the activation kinks within a trust radius modelled exactly, Newton-KKT on the
   manifold of the binding kinks), then, if it stalls uncertified, :func:`.newton.hinge_newton`
   (trust-region Newton on the exact Hessian with the hinge kept in the model, negative-curvature escapes),
   which is also the polish of smooth networks.

Certificates (``MinimizeResult.certificate``):

``"zero_loss"``
    every stability is <= 0 at the returned theta, so L = 0 exactly (a SAT point).
``"minimum"``
    L > 0, relative gradient <= ``gtol``, lambda_min >= -``eps`` lambda_max, and (ReLU) the activation
    pattern fixed in a ball around theta: a local minimum.
``"kink_minimum"``
    ReLU, L > 0, minimum sitting on activation kinks: nonsmooth first- and second-order conditions verified.
``"kink"``
    ReLU, nonsmooth first-order stationarity only (degenerate multipliers): a weaker certificate.
``"saddle"``
    stationary with a resolved descent direction left after the polish's escapes (budget exhausted).
``"none"``
    not stationary: the budget (``max_iter``, ``polish`` iterations, ``time_limit``) ran out, or the polish
    stalled (no step decreased the loss) away from a certifiable point. A stall is never a certificate;
    ``MinimizeResult.reason`` records which and the residual that failed.

Over-parametrised runs reach L = 0 in finitely many steps thanks to a *push*: the first phase minimises the
loss at the slightly larger margin kappa (1 + push); any point where that loss vanishes has every Delta <=
-kappa * push < 0 at the true margin, which certifies L = 0 exactly (the certificate is always checked at
the true margin). If the pushed problem gets stuck at L > 0, a second phase minimises the true loss from
there; the polish likewise retries at the pushed margin when its iterates approach zero loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .certify import CERTIFIED_MINIMA, EPS, GTOL, certify
from .problem import HingeProblem

__all__ = ["MinimizeResult", "minimize", "adam_protocol", "METHODS", "CERTIFICATES"]

#: The schedules of the first-order stage (full-batch Adam): see :func:`minimize`.
METHODS = ("fast", "adam")
#: Every certificate :func:`minimize` can return, strongest first.
CERTIFICATES = ("zero_loss", "minimum", "kink_minimum", "kink", "saddle", "none")


@dataclass
class MinimizeResult:
    """Outcome of :func:`minimize`. ``theta`` (N,) is the final point; numbers are at the true margin.

    ``check`` holds the numbers of the certificate (relative gradient, lambda_min, lambda_max, ReLU kinks;
    see :class:`.certify.Certificate`); ``polish_iterations`` / ``polish_seconds`` the second-order stage.
    ``reason`` says how the run ended: the stage that ended it and why (``"first order zero_loss"``,
    ``"polish stalled"``, ``"polish budget"``, ...), followed, for a run that is no certified minimum,
    by what the certificate found wanting (for example ``"nonsmooth residual 1.5e-03 > gtol 1e-10"``).
    """

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
    check: dict[str, Any] = field(default_factory=dict)
    polish_iterations: int = 0
    polish_seconds: float = 0.0
    reason: str = ""

    @property
    def certified(self) -> bool:
        """True for zero loss or a certified minimum (incl. the weaker ``"kink"``); False for saddles and
        unconverged runs."""
        return self.certificate in ("zero_loss", *CERTIFIED_MINIMA, "kink")

    @property
    def jammed(self) -> bool:
        """True when the run certified a local minimum with L > 0 (``"minimum"`` or ``"kink_minimum"``)."""
        return self.certificate in CERTIFIED_MINIMA

    @property
    def sat(self) -> bool:
        """True when the run certified zero loss (all constraints satisfied)."""
        return self.certificate == "zero_loss"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record without theta (the certificate's numbers flattened in)."""
        c = self.check
        return {
            "loss": self.loss, "grad_norm": self.grad_norm, "n_delta": self.n_delta,
            "train_errors": self.train_errors, "certificate": self.certificate, "iterations": self.iterations,
            "evaluations": self.evaluations, "seconds": self.seconds, "method": self.method,
            "polish_iterations": self.polish_iterations, "polish_seconds": self.polish_seconds,
            "grad_rel": c.get("grad_rel"), "lambda_min": c.get("lambda_min"), "lambda_max": c.get("lambda_max"),
            "lambda_ratio": c.get("ratio"), "hessian": c.get("hessian"), "kinks": c.get("kinks"),
            "kink_margin": c.get("kink_margin"), "kink_residual": c.get("kink_residual"),
            "hinge_boundary": c.get("hinge_boundary"), "newton_step_rel": c.get("newton_step_rel"),
            "reason": self.reason,
        }


def _why(cert, gtol: float, eps: float) -> str:
    """What keeps the point of ``cert`` (:class:`.certify.Certificate`) from being a certified minimum."""
    if cert.name == "saddle":
        return f"saddle: lambda_min / lambda_max = {cert.ratio:.1e} < -{eps:g}, or a concave kink"
    if cert.name == "kink":
        return "kink: nonsmooth first-order stationary, second order not established"
    nested = cert.details.get("nested_kink_patterns")
    if nested and cert.details.get("too_many_upstream_kinks"):
        return f"kinks in several layers of {nested} patterns, too many upstream kinks (no certificate)"
    if cert.kink_residual is not None:
        where = f" (nested kinks of {nested} patterns, worst of {cert.details.get('cases')} cases)" if nested else ""
        return f"not stationary: nonsmooth residual {cert.kink_residual:.1e} > gtol {gtol:g}{where}"
    return f"not stationary: relative gradient {cert.grad_rel:.1e} > gtol {gtol:g}"


class _Adam:
    """Full-batch Adam on the loss at margin ``kappa``. Defaults: the published protocol (lr 1e-4 divided by
    10 every 250k steps, floor 1e-7). With ``plateau=K`` the learning rate is instead multiplied by ``decay``
    whenever the loss has not improved by a relative 1e-4 for K steps (the default method ``"fast"``)."""

    def __init__(self, lr: float = 1e-4, decay_every: int = 250_000, decay: float = 0.1, lr_min: float = 1e-7,
                 plateau: int | None = None, eps: float = 1e-8) -> None:
        if lr <= 0 or lr_min <= 0 or not 0 < decay < 1 or decay_every < 1 or (plateau is not None and plateau < 1):
            raise ConfigError("Adam needs lr > 0, lr_min > 0, 0 < decay < 1, decay_every >= 1, plateau >= 1")
        self.lr0, self.decay_every, self.decay, self.lr_min, self.plateau, self.eps = (
            lr, decay_every, decay, lr_min, plateau, eps)
        self.param, self.opt, self.steps, self.evaluations = None, None, 0, 0
        self.lr, self.best, self.since = lr, math.inf, 0

    def reset(self) -> None:
        """The objective changed (next phase): keep the moments and the learning rate, restart the plateau."""
        self.best, self.since = math.inf, 0

    def run(self, problem: HingeProblem, theta: Tensor, kappa: float, n: int) -> Tensor:
        """``n`` Adam steps from ``theta`` (N,); returns the new theta (N,)."""
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
        return self.param.detach()


# ---------------------------------------------------------------------------------- driver
#: Options of the default method "fast": full-batch Adam at a large step size, halved on loss plateaus.
FAST_OPTIONS = {"lr": 1e-2, "plateau": 100, "decay": 0.5, "lr_min": 1e-7}
#: The first-order stage hands over to the polish once |grad L| is below this (absolute) value.
SWITCH_GTOL = 1e-10
#: Largest N for the dense second-order polish and certificate (beyond: trust-krylov and Lanczos).
DENSE_MAX = 3000


def _first_order(problem, theta, stepper, phases, max_iter, ftol, stable, check_every, t0, time_limit, hist,
                 callback):
    """Stage 1. Returns (theta, iterations, verdict) with verdict "zero_loss", "stall" or "budget"."""
    kappa = problem.kappa
    it, phase = 0, 0
    window: list[tuple[float, int]] = []
    while True:
        f, g = problem.loss_and_grad(theta)
        nd, gn, fl = problem.n_delta(theta), float(g.norm()), float(f)
        for k, v in zip(hist, (it, fl, nd, gn, phase)):
            hist[k].append(v)
        if callback is not None:
            callback({"iteration": it, "loss": fl, "n_delta": nd, "grad_norm": gn, "phase": phase})
        if nd == 0:
            return theta, it, "zero_loss"
        if not math.isfinite(fl):
            return theta, it, "budget"
        if phases[phase] == kappa:
            f_ph, g_ph, nd_ph = fl, gn, nd
        else:
            fp, gp = problem.loss_and_grad(theta, phases[phase])
            f_ph, g_ph, nd_ph = float(fp), float(gp.norm()), problem.n_delta(theta, phases[phase])
        window = (window + [(f_ph, nd_ph)])[-(stable + 1):]
        nds = [w[1] for w in window]
        stalled = f_ph > 0 and (
            (g_ph <= SWITCH_GTOL and len(window) >= stable and len(set(nds[-stable:])) == 1)
            or (len(window) == stable + 1 and window[0][0] - f_ph <= ftol * window[0][0]
                and max(nds) - min(nds) <= max(2, 0.05 * nd_ph)))
        if stalled:
            if phase == len(phases) - 1:
                return theta, it, "stall"
            phase, window = phase + 1, []
            stepper.reset()
            continue
        if it >= max_iter or (time_limit is not None and time.perf_counter() - t0 > time_limit):
            return theta, it, "budget"
        n = min(check_every, max_iter - it)
        theta = stepper.run(problem, theta, phases[phase], n)
        it += n


def _polish_large(problem, theta, kappa, max_iter, time_limit):
    """Second-order polish for N > DENSE_MAX: scipy trust-krylov on exact Hessian-vector products."""
    import numpy as np
    from scipy.optimize import minimize as sp_minimize

    from .newton import NewtonResult

    dev, dt = problem.device, problem.dtype
    land = problem.landscape
    if kappa != problem.kappa:
        land = HingeProblem(land.model, problem.X, problem.Y, kappa=kappa, dtype=dt, device=dev).landscape
    count = [0]
    t0 = time.perf_counter()

    class _Stop(Exception):
        pass

    def fg(x):
        count[0] += 1
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            raise _Stop
        f, g = problem.loss_and_grad(torch.from_numpy(x).to(dev, dt), kappa)
        return float(f), g.cpu().numpy()

    def hessp(x, p):
        return land.hvp(torch.from_numpy(x).to(dev, dt), torch.from_numpy(p).to(dev, dt)).cpu().numpy()

    best = [theta.detach().cpu().numpy()]

    def cb(x, *args):
        best[0] = np.array(x)

    try:
        res = sp_minimize(fg, best[0], jac=True, hessp=hessp, method="trust-krylov", callback=cb,
                          options={"maxiter": max_iter, "gtol": 1e-300})
        x, nit = res.x, int(res.nit)
    except _Stop:
        x, nit = best[0], max_iter
    xt = torch.from_numpy(np.asarray(x)).to(dev, dt)
    f = problem.loss(xt, kappa)
    return NewtonResult(theta=xt, loss=f, iterations=nit, evaluations=count[0],
                        reason="zero_loss" if f == 0 else "stalled")


def _polish(problem, theta, push, max_iter, time_limit, gtol, eps, rounds=4):
    """Stage 2: Newton polish at the true margin (and at the pushed margin when the iterates approach
    zero loss), then certify. Returns (theta, Certificate, iterations, why the last Newton run stopped)."""
    from .activeset import kink_sqp
    from .kinks import relu_chain
    from .newton import hinge_newton

    kappa = problem.kappa
    t0 = time.perf_counter()
    its = 0
    dense = problem.N <= DENSE_MAX

    def left():
        return None if time_limit is None else max(time_limit - (time.perf_counter() - t0), 0.0)

    relu = relu_chain(problem) is not None

    def newton(x, k, n):
        if dense and relu:
            # ReLU: the active-set SQP, which models the activation kinks and converges onto them
            r = kink_sqp(problem, x, k, max_iter=n, time_limit=left())
            if r.reason != "stalled" or r.loss == 0.0 or k != kappa:
                return r
            if certify(problem, r.theta, gtol=gtol, eps=eps, dense_max=DENSE_MAX).name in CERTIFIED_MINIMA:
                return r
            # stalled: the smooth hinge-aware Newton (with its saddle escapes) from there
            r2 = hinge_newton(problem, r.theta, k, max_iter=max(n - r.iterations, 1), time_limit=left(),
                              saddle_eps=0.1 * eps, zero_margin=kappa)
            r2.iterations += r.iterations
            return r2
        if dense:
            return hinge_newton(problem, x, k, max_iter=n, time_limit=left(), saddle_eps=0.1 * eps,
                                zero_margin=kappa)
        return _polish_large(problem, x, k, n, left())

    cert = None
    stop = "budget"
    for _ in range(rounds):
        n = max_iter - its
        if n <= 0 or (left() is not None and left() <= 0):
            stop = "budget" if n <= 0 else "time"
            break
        r = newton(theta, kappa, n)
        stop = r.reason
        its += r.iterations
        theta = r.theta
        if problem.n_delta(theta) == 0:
            break
        delta_max = float(problem.stabilities(theta).max())
        if push > 0 and delta_max <= push * kappa and max_iter - its > 0:
            # close to zero loss: a pushed polish either empties every constraint (L = 0 exactly at the
            # true margin) or finds the pushed problem jammed, in which case the true-margin point stands
            rp = newton(theta, kappa * (1 + push), max_iter - its)
            its += rp.iterations
            if problem.n_delta(rp.theta) == 0:
                theta = rp.theta
                break
        cert = certify(problem, theta, gtol=gtol, eps=eps, dense_max=DENSE_MAX)
        if cert.name in CERTIFIED_MINIMA or cert.name == "kink":
            break
        if r.reason in ("budget", "time"):
            break
        # stalled without a certificate: another round from the same point would stall again
        if cert.name == "unconverged" and r.reason == "stalled":
            break
    if cert is None or problem.n_delta(theta) == 0:
        cert = certify(problem, theta, gtol=gtol, eps=eps, dense_max=DENSE_MAX)
    return theta, cert, its, stop


def minimize(
    problem: HingeProblem,
    theta0: Tensor | None = None,
    method: str = "fast",
    max_iter: int = 200_000,
    gtol: float = GTOL,
    ftol: float = 1e-3,
    push: float = 1e-3,
    check_every: int | None = None,
    stable: int = 10,
    time_limit: float | None = None,
    options: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    polish: int = 5000,
    eps: float = EPS,
    first_order: bool = True,
    polish_time: float | None = 60.0,
) -> MinimizeResult:
    """Minimise the hinge loss of ``problem`` from ``theta0`` (default: the model's parameters) until certified.

    Stage 1 (``method``) runs until zero loss, a stall (the loss fell by less than a relative ``ftol`` over
    the last ``stable`` checks with N_Delta within max(2, 5 %), or |grad L| <= 1e-10 with N_Delta constant)
    or the budget; stage 2 polishes with up to ``polish`` second-order iterations and certifies (see the
    module docstring for the certificates).

    Parameters
    ----------
    method : "fast" | "adam"
        The schedule of the full-batch Adam of stage 1. ``"fast"`` (default): lr 1e-2, halved whenever the
        loss has not improved by a relative 1e-4 for 100 steps (floor 1e-7; ``benchmarks/jamming.py``
        compares it with the published protocol); ``"adam"``: the published schedule, lr 1e-4 divided by 10
        every 250k steps (see :func:`adam_protocol`).
    max_iter : int
        Budget of first-order iterations.
    gtol, eps : float
        Certificate tolerances: relative gradient and -lambda_min / lambda_max (:func:`.certify.certify`).
    ftol : float
        Relative loss change below which stage 1 counts as stalled.
    push : float
        Relative extra margin of the first phase and of the near-zero-loss polish (0 disables it).
    check_every : int
        Iterations between checks (default 100).
    stable : int
        Number of consecutive checks the stall criteria look at.
    time_limit : float, optional
        Wall-clock budget in seconds for both stages.
    options : dict
        Keyword options of Adam overriding the method's (``lr``, ``decay``, ``lr_min``, ``plateau``,
        ``decay_every``, ``eps``).
    callback : callable, optional
        Called after every stage-1 check with a dict (iteration, loss, n_delta, grad_norm, phase).
    polish : int
        Second-order iterations of stage 2 (0: none; the stage-1 endpoint is then only certified).
    polish_time : float, optional
        Wall-clock budget of stage 2 in seconds (within ``time_limit``; None: no separate limit).
    first_order : bool
        False skips stage 1 (to continue polishing a point that is already near a minimum).
    """
    if max_iter < 1 or gtol <= 0 or eps <= 0 or ftol < 0 or push < 0 or stable < 1 or polish < 0:
        raise ConfigError(
            f"need max_iter >= 1, gtol > 0, eps > 0, ftol >= 0, push >= 0, stable >= 1, polish >= 0; got "
            f"{max_iter}, {gtol}, {eps}, {ftol}, {push}, {stable}, {polish}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        stepper = _Adam(**{**(FAST_OPTIONS if method == "fast" else {}), **(options or {})})
    except TypeError as e:
        raise ConfigError(f"bad options for {method}: {e}") from None
    check_every = int(check_every or 100)
    if check_every < 1:
        raise ConfigError(f"check_every must be >= 1, got {check_every}")
    theta = (problem.landscape.theta if theta0 is None else torch.as_tensor(theta0)).detach()
    theta = theta.to(problem.device, problem.dtype).clone()
    if theta.shape != (problem.N,):
        raise ConfigError(f"theta0 must have shape ({problem.N},), got {tuple(theta.shape)}")
    kappa = problem.kappa
    phases = [kappa * (1 + push), kappa] if push > 0 else [kappa]
    hist: dict[str, list] = {"iteration": [], "loss": [], "n_delta": [], "grad_norm": [], "phase": []}
    t0 = time.perf_counter()
    if first_order:
        theta, it, verdict = _first_order(problem, theta, stepper, phases, max_iter, ftol, stable, check_every,
                                          t0, time_limit, hist, callback)
    else:
        it, verdict = 0, ("zero_loss" if problem.n_delta(theta) == 0 else "stall")
    evaluations = stepper.evaluations
    p_its, p_secs = 0, 0.0
    stage = f"first order {verdict}" if first_order else "given point"
    cert = certify(problem, theta, gtol=gtol, eps=eps, dense_max=DENSE_MAX)
    if verdict == "zero_loss" or cert.name in CERTIFIED_MINIMA:
        pass  # the first-order stage already ended on a certified point: keep it
    elif polish > 0:
        tp = time.perf_counter()
        left = None if time_limit is None else max(time_limit - (tp - t0), 1.0)
        if polish_time is not None:
            left = polish_time if left is None else min(left, polish_time)
        theta, cert, p_its, stop = _polish(problem, theta, push, polish, left, gtol, eps)
        p_secs = time.perf_counter() - tp
        stage = f"polish {stop}"
    name = "none" if cert.name == "unconverged" else cert.name
    reason = stage if name in ("zero_loss", *CERTIFIED_MINIMA) else f"{stage}; {_why(cert, gtol, eps)}"
    f, g = problem.loss_and_grad(theta)
    secs = time.perf_counter() - t0
    return MinimizeResult(
        theta=theta, loss=float(f), grad_norm=float(g.norm()), n_delta=problem.n_delta(theta),
        train_errors=problem.train_errors(theta), certificate=name, iterations=it, evaluations=evaluations,
        seconds=secs, method=method, history=hist, check=cert.as_dict(), polish_iterations=p_its,
        polish_seconds=p_secs, reason=reason,
    )


def adam_protocol(
    problem: HingeProblem,
    theta0: Tensor | None = None,
    max_steps: int = 2_000_000,
    lr: float = 1e-4,
    decay_every: int = 250_000,
    ftol: float = 1e-3,
    time_limit: float | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> MinimizeResult:
    """The published protocol (Geiger et al., ``adam0``): full-batch Adam, lr 1e-4 divided by 10 every
    250k steps (floor 1e-7), no push (it stops at N_Delta = 0), checked every 1000 steps. It gets no
    second-order polish: its endpoint is certified as it is (zero loss, or a minimum only if Adam itself
    reached one to round-off)."""
    return minimize(problem, theta0, method="adam", max_iter=max_steps, ftol=ftol, push=0.0,
                    check_every=1000, time_limit=time_limit, options={"lr": lr, "decay_every": decay_every},
                    callback=callback, polish=0)
