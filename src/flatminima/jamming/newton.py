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

from .kinks import kink_analysis, kink_multipliers, lagrangian_curvature, piece_derivatives, relu_chain
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


@dataclass
class KinkState:
    """The kinks within a radius of a ReLU point and the nonsmooth first-order analysis there.

    ``kinks``: :func:`.kinks.kink_analysis`; ``g_off`` (N,): gradient of the piece with every such kink off;
    ``r`` (N,), ``t`` (G,), ``groups``, ``normals`` (G, N), ``coef`` (G,): :func:`.kinks.kink_multipliers`.
    """

    kinks: dict
    g_off: Tensor
    r: Tensor
    t: Tensor
    groups: list[list[int]]
    normals: Tensor
    coef: Tensor

    def sides(self, rtol: float = 1e-12) -> tuple[Tensor, Tensor]:
        """(bind (G,), on (G,)): groups whose multiplier is strictly inside (0, c) -- they stay on the kink --
        and groups at their upper bound c > 0 (the unit is on in the piece the point minimises); the rest
        are at t = 0 (off)."""
        c = self.coef
        on = (c > 0) & (self.t >= (1 - rtol) * c)
        bind = ~on & (self.t > rtol * c.abs())
        return bind, on


def kink_state(problem: HingeProblem, x: Tensor, k: float, radius: float) -> KinkState | None:
    """:class:`KinkState` of the kinks within first-order distance ``radius`` of x at margin k (None without)."""
    ka = kink_analysis(problem, x, radius=radius, kappa=k)
    if ka is None or ka["index"].numel() == 0:
        return None
    delta, J, _ = piece_derivatives(problem, ka, x, hessian=False)
    A = delta > 0
    g_off = J[A].T @ delta[A] / problem.P
    r, t, groups, nG, cG = kink_multipliers(ka, g_off)
    return KinkState(ka, g_off, r, t, groups, nG, cG)


def _sqp_model(problem: HingeProblem, x: Tensor, st: KinkState):
    """The SQP model at x of the kinks of ``st``: the piece in which the groups at t = c are on and those at
    t = 0 off, constrained to the manifold of the binding groups. Returns (g (N,), H (N, N), sp (N,),
    Z (N, M), w (M,), V (M, M)): the piece's gradient, the Hessian of its Lagrangian, the minimum-norm step
    onto the linearised manifold, a basis Z of its tangent space and the eigenpairs of Z^T H Z; or None
    when the manifold leaves no free direction."""
    ka, t, groups = st.kinks, st.t, st.groups
    n, z = ka["n"], ka["z"][ka["index"]]
    bind, on_g = st.sides()
    rows = [grp[0] for gi, grp in enumerate(groups) if bool(bind[gi])]
    on = torch.zeros(n.shape[0], dtype=torch.bool, device=n.device)
    for gi, grp in enumerate(groups):
        if bool(on_g[gi]):
            on[grp] = True
    delta, J, Hp = piece_derivatives(problem, ka, x, on=on)
    A = delta > 0
    g = J[A].T @ delta[A] / problem.P
    H = J[A].T @ J[A] / problem.P + Hp
    if rows:
        # Lagrangian L_piece + sum_G t_G u_G . z: member k of group G carries t_G / sum_{j in G} |n_j|
        norms = n.norm(dim=1)
        wk = torch.zeros(n.shape[0], dtype=x.dtype, device=x.device)
        for gi, grp in enumerate(groups):
            if bool(bind[gi]):
                wk[grp] = t[gi] / norms[grp].sum()
        sel = torch.nonzero(wk != 0).flatten()
        if sel.numel():
            H = H + lagrangian_curvature(problem, x, wk[sel], ka["index"][sel], ka["rows"])
        U, S, Vh = torch.linalg.svd(n[rows], full_matrices=True)
        rank = int((S > 1e-12 * S.max()).sum())
        Vr, Z = Vh[:rank].T, Vh[rank:].T
        sp = -(Vr @ ((U[:, :rank].T @ z[rows]) / S[:rank]))
    else:
        Z = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
        sp = torch.zeros_like(x)
    if not Z.shape[1]:
        return None
    w0, V = torch.linalg.eigh(Z.T @ H @ Z)
    return g, H, sp, Z, w0, V


def _kink_step(problem: HingeProblem, x: Tensor, k: float, f: float, radius: float):
    """A step for a ReLU point held up by activation kinks (the smooth model of the current piece fails).

    Kinks within ``radius`` (first-order distance) are collected and the bounded least squares of
    :func:`.kinks.kink_multipliers` splits them into three sets: multipliers strictly inside (0, c) (the
    kink binds: the point sits on it), at c (the unit is on) and at 0 (off). Tried in order:

    1. an SQP (Newton) step on the kink manifold: min g.s + s^T (H + lam) s / 2 subject to z_k + n_k . s = 0
       for the binding kinks, with g, H the gradient and the Hessian of the Lagrangian of the piece in which
       the other kinks are held on or off as their multipliers say (:func:`.kinks.piece_derivatives`;
       never PyTorch's relu'(z) of a round-off z). lam rises from just above -lambda_min of the reduced
       Hessian (Levenberg-Marquardt); a step is accepted on a real decrease of the loss, or, where the
       predicted decrease is below what float64 resolves in L, on a halved nonsmooth residual |r|;
    2. a backtracking line search along the steepest nonsmooth descent direction -r.

    Returns the new (x, f) or None.
    """
    st = kink_state(problem, x, k, radius)
    if st is None:
        return None
    sqp = _sqp_model(problem, x, st)
    r_norm = float(st.r.norm())
    if sqp is not None:
        g, H, sp, Z, w0, V = sqp
        rhs0 = Z.T @ (g + H @ sp)
        lam_ = 1.1 * max(0.0, -float(w0[0])) + 1e-12 * max(float(w0.abs().max()), 1e-300)
        for _ in range(8):
            d = sp - Z @ (V @ ((V.T @ (rhs0 + lam_ * (Z.T @ sp))) / (w0 + lam_)))
            pred = -(float(g @ d) + 0.5 * float(d @ (H @ d)))
            f_new = problem.loss(x + d, k)
            if f_new < f * (1 - 1e2 * _EPS) and f - f_new >= 1e-4 * max(pred, 0.0):
                return x + d, f_new
            if abs(pred) <= 1e3 * _EPS * f and f_new <= f * (1 + 1e2 * _EPS):
                # below the loss's resolution: accept on a smaller nonsmooth residual (as for the gradient)
                new = kink_state(problem, x + d, k, radius)
                if new is not None and float(new.r.norm()) < 0.5 * r_norm:
                    return x + d, min(f, f_new)
            lam_ *= 30
    r = st.r
    if r_norm > 0:  # line search along the steepest nonsmooth descent direction
        d = -r / r_norm
        alpha = min(radius, max(float(x.norm()), 1.0) * 1e-2) * 4
        for _ in range(50):
            f_new = problem.loss(x + alpha * d, k)
            if f_new < f - 1e-4 * alpha * r_norm:
                return x + alpha * d, f_new
            alpha *= 0.5
    return None


@dataclass
class NewtonResult:
    theta: Tensor
    loss: float
    iterations: int
    evaluations: int
    #: "stalled" (no step decreases the loss at a fresh Hessian: a minimum to round-off or a point the
    #: method cannot leave; only :func:`.certify.certify` tells which), "zero_loss", "budget", "time"
    reason: str


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
    Hessian (``reason="stalled"``: round-off reached, or a point the method cannot leave; it is not a
    certificate), or at the budget.

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
            ks = _kink_step(problem, x, k, f, max(radius, 1e-9 * float(x.norm())))
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
            reason = "stalled"
            break
        if not kink and (rho < 0.25 or step < 1e-6 * max(float(x.norm()), 1.0)):
            need = True  # a poor model, or the final convergence of a smooth piece: exact Hessian next
    return NewtonResult(theta=x, loss=f, iterations=it, evaluations=evals, reason=reason)
