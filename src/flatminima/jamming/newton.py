"""Second-order polish of the hinge loss: a trust-region (Levenberg-Marquardt) Newton method whose model
keeps the hinge.

For L(theta) = (1/2P) sum_mu max(0, Delta_mu)^2 the exact Hessian is

    H = (1/P) sum_{Delta_mu > 0} grad Delta_mu grad Delta_mu^T  +  Hp,   Hp = (1/P) sum_mu max(0, Delta_mu) Hess Delta_mu.

Hp is continuous in theta; only the first (Gauss-Newton) term jumps when a stability crosses zero, which at
jamming happens for many patterns sitting at tiny |Delta|. A plain Newton model sees that jump as a failure of
its quadratic approximation and shrinks its trust region to the distance to the nearest crossing. The model
used here linearises the stabilities and keeps the hinge,

    m(s) = (1/2P) sum_mu max(0, Delta_mu + a_mu . s)^2 + s^T Hp s / 2,      a_mu = grad Delta_mu,

which is exact to second order inside a piece and to first order across every crossing. Each iteration
minimises m(s) + lam |s|^2 / 2 by a semismooth Newton iteration on the active set {Delta_mu + a_mu . s > 0}
(dense Cholesky factorisations; N up to a few thousand), accepts the step when the loss decreases by a
sizeable fraction of the predicted decrease and adapts lam (Levenberg-Marquardt). lam never drops below
-lambda_min of the model's Hessian, so the model stays convex; at a point where no such step decreases
the loss but the Hessian has a negative eigenvalue (a saddle), a step along its eigenvector is searched
(both signs, geometric step sizes), so the polish escapes saddles instead of stopping on them. When the
decrease falls below what float64 resolves in L, steps are accepted on a halved gradient instead, which
takes the gradient to its own round-off. Hp (N Hessian-vector products, the costly part) is reused for a
few iterations while the model predicts well, and is always fresh before the polish gives up.

For ReLU networks the derivatives are those of the current activation pattern (PyTorch's relu'(0) = 0).
When the Newton step would cross activation kinks (hidden pre-activations of active patterns reaching
zero), a kink-aware step is tried first (:func:`_kink_step`): a Newton (SQP) step on the manifold of the
kinks whose multipliers bind, or a line search along the steepest nonsmooth descent direction (the residual
of the bounded least squares of :mod:`.certify`). Points where one pattern has kinks in several layers
(a nested max) are not modelled; the polish then only accepts what decreases the loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from .kinks import kink_analysis, kink_multipliers, relu_chain
from .problem import HingeProblem

__all__ = ["NewtonResult", "hinge_newton", "stabilities_jacobian", "curvature_hessian"]

_EPS = float(torch.finfo(torch.float64).eps)


def stabilities_jacobian(problem: HingeProblem, theta: Tensor, kappa: float | None = None) -> tuple[Tensor, Tensor]:
    """(Delta (P*C,), dDelta/dtheta (P*C, N)) at theta, rows pattern-major."""
    k = problem.kappa if kappa is None else float(kappa)
    delta = problem.stabilities(theta, k).reshape(-1)
    J = -problem.Y.reshape(-1, 1) * problem.jacobian(theta)
    return delta, J


def curvature_hessian(problem: HingeProblem, theta: Tensor, coef: Tensor, chunk: int = 256) -> Tensor:
    """Dense Hessian of s(theta) = (1/P) sum_mu coef_mu Delta_mu(theta) with ``coef`` (P*C,) held fixed.

    With coef = max(0, Delta) this is Hp, the part of the hinge loss's Hessian that is continuous in theta.
    Built from N forward-over-reverse products in vmapped chunks, over the data in the problem's chunks.
    """
    th = theta.detach().to(problem.device, problem.dtype)
    N = th.shape[0]
    c = problem.landscape.chunk
    coef = coef.reshape(problem.P, -1) if problem.d_out > 1 else coef.reshape(problem.P)
    eye = torch.eye(N, dtype=th.dtype, device=th.device)
    H = torch.zeros(N, N, dtype=th.dtype, device=th.device)
    for i in range(0, problem.P, c):
        x, Y, w = problem.X[i : i + c], problem.Y[i : i + c], coef[i : i + c]
        if not bool((w != 0).any()):
            continue

        def s(t: Tensor, x=x, Y=Y, w=w) -> Tensor:
            out = problem.landscape.forward(t, x)
            out = out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 and Y.dim() == 1 else out
            return -(w * Y * out).sum() / problem.P  # the constant kappa drops out of the Hessian

        gs = grad(s)
        hv = lambda v: jvp(gs, (th,), (v,))[1]  # noqa: E731
        H += torch.cat([vmap(hv)(eye[j : j + chunk]) for j in range(0, N, chunk)])
    return 0.5 * (H + H.T)


def _nonsmooth_residual(problem: HingeProblem, x: Tensor, k: float, radius: float, g: Tensor | None = None):
    """Kinks within ``radius`` of x and their multipliers (:func:`.kinks.kink_multipliers`): returns
    (r, t, n, z, groups, unit normals, coefficients), or None without kinks."""
    ka = kink_analysis(problem, x, radius=radius)
    if ka is None or ka["index"].numel() == 0:
        return None
    if g is None:
        g = problem.loss_and_grad(x, k)[1]
    r, t, groups, nG, cG = kink_multipliers(ka, g)
    return r, t, ka["n"], ka["z"][ka["index"]], groups, nG, cG


def _kink_step(problem: HingeProblem, x: Tensor, k: float, f: float, g: Tensor, H: Tensor, radius: float,
               lam: float):
    """A step for a ReLU point held up by activation kinks (the smooth model of the current piece fails).

    Kinks within ``radius`` (first-order distance) are collected; with g_off the gradient of the piece where
    they are all off, the bounded least squares min |g_off + sum t_k u_k| (0 <= t_k <= c_k) gives the
    steepest nonsmooth descent direction -r (r its residual: the directional derivative along -r is -|r|^2).
    Tried in order: a Newton (SQP) step on the manifold of the kinks whose multipliers are strictly inside
    their bounds (those that bind), then a line search along -r. Returns the new (x, f) or None.
    """
    res = _nonsmooth_residual(problem, x, k, radius, g)
    if res is None:
        return None
    r, t, n, z, groups, nG, cG = res
    r_norm = float(r.norm())
    bind = (t > 1e-12 * cG.abs().clamp_min(1e-300)) & (t < (1 - 1e-12) * cG)
    # SQP on the binding kinks: min g.s + s^T (H + lam) s / 2 subject to z_k + n_k . s = 0, lam from just above
    # -lambda_min of the reduced Hessian upwards (Levenberg-Marquardt damping; accepted on a real decrease)
    rows = [grp[0] for gi, grp in enumerate(groups) if bool(bind[gi])]
    if rows:
        A = n[rows]
        U, S, Vh = torch.linalg.svd(A, full_matrices=True)
        rank = int((S > 1e-12 * S.max()).sum())
        Vr, Z = Vh[:rank].T, Vh[rank:].T
        sp = -(Vr @ ((U[:, :rank].T @ z[rows]) / S[:rank]))
        if Z.shape[1]:
            w0, V = torch.linalg.eigh(Z.T @ H @ Z)
            rhs0 = Z.T @ (g + H @ sp)
            scale = max(float(w0.abs().max()), 1e-300)
            lam_ = 1.1 * max(0.0, -float(w0[0])) + 1e-12 * scale
            for _ in range(8):
                w = w0 + lam_
                d = sp - Z @ (V @ ((V.T @ (rhs0 + lam_ * (Z.T @ sp))) / w))
                pred = -(float(g @ d) + 0.5 * float(d @ (H @ d)))
                f_new = problem.loss(x + d, k)
                if f_new < f * (1 - 1e2 * _EPS) and f - f_new >= 1e-4 * max(pred, 0.0):
                    return x + d, f_new
                if pred <= 1e3 * _EPS * f and f_new <= f * (1 + 1e2 * _EPS):
                    # below the loss's resolution: accept on a smaller nonsmooth residual (as for the gradient)
                    new = _nonsmooth_residual(problem, x + d, k, radius)
                    if new is not None and float(new[0].norm()) < 0.5 * r_norm:
                        return x + d, min(f, f_new)
                lam_ *= 30
    rn = r_norm
    if rn > 0:  # line search along the steepest nonsmooth descent direction
        d = -r / rn
        alpha = min(radius, max(float(x.norm()), 1.0) * 1e-2) * 4
        for _ in range(50):
            f_new = problem.loss(x + alpha * d, k)
            if f_new < f - 1e-4 * alpha * rn:
                return x + alpha * d, f_new
            alpha *= 0.5
    return None


@dataclass
class NewtonResult:
    theta: Tensor
    loss: float
    iterations: int
    evaluations: int
    reason: str  # "converged" (no further decrease at round-off), "zero_loss", "budget", "time"


def _model_step(delta: Tensor, J: Tensor, Hp: Tensor, lam: float, P: int, max_inner: int = 30):
    """argmin_s (1/2P) sum relu(delta + J s)^2 + s^T (Hp + lam I) s / 2 by semismooth Newton on the active set.

    Returns (s, model value without the lam term, lambda_min bound, ok). ``ok`` is False when
    Hp + J_A^T J_A / P + lam I is not positive definite for a visited active set A (Cholesky fails); the
    third value is then that matrix's lambda_min without lam.
    """
    N = J.shape[1]
    active = delta > 0
    best = None
    seen = set()
    s = torch.zeros(N, dtype=J.dtype, device=J.device)
    for _ in range(max_inner):
        JA = J[active]
        M = JA.T @ JA / P + Hp
        L, info = torch.linalg.cholesky_ex(M + lam * torch.eye(N, dtype=J.dtype, device=J.device))
        if int(info) != 0:
            return s, math.inf, float(torch.linalg.eigvalsh(M)[0]), False
        b = JA.T @ delta[active] / P
        s = -torch.cholesky_solve(b.unsqueeze(1), L).squeeze(1)
        lin = delta + J @ s
        q = 0.5 * float((torch.relu(lin) ** 2).sum()) / P + 0.5 * float(s @ (Hp @ s))
        ql = q + 0.5 * lam * float(s @ s)
        if best is None or ql < best[2]:
            best = (s, q, ql)
        new = lin > 0
        key = bytes(new.cpu().numpy().tobytes())
        if bool((new == active).all()) or key in seen:
            break
        seen.add(key)
        active = new
    return best[0], best[1], -math.inf, True


def hinge_newton(
    problem: HingeProblem,
    theta: Tensor,
    kappa: float | None = None,
    max_iter: int = 200,
    time_limit: float | None = None,
    lam0: float = 1e-3,
    saddle_eps: float = 1e-10,
    zero_margin: float | None = None,
    hp_every: int = 8,
    callback=None,
) -> NewtonResult:
    """Polish ``theta`` by the hinge-aware trust-region Newton method of this module (margin ``kappa``).

    ``lam`` is relative to the largest eigenvalue of the model Hessian at the current point. Stops when
    the loss is exactly zero (at margin ``zero_margin`` too, when given: minimising at a pushed margin
    can stop as soon as the true margin is satisfied), when no step (Newton, kink-aware for ReLU, or along
    negative curvature below ``-saddle_eps lambda_max``) decreases the loss any more at a freshly computed
    Hessian (round-off reached: ``reason="converged"``), or at the budget.

    The Gauss-Newton part and the gradient are exact at every iteration; the dense curvature part Hp (the
    costly one: N Hessian-vector products) is reused for up to ``hp_every`` iterations while steps are
    accepted with a good ratio, and recomputed before any rejection is taken as final and whenever the
    steps become small (the last iterations, where quadratic convergence needs the exact Hessian).
    """
    k = problem.kappa if kappa is None else float(kappa)
    t0 = time.perf_counter()
    x = theta.detach().to(problem.device, problem.dtype).clone()
    P = problem.P
    f = problem.loss(x, k)
    evals = 1
    mu = lam0
    it = 0
    reason = "budget"
    relu = relu_chain(problem) is not None
    Hp, age, scale, need = None, 0, 1.0, True
    while it < max_iter:
        if f == 0.0 or (zero_margin is not None and problem.n_delta(x, zero_margin) == 0):
            reason = "zero_loss"
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            reason = "time"
            break
        delta, J = stabilities_jacobian(problem, x, k)
        fresh = need or Hp is None or age >= hp_every
        if fresh:
            Hp = curvature_hessian(problem, x, torch.relu(delta))
            age, need = 0, False
        else:
            age += 1
        JA = J[delta > 0]
        H = JA.T @ JA / P + Hp
        if fresh:
            w, V = torch.linalg.eigh(H)
            scale = max(float(w[-1]), float(w.abs().max()), 1e-300)
        g = JA.T @ delta[delta > 0] / P
        accepted = False
        step = 0.0
        kink = False
        if relu:
            # ReLU: if the (undamped) Newton step would cross activation kinks, the smooth model of this
            # piece is wrong beyond them; try the kink-aware step first
            s0, _, _, ok0 = _model_step(delta, J, Hp, max(mu, 1e-12) * scale, P)
            radius = float(s0.norm()) if ok0 else 1e-2 * max(float(x.norm()), 1.0)
            ks = _kink_step(problem, x, k, f, g, H, max(radius, 1e-9 * float(x.norm())), mu * scale)
            if ks is not None:
                step = float((ks[0] - x).norm())
                x, f = ks
                accepted = kink = True
        rho = 1.0
        for _ in range(0 if accepted else 40):  # Levenberg-Marquardt loop at this point
            lam = mu * scale
            s, q, wmin_model, ok = _model_step(delta, J, Hp, lam, P)
            if not ok:
                mu = max(mu * 4, 1.1 * (-wmin_model) / scale)
                continue
            pred = f - q
            if float(s.norm()) <= 1e-15 * max(1.0, float(x.norm())):
                break
            f_new = problem.loss(x + s, k)
            evals += 1
            rho = (f - f_new) / pred if pred > 0 else -math.inf
            if f_new < f and rho > 1e-4:
                x, f, step = x + s, f_new, float(s.norm())
                mu = max(mu / 3, 1e-15) if rho > 0.75 else (mu if rho > 0.25 else mu * 2)
                accepted = True
                break
            if pred <= 1e3 * _EPS * f and f_new <= f * (1 + 1e2 * _EPS):
                # the decrease is below what float64 resolves in L: accept on a smaller gradient instead
                # (Newton on grad L = 0), which takes the gradient down to its own round-off
                g_new = problem.loss_and_grad(x + s, k)[1]
                evals += 1
                if float(g_new.norm()) < 0.5 * float(g.norm()):
                    x, f, step = x + s, min(f, f_new), float(s.norm())
                    accepted = True
                    break
            if not fresh:
                break  # no final verdict on a lagged Hessian
            mu *= 4
            if mu > 1e12:
                break
        if not accepted and not fresh:
            need = True  # retry this point with the exact Hessian before giving up
            continue
        if not accepted and float(w[0]) < -saddle_eps * scale:
            # negative curvature: line search along the lowest eigenvector (both signs), from a large step
            # down to the smallest one whose predicted decrease |lambda_min| alpha^2 / 2 float64 resolves in L
            v = V[:, 0]
            if float(g @ v) > 0:
                v = -v
            curv = -float(w[0])
            alpha = max(float(x.norm()), 1.0) * 1e-2
            while 0.5 * curv * alpha * alpha > 1e2 * _EPS * f:
                for sgn in (1.0, -1.0):
                    f_new = problem.loss(x + sgn * alpha * v, k)
                    evals += 1
                    if f_new < f - 0.05 * curv * alpha * alpha:
                        x, f = x + sgn * alpha * v, f_new
                        accepted = True
                        break
                if accepted:
                    break
                alpha *= 0.5
            mu = lam0
            need = True
        it += 1
        if callback is not None:
            callback({"iteration": it, "loss": f, "mu": mu, "scale": scale, "grad_norm": float(g.norm()),
                      "fresh_hessian": fresh})
        if not accepted:
            reason = "converged"
            break
        if not kink and (rho < 0.25 or step < 1e-6 * max(float(x.norm()), 1.0)):
            need = True  # a poor model, or the final convergence of a smooth piece: exact Hessian next
    return NewtonResult(theta=x, loss=f, iterations=it, evaluations=evals, reason=reason)
