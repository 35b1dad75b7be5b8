"""ReLU kinks of a flatminima MLP: hidden pre-activations of the active patterns, their gradients, and the
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

from .problem import HingeProblem

__all__ = ["kink_analysis", "kink_groups", "lagrangian_curvature", "nested_kinks"]


def _linear_stack(model: nn.Module):
    """[(kind, name, module)] of a flat Sequential MLP, or None when the model is not one."""
    if not isinstance(model, nn.Sequential):
        return None
    out = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.Linear):
            out.append(("linear", name, mod))
        elif isinstance(mod, nn.Flatten):
            out.append(("flatten", name, mod))
        elif len(list(mod.parameters())) == 0:
            out.append(("act", name, mod))
        else:
            return None
    return out


def _forward_with_taps(stack, params: dict[str, Tensor], x: Tensor, taps: list[Tensor] | None = None):
    """Output and hidden pre-activations of one input x (d,); ``taps`` are added to the hidden activations."""
    h = x.reshape(-1)
    pre = []
    li = 0
    for kind, name, mod in stack:
        if kind == "flatten":
            continue
        if kind == "linear":
            h = params[f"{name}.weight"] @ h
            b = params.get(f"{name}.bias")
            if b is not None:
                h = h + b
        else:
            pre.append(h)
            h = mod(h)
            if taps is not None:
                h = h + taps[li]
            li += 1
    return h, pre


def kink_analysis(problem: HingeProblem, theta: Tensor, radius: float | None = None,
                  budget: int = 20_000_000) -> dict[str, Any] | None:
    """For a ReLU MLP: every hidden pre-activation z of the active patterns (Delta_mu > 0 for some output),
    its kink distance |z| / |grad z| and c = dL/da (the gradient jump when the unit switches on at that
    pattern), flat over the (active pattern, unit) grid; and the normals n = grad_theta z of the entries with
    distance <= ``radius`` (all entries when None), with their flat ``index``. Jacobians are built a chunk
    of patterns at a time (at most ``budget`` numbers). Returns None for other models or activations."""
    land = problem.landscape
    model = land.model
    if getattr(model, "activation_name", None) != "relu":
        return None
    stack = _linear_stack(model)
    if stack is None:
        return None
    th = theta.detach().to(problem.device, problem.dtype)
    N = th.numel()
    delta = problem.stabilities(th)
    d2 = delta.reshape(problem.P, -1)
    act_rows = torch.nonzero((d2 > 0).any(1)).flatten()
    widths = list(model.widths)
    H = sum(widths)
    empty = th.new_zeros(0)
    if act_rows.numel() == 0:
        return {"z": empty, "c": empty, "dist": empty, "n": th.new_zeros(0, N),
                "index": torch.zeros(0, dtype=torch.long)}
    X = problem.X[act_rows]
    Y = problem.Y[act_rows].reshape(act_rows.numel(), -1)
    kappa = problem.kappa

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
    return {"z": Z, "c": C, "dist": dist, "n": torch.cat(kept_n), "index": torch.cat(kept_i)}


def lagrangian_curvature(problem: HingeProblem, theta: Tensor, weights: Tensor, kinks: Tensor) -> Tensor:
    """Dense Hessian of sum_k weights_k z_k(theta) over the selected kinks (flat indices into the
    (active pattern, unit) grid of :func:`kink_analysis`)."""
    land = problem.landscape
    stack = _linear_stack(land.model)
    th = theta.detach()
    delta = problem.stabilities(th).reshape(problem.P, -1)
    X = problem.X[torch.nonzero((delta > 0).any(1)).flatten()]
    H = sum(land.model.widths)
    rows, units = kinks // H, kinks % H

    def phi(t: Tensor) -> Tensor:
        pre = vmap(lambda x: torch.cat(_forward_with_taps(stack, land.unflatten(t), x)[1]))(X[rows])
        return (weights * pre[torch.arange(rows.numel()), units]).sum()

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


def nested_kinks(model: nn.Module, index: Tensor) -> int:
    """Number of patterns whose kinks (flat indices into the (active pattern, unit) grid of
    :func:`kink_analysis`) lie in more than one hidden layer, where the additive first-order model fails."""
    widths = list(model.widths)
    H = sum(widths)
    if index.numel() == 0:
        return 0
    bounds = torch.tensor(np.cumsum(widths)[:-1].tolist(), dtype=torch.long)
    rows, units = index // H, index % H
    layers = torch.bucketize(units, bounds, right=True)
    nested = 0
    for r in torch.unique(rows):
        if torch.unique(layers[rows == r]).numel() > 1:
            nested += 1
    return nested
