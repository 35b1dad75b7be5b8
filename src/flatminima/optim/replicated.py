"""Replicated-SGD (Baldassi et al., PNAS 2016; Pittorino et al., ICLR 2021): y replicas coupled to a center.

The robust-ensemble objective ``sum_a [ f(w_a; Ξ_a) + gamma/2 |w_a - c|^2 ]`` is minimised by SGD on
each replica w_a (each on its own minibatch Ξ_a) while the coupling gamma grows along a schedule, so
the replicas are driven together into a wide flat region; the center c is the model:

    w_a <- w_a - lr * momentum( ∇f(w_a; Ξ_a) + weight_decay w_a + gamma (w_a - c) )
    c   <- mean_a w_a                                    (center="mean": traced out, the default)
    c   <- c - center_lr * gamma * sum_a (c - w_a)       (center="explicit": an elastic center)

**The model's own parameters are the center.** The optimizer holds the replicas as state, stacked
along a leading replica axis (``state[p]["replicas"]``: ``(y_local, *p.shape)``), so the trained
model is simply the module that was optimized, and the training loop evaluates it with no special
case (its BatchNorm statistics must be recalibrated at the center, as the training loop does).

Three ways to evaluate the replicas' gradients (``mode``):

* ``"batched"``: one vmapped :func:`torch.func.functional_call` pass over the stacked replicas, each
  on its own minibatch from ``closure.sample()`` (needs a :class:`flatminima.train.MinibatchClosure`,
  or any closure with ``model``, ``loss_fn``, ``sample()`` and ``count(n)``). BatchNorm layers in the
  replica passes update per-replica copies of the running statistics, which are discarded: the
  center's statistics are never touched.
* ``"sequential"``: the fallback for plain closures; the replicas are loaded into the model one at a
  time and ``closure()`` is called once per replica (the model's BatchNorm statistics are restored).
* ``"auto"`` (default): batched when the closure allows it, else sequential.

Multi-process mode (``distributed=True``, after :func:`torch.distributed.init_process_group`; gloo on
CPU, nccl on GPU): the y replicas are split evenly over the ranks (rank r holds replicas
``r*k .. r*k + k - 1``, k = y / world size); the center is shared through one all-reduce per step
(plus one broadcast at the first step to agree on the center). With every rank drawing the
minibatches of its own replicas, the trajectory equals the single-process one.

With ``gamma = 0`` the replicas are y independent SGD runs; as gamma grows they collapse onto the center.
The elastic pull is explicit: keep ``lr * gamma <= 1`` (e.g. ``gamma_max = 1 / lr``), beyond which a
replica overshoots the center (and diverges for ``lr * gamma > 2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import schedules
from ._utils import BNGuard, CouplingMixin, check_choice, check_int, check_number, flat_normal, grads_of

__all__ = ["ReplicatedSGD"]


class ReplicatedSGD(CouplingMixin, torch.optim.Optimizer):
    """Replicated-SGD as a :class:`torch.optim.Optimizer` whose parameters are the center.

    Parameters
    ----------
    params : the model's parameters (or param-group dicts; any option below except ``replicas``,
        ``mode``, ``distributed`` may be set per group).
    lr : learning rate of the replicas.
    replicas : y, the total number of replicas (over all ranks in distributed mode).
    momentum, nesterov, dampening, weight_decay : per-replica SGD options, as in :class:`torch.optim.SGD`.
    gamma : gamma0 (a number or ``"auto"``: balance the data loss and the coupling after the first
        step, the ICLR 2021 code's rule), or a :class:`~flatminima.optim.schedules.Schedule`.
    scoping, gamma_schedule, gamma_max : the coupling schedule when ``gamma`` is a number (exponential
        gamma0 (1 + scoping)^t by default; the clock counts optimizer steps).
    center : ``"mean"`` (c = replica mean) or ``"explicit"`` (c moves elastically with ``center_lr``,
        default ``lr``).
    init_noise : replicas start at ``c + init_noise * N(0, I)`` (0: all equal to the model, the PNAS
        2016 default); the center is then set to their mean.
    mode : ``"auto"`` | ``"batched"`` | ``"sequential"`` (see the module docstring).
    distributed, process_group : multi-process mode over :mod:`torch.distributed`.
    seed : seeds the initial replica noise (the same on every rank).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        replicas: int = 4,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        gamma: float | str | schedules.Schedule | dict = 1e-3,
        scoping: float = 1e-3,
        *,
        gamma_schedule: str | None = None,
        gamma_max: float = math.inf,
        dampening: float = 0.0,
        center: str = "mean",
        center_lr: float | None = None,
        init_noise: float = 0.0,
        mode: str = "auto",
        distributed: bool = False,
        process_group: Any = None,
        seed: int | None = 0,
    ) -> None:
        self.replicas = check_int("replicas", replicas, low=1)
        self.mode = check_choice("mode", mode, ("auto", "batched", "sequential"))
        self.center = check_choice("center", center, ("mean", "explicit"))
        self.init_noise = check_number("init_noise", init_noise)
        self.distributed = bool(distributed) or process_group is not None
        self.process_group = process_group
        self._seed = seed
        self._generator = None
        self._diag: dict[str, Any] = {}
        self._names: dict[int, str] | None = None
        if self.distributed:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized():
                raise ConfigError("distributed=True needs torch.distributed.init_process_group(...) first")
            self.world = dist.get_world_size(process_group)
            self.rank = dist.get_rank(process_group)
            if self.replicas % self.world:
                raise ConfigError(f"{self.replicas} replicas cannot be split evenly over {self.world} processes")
        else:
            self.world, self.rank = 1, 0
        self.local = self.replicas // self.world
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening, weight_decay=weight_decay,
                        gamma=gamma, scoping=scoping, gamma_schedule=gamma_schedule, gamma_max=gamma_max,
                        center_lr=center_lr)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_number("lr", g["lr"])
        check_number("momentum", g["momentum"], high=1.0, high_open=True)
        check_number("dampening", g["dampening"], high=1.0)
        check_number("weight_decay", g["weight_decay"])
        if g["center_lr"] is not None:
            check_number("center_lr", g["center_lr"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ConfigError("Nesterov momentum needs momentum > 0 and zero dampening")
        sched = schedules.resolve(g["gamma"], check_number("scoping", g["scoping"], low=-1.0, low_open=True),
                                  g["gamma_schedule"], g["gamma_max"])
        g["gamma"] = sched.spec()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_diag", {})
        self.__dict__.setdefault("_names", None)

    # ---------------------------------------------------------------------------------- helpers
    def _groups(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        return [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]

    def _all_reduce(self, tensors: list[Tensor]) -> list[Tensor]:
        """Sum ``tensors`` over the ranks in ONE all-reduce (flattened into one buffer)."""
        if not self.distributed or not tensors:
            return tensors
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=self.process_group)
        return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def _init_state(self, groups: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        """First step: agree on the center (broadcast from rank 0), create the replicas around it."""
        params = [p for _, ps in groups for p in ps]
        if self.distributed and params:
            import torch.distributed as dist

            flat = torch.cat([p.detach().reshape(-1) for p in params])
            src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
            dist.broadcast(flat, src=src, group=self.process_group)
            for p, v in zip(params, flat.split([p.numel() for p in params])):
                p.copy_(v.view_as(p))
        lo = self.rank * self.local
        for _, ps in groups:
            for p in ps:
                self.state[p]["replicas"] = p.detach().unsqueeze(0).repeat(self.local, *([1] * p.dim()))
        if self.init_noise and params:
            gen = self._gen(params[0].device)
            for _, ps in groups:
                for p in ps:
                    # noise for all y replicas (the same draws on every rank), this rank's slice kept
                    z = flat_normal([p.new_empty((self.replicas, *p.shape))], gen)[0]
                    self.state[p]["replicas"].add_(z[lo : lo + self.local], alpha=self.init_noise)
            for _, ps in groups:  # the center is the mean of the replicas
                sums = self._all_reduce([self.state[p]["replicas"].sum(0) for p in ps])
                for p, s in zip(ps, sums):
                    p.copy_(s / self.replicas)

    def _use_batched(self, closure: Any) -> bool:
        able = all(hasattr(closure, a) for a in ("model", "loss_fn", "sample", "count"))
        if self.mode == "batched" and not able:
            raise ConfigError("mode='batched' needs a closure with model, loss_fn, sample() and count() "
                              "(flatminima.train.MinibatchClosure); use mode='sequential' for plain closures")
        return able and self.mode != "sequential"

    def _batched_grads(self, closure: Any, groups: list) -> tuple[list[list[Tensor]], Tensor]:
        """Gradients of every local replica, (k, *shape) per parameter, from ONE vmapped forward pass
        (``functional_call`` over the stacked replicas, each on its own minibatch) and one backward
        pass; per-replica minibatch losses (k,)."""
        from torch.func import functional_call, vmap

        model: nn.Module = closure.model
        if self._names is None:
            self._names = {id(p): n for n, p in model.named_parameters()}
        names = self._names
        stacked: dict[str, Tensor] = {}
        order: list[Tensor] = []
        for _, ps in groups:
            for p in ps:
                if id(p) not in names:
                    raise ConfigError("ReplicatedSGD's parameters must belong to closure.model")
                w = self.state[p]["replicas"].detach().requires_grad_()
                stacked[names[id(p)]] = w
                order.append(w)
        batches = [closure.sample() for _ in range(self.local)]
        X = torch.stack([b[0] for b in batches])
        Y = torch.stack([b[1] for b in batches])
        k, B = Y.shape[0], Y.shape[1]
        plan = self._mlp_plan(model, stacked)
        if plan is not None:  # plain MLP: batched matrix products, no functional_call machinery
            flatten_first = isinstance(next(iter(model.children())), nn.Flatten)
            if not flatten_first and X.dim() != 3:
                plan = None
        if plan is not None:
            with torch.enable_grad():
                h = X.reshape(k, B, -1)
                for kind, a, b in plan:
                    if kind == "linear":
                        h = torch.baddbmm(b.unsqueeze(1), h, a.transpose(1, 2)) if b is not None else \
                            torch.bmm(h, a.transpose(1, 2))
                    else:
                        h = a(h)
                losses = closure.loss_fn(h.flatten(0, 1), Y.flatten(0, 1)).view(k, B).mean(1)
                grads = torch.autograd.grad(losses.sum(), order, allow_unused=True)
            return self._finish_grads(closure, groups, order, grads, losses)
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in stacked}
        # per-replica copies of the buffers (BatchNorm statistics): the model's own are never touched
        buffers = {n: b.unsqueeze(0).repeat(self.local, *([1] * b.dim())) for n, b in model.named_buffers()}

        def forward(pdict: dict[str, Tensor], bdict: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(model, ({**pdict, **fixed}, bdict), (x,))

        with torch.enable_grad():
            out = vmap(forward, randomness="different")(stacked, buffers, X)  # (k, B, ...)
            losses = closure.loss_fn(out.flatten(0, 1), Y.flatten(0, 1)).view(k, B).mean(1)
            grads = torch.autograd.grad(losses.sum(), order, allow_unused=True)
        return self._finish_grads(closure, groups, order, grads, losses)

    def _finish_grads(self, closure: Any, groups: list, order: list[Tensor], grads: Any,
                      losses: Tensor) -> tuple[list[list[Tensor]], Tensor]:
        closure.count(self.local)
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, order)]
        it = iter(grads)
        return [[next(it) for _ in ps] for _, ps in groups], losses.detach()

    _ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU,
                    nn.Identity, nn.Dropout)

    def _mlp_plan(self, model: nn.Module, stacked: dict[str, Tensor]) -> list[tuple[str, Any, Any]] | None:
        """For an ``nn.Sequential`` of Flatten / Linear / elementwise layers whose weights are all
        replicated, the layer list with the stacked weights; otherwise None (use vmap)."""
        if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
            return None
        plan: list[tuple[str, Any, Any]] = []
        for i, (name, m) in enumerate(model.named_children()):
            if isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
                continue
            if isinstance(m, nn.Linear):
                w, b = stacked.get(f"{name}.weight"), stacked.get(f"{name}.bias")
                if w is None or (m.bias is not None and b is None):
                    return None
                plan.append(("linear", w, b))
            elif isinstance(m, self._ELEMENTWISE) or type(m).__name__ == "Erf":
                plan.append(("act", m, None))
            else:
                return None
        if not plan or plan[0][0] != "linear":
            return None
        return plan

    def _sequential_grads(self, closure: Callable[[], Tensor], groups: list) -> tuple[list[list[Tensor]], Tensor]:
        """Gradients of every local replica by loading it into the model and calling ``closure()``."""
        params = [p for _, ps in groups for p in ps]
        center = [p.detach().clone() for p in params]
        out = [[torch.empty_like(self.state[p]["replicas"]) for p in ps] for _, ps in groups]
        losses = []
        with BNGuard(getattr(closure, "model", None)):
            for a in range(self.local):
                if params:
                    torch._foreach_copy_(params, [self.state[p]["replicas"][a] for p in params])
                with torch.enable_grad():
                    loss = closure()
                losses.append(torch.as_tensor(loss, dtype=torch.float64).detach().reshape(()))
                for gi, (_, ps) in enumerate(groups):
                    for pi, g in enumerate(grads_of(ps)):
                        out[gi][pi][a].copy_(g)
        if params:
            torch._foreach_copy_(params, center)
        return out, torch.stack(losses)

    # ---------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One step of every replica and of the center. Returns the mean loss of the replicas' minibatches."""
        if closure is None:
            raise ConfigError("ReplicatedSGD.step needs a closure (a flatminima.train.MinibatchClosure, or a "
                              "plain closure that draws a fresh minibatch and returns the loss)")
        groups = self._groups()
        if not any("replicas" in self.state[p] for _, ps in groups for p in ps):
            self._init_state(groups)
        gammas = [self.gamma(g) for g, _ in groups]
        if self._use_batched(closure):
            grads, losses = self._batched_grads(closure, groups)
        else:
            grads, losses = self._sequential_grads(closure, groups)

        local_dist2 = losses.new_zeros(())
        sums_old: list[Tensor] = []
        for gi, ((g, ps), gam) in enumerate(zip(groups, gammas)):
            if not ps:
                continue
            W = [self.state[p]["replicas"] for p in ps]
            C = [p.detach().unsqueeze(0) for p in ps]
            diff = torch._foreach_sub(W, [c.expand_as(w) for c, w in zip(C, W)])  # w_a - c
            local_dist2 = local_dist2 + torch.stack(torch._foreach_norm(diff)).square().sum().to(local_dist2)
            if self.center == "explicit":
                sums_old += [w.sum(0) for w in W]
            G = grads[gi]
            if g["weight_decay"]:
                torch._foreach_add_(G, W, alpha=g["weight_decay"])
            if gam:
                torch._foreach_add_(G, diff, alpha=gam)
            self._replica_update(g, ps, W, G)
        # center, with one all-reduce carrying the replica sums and the diagnostics
        extras = torch.stack([local_dist2.to(losses), losses.sum()])
        if self.center == "mean":
            sums = [self.state[p]["replicas"].sum(0) for _, ps in groups for p in ps]
        else:
            sums = sums_old
        reduced = self._all_reduce([*sums, extras.to(sums[0]) if sums else extras])
        sums, extras = reduced[:-1], reduced[-1]
        it = iter(sums)
        for (g, ps), gam in zip(groups, gammas):
            for p in ps:
                s = next(it)
                if self.center == "mean":
                    p.copy_(s / self.replicas)
                else:  # c <- c - center_lr * gamma * (y c - sum_a w_a)
                    clr = g["center_lr"] if g["center_lr"] is not None else g["lr"]
                    p.add_(self.replicas * p - s, alpha=-clr * gam)
        dist2 = extras[0] / self.replicas
        mean_loss = extras[1] / self.replicas
        self._advance_clock((mean_loss, dist2))
        self._diag = {"gamma": gammas[0] if gammas else 0.0, "dist2": dist2, "loss": mean_loss}
        return mean_loss

    def _replica_update(self, g: dict[str, Any], ps: list[Tensor], W: list[Tensor], G: list[Tensor]) -> None:
        mom, damp = g["momentum"], g["dampening"]
        d = G
        if mom:
            bufs = []
            fresh = []
            for p, gr in zip(ps, G):
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = gr.clone()
                    fresh.append(True)
                else:
                    fresh.append(False)
                bufs.append(st["momentum_buffer"])
            old = [b for b, f in zip(bufs, fresh) if not f]
            if old:
                torch._foreach_mul_(old, mom)
                torch._foreach_add_(old, [gr for gr, f in zip(G, fresh) if not f], alpha=1.0 - damp)
            if g["nesterov"]:
                torch._foreach_add_(G, bufs, alpha=mom)
            else:
                d = bufs
        torch._foreach_add_(W, d, alpha=-g["lr"])

    # ---------------------------------------------------------------------------------- outputs
    def replica_parameters(self, a: int) -> list[Tensor]:
        """The parameters of local replica ``a`` (views into the optimizer state), in param-group order."""
        if not 0 <= a < self.local:
            raise ConfigError(f"replica index must be in [0, {self.local}), got {a}")
        out = []
        for _, ps in self._groups():
            for p in ps:
                if "replicas" not in self.state[p]:
                    out.append(p.detach())
                else:
                    out.append(self.state[p]["replicas"][a])
        return out

    def diagnostics(self) -> dict[str, float]:
        """gamma, root-mean-square replica distance to the center, mean replica minibatch loss (last step)."""
        d = self._diag
        if not d:
            return {}
        return {"gamma": float(d["gamma"]), "replica_dist": math.sqrt(max(float(d["dist2"]), 0.0)),
                "replica_loss": float(d["loss"])}
