"""Entropy-SGD (Chaudhari et al., ICLR 2017): gradient descent on the local entropy.

The local entropy of the loss f around x at coupling gamma is
``F(x, gamma) = log ∫ exp(-f(x') - gamma/2 |x - x'|^2) dx'`` and ``-∇F(x) = gamma (x - <x'>)``, where
``<x'>`` is the mean of the Gibbs measure focused on x. Each outer step estimates ``<x'>`` with L steps
of stochastic gradient Langevin dynamics (SGLD) started at x, each on a fresh minibatch, and averages
the iterates into mu; then it moves x along ``gamma (x - mu)``:

    x', mu <- x
    for l = 1..L:      x' <- x' - eta' (∇f(x'; Ξ_l) + gamma (x' - x)) + sqrt(eta') eps N(0, I)
                       mu <- (1 - alpha) mu + alpha x'
    x <- x - eta gamma (x - mu)

and gamma grows along a coupling schedule whose clock counts outer steps (it advances, unlike the
reference PyTorch code). Momentum, Nesterov and weight decay of the inner and of the outer update are
torch.optim.SGD's own step (:func:`torch.optim.sgd.sgd`), applied to the directions above. On a
quadratic ``f = x^T H x / 2`` at zero noise and large L, the outer direction is the exact proximal
gradient ``gamma (H + gamma I)^-1 H x``. An outer step costs exactly L gradient evaluations; with
``inner_steps=0`` the optimizer is :class:`torch.optim.SGD`.

The Langevin noise comes from torch's generator (:func:`torch.randn`) owned by the optimizer, so a seed
gives the same trajectory wherever torch draws the same numbers for that seed and device.

Conventions of the reference implementations, as arguments of this one:

* ucla-vision/entropy-sgd (the paper's code): ``mu <- 0.75 mu + 0.25 x'`` is ``alpha=0.25``; its noise
  ``sqrt(2 eta') eps xi`` is ``noise=sqrt(2) * eps``; its outer step ``eta (x - mu)`` is ``gscale=False``;
  its inner loop uses the outer Nesterov momentum (``inner_momentum=momentum, nesterov=True``) and the
  weight decay (``inner_weight_decay=weight_decay``; torch adds it before the momentum, the Lua code after).
* sacreddnn (Pittorino et al., ICLR 2021): ``gscale=True`` (its default), ``inner_momentum`` is
  ``momentum_sgld``, ``inner_weight_decay`` is ``weight_decay_sgld``, ``alpha=0.25`` and
  ``noise=sqrt(2) * eps`` as above, ``gamma_max`` is ``gmax``, ``gamma="auto"`` is ``g0=0``, and
  ``gamma=schedules.Exponential.to_factor(g0, gmax, total_steps, gmax)`` is its ``g1=0`` rule. Unlike
  sacreddnn, ``gscale`` does not multiply the weight decay by gamma.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from . import schedules
from ._utils import BNGuard, CouplingMixin, check_int, check_number, grads_of, sgd_, sq_norm

__all__ = ["EntropySGD"]


class EntropySGD(CouplingMixin, torch.optim.Optimizer):
    """Entropy-SGD as a :class:`torch.optim.Optimizer` (see the module docstring for the algorithm).

    Parameters
    ----------
    params : iterable of parameters or of param-group dicts (every option below except ``seed`` may be
        set per group; ``inner_steps`` must be the same for all groups since one closure call serves
        all of them).
    lr : eta, the outer learning rate.
    momentum, nesterov, weight_decay : of the outer update, as in :class:`torch.optim.SGD` (the ucla
        PyTorch code: Nesterov momentum 0.9). ``nesterov`` applies to the inner momentum too, as in both
        reference codes. Weight decay is not multiplied by gamma.
    inner_steps : L, the number of SGLD steps per outer step (each calls the closure once; paper:
        5 to 20; 0 is SGD).
    inner_lr : eta', the SGLD step size (paper: 0.1).
    noise : eps, the thermal noise: the SGLD noise is ``sqrt(eta') eps N(0, I)`` (paper: 1e-4).
    alpha : weight of the new iterate in the running mean mu (paper: 0.75; the reference codes: 0.25).
    gamma : gamma0 (paper: 0.03), ``"auto"`` (balance the loss and the coupling after the first step, the
        ICLR 2021 code's rule), or a :class:`~flatminima.optim.schedules.Schedule` (or its spec dict).
    scoping : gamma1, the growth rate of an exponential schedule ``gamma0 (1 + gamma1)^t`` (paper: 1e-3).
    gamma_max : cap on gamma (sacreddnn's ``gmax``) when ``gamma`` is a number.
    inner_momentum : momentum of the SGLD steps, restarted every outer step (sacreddnn's ``momentum_sgld``).
    inner_weight_decay : weight decay of the SGLD steps (sacreddnn's ``weight_decay_sgld``).
    gscale : True: the outer direction is ``gamma (x - mu)`` (Algorithm 1, sacreddnn); False: ``x - mu``
        (ucla code and the paper's experiments: "scoping interferes with learning-rate annealing").
    seed : seeds the optimizer's :class:`torch.Generator` (None: a seed drawn from torch's global
        generator at construction). Its state is in ``state_dict()``.

    Notes
    -----
    ``step(closure)``: ``closure()`` draws a fresh minibatch, zeroes the gradients, runs forward and
    backward at the current parameters and returns the loss. ``step`` returns the loss of the first
    inner step (evaluated at x). The BatchNorm running statistics of ``closure.model`` (if the closure
    has that attribute) are restored after the inner loop: the Langevin iterates are not the model.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        inner_steps: int = 20,
        inner_lr: float = 0.1,
        noise: float = 1e-4,
        alpha: float = 0.75,
        gamma: float | str | schedules.Schedule | dict = 0.03,
        scoping: float = 1e-3,
        *,
        gamma_max: float = math.inf,
        inner_momentum: float = 0.0,
        inner_weight_decay: float = 0.0,
        gscale: bool = True,
        seed: int | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        inner_steps=inner_steps, inner_lr=inner_lr, noise=noise, alpha=alpha, gamma=gamma,
                        scoping=scoping, gamma_max=gamma_max, inner_momentum=inner_momentum,
                        inner_weight_decay=inner_weight_decay, gscale=gscale)
        self._diag: dict[str, Tensor | float] = {}
        super().__init__(params, defaults)
        if len({g["inner_steps"] for g in self.param_groups}) > 1:
            raise ConfigError("inner_steps must be the same for every param group")
        self._seed_generator(seed)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        for name in ("lr", "weight_decay", "inner_lr", "inner_weight_decay", "noise"):
            check_number(name, g[name])
        for name in ("momentum", "inner_momentum"):
            check_number(name, g[name], high=1.0, high_open=True)
        check_number("alpha", g["alpha"], high=1.0)
        check_int("inner_steps", g["inner_steps"])
        if g["nesterov"] and not (g["momentum"] or g["inner_momentum"]):
            raise ConfigError("Nesterov momentum needs momentum > 0 or inner_momentum > 0")
        self._check_gamma(g)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_diag", {})

    def _outer(self, g: dict[str, Any], ps: list[Tensor], d: list[Tensor]) -> None:
        sgd_([self.state[p] for p in ps], ps, d, lr=g["lr"], momentum=g["momentum"],
             weight_decay=g["weight_decay"], nesterov=g["nesterov"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One outer step: L closure calls. Returns the loss at x."""
        if closure is None:
            raise ConfigError("EntropySGD.step needs a closure that draws a fresh minibatch and returns the loss")
        L = self.param_groups[0]["inner_steps"]
        if any(g["inner_steps"] != L for g in self.param_groups):
            raise ConfigError("inner_steps must be the same for every param group")
        groups = [(g, ps) for g in self.param_groups if (ps := [p for p in g["params"] if p.requires_grad])]
        gammas = [self.gamma(g) for g, _ in groups]

        if L == 0:  # plain SGD, one gradient evaluation
            with torch.enable_grad():
                loss = closure()
            for g, ps in groups:
                self._outer(g, ps, grads_of(ps))
            self._advance_clock(None)
            self._diag = {"gamma": gammas[0] if gammas else 0.0}
            return loss

        anchors = [[p.detach().clone() for p in ps] for _, ps in groups]  # x
        means = [[p.detach().clone() for p in ps] for _, ps in groups]  # mu
        inner_states: list[list[dict]] = [[{} for _ in ps] for _, ps in groups]  # inner momentum, new each step
        grads_x: list[list[Tensor]] = []  # ∇f(x; Ξ_1), for the diagnostics
        losses = []
        with BNGuard(getattr(closure, "model", None)):
            for step_l in range(L):
                with torch.enable_grad():
                    loss = closure()
                losses.append(torch.as_tensor(loss).detach())
                for (g, ps), xs, ms, states, gam in zip(groups, anchors, means, inner_states, gammas):
                    grads = grads_of(ps)
                    if step_l == 0:
                        grads_x.append([gr.clone() for gr in grads])
                    if gam:  # the pull to x: gamma (x' - x)
                        torch._foreach_add_(grads, ps, alpha=gam)
                        torch._foreach_add_(grads, xs, alpha=-gam)
                    sgd_(states, ps, grads, lr=g["inner_lr"], momentum=g["inner_momentum"],
                         weight_decay=g["inner_weight_decay"], nesterov=g["nesterov"])
                    if g["noise"]:
                        torch._foreach_add_(ps, self._normal(ps), alpha=math.sqrt(g["inner_lr"]) * g["noise"])
                    torch._foreach_lerp_(ms, ps, g["alpha"])

        xl_dist2, dist2, dot, g2 = [], [], [], []  # per group, summed below (on the device: no host sync)
        for (g, ps), xs, ms, gx, gam in zip(groups, anchors, means, grads_x, gammas):
            xl_dist2.append(sq_norm(torch._foreach_sub(ps, xs)))
            d = torch._foreach_sub(xs, ms)  # x - mu
            dist2.append(sq_norm(d))
            dot.append(torch.stack([(a * b).sum() for a, b in zip(gx, d)]).sum())
            g2.append(sq_norm(gx))
            torch._foreach_copy_(ps, xs)  # back to x
            if g["gscale"]:
                torch._foreach_mul_(d, gam)
            self._outer(g, ps, d)
        inner_loss = torch.stack(losses).mean()
        self._advance_clock((inner_loss, sum(xl_dist2)))
        self._diag = {"gamma": gammas[0] if gammas else 0.0, "dist2": sum(dist2), "dot": sum(dot), "g2": sum(g2),
                      "inner_loss": inner_loss, "inner_dist2": sum(xl_dist2)}
        return losses[0]

    def _normal(self, ps: list[Tensor]) -> list[Tensor]:
        """Standard normal noise shaped like ``ps``: one :func:`torch.randn` from the optimizer's generator,
        split into views."""
        flat = torch.randn(sum(p.numel() for p in ps), generator=self.generator, device=ps[0].device,
                           dtype=ps[0].dtype)
        return [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in ps]), ps)]

    def diagnostics(self) -> dict[str, float]:
        """The last step's gamma, ``|x - mu|``, ``cos(∇f(x), x - mu)``, mean inner loss and ``|x - x'_L|``
        (the reference Lua code's diagnostics)."""
        d = self._diag
        if not d:
            return {}
        out = {"gamma": float(d["gamma"])}
        if "dist2" in d:
            dist2, g2 = float(d["dist2"]), float(d["g2"])
            out["dist_x_mu"] = math.sqrt(dist2)
            out["cos_grad_x_mu"] = float(d["dot"]) / math.sqrt(dist2 * g2) if dist2 > 0 and g2 > 0 else 0.0
            out["inner_loss"] = float(d["inner_loss"])
            out["dist_x_xL"] = math.sqrt(float(d["inner_dist2"]))
        return out
