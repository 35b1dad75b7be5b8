"""Active-set SQP (Newton-KKT) polish of the hinge loss of a ReLU network onto a minimum on activation kinks.

At a jammed minimum of a ReLU network many hidden pre-activations z_k of active patterns sit exactly on
their kink (z_k = 0): the loss is not differentiable there, a smooth Newton method sees its model fail at
every crossing and creeps. Here the kinks within a radius rho of the iterate x are modelled explicitly. With
each kinked unit held in the state of its current sign (the piece of :func:`.kinks.piece_derivatives`), the
loss is, to first order in the kinks and second order in the piece,

    m(s) = g . s + s^T H s / 2 + sum_k max(lo_k w_k, hi_k w_k),     w_k = z_k + n_k . s,

with [lo_k, hi_k] = [0, c_k] for a unit held off (c_k max(0, w_k)) and [-c_k, 0] for one held on
(c_k max(0, -w_k)); g, H the gradient and the Hessian of the Lagrangian of the piece (H includes
sum_k tau_k Hess z_k with the previous multipliers), n_k = grad z_k, c_k = dL/da_k >= 0. Each iteration
minimises m(s) + lam |s|^2 / 2 through its dual, a box-constrained quadratic programme in the multipliers
tau_k in [lo_k, hi_k] (solved exactly by the bounded least squares :func:`.kinks.box_lsq`), so that

    s = -(H + lam)^{-1} (g + N^T tau).

Kinks whose multiplier is strictly inside its box stay on their manifold (w_k = 0); those at a bound are
released to one side. Near a nondegenerate kink minimum the active set settles and the iteration is Newton's
method on the KKT system of the manifold {z_k = 0}: quadratic convergence, down to z_k at round-off, which is
what :func:`.certify.certify` needs to see exact kinks. The dual only picks the active set: the step and
the binding multipliers are then solved from the KKT system of that set directly (a primal-dual active-set
correction), since the dual's matrix N (H + lam)^-1 N^T is ill-conditioned exactly in the final phase. A
step is accepted on a sufficient decrease of the true loss relative to the model's (Levenberg-Marquardt on
lam, inside a trust radius that also bounds the modelled kinks); once the predicted decrease is below what
float64 resolves in L, steps are accepted as long as the loss does not rise beyond round-off and the steps
keep shrinking.

Far from a minimum (deep in the jammed phase, after a first-order stage) the iteration is a trust-region
descent through a landscape with many kinks and some negative curvature; it decreases the loss but may need
many iterations before the active set settles.

The rescaling symmetry of ReLU units (incoming weights times a, outgoing over a) makes H singular along one
direction per hidden unit; lam > 0 (at least 1e-12 of the largest eigenvalue) keeps every solve regular, and
the gradient and the kink normals are orthogonal to those directions, so the steps do not move along them.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .kinks import box_lsq, kink_analysis, lagrangian_curvature, piece_derivatives, relu_chain, rescaling_modes
from .newton import NewtonResult
from .problem import HingeProblem

__all__ = ["box_qp", "kink_sqp"]

_EPS = float(torch.finfo(torch.float64).eps)


def box_qp(Q: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """argmin_t t^T Q t / 2 + q . t over lo <= t <= hi (Q (K, K) symmetric positive semi-definite, q (K,),
    lo <= 0 <= hi (K,)). Q gets a ridge of 1e-13 of its largest diagonal entry (so that dependent kinks get
    the minimum-norm split) and the problem is handed to :func:`.kinks.box_lsq` as a bounded least squares
    in u = t - lo."""
    Q = np.asarray(Q, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    K = q.shape[0]
    if Q.shape != (K, K) or lo.shape != (K,) or hi.shape != (K,):
        raise ConfigError(f"box_qp: shapes Q {Q.shape}, q {q.shape}, lo {lo.shape}, hi {hi.shape} do not match")
    if K == 0:
        return np.zeros(0)
    if np.any(lo > hi):
        raise ConfigError("box_qp needs lo <= hi")
    ridge = 1e-13 * max(float(np.abs(np.diag(Q)).max()), 1e-300)
    Qr = 0.5 * (Q + Q.T) + ridge * np.eye(K)
    Lc = np.linalg.cholesky(Qr)  # Qr = Lc Lc^T; |Lc^T t - b|^2 / 2 = t^T Qr t / 2 - b . Lc^T t + const
    b = -np.linalg.solve(Lc, q)  # Lc b = -q  =>  Lc (Lc^T t - b) = Qr t + q
    A = Lc.T
    u = box_lsq(A, b - A @ lo, hi - lo)
    return np.clip(lo + u, lo, hi)


def _model(problem: HingeProblem, x: Tensor, kappa: float, radius: float, tau_prev: dict):
    """The kink model at x (see the module docstring). Returns a dict with g (N,), H (N, N), n (K, N),
    z (K,), lo, hi (K,), keys (K,) of (pattern, unit), or None without a ReLU chain."""
    ka = kink_analysis(problem, x, radius=radius, kappa=kappa)
    if ka is None:
        return None
    idx = ka["index"]
    H_units = ka["z"].numel() // max(ka["rows"].numel(), 1)
    z = ka["z"][idx]
    c = ka["c"][idx]
    on = z > 0
    delta, J, Hp = piece_derivatives(problem, ka, x, on=on)
    A = delta > 0
    g = J[A].T @ delta[A] / problem.P
    H = J[A].T @ J[A] / problem.P + Hp
    cc = c.clamp_min(0.0)  # a concave kink (c < 0) is not modelled: its unit stays as it is
    lo = torch.where(on, -cc, torch.zeros_like(cc))
    hi = torch.where(on, torch.zeros_like(cc), cc)
    keys = [(int(ka["rows"][i // H_units]), int(i % H_units)) for i in idx.tolist()]
    tau0 = torch.tensor([tau_prev.get(k, 0.0) for k in keys], dtype=x.dtype, device=x.device)
    sel = torch.nonzero(tau0 != 0).flatten()
    if sel.numel():
        H = H + lagrangian_curvature(problem, x, tau0[sel], idx[sel], ka["rows"])
    # work in the complement of the rescaling orbits (exact zero modes of L whose curvature away from a
    # critical point is that of the orbit, often negative, and would otherwise set the damping)
    T = rescaling_modes(problem, x)
    Q, R = torch.linalg.qr(T, mode="complete")
    r = int((R.diagonal().abs() > 1e-12 * max(float(R.diagonal().abs().max()), 1e-300)).sum()) if T.shape[1] else 0
    Zb = Q[:, r:]
    H = 0.5 * (H + H.T)
    return {"g": Zb.T @ g, "H": Zb.T @ H @ Zb, "n": ka["n"] @ Zb, "z": z, "lo": lo, "hi": hi, "keys": keys,
            "basis": Zb}


def _reg_model(gV: Tensor, w: Tensor, lam: float, nV: Tensor, z: Tensor, lo: Tensor, hi: Tensor, sv: Tensor) -> float:
    """m(s) + lam |s|^2 / 2 for a step with coordinates sv in the eigenbasis of H (eigenvalues w)."""
    wk = z + nV @ sv
    kink = torch.maximum(lo * wk, hi * wk).sum() - torch.maximum(lo * z, hi * z).sum()
    return float(gV @ sv) + 0.5 * float(((w + lam) * sv * sv).sum()) + float(kink)


def _solve(m: dict, w: Tensor, V: Tensor, lam: float) -> tuple[Tensor, Tensor, float]:
    """Minimiser s of m(s) + lam |s|^2 / 2 through the dual box QP, with H = V diag(w) V^T and w + lam > 0.
    Returns (s (N,), tau (K,), model decrease -m(s) without the lam term)."""
    g, H, n, z = m["g"], m["H"], m["n"], m["z"]
    inv = 1.0 / (w + lam)
    gV = V.T @ g
    if n.shape[0]:
        nV = n @ V  # (K, N)
        Q = (nV * inv) @ nV.T
        q = (nV * inv) @ gV - z
        lo, hi = m["lo"], m["hi"]
        tau = torch.as_tensor(box_qp(Q.cpu().numpy(), q.cpu().numpy(), lo.cpu().numpy(), hi.cpu().numpy()),
                              dtype=g.dtype, device=g.device)
        # the dual gives the active set; the step and the binding multipliers then follow from the KKT system
        # of that set, solved directly (the dual's Q = N (H + lam)^-1 N^T is ill-conditioned when lam is small,
        # which is exactly the final, quadratically convergent phase), with the set corrected until the
        # multipliers are in their boxes and every released kink lies on the side its bound says
        # (primal-dual active set); the better of the two steps on the regularised model is kept
        span = (hi - lo).clamp_min(1e-300)
        bind = (tau > lo + 1e-10 * span) & (tau < hi - 1e-10 * span)
        fixed = torch.where(tau >= hi - 1e-10 * span, hi, lo)
        best_tau, best_val = tau, _reg_model(gV, w, lam, nV, z, lo, hi, -(inv * (gV + nV.T @ tau)))
        Nn = g.numel()
        for _ in range(n.shape[0] + 1):
            B = torch.nonzero(bind).flatten()
            tt = torch.where(bind, torch.zeros_like(tau), fixed)
            if B.numel():
                nB = nV[B]
                Kmat = torch.zeros(Nn + B.numel(), Nn + B.numel(), dtype=g.dtype, device=g.device)
                Kmat[:Nn, :Nn] = torch.diag(w + lam)
                Kmat[:Nn, Nn:] = nB.T
                Kmat[Nn:, :Nn] = nB
                rhs_k = torch.cat([-(gV + nV.T @ tt), -z[B]])
                sol = torch.linalg.lstsq(Kmat, rhs_k.unsqueeze(1), driver="gelsd").solution.squeeze(1)
                sv, tB = sol[:Nn], sol[Nn:]
                tt = tt.clone()
                tt[B] = tB
            else:
                sv = -(inv * (gV + nV.T @ tt))
            wk = z + nV @ sv
            out_lo = bind & (tt < lo)
            out_hi = bind & (tt > hi)
            wrong = ~bind & (((fixed == lo) & (lo < hi) & (wk > 0)) | ((fixed == hi) & (lo < hi) & (wk < 0)))
            if not bool((out_lo | out_hi | wrong).any()):
                val = _reg_model(gV, w, lam, nV, z, lo, hi, sv)
                if val < best_val:
                    best_tau, best_val = tt, val
                break
            bind = (bind & ~out_lo & ~out_hi) | wrong
            fixed = torch.where(out_hi, hi, torch.where(out_lo, lo, fixed))
        tau = best_tau
        rhs = gV + nV.T @ tau
    else:
        tau = g.new_zeros(0)
        rhs = gV
    s = -(V @ (inv * rhs))
    wk = z + n @ s
    kink = torch.maximum(m["lo"] * wk, m["hi"] * wk).sum() - torch.maximum(m["lo"] * z, m["hi"] * z).sum()
    val = float(g @ s) + 0.5 * float(s @ (H @ s)) + float(kink)
    return s, tau, -val


def kink_sqp(problem: HingeProblem, theta: Tensor, kappa: float | None = None, max_iter: int = 100,
             time_limit: float | None = None, radius: float = 1e-4, lam0: float = 1e-8,
             callback=None) -> NewtonResult:
    """Polish ``theta`` (N,) of a ReLU-MLP hinge problem onto a (kink) minimum by the active-set SQP of this
    module, at margin ``kappa`` (default the problem's).

    Trust region: the kinks of each model are those within first-order distance rho of x (at least 1e-6
    |theta|, so that a converging iteration keeps the kinks it sits on) and the step is kept within rho
    (lam raised until |s| <= rho); rho starts at ``radius`` |theta|, doubles after very good steps that
    reach it (up to 4e-3 |theta|), shrinks after poor or rejected ones, and follows 4 |s| once the steps
    become small. A step cut by rho is extrapolated along itself on the true loss (doubling while the loss
    falls): a loss evaluation costs little next to a model. Curvature directions below 1e-9 lambda_max are
    made stiff (1e-6 lambda_max) so that round-off in the gradient is not amplified into long steps along
    them. ``lam0``: initial damping relative to the largest eigenvalue of H. ``callback`` gets a dict
    (iteration, loss, step, mu, kinks, accepted, radius relative to |theta|, w0 and w5 the lowest
    eigenvalues of the reduced H, pred, gnorm) after every iteration.
    Stops when the step falls below 1e-14 |theta| or no step is accepted (``reason="stalled"``: converged,
    or a point the method cannot leave; only the certificate tells), at zero loss, at ``max_iter``
    (``"budget"``) or after ``time_limit`` seconds (wall clock, as :func:`.newton.hinge_newton`; ``"time"``).
    Raises ConfigError for a network that is not a ReLU MLP.
    """
    if relu_chain(problem) is None:
        raise ConfigError("kink_sqp needs a ReLU MLP (a chain of Linear layers and ReLUs)")
    k = problem.kappa if kappa is None else float(kappa)
    c0 = time.perf_counter()
    x = theta.detach().to(problem.device, problem.dtype).clone()
    tn = max(float(x.norm()), 1.0)
    f = problem.loss(x, k)
    evals, it, mu, rho = 1, 0, lam0, radius * tn
    rho_min, rho_max, kink_floor = 1e-8 * tn, 4e-3 * tn, 1e-6 * tn
    tau_prev: dict = {}
    reason = "budget"
    roundoff_steps = 0
    last_step = math.inf
    while it < max_iter:
        if f == 0.0:
            reason = "zero_loss"
            break
        if time_limit is not None and time.perf_counter() - c0 > time_limit:
            reason = "time"
            break
        # the kinks of the model: those within the trust radius, and never fewer than those within
        # 1e-6 |theta| (the ones a converging iteration sits on)
        m = _model(problem, x, k, max(rho, kink_floor), tau_prev)
        w, V = torch.linalg.eigh(m["H"])
        scale = max(float(w.abs().max()), 1e-300)
        # directions of curvature below what float64 resolves (|w| <= 1e-9 lambda_max: dead units' weights,
        # degenerate pieces) are made stiff: a step moves along them only where a kink constraint needs it,
        # instead of amplifying round-off in the gradient into a long step
        flat = w.abs() <= 1e-9 * scale
        w = torch.where(flat, torch.full_like(w, 1e-6 * scale), w)
        shift = max(0.0, -float(w.min())) * 1.01
        accepted = False
        s = None
        for _ in range(60):
            lam = max(mu * scale, 1e-12 * scale) + shift
            s, tau, pred = _solve(m, w, V, lam)
            s = m["basis"] @ s
            sn = float(s.norm())
            if sn > rho and mu < 1e8:
                # outside the ball whose kinks are modelled: damp more (trust region)
                mu = max(mu, 1e-12) * 4
                continue
            f_new = problem.loss(x + s, k)
            evals += 1
            if f_new < f and f - f_new >= 1e-4 * max(pred, 0.0) and pred > 1e3 * _EPS * f:
                ratio = (f - f_new) / pred
                if ratio > 0.75:
                    mu = max(mu / 10, 1e-14)
                    if sn > 0.5 * rho:
                        rho = min(2 * rho, rho_max)
                elif ratio < 0.25:
                    rho = max(sn / 2, rho_min)
                accepted = True
                roundoff_steps = 0
                break
            if pred <= 1e3 * _EPS * f and f_new <= f * (1 + 1e2 * _EPS) and sn < 0.5 * last_step:
                # below the loss's resolution: Newton on the KKT system, accepted while the steps shrink
                accepted = True
                roundoff_steps += 1
                break
            rho = max(min(rho, sn) / 4, rho_min)
            mu = max(mu, 1e-12) * 4
            if mu > 1e8:
                break
            break  # rebuild the model on the smaller ball
        it += 1
        if callback is not None:
            callback({"iteration": it, "loss": f, "step": float(s.norm()) if s is not None else 0.0, "mu": mu,
                      "kinks": len(m["keys"]), "accepted": accepted, "radius": rho / tn,
                      "w0": float(w[0]), "w5": float(w[5]) if w.numel() > 5 else 0.0, "pred": pred,
                      "gnorm": float(m["g"].norm())})
        if not accepted:
            if mu <= 1e8 and rho > rho_min:
                continue
            reason = "stalled"
            break
        extrapolated = False
        if not roundoff_steps and float(s.norm()) >= 0.5 * rho:
            # a step cut by the ball of modelled kinks in a valley that goes on: extrapolate along it on the
            # true loss (a loss evaluation costs little next to a model), doubling while the loss falls
            best_a, best_f = 1.0, f_new
            a = 2.0
            while a <= 256:
                fa = problem.loss(x + a * s, k)
                evals += 1
                if not fa < best_f:
                    break
                best_a, best_f, a = a, fa, 2 * a
            s, f_new = best_a * s, best_f
            extrapolated = best_a > 1
        x = x + s
        f = min(f, f_new) if roundoff_steps else f_new
        last_step = float(s.norm())
        # the multipliers weigh the curvature of the next model (not after an extrapolation, where the
        # kink set has changed)
        tau_prev = {} if extrapolated else {key: float(t) for key, t in zip(m["keys"], tau) if float(t) != 0.0}
        if last_step <= 1e-14 * tn:
            reason = "stalled"
            break
        if last_step < 0.1 * rho:
            rho = max(4 * last_step, rho_min)  # converging: shrink the ball onto the kinks that bind
    return NewtonResult(theta=x, loss=f, iterations=it, evaluations=evals, reason=reason)
