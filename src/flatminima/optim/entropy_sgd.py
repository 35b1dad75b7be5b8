"""Entropy-SGD (Chaudhari et al., ICLR 2017): gradient descent on the local entropy.

The local entropy of the loss f around x at coupling gamma is
``F(x, gamma) = log ∫ exp(-f(x') - gamma/2 |x - x'|^2) dx'`` and ``-∇F(x) = gamma (x - <x'>)``, where
``<x'>`` is the mean of the Gibbs measure focused on x. Each outer step estimates ``<x'>`` with L steps
of stochastic gradient Langevin dynamics (SGLD) started at x, each on a fresh minibatch, and averages
the iterates into mu; then it moves x along ``gamma (x - mu)``:

    x', mu <- x
    for l = 1..L:      x' <- x' - eta' (∇f(x'; Ξ_l) + gamma (x' - x)) + sqrt(eta') eps N(0, I)
                       mu <- (1 - alpha) mu + alpha x'
    x <- x - eta gamma (x - mu)        (with momentum, Nesterov and weight decay if asked)

and gamma grows along a coupling schedule whose clock counts outer steps (it advances, unlike the
reference PyTorch code). On a quadratic ``f = x^T H x / 2`` at zero noise and large L, the outer
direction is the exact proximal gradient ``gamma (H + gamma I)^-1 H x``.

Where the paper and the reference code differ, both are offered (the paper's form is the default):

* ``averaging="paper"``: alpha weighs the *new* iterate (``mu <- (1-alpha) mu + alpha x'``);
  ``"code"``: alpha weighs the old mean (``mu <- alpha mu + (1-alpha) x'``, ucla-vision's code).
* ``gscale=True``: outer step ``eta gamma (x - mu)`` (paper's Algorithm 1, sacreddnn's ``gscale``);
  ``False``: ``eta (x - mu)`` (the ucla code; "scoping interferes with LR annealing").
* ``noise_form="paper"``: SGLD noise ``sqrt(eta') eps xi``; ``"code"``: ``sqrt(2 eta') eps xi``.
* ``rho > 0``: adds ``rho ∇f(x)`` to the outer direction (paper v1's ``rho f - F`` objective; costs one
  more gradient evaluation per step). With the default ``rho = 0`` an outer step costs exactly L
  gradient evaluations: nothing is evaluated at x only to be thrown away.

Weight decay is decoupled from gamma: ``weight_decay * x`` is added to the outer direction after the
gamma factor, so it does not grow with the coupling. With ``inner_steps=0`` the optimizer is plain
SGD (momentum, Nesterov, weight decay as in :class:`torch.optim.SGD`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from . import schedules
from ._noise import NoiseSource, sgld_plan, sgld_step_
from ._utils import BNGuard, CouplingMixin, check_choice, check_int, check_number, dot, flat_normal, grads_of, sq_norm

__all__ = ["EntropySGD"]


class EntropySGD(CouplingMixin, torch.optim.Optimizer):
    """Entropy-SGD as a :class:`torch.optim.Optimizer` (see the module docstring for the algorithm).

    Parameters
    ----------
    params : iterable of parameters or of param-group dicts (every option below may be set per group;
        ``inner_steps`` must be the same for all groups since one closure call serves all of them).
    lr : outer learning rate eta.
    momentum, nesterov, dampening, weight_decay : of the outer update, as in :class:`torch.optim.SGD`.
    inner_steps : L, the number of SGLD steps per outer step (each calls the closure once).
    inner_lr : eta', the SGLD step size. inner_momentum : momentum of the SGLD steps (reset every outer step).
    inner_weight_decay : L2 term added to the SGLD gradient.
    noise : eps, the thermal noise scale (temperature eps^2). ``0`` for deterministic inner steps.
    alpha : averaging weight (see ``averaging``).
    gamma : gamma0 (a number, or ``"auto"``), or a :class:`~flatminima.optim.schedules.Schedule`.
    scoping : growth rate of gamma per outer step (exponential by default: gamma0 (1 + scoping)^t).
    gamma_schedule : ``"exp"`` | ``"linear"`` | ``"constant"`` | ``"cosine"`` when ``gamma`` is a number.
    gamma_max : cap on gamma.
    gscale, rho, averaging, noise_form : conventions, see the module docstring.
    seed : seeds the SGLD noise (its state is saved in ``state_dict``); ``None`` takes the seed from
        the global torch RNG (at the first noisy step, or every step with ``noise_source="torch"``).
    noise_source : where the fresh N(0, 1) noise of each SGLD step comes from.
        ``"auto"`` (default): a counter-based generator (:class:`~flatminima.optim._noise.NoiseSource`:
        SplitMix64 + Box-Muller in the C extension ``flatminima._fastrand``, fused with the add into the
        parameters) for contiguous CPU float32/float64 parameters on x86-64 CPUs with AVX2 + FMA or
        AVX-512, and torch's generator, seeded per step from the same (key, counter) state, for the rest
        (CUDA, other dtypes, other CPUs, the extension not built, ``FLATMINIMA_NOISE=torch``). Its state
        is two ints, saved in ``state_dict`` under ``"noise_source"``. For 270k float32 parameters on one
        core it costs ~0.15 ms per inner step, against ~1 ms for torch's generator (a forward/backward
        pass of a 784-256-256-10 MLP at batch 128 takes ~1.7 ms). Where the kernel takes every parameter
        of a group and there is no inner momentum, the whole SGLD step (the pull to x, weight decay, the
        step, the noise and the average mu) runs in the kernel's single pass over the parameters (~0.2 ms
        for those 270k parameters, against ~0.55 ms for the multi-tensor ops plus the noise); the result
        is the multi-tensor update's up to float rounding, with the same noise. Without noise
        (``noise=0``) that fused step serves every ``noise_source`` and ``noise_table``.
        ``"torch"``: ``torch.randn`` with a private :class:`torch.Generator` seeded with ``seed`` (its
        state saved in ``state_dict`` under ``"generator"``), or the global RNG if ``seed`` is None:
        the draws of earlier flatminima versions.
    noise_table : 0 (default) draws fresh Gaussian noise at every inner step. A positive size S makes
        the noise a window of S precomputed N(0, 1) samples at a random offset (the "noise table" of
        OpenAI's evolution strategies): marginally exact Gaussians, reused across steps, for about
        the cost of one copy instead of a fresh draw. It is not exact (the samples repeat), so it is
        opt-in. The table is regenerated from ``seed`` (0 if None), so ``state_dict`` round trips
        stay exact. S must exceed the number of parameters of a group. Overrides ``noise_source``.
    restore_bn : restore the BatchNorm running statistics of ``closure.model`` after the inner loop (the
        Langevin iterates are not the model that is evaluated; recalibrate before evaluating).

    ``step(closure)``: ``closure()`` draws a fresh minibatch, zeroes the gradients, runs forward and
    backward at the current parameters and returns the loss. Returns the loss of the first inner step
    (evaluated at x).
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
        gamma_schedule: str | None = None,
        gamma_max: float = math.inf,
        dampening: float = 0.0,
        inner_momentum: float = 0.0,
        inner_weight_decay: float = 0.0,
        gscale: bool = True,
        rho: float = 0.0,
        averaging: str = "paper",
        noise_form: str = "paper",
        seed: int | None = None,
        restore_bn: bool = True,
        noise_table: int = 0,
        noise_source: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening, weight_decay=weight_decay,
                        inner_steps=inner_steps, inner_lr=inner_lr, inner_momentum=inner_momentum,
                        inner_weight_decay=inner_weight_decay, noise=noise, alpha=alpha, gamma=gamma,
                        scoping=scoping, gamma_schedule=gamma_schedule, gamma_max=gamma_max, gscale=gscale,
                        rho=rho, averaging=averaging, noise_form=noise_form)
        self._seed = seed
        self._generator: torch.Generator | None = None
        self.restore_bn = bool(restore_bn)
        self.noise_table = check_int("noise_table", noise_table)
        self.noise_source = check_choice("noise_source", noise_source, ("auto", "torch"))
        self._source: NoiseSource | None = None  # created at the first noisy step (see _fresh_source)
        self._fused = True  # the fused C inner step where it applies (False: always the multi-tensor path)
        self._tables: dict[tuple, Tensor] = {}
        self._diag: dict[str, Tensor | float] = {}
        super().__init__(params, defaults)
        if len({g["inner_steps"] for g in self.param_groups}) > 1:
            raise ConfigError("inner_steps must be the same for every param group")

    # ---------------------------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_number("lr", g["lr"])
        check_number("momentum", g["momentum"], high=1.0, high_open=True)
        check_number("dampening", g["dampening"], high=1.0)
        check_number("weight_decay", g["weight_decay"])
        check_int("inner_steps", g["inner_steps"])
        check_number("inner_lr", g["inner_lr"])
        check_number("inner_momentum", g["inner_momentum"], high=1.0, high_open=True)
        check_number("inner_weight_decay", g["inner_weight_decay"])
        check_number("noise", g["noise"])
        check_number("alpha", g["alpha"], high=1.0)
        check_number("rho", g["rho"])
        check_choice("averaging", g["averaging"], ("paper", "code"))
        check_choice("noise_form", g["noise_form"], ("paper", "code"))
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ConfigError("Nesterov momentum needs momentum > 0 and zero dampening")
        sched = schedules.resolve(g["gamma"], check_number("scoping", g["scoping"], low=-1.0, low_open=True),
                                  g["gamma_schedule"], g["gamma_max"])
        g["gamma"] = sched.spec()  # plain numbers and strings: state_dict stays weights_only-loadable

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_diag", {})
        self.__dict__.setdefault("_generator", None)
        self.__dict__.setdefault("_tables", {})
        self.__dict__.setdefault("noise_table", 0)
        self.__dict__.setdefault("noise_source", "torch")  # pickled before noise sources existed
        self.__dict__.setdefault("_source", None)
        self.__dict__.setdefault("_fused", True)

    # ---------------------------------------------------------------------------------- step
    def _outer_update(self, group: dict[str, Any], params: list[Tensor], d: list[Tensor], x: list[Tensor]) -> None:
        """x <- x - lr * momentum(d + wd x) (torch.optim.SGD's convention); d is consumed in place."""
        lr, mom, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        if wd:
            torch._foreach_add_(d, x, alpha=wd)
        if mom:
            bufs = []
            for p, di in zip(params, d):
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = di.detach().clone()
                    bufs.append(None)
                else:
                    bufs.append(st["momentum_buffer"])
            fresh = [b is None for b in bufs]
            old = [b for b in bufs if b is not None]
            if old:
                dd = [di for di, f in zip(d, fresh) if not f]
                torch._foreach_mul_(old, mom)
                torch._foreach_add_(old, dd, alpha=1.0 - damp)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            if group["nesterov"]:
                torch._foreach_add_(d, bufs, alpha=mom)
            else:
                d = bufs
        torch._foreach_add_(params, d, alpha=-lr)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One outer step (L closure calls; L + 1 with ``rho > 0``). Returns the loss at x."""
        if closure is None:
            raise ConfigError("EntropySGD.step needs a closure that draws a fresh minibatch and returns the loss")
        groups = [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        L = self.param_groups[0]["inner_steps"]
        if any(gr["inner_steps"] != L for gr in self.param_groups):
            raise ConfigError("inner_steps must be the same for every param group")
        model = getattr(closure, "model", None)
        gammas = [self.gamma(g) for g, _ in groups]

        if L == 0:  # no inner loop: plain SGD, one gradient evaluation
            with torch.enable_grad():
                loss = closure()
            for g, ps in groups:
                if ps:
                    self._outer_update(g, ps, [gr.clone() for gr in grads_of(ps)], ps)
            self._advance_clock(None)
            self._diag = {"gamma": gammas[0]}
            return loss

        anchors, means, gx = [], [], []
        for g, ps in groups:
            xs, ms = [], []
            for p in ps:
                st = self.state[p]
                if "anchor" not in st:
                    st["anchor"] = torch.empty_like(p)
                    st["mu"] = torch.empty_like(p)
                xs.append(st["anchor"])
                ms.append(st["mu"])
            if ps:
                torch._foreach_copy_(xs, ps)
                torch._foreach_copy_(ms, ps)
            anchors.append(xs)
            means.append(ms)
            gx.append([])
        plans = [self._fused_plan(g, ps, xs, ms) for (g, ps), xs, ms in zip(groups, anchors, means)]
        first_loss: Tensor | None = None
        inner_losses = []
        with BNGuard(model, self.restore_bn):
            for step_l in range(L):
                with torch.enable_grad():
                    loss = closure()
                inner_losses.append(loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss)))
                if step_l == 0:
                    first_loss = loss
                for gi, ((g, ps), gam) in enumerate(zip(groups, gammas)):
                    if not ps:
                        continue
                    grads = grads_of(ps)
                    if step_l == 0:
                        gx[gi] = [gr.clone() for gr in grads]  # ∇f(x; Ξ_1): the first iterate is x itself
                    self._inner_update(g, ps, grads, anchors[gi], means[gi], gam, step_l, plans[gi])
        # outer update from the SGLD average: d = gamma (x - mu) [+ rho ∇f(x)], then SGD-style momentum
        dist2: Any = 0.0
        dotp: Any = 0.0
        g2: Any = 0.0
        xl_dist2: Any = 0.0
        directions: list[list[Tensor]] = []
        for gi, ((g, ps), gam) in enumerate(zip(groups, gammas)):
            if not ps:
                directions.append([])
                continue
            xs, ms = anchors[gi], means[gi]
            xl_dist2 = xl_dist2 + sq_norm(torch._foreach_sub(ps, xs))
            d = torch._foreach_sub(xs, ms)  # x - mu
            dist2 = dist2 + sq_norm(d)
            dotp = dotp + dot(gx[gi], d)
            g2 = g2 + sq_norm(gx[gi])
            torch._foreach_copy_(ps, xs)  # back to x
            if g["gscale"]:
                torch._foreach_mul_(d, gam)
            directions.append(d)
        if any(g["rho"] for g, ps in groups if ps):
            with torch.enable_grad():
                closure()  # ∇f(x) on a fresh minibatch (paper v1's rho f - F objective)
            for gi, (g, ps) in enumerate(groups):
                if ps and g["rho"]:
                    torch._foreach_add_(directions[gi], grads_of(ps), alpha=g["rho"])
        for gi, (g, ps) in enumerate(groups):
            if ps:
                self._outer_update(g, ps, directions[gi], anchors[gi])
        mean_inner = torch.stack(inner_losses).mean()
        self._advance_clock((mean_inner, xl_dist2))
        self._diag = {"gamma": gammas[0], "dist2": dist2, "dot": dotp, "g2": g2, "inner_loss": mean_inner,
                      "inner_dist2": xl_dist2}
        assert first_loss is not None
        return first_loss

    def _fresh_source(self) -> NoiseSource:
        """The counter-based noise source, keyed by ``seed`` (or by a draw from the global torch RNG)."""
        if self._source is None:
            key = int(self._seed) if self._seed is not None else int(torch.randint(0, 2**63 - 1, ()))
            self._source = NoiseSource(key, backend="auto")
        return self._source

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self.noise_source == "auto" and (self._source is not None or self._seed is not None):
            sd["noise_source"] = self._fresh_source().state()  # plain ints
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        src_state = state_dict.pop("noise_source", None)
        super().load_state_dict(state_dict)
        if src_state is not None and self.noise_source == "auto":
            src = NoiseSource(0, backend="auto")
            src.load_state(src_state)
            self._source = src

    def _noise(self, ps: list[Tensor]) -> list[Tensor]:
        """Standard normal noise shaped like ``ps``: fresh draws, or a window of the noise table."""
        gen = self._gen(ps[0].device)
        if not self.noise_table:
            return flat_normal(ps, gen)
        n = sum(p.numel() for p in ps)
        if n >= self.noise_table:
            raise ConfigError(f"noise_table={self.noise_table} must exceed the {n} parameters of a param group")
        key = (ps[0].device, ps[0].dtype)
        if key not in self._tables:
            tg = torch.Generator(device=ps[0].device).manual_seed(int(self._seed or 0) + 7919)
            self._tables[key] = torch.randn(self.noise_table, generator=tg, device=ps[0].device, dtype=ps[0].dtype)
        off = int(torch.randint(0, self.noise_table - n + 1, (1,), generator=gen, device=ps[0].device))
        window = self._tables[key][off : off + n]
        return [v.view_as(p) for v, p in zip(window.split([p.numel() for p in ps]), ps)]

    def _fused_plan(self, g: dict[str, Any], ps: list[Tensor], xs: list[Tensor], ms: list[Tensor]) -> list | None:
        """The fused kernel's plan for this group's inner steps (see ``_noise.sgld_plan``), or None for the
        multi-tensor path: inner momentum, noise from torch (``noise_source="torch"``, ``noise_table``), or
        tensors / a CPU the kernel does not take."""
        if not (ps and self._fused) or g["inner_momentum"]:
            return None
        if g["noise"] and (self.noise_table or self.noise_source == "torch"):
            return None
        return sgld_plan(ps, xs, ms)

    @staticmethod
    def _noise_scale(g: dict[str, Any]) -> float:
        """The SGLD noise's standard deviation: sqrt(eta') eps (paper) or sqrt(2 eta') eps (code)."""
        return math.sqrt(g["inner_lr"] * (2.0 if g["noise_form"] == "code" else 1.0)) * g["noise"]

    def _inner_update(self, g: dict[str, Any], ps: list[Tensor], grads: list[Tensor], xs: list[Tensor],
                      ms: list[Tensor], gam: float, step_l: int, plan: list | None = None) -> None:
        """One SGLD step on x' (the parameters) and the running average mu: in one fused pass of the C kernel
        where ``plan`` allows (``grads`` are then left as they are), else with multi-tensor ops (``grads``
        are consumed)."""
        w = g["alpha"] if g["averaging"] == "paper" else 1.0 - g["alpha"]
        if plan is not None:
            src = self._fresh_source() if g["noise"] else None
            if sgld_step_(plan, ps, grads, ms, lr=g["inner_lr"], weight_decay=g["inner_weight_decay"], gamma=gam,
                          weight=w, scale=self._noise_scale(g) if src is not None else 0.0, source=src):
                return
        if g["inner_weight_decay"]:
            torch._foreach_add_(grads, ps, alpha=g["inner_weight_decay"])
        if gam:
            torch._foreach_add_(grads, ps, alpha=gam)
            torch._foreach_add_(grads, xs, alpha=-gam)
        d = grads
        if g["inner_momentum"]:
            bufs = []
            for p, gr in zip(ps, grads):
                st = self.state[p]
                if step_l == 0 or "inner_buffer" not in st:
                    st["inner_buffer"] = gr.clone()  # reset every outer step
                else:
                    st["inner_buffer"].mul_(g["inner_momentum"]).add_(gr)
                bufs.append(st["inner_buffer"])
            d = bufs
        torch._foreach_add_(ps, d, alpha=-g["inner_lr"])
        if g["noise"]:
            scale = self._noise_scale(g)
            if self.noise_table or self.noise_source == "torch":
                torch._foreach_add_(ps, self._noise(ps), alpha=scale)
            else:
                self._fresh_source().add_(ps, scale)  # drawn and added in one pass
        torch._foreach_lerp_(ms, ps, w)

    def diagnostics(self) -> dict[str, float]:
        """gamma, |x - mu|, cos(∇f(x), x - mu), mean inner loss and |x - x'_L| of the last step."""
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
