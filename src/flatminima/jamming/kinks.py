"""ReLU kinks of a ReLU MLP (a Linear chain, :class:`flatminima.forward.BatchedForward`): hidden pre-activations of the active patterns, their gradients, and the
jump of the loss gradient when a unit switches on (used by :mod:`.certify` and :mod:`.newton`).

Near a point where the pre-activation z_k of hidden unit i at pattern mu vanishes, the hinge loss is, to
first order along a direction v,

    L(theta + v) - L(theta) = g_off . v + sum_k c_k max(0, n_k . v),

with g_off the gradient with every kinked unit off, n_k = grad z_k and c_k = dL/da_k (the derivative of the
loss with respect to that unit's activation at that pattern, i.e. the gradient jump n_k c_k when it
switches on). The sum is exact to first order only when the kinks of each pattern lie in one hidden layer:
a kinked unit feeding (through later layers) another kinked unit of the same pattern makes the directional
derivative a nested max, not a sum (:func:`nested_kinks` detects it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad, jacrev, jvp, vmap

from ..errors import ConfigError
from ..forward import Step
from .problem import HingeProblem

__all__ = [
    "relu_chain", "kink_analysis", "kink_groups", "kink_multipliers", "lagrangian_curvature", "nested_kinks",
    "piece_derivatives", "box_lsq", "rescaling_modes", "kink_layers", "upstream_kinks", "forced_kink_terms",
]


def relu_chain(problem: HingeProblem) -> tuple[Step, ...] | None:
    """The network of ``problem`` as a chain of Linear layers each followed by a ReLU (the last one by
    nothing): the Linear chain of :class:`flatminima.forward.BatchedForward`, or None for other networks."""
    chain = problem.landscape.batched_forward.chain
    if chain is None:
        return None
    steps = [s for s in chain if s.kind != "flatten"]
    acts = steps[1::2]
    if not acts or any(s.kind != "linear" for s in steps[::2]) or any(type(s.module) is not nn.ReLU for s in acts):
        return None
    return tuple(steps)


def _widths(chain: tuple[Step, ...]) -> list[int]:
    """Hidden widths of a ReLU chain (one per ReLU)."""
    return [lin.module.out_features for lin, _ in zip(chain[::2], chain[1::2])]


def _forward_with_taps(chain: tuple[Step, ...], params: dict[str, Tensor], x: Tensor,
                       taps: list[Tensor] | None = None, force: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """Output and hidden pre-activations (one (width,) tensor per hidden layer) of one input x through a ReLU
    chain with parameters ``params`` (by name); ``taps`` (one (width,) tensor per hidden layer) are added
    to the hidden activations, so that the gradient with respect to them is dL/da. ``force`` (H,) (all
    hidden units, layer after layer) holds a unit on (> 0: a = z) or off (< 0: a = 0) whatever the sign
    of its pre-activation; 0 leaves the ReLU."""
    h = x.reshape(-1)
    pre: list[Tensor] = []
    start = 0
    for step in chain:
        if step.kind == "linear":
            h = params[step.weight] @ h
            if step.bias is not None:
                h = h + params[step.bias]
        else:
            pre.append(h)
            a = step.module(h)
            if force is not None:
                fr = force[start : start + h.shape[0]]
                a = torch.where(fr > 0, h, torch.where(fr < 0, torch.zeros_like(h), a))
            start += h.shape[0]
            h = a
            if taps is not None:
                h = h + taps[len(pre) - 1]
    return h, pre


def kink_analysis(problem: HingeProblem, theta: Tensor, radius: float | None = None,
                  budget: int = 20_000_000, kappa: float | None = None) -> dict[str, Any] | None:
    """For a ReLU MLP: every hidden pre-activation z of the active patterns (Delta_mu > 0 for some output, at
    margin ``kappa``, default the problem's), its kink distance |z| / |grad z| and c = dL/da (the gradient
    jump when the unit switches on at that pattern), flat over the (active pattern, unit) grid of A patterns
    and H hidden units; and the normals n = grad_theta z of the entries with distance <= ``radius`` (all
    entries when None), with their flat ``index``. Jacobians are built a chunk of patterns at a time (at
    most ``budget`` numbers). Returns None for other models or activations.

    Keys: ``z``, ``c``, ``dist`` (A * H,); ``n`` (K, N) and ``index`` (K,) for the K kinks within
    ``radius``; ``rows`` (A,) the indices of the active patterns in the data; ``kappa`` the margin.
    """
    land = problem.landscape
    stack = relu_chain(problem)
    if stack is None:
        return None
    th = theta.detach().to(problem.device, problem.dtype)
    N = th.numel()
    kappa = problem.kappa if kappa is None else float(kappa)
    delta = problem.stabilities(th, kappa)
    d2 = delta.reshape(problem.P, -1)
    act_rows = torch.nonzero((d2 > 0).any(1)).flatten()
    widths = _widths(stack)
    H = sum(widths)
    empty = th.new_zeros(0)
    if act_rows.numel() == 0:
        return {"z": empty, "c": empty, "dist": empty, "n": th.new_zeros(0, N),
                "index": torch.zeros(0, dtype=torch.long), "rows": act_rows, "kappa": kappa}
    X = problem.X[act_rows]
    Y = problem.Y[act_rows].reshape(act_rows.numel(), -1)

    def pre_flat(t: Tensor, x: Tensor) -> Tensor:
        _, pre = _forward_with_taps(stack, land.unflatten(t), x)
        return torch.cat(pre)

    def loss_one(taps_flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        taps = list(torch.split(taps_flat, widths))
        out, _ = _forward_with_taps(stack, land.unflatten(th), x, taps)
        r = torch.relu(kappa - y * out.reshape(-1))
        return 0.5 * (r * r).sum() / problem.P

    with torch.no_grad():
        Z = vmap(pre_flat, in_dims=(None, 0))(th, X).reshape(-1)  # (A * H,)
    zeros = torch.zeros(H, dtype=th.dtype, device=th.device)
    C = vmap(grad(loss_one), in_dims=(None, 0, 0))(zeros, X, Y).reshape(-1)  # dL/da per (pattern, unit)
    norms, kept_n, kept_i = [], [], []
    step = max(1, budget // max(H * N, 1))
    for i in range(0, X.shape[0], step):
        Jz = vmap(jacrev(pre_flat), in_dims=(None, 0))(th, X[i : i + step]).reshape(-1, N)
        nrm = Jz.norm(dim=1)
        norms.append(nrm)
        base = i * H
        if radius is None:
            keep = torch.arange(Jz.shape[0])
        else:
            zc = Z[base : base + Jz.shape[0]]
            keep = torch.nonzero((zc.abs() <= radius * nrm) & (nrm > 0)).flatten()
        kept_n.append(Jz[keep])
        kept_i.append(keep + base)
    nn_ = torch.cat(norms)
    dist = Z.abs() / nn_.clamp_min(1e-300)
    dist[nn_ == 0] = math.inf  # a pre-activation that does not depend on theta never crosses
    return {"z": Z, "c": C, "dist": dist, "n": torch.cat(kept_n), "index": torch.cat(kept_i), "rows": act_rows,
            "kappa": kappa}


def lagrangian_curvature(problem: HingeProblem, theta: Tensor, weights: Tensor, kinks: Tensor,
                         rows: Tensor, force: Tensor | None = None) -> Tensor:
    """Dense Hessian (N, N) of sum_k weights_k z_k(theta) over the selected kinks ``kinks`` (K,) (flat indices
    into the (active pattern, unit) grid of :func:`kink_analysis`, whose ``rows`` are the active patterns).
    ``force`` (A, H) optionally holds hidden units on (> 0) or off (< 0) per active pattern, as in
    :func:`piece_derivatives` (the curvature of z_k in that piece)."""
    land = problem.landscape
    stack = relu_chain(problem)
    th = theta.detach()
    X = problem.X[rows]
    H = sum(_widths(stack))
    pat, units = kinks // H, kinks % H
    F = force[pat] if force is not None else th.new_zeros(pat.numel(), H)

    def phi(t: Tensor) -> Tensor:
        one = lambda x, fr: torch.cat(_forward_with_taps(stack, land.unflatten(t), x, force=fr)[1])  # noqa: E731
        pre = vmap(one)(X[pat], F)
        return (weights * pre[torch.arange(pat.numel()), units]).sum()

    gs = grad(phi)
    eye = torch.eye(th.numel(), dtype=th.dtype, device=th.device)
    M = torch.cat([vmap(lambda v: jvp(gs, (th,), (v,))[1])(eye[i : i + 128]) for i in range(0, th.numel(), 128)])
    return 0.5 * (M + M.T)


def kink_groups(n: Tensor, c: Tensor) -> tuple[list[list[int]], Tensor, Tensor]:
    """Merge parallel normals (for example a dead unit's bias, seen by every pattern whose inputs to it vanish).

    For n_k = alpha_k u (alpha_k > 0) the terms c_k max(0, n_k . v) add up to (sum_k c_k alpha_k) max(0, u . v).
    Returns (groups as lists of row indices, unit normals (G, N), coefficients (G,)).
    """
    groups: list[list[int]] = []
    norms = n.norm(dim=1)
    unit = n / norms.unsqueeze(1).clamp_min(1e-300)
    for i in range(n.shape[0]):
        for grp in groups:
            if float(unit[grp[0]] @ unit[i]) > 1 - 1e-12:
                grp.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return groups, n.new_zeros(0, n.shape[1]), n.new_zeros(0)
    nG = torch.stack([unit[grp[0]] for grp in groups])
    cG = torch.stack([(c[grp] * norms[grp]).sum() for grp in groups])
    return groups, nG, cG


def box_lsq(A: np.ndarray, b: np.ndarray, ub: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin |A t - b| over 0 <= t <= ub (A (M, K), b (M,), ub (K,) >= 0): bounded-variable least squares
    (Stark-Parker active set), with minimum-norm least-squares subproblems so that dependent columns (merged
    kinks, dead units) are fine. Stops when the KKT conditions hold to round-off: the negative gradient
    w = A^T (b - A t) is <= tol at a lower bound, >= -tol at an upper one, |w| <= tol on free variables.
    (scipy's bvls stops on a small relative change of the cost, which left residuals of 1e-2 here.)
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ub = np.maximum(np.asarray(ub, dtype=np.float64), 0.0)
    K = A.shape[1]
    t = np.zeros(K)
    if K == 0:
        return t
    tol = 1e-13 * max(np.linalg.norm(A) * np.linalg.norm(b), 1e-300)
    free = np.zeros(K, dtype=bool)
    upper = np.zeros(K, dtype=bool)
    for _ in range(max_iter or 10 * K + 10):
        w = A.T @ (b - A @ t)
        viol = np.where(free, 0.0, np.where(upper, np.maximum(-w, 0.0), np.maximum(w, 0.0)))
        viol[(~free) & (~upper) & (ub <= 0)] = 0.0  # a variable with ub = 0 is fixed
        j = int(np.argmax(viol))
        if viol[j] <= tol:
            break
        free[j], upper[j] = True, False
        for _ in range(K + 1):
            F = np.nonzero(free)[0]
            rhs = b - A[:, ~free] @ t[~free]
            z = np.linalg.lstsq(A[:, F], rhs, rcond=None)[0]
            ok = (z > 0) & (z < ub[F])
            if ok.all():
                t[F] = z
                break
            # step from t_F towards z up to the first bound, move the variables that reach one out of F
            d = z - t[F]
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha_lo = np.where(d < 0, -t[F] / d, np.inf)
                alpha_hi = np.where(d > 0, (ub[F] - t[F]) / d, np.inf)
            alpha = float(np.clip(min(alpha_lo.min(), alpha_hi.min()), 0.0, 1.0))
            t[F] = np.clip(t[F] + alpha * d, 0.0, ub[F])
            at_lo = t[F] <= 1e-15 * np.maximum(ub[F], 1e-300)
            at_hi = t[F] >= ub[F] * (1 - 1e-15)
            for k, lo_, hi_ in zip(F, at_lo, at_hi):
                if hi_ and ub[k] > 0:
                    free[k], upper[k], t[k] = False, True, ub[k]
                elif lo_:
                    free[k], upper[k], t[k] = False, False, 0.0
    return t


def kink_multipliers(kinks: dict[str, Any], g_off: Tensor) -> tuple[Tensor, Tensor, list[list[int]], Tensor, Tensor]:
    """Nonsmooth first-order stationarity at the kinks of :func:`kink_analysis` (its ``n``, ``c``, ``index``).

    ``g_off`` (N,) is the gradient of the smooth piece in which every kink of the analysis is off
    (:func:`piece_derivatives`); it is *not* derived from the sign of z, which at a kink is round-off. Over
    the merged groups of :func:`kink_groups` (unit normals u_G (G, N), coefficients c_G (G,)) the multipliers
    t = argmin_{0 <= t <= max(c, 0)} |g_off + sum_G t_G u_G| (bounded least squares). Returns
    (r (N,) = g_off + sum_G t_G u_G, t (G,), groups, u (G, N), c (G,)): r = 0 is first-order stationarity,
    and -r is the steepest nonsmooth descent direction (the directional derivative along -r / |r| is -|r|).
    """
    idx = kinks["index"]
    n, c = kinks["n"], kinks["c"][idx]
    groups, nG, cG = kink_groups(n, c)
    if not groups:
        return g_off, g_off.new_zeros(0), groups, nG, cG
    ub = np.maximum(cG.cpu().numpy(), 0.0)
    sol = box_lsq(nG.T.cpu().numpy(), -g_off.cpu().numpy(), ub)
    t = torch.as_tensor(sol, dtype=g_off.dtype, device=g_off.device).clamp(min=torch.zeros_like(cG),
                                                                     max=cG.clamp_min(0.0))
    return g_off + t @ nG, t, groups, nG, cG


def piece_derivatives(problem: HingeProblem, kinks: dict[str, Any], theta: Tensor, on: Tensor | None = None,
                      hessian: bool = True, chunk: int = 256) -> tuple[Tensor, Tensor, Tensor | None]:
    """Derivatives of the smooth piece in which the kinks of ``kinks`` (:func:`kink_analysis` at ``theta``) are
    held off, or on where ``on`` (K,) is True; every other unit follows its ReLU.

    At a kink z = 0 up to round-off, so PyTorch's choice (relu'(z) = 1 for z > 0) depends on how the forward
    pass rounded. Holding the kinked units explicitly makes the piece, and everything built on it (the
    multipliers, the steps, the certificate), independent of that rounding. Returns (Delta (P*C,),
    J = dDelta/dtheta (P*C, N), Hp (N, N)) at the analysis' margin, with Hp the Hessian of
    (1/P) sum_mu max(0, Delta_mu) Delta_mu(theta) (coefficients held fixed), as
    :func:`flatminima.jamming.newton.curvature_hessian` for PyTorch's piece; the piece's gradient is
    J_A^T Delta_A / P and its Hessian J_A^T J_A / P + Hp over the rows A with Delta > 0. ``hessian=False``
    skips Hp (returned as None).
    """
    land = problem.landscape
    stack = relu_chain(problem)
    th = theta.detach().to(problem.device, problem.dtype)
    N = th.numel()
    kappa = kinks["kappa"]
    H = sum(_widths(stack))
    force = torch.zeros(problem.P, H, dtype=th.dtype, device=th.device)
    idx = kinks["index"]
    if idx.numel():
        val = -torch.ones(idx.numel(), dtype=th.dtype, device=th.device)
        if on is not None:
            val[on] = 1.0
        force[kinks["rows"][idx // H], idx % H] = val
    Y = problem.Y.reshape(problem.P, -1)

    def out_one(t: Tensor, x: Tensor, fr: Tensor) -> Tensor:
        return _forward_with_taps(stack, land.unflatten(t), x, force=fr)[0].reshape(-1)

    with torch.no_grad():
        out = vmap(out_one, in_dims=(None, 0, 0))(th, problem.X, force)
    delta = (kappa - Y * out).reshape(-1)
    J = -(Y.unsqueeze(-1) * vmap(jacrev(out_one), in_dims=(None, 0, 0))(th, problem.X, force)).reshape(-1, N)
    w = torch.relu(delta).reshape(problem.P, -1)
    act = torch.nonzero((w > 0).any(1)).flatten()
    if not hessian:
        return delta, J, None
    if act.numel() == 0:
        return delta, J, th.new_zeros(N, N)
    Xa, Fa, Wa = problem.X[act], force[act], (w * Y)[act]

    def s(t: Tensor) -> Tensor:
        return -(Wa * vmap(out_one, in_dims=(None, 0, 0))(t, Xa, Fa)).sum() / problem.P

    gs = grad(s)
    eye = torch.eye(N, dtype=th.dtype, device=th.device)
    Hp = torch.cat([vmap(lambda v: jvp(gs, (th,), (v,))[1])(eye[i : i + chunk]) for i in range(0, N, chunk)])
    return delta, J, 0.5 * (Hp + Hp.T)


def nested_kinks(problem: HingeProblem, index: Tensor) -> int:
    """Number of patterns whose kinks (flat indices into the (active pattern, unit) grid of
    :func:`kink_analysis`) lie in more than one hidden layer, where the additive first-order model fails."""
    if index.numel() == 0:
        return 0
    rows, layers = index // sum(_widths(relu_chain(problem))), kink_layers(problem, index)
    nested = 0
    for r in torch.unique(rows):
        if torch.unique(layers[rows == r]).numel() > 1:
            nested += 1
    return nested


def rescaling_modes(problem: HingeProblem, theta: Tensor) -> Tensor:
    """Tangents (N, H) at ``theta`` of the rescaling orbits of the H hidden units of a ReLU MLP.

    Scaling the incoming weights and bias of hidden unit i by a > 0 and its outgoing weights by 1/a leaves
    the network function unchanged, so d/da at a = 1, T_i = (W_in[i, :], b_in[i], -W_out[:, i]) (zero
    elsewhere), is a zero mode of the loss: grad L . T_i = 0 and grad z . T_i = z_i-terms, at every theta.
    Column i is T_i for the units layer after layer."""
    land = problem.landscape
    chain = relu_chain(problem)
    if chain is None:
        raise ConfigError("rescaling_modes needs a ReLU MLP (a chain of Linear layers and ReLUs)")
    th = theta.detach().to(problem.device, problem.dtype)
    params = land.unflatten(th)
    lins = list(chain[::2])
    cols = []
    for li, lin in enumerate(lins[:-1]):
        nxt = lins[li + 1]
        for i in range(lin.module.out_features):
            d = {n: torch.zeros_like(v) for n, v in params.items()}
            d[lin.weight][i, :] = params[lin.weight][i, :]
            if lin.bias is not None:
                d[lin.bias][i] = params[lin.bias][i]
            d[nxt.weight][:, i] = -params[nxt.weight][:, i]
            cols.append(land.flatten(d))
    return torch.stack(cols, dim=1) if cols else th.new_zeros(th.numel(), 0)


def kink_layers(problem: HingeProblem, index: Tensor) -> Tensor:
    """Hidden layer (0-based) of each kink of ``index`` (K,) (flat indices into the (active pattern, unit) grid
    of :func:`kink_analysis`)."""
    widths = _widths(relu_chain(problem))
    bounds = torch.tensor(np.cumsum(widths)[:-1].tolist(), dtype=torch.long)
    return torch.bucketize(index % sum(widths), bounds, right=True)


def upstream_kinks(problem: HingeProblem, index: Tensor) -> Tensor:
    """Bool (K,): the kinks of ``index`` whose pattern has another kink in a later hidden layer. Their state (on
    or off) changes the normals of the later ones (every unit of a layer feeds every unit of the next), which
    makes the directional derivative a nested max; fixing their states splits it into additive cases."""
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    H = sum(_widths(relu_chain(problem)))
    rows, layers = index // H, kink_layers(problem, index)
    same = rows.unsqueeze(0) == rows.unsqueeze(1)
    later = layers.unsqueeze(0) > layers.unsqueeze(1)  # [i, j]: kink j in a later layer than kink i
    return (same & later).any(1)


def forced_kink_terms(problem: HingeProblem, kinks: dict[str, Any], theta: Tensor,
                      on: Tensor) -> tuple[Tensor, Tensor]:
    """Normals n_k = grad z_k (K, N) and gradient jumps c_k = dL/da_k (K,) of the kinks of ``kinks``
    (:func:`kink_analysis`) in the piece where every kinked unit is held on (``on`` (K,) True) or off (False);
    the other units follow their ReLU. At a kink z_k = 0, so holding units changes no value, only which paths
    the derivatives follow: the normal of a kink in a later layer than another kinked unit of its pattern
    includes that unit's path only when it is held on."""
    land = problem.landscape
    stack = relu_chain(problem)
    widths = _widths(stack)
    H = sum(widths)
    th = theta.detach().to(problem.device, problem.dtype)
    idx = kinks["index"]
    if idx.numel() == 0:
        return th.new_zeros(0, th.numel()), th.new_zeros(0)
    kappa = kinks["kappa"]
    pats, pos = torch.unique(idx // H, return_inverse=True)
    units = idx % H
    force = torch.zeros(pats.numel(), H, dtype=th.dtype, device=th.device)
    force[pos, units] = torch.where(on, 1.0, -1.0).to(th.dtype)
    rows = kinks["rows"][pats]
    X = problem.X[rows]
    Y = problem.Y[rows].reshape(rows.numel(), -1)
    params = land.unflatten(th)

    def pre_flat(t: Tensor, x: Tensor, fr: Tensor) -> Tensor:
        return torch.cat(_forward_with_taps(stack, land.unflatten(t), x, force=fr)[1])

    def loss_one(taps_flat: Tensor, x: Tensor, y: Tensor, fr: Tensor) -> Tensor:
        out, _ = _forward_with_taps(stack, params, x, list(torch.split(taps_flat, widths)), force=fr)
        r = torch.relu(kappa - y * out.reshape(-1))
        return 0.5 * (r * r).sum() / problem.P

    Jz = vmap(jacrev(pre_flat), in_dims=(None, 0, 0))(th, X, force)  # (patterns, H, N)
    C = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(th.new_zeros(H), X, Y, force)  # (patterns, H)
    return Jz[pos, units], C[pos, units]
