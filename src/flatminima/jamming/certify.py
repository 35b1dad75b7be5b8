"""Certificates of the outcome of a hinge-loss minimisation: zero loss, or a local minimum with L > 0.

:func:`certify` examines one point theta and names what it is, with the numbers that justify the name.

``"zero_loss"``
    every stability Delta_mu <= 0, so L = 0 exactly (a SAT point).
``"minimum"``
    a local minimum with L > 0, established to round-off:

    1. *stationary*: ``grad_rel = |grad L| / ((1/P) sum_mu max(0, Delta_mu) |grad Delta_mu|) <= gtol``. The
       denominator is the size of the individual "forces" whose sum is the gradient, so grad_rel is the
       cancellation achieved; float64 round-off leaves it at ~1e-16 sqrt(N), and the default gtol is 1e-10.
    2. *no negative curvature*: lambda_min >= -eps lambda_max for the Hessian H = H0 + Hp (dense eigvalsh
       for N <= ``dense_max``, :func:`flatminima.linalg.eigsh` on exact Hessian-vector products otherwise). eps (default 1e-9) is
       set by what float64 resolves: the Hessian is a sum of P terms, so its eigenvalues carry an absolute
       error of a few eps_mach N lambda_max (~1e-13 lambda_max here, the size of the negative eigenvalues
       seen at converged minima), and a gradient of grad_rel ~ 1e-10 displaces theta from the exact
       critical point by |H^+ g|, which moves the spectrum by a comparable relative amount. Negative
       curvature below -eps lambda_max is resolved: such a point is a saddle and the polish escapes it.
       The hinge makes H jump where a stability crosses zero; patterns whose stability lies within the
       resolution of zero (|Delta_mu| / |grad Delta_mu| <= ``r_tol`` |theta|) are left out of H0, the more
       demanding choice (H0 only adds positive semi-definite terms).
    3. *smooth piece* (ReLU networks): the loss is smooth only within one activation pattern. Every hidden
       pre-activation z of a pattern with Delta_mu > 0 must sit at a first-order distance |z| / |grad z| >
       ``r_tol`` |theta| from its kink; then the activation pattern, hence the smooth piece the derivatives
       describe, is fixed in a ball around theta, and a second-order stationary point of that piece is a
       local minimum of L. (Inactive patterns cannot matter: their Delta stays < 0 nearby.)
``"kink_minimum"``
    ReLU only: L > 0 and some active pre-activations sit on their kink (z = 0 within the resolution). Then
    L is the maximum-free combination g.v + sum_k c_k max(0, n_k.v) to first order along v (g the
    gradient with the kinked units off, n_k = grad z_k, c_k = dL/da_k >= 0 the jump of the gradient when
    unit k switches on). The point is a nonsmooth local minimum when (i) multipliers 0 <= t_k <= c_k exist
    with |g + sum t_k n_k| at round-off (first-order: L'(theta; v) >= 0 for every v; found by bounded least
    squares, parallel normals merged) and (ii) the Hessian of the Lagrangian L + sum t_k z_k is positive
    semi-definite (to -eps lambda_max) on the tangent space of the kink manifold {z_k = 0}. The first-order
    model is exact only when each pattern's kinks lie in one hidden layer. Points with kinks of one pattern
    in several layers (a nested max) are certified case by case (:func:`kink_cases`): every upstream kink
    held on or off, the directions restricted to the cone where it stays so, each case additive again and
    tested as above with multipliers mu >= 0 for the cone's walls (at most :data:`MAX_UPSTREAM` upstream
    kinks, 2^U cases). Every derivative is that of a piece in which the
    kinked units are held off or on explicitly (:func:`.kinks.piece_derivatives`), never PyTorch's
    relu'(z) at a z that is zero up to round-off. Degenerate multipliers (t_k = c_k: the loss is flat to
    first order on the unit's "on" side) are checked with the Hessian of the piece with that unit on, on
    the tangent space of the interior kinks; when that fails but the manifold of all kinks has no negative
    curvature, the point gets ``"kink"`` (first-order nonsmooth stationarity only), a weaker certificate
    counted separately.
``"saddle"``
    stationary (to the tolerances above) but a direction of descent exists: lambda_min < -eps lambda_max, or
    a kink whose switching-on lowers the loss (c_k < 0).
``"unconverged"``
    not stationary: the gradient (or the nonsmooth first-order residual) is above tolerance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..linalg import eigsh
from .kinks import (
    _widths,
    box_lsq,
    forced_kink_terms,
    kink_analysis,
    kink_multipliers,
    lagrangian_curvature,
    nested_kinks,
    piece_derivatives,
    relu_chain,
    upstream_kinks,
)
from .newton import curvature_hessian, stabilities_jacobian
from .problem import HingeProblem

__all__ = ["Certificate", "certify", "kink_cases", "CERTIFIED_MINIMA", "GTOL", "EPS", "R_TOL", "MAX_UPSTREAM"]

#: Certificates that establish a local minimum with L > 0 (the jammed candidates).
CERTIFIED_MINIMA = ("minimum", "kink_minimum")
GTOL = 1e-10
EPS = 1e-9
R_TOL = 1e-9
#: nested kink points with more upstream kinks than this get no case analysis (2^this cases)
MAX_UPSTREAM = 8


@dataclass
class Certificate:
    """What a point is (``name``) and the numbers behind it. Eigenvalues refer to the Hessian H of the
    smooth piece (conservative at hinge boundaries, see :func:`certify`)."""

    name: str
    loss: float
    n_delta: int
    grad_norm: float
    grad_rel: float
    lambda_min: float | None = None
    lambda_max: float | None = None
    hessian: str = "none"  # "dense", "lanczos" or "none" (zero loss or not stationary)
    newton_step_rel: float | None = None
    hinge_boundary: int = 0  # active patterns whose stability is within resolution of zero
    kinks: int | None = None  # ReLU: active pre-activations on their kink (None: smooth activation)
    kink_margin: float | None = None  # ReLU: min |z| / |grad z| over active pre-activations, relative to |theta|
    kink_residual: float | None = None  # nonsmooth first-order residual (relative), when kinks exist
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """lambda_min / lambda_max."""
        if self.lambda_min is None or not self.lambda_max:
            return None
        return self.lambda_min / self.lambda_max

    @property
    def is_minimum(self) -> bool:
        return self.name in CERTIFIED_MINIMA

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


# ------------------------------------------------------------------------------ the certificate
def _reduced_lambda_min(problem: HingeProblem, kinks: dict[str, Any], th: Tensor, groups: list[list[int]],
                        t: Tensor, constrained: Tensor, normals: Tensor, on: Tensor | None, r_tol: float,
                        th_norm: float) -> float:
    """lambda_min of the Hessian of the Lagrangian L_piece + sum_{G constrained} t_G u_G . z on the tangent space
    {u_G . v = 0 for the constrained groups} (``normals`` (K, N)). The piece holds the kinks of ``kinks`` off,
    or on where ``on`` (per kink); hinge-boundary patterns are left out of its Gauss-Newton part (the
    conservative choice, as for a smooth point)."""
    d, J, Hp = piece_derivatives(problem, kinks, th, on=on)
    cons = (d > 0) & (d > r_tol * th_norm * J.norm(dim=1))
    H = J[cons].T @ J[cons] / problem.P + Hp
    idx = kinks["index"]
    norms = kinks["n"].norm(dim=1)
    wk = torch.zeros(idx.numel(), dtype=th.dtype, device=th.device)
    for gi, grp in enumerate(groups):
        if bool(constrained[gi]):
            wk[grp] = t[gi] / norms[grp].sum()
    sel = torch.nonzero(wk != 0).flatten()
    if sel.numel():
        H = H + lagrangian_curvature(problem, th, wk[sel], idx[sel], kinks["rows"])
    return tangent_lambda_min(H, normals)


def tangent_lambda_min(H: Tensor, normals: Tensor) -> float:
    """Smallest eigenvalue of H (N, N) restricted to the tangent space {v : normals v = 0} (normals (K, N),
    rank-revealing QR; 0.0 when that space is {0})."""
    if normals.shape[0]:
        Q, R = torch.linalg.qr(normals.T, mode="complete")
        diag = R.diagonal().abs()
        rank = int((diag > 1e-12 * diag.max()).sum()) if diag.numel() else 0
        Z = Q[:, rank:]
    else:
        Z = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    red = Z.T @ H @ Z
    return float(torch.linalg.eigvalsh(red)[0]) if red.numel() else 0.0


def _hessian_pieces(problem: HingeProblem, theta: Tensor, r_tol: float):
    delta, J = stabilities_jacobian(problem, theta)
    th_norm = max(float(theta.norm()), 1.0)
    a_norm = J.norm(dim=1)
    active = delta > 0
    boundary = active & (delta <= r_tol * th_norm * a_norm)
    Hp = curvature_hessian(problem, theta, torch.relu(delta))
    Jf = J[active & ~boundary]
    H_cons = Jf.T @ Jf / problem.P + Hp
    JA = J[active]
    H = JA.T @ JA / problem.P + Hp
    return delta, J, H, H_cons, int(boundary.sum())


def certify(
    problem: HingeProblem,
    theta: Tensor,
    gtol: float = GTOL,
    eps: float = EPS,
    r_tol: float = R_TOL,
    dense_max: int = 3000,
) -> Certificate:
    """Name the point ``theta`` of ``problem``: ``"zero_loss"``, ``"minimum"``, ``"kink_minimum"``,
    ``"kink"``, ``"saddle"`` or ``"unconverged"`` (see the module docstring for the definitions).

    ``gtol``: bound on the relative gradient; ``eps``: bound on -lambda_min / lambda_max; ``r_tol``:
    distances to a hinge boundary or a ReLU kink below r_tol |theta| count as "on" it; ``dense_max``: largest
    N for the dense Hessian (Lanczos beyond).
    """
    th = theta.detach().to(problem.device, problem.dtype)
    f, g = problem.loss_and_grad(th)
    f, gn = float(f), float(g.norm())
    delta = problem.stabilities(th).reshape(-1)
    nd = int((delta > 0).sum())
    if nd == 0:
        return Certificate("zero_loss", 0.0, 0, gn, 0.0)
    th_norm = max(float(th.norm()), 1.0)
    dense = problem.N <= dense_max
    kinks = kink_analysis(problem, th, radius=r_tol * max(float(th.norm()), 1.0))
    # size of the individual force terms (1/P) max(0, Delta_mu) |grad Delta_mu|
    if dense:
        delta, J, H, H_cons, n_boundary = _hessian_pieces(problem, th, r_tol)
        force = float((torch.relu(delta) * J.norm(dim=1)).sum()) / problem.P
    else:
        J = None
        n_boundary = 0
        force = float((torch.relu(delta) * (-problem.Y.reshape(-1, 1) * problem.jacobian(th)).norm(dim=1)).sum()) / problem.P
    g_rel = gn / max(force, 1e-300)
    cert = Certificate("unconverged", f, nd, gn, g_rel, hinge_boundary=n_boundary)
    on_kink = None
    if kinks is not None:
        dist = kinks["dist"]
        on_kink = dist <= r_tol * th_norm
        cert.kinks = int(on_kink.sum())
        cert.kink_margin = float(dist.min() / th_norm) if dist.numel() else math.inf
    # ---- spectrum of the (conservative) Hessian of the current piece
    if dense:
        ev, V = torch.linalg.eigh(H_cons)
        lmax = float(torch.linalg.eigvalsh(H)[-1])
        lmin = float(ev[0])
        cert.hessian = "dense"
        w, U = torch.linalg.eigh(H)
        keep = w.abs() > eps * max(abs(lmax), 1e-300)
        step = U[:, keep] @ ((U[:, keep].T @ g) / w[keep])
        cert.newton_step_rel = float(step.norm()) / th_norm
    else:
        op = problem.landscape.hvp_operator(th)
        lmax = float(eigsh(op, which="LA", tol=1e-8, return_vectors=False).values[0])
        lmin = float(eigsh(op, which="SA", tol=1e-8, max_matvecs=8000, return_vectors=False).values[0])
        cert.hessian = "lanczos"
    cert.lambda_min, cert.lambda_max = lmin, lmax
    scale = max(abs(lmax), 1e-300)
    if on_kink is None or not bool(on_kink.any()):
        if g_rel > gtol:
            return cert
        cert.name = "minimum" if lmin >= -eps * scale else "saddle"
        return cert
    # ---- ReLU point on kinks: nonsmooth first-order test with bounded multipliers, then second order
    idx = kinks["index"]  # the entries on their kink (distance <= r_tol |theta|), with their normals
    nested = nested_kinks(problem, idx)
    if nested:
        # kinks of one pattern in several layers: the loss is a nested max there; split it into the cases
        # of the upstream kinks' states, each additive (see _certify_nested)
        cert.details["nested_kink_patterns"] = nested
        return _certify_nested(problem, th, kinks, cert, force, gtol, eps, r_tol, th_norm, dense, lmax)
    # the piece with every kinked unit held off (not PyTorch's relu'(z) of a round-off z): its gradient
    # g_off, from which the multipliers follow
    d_off, J_off, _ = piece_derivatives(problem, kinks, th, hessian=False)
    act = d_off > 0
    g_off = J_off[act].T @ d_off[act] / problem.P
    r, t, groups, nG, cG = kink_multipliers(kinks, g_off)
    ctol = 1e-12 * force * th_norm
    negative = int((cG < -ctol).sum())
    cert.details.update(kink_groups=len(groups), negative_jumps=negative)
    resid = float(r.norm()) / max(force, 1e-300)
    cert.kink_residual = resid
    if resid > gtol:
        return cert
    if negative:
        # a concave kink (switching the unit on lowers the loss): not a minimum when the normals are
        # independent; we do not try to prove the rare dependent case
        cert.name = "saddle"
        return cert
    # second order. Groups with interior multipliers (I) bind: the point sits on their kink. Groups at
    # t = c > 0 (D, degenerate) are flat to first order on their "on" side only, so the relevant curvature
    # is that of the piece with those units on, on the tangent space {n_I . v = 0} (a superset of the cone
    # {n_I . v = 0, n_D . v >= 0} the test needs: sufficient). If that fails, the curvature on the smaller
    # manifold {n_I . v = 0, n_D . v = 0} (where every piece agrees) decides "saddle"; otherwise the point
    # only gets the weaker "kink".
    interior = (t > 1e-9 * cG) & (t < (1 - 1e-9) * cG)
    degen = (t >= (1 - 1e-9) * cG) & (cG > ctol)
    cert.details.update(interior_multipliers=int(interior.sum()), degenerate=int(degen.sum()))
    if not dense:
        cert.name = "kink"
        return cert
    on = torch.zeros(idx.numel(), dtype=torch.bool, device=th.device)
    for gi, grp in enumerate(groups):
        if bool(degen[gi]):
            on[grp] = True
    lmin_red = _reduced_lambda_min(problem, kinks, th, groups, t, interior, nG[interior], on, r_tol, th_norm)
    cert.lambda_min = lmin_red
    if lmin_red >= -eps * scale:
        cert.name = "kink_minimum"
        return cert
    both = interior | degen
    lmin_man = _reduced_lambda_min(problem, kinks, th, groups, t, both, nG[both], None, r_tol, th_norm)
    cert.details["lambda_min_manifold"] = lmin_man
    cert.name = "saddle" if lmin_man < -eps * scale or not bool(degen.any()) else "kink"
    return cert


# ------------------------------------------------------------------------------ nested kinks
def kink_cases(problem: HingeProblem, kinks: dict[str, Any], theta: Tensor,
               max_upstream: int = MAX_UPSTREAM) -> list[dict[str, Any]] | None:
    """The first-order model of a ReLU point whose kinks are nested, split into cases.

    A kink is *upstream* when its pattern has a kink in a later layer (:func:`.kinks.upstream_kinks`; with
    three or more hidden layers this includes a middle kink between two others). Fixing the state of every
    upstream kink u (on: the cone s_u n_u . v <= 0 with s_u = -1, off: s_u = +1) makes the loss additive in
    the other ("leaf") kinks inside that cone: L(theta + v) - L(theta) = g_s . v + sum_leaves c_k max(0, n_k .
    v) + o(|v|), with g_s the gradient of the piece with the upstream kinks as the case holds them and the
    leaves off, n_k and c_k >= 0 of that piece (:func:`.kinks.forced_kink_terms`). By convex duality
    L' >= 0 on the cone iff t_k in [0, c_k |n_k|] and mu_u >= 0 exist with g_s + sum t_k n_k/|n_k| +
    sum mu_u s_u n_u/|n_u| = 0; the bounded least squares gives the closest such combination r (N,) (-r/|r|
    is the steepest descent direction inside the cone, of slope -|r|).

    Returns one dict per case (2^U of them): ``on`` (K,) bool (the upstream kinks held on), ``upstream``
    (K,) bool, ``n`` (K, N), ``c`` (K,), ``g`` (N,), ``cols`` (K, N) the signed unit normals (u_k leaves,
    s_u n_u/|n_u| upstream), ``ub`` (K,) the bounds (inf for upstream), ``t`` (K,) the multipliers, ``r``
    (N,). None when there are more than ``max_upstream`` upstream kinks.
    """
    from itertools import product

    idx = kinks["index"]
    K = idx.numel()
    th = theta.detach()
    up = upstream_kinks(problem, idx).to(th.device)
    U = torch.nonzero(up).flatten()
    if U.numel() > max_upstream:
        return None
    cases = []
    for sig in product((False, True), repeat=U.numel()):
        on = torch.zeros(K, dtype=torch.bool, device=th.device)
        if U.numel():
            on[U] = torch.tensor(sig, dtype=torch.bool, device=th.device)
        n, c = forced_kink_terms(problem, kinks, th, on)
        d, J, _ = piece_derivatives(problem, kinks, th, on=on, hessian=False)
        A = d > 0
        g = J[A].T @ d[A] / problem.P
        norms = n.norm(dim=1).clamp_min(1e-300)
        sign = torch.where(up & on, -1.0, 1.0).to(th.dtype)
        cols = sign.unsqueeze(1) * n / norms.unsqueeze(1)
        big = 1e6 * max(float(g.norm()), float((c.abs() * norms).max()) if K else 0.0, 1e-300)
        ub = torch.where(up, torch.full_like(c, big), (c * norms).clamp_min(0.0))
        t = torch.as_tensor(box_lsq(cols.T.cpu().numpy(), -g.cpu().numpy(), ub.cpu().numpy()), dtype=th.dtype,
                            device=th.device)
        t = torch.minimum(t.clamp_min(0.0), ub)
        cases.append({"on": on, "upstream": up, "n": n, "c": c, "g": g, "cols": cols,
                      "ub": torch.where(up, torch.full_like(c, math.inf), ub), "t": t, "r": g + t @ cols})
    return cases


def _certify_nested(problem: HingeProblem, th: Tensor, kinks: dict[str, Any], cert: Certificate, force: float,
                    gtol: float, eps: float, r_tol: float, th_norm: float, dense: bool, lmax: float) -> Certificate:
    """The certificate of a ReLU point with nested kinks, case by case (:func:`kink_cases`).

    First order: every case's residual |r| <= gtol (relative to the force scale). A leaf with c_k < 0 (a
    concave kink) makes the point a saddle. Second order, per case: the Hessian of the case's Lagrangian (the
    piece with the upstream kinks as the case holds them and the degenerate leaves (t_k = c_k |n_k|) on, plus
    sum t_k z_k / |n_k| over the binding leaves and sum mu_u s_u z_u / |n_u| over the upstream kinks with
    mu_u > 0) is positive semi-definite to -eps lambda_max on the tangent space of the binding kinks (a
    superset of the case's critical cone). Every case passing gives ``"kink_minimum"``; a failure gives
    ``"saddle"``, or ``"kink"`` when degenerate leaves leave the verdict open. More than
    :data:`MAX_UPSTREAM` upstream kinks: no certificate (the point stays ``"unconverged"``)."""
    cases = kink_cases(problem, kinks, th)
    if cases is None:
        cert.details["too_many_upstream_kinks"] = True
        return cert
    resid = max(float(c["r"].norm()) for c in cases) / max(force, 1e-300)
    cert.kink_residual = resid
    cert.details["cases"] = len(cases)
    if resid > gtol:
        return cert
    ctol = 1e-12 * force * th_norm
    if any(bool(((c["c"] < -ctol) & ~c["upstream"]).any()) for c in cases):
        cert.name = "saddle"
        return cert
    if not dense:
        cert.name = "kink"
        return cert
    idx = kinks["index"]
    Hw = sum(_widths(relu_chain(problem)))
    scale = max(abs(lmax), 1e-300)
    worst, degenerate_any = math.inf, False
    for c in cases:
        up, t, ub = c["upstream"], c["t"], c["ub"]
        leaf_ub = torch.where(up, torch.zeros_like(t), ub)
        interior = ~up & (t > 1e-9 * leaf_ub) & (t < (1 - 1e-9) * leaf_ub)
        degen = ~up & (t >= (1 - 1e-9) * leaf_ub) & (leaf_ub > ctol)
        degenerate_any = degenerate_any or bool(degen.any())
        bind = interior | (up & (t > 0))
        on = c["on"] | degen
        d, J, Hp = piece_derivatives(problem, kinks, th, on=on)
        cons = (d > 0) & (d > r_tol * th_norm * J.norm(dim=1))
        Hm = J[cons].T @ J[cons] / problem.P + Hp
        norms = c["n"].norm(dim=1).clamp_min(1e-300)
        sign = torch.where(up & c["on"], -1.0, 1.0).to(th.dtype)
        w = torch.where(bind, t * sign / norms, torch.zeros_like(t))
        sel = torch.nonzero(w != 0).flatten()
        if sel.numel():
            F = torch.zeros(kinks["rows"].numel(), Hw, dtype=th.dtype, device=th.device)
            F[idx // Hw, idx % Hw] = torch.where(on, 1.0, -1.0).to(th.dtype)
            Hm = Hm + lagrangian_curvature(problem, th, w[sel], idx[sel], kinks["rows"], force=F)
        lm = tangent_lambda_min(Hm, c["cols"][bind])
        worst = min(worst, lm)
        if lm < -eps * scale:
            break
    cert.lambda_min = worst
    if worst >= -eps * scale:
        cert.name = "kink_minimum"
    else:
        cert.name = "kink" if degenerate_any else "saddle"
    return cert
