"""Replicated-SGD (Baldassi et al., PNAS 2016; Pittorino et al., ICLR 2021): y replicas coupled to a center.

The robust-ensemble objective ``sum_a [ f(w_a; Ξ_a) + gamma/2 |w_a - c|^2 ]`` is minimised by SGD on
each replica w_a (each on its own minibatch Ξ_a) while the coupling gamma grows along a schedule, so
the replicas are driven together into a wide flat region; the center c is the model:

    w_a <- w_a - lr * momentum( ∇f(w_a; Ξ_a) + weight_decay w_a + gamma (w_a - c) )   (torch.optim.SGD's step)
    c   <- mean_a w_a                                    (center="mean": traced out, the default)
    c   <- c - lr * gamma * sum_a (c - w_a)              (center="explicit": an elastic center)

**The model's own parameters are the center.** The optimizer holds the replicas as state, stacked
along a leading replica axis (``state[p]["replicas"]``: ``(y_local, *p.shape)``), so the trained
model is simply the module that was optimized, and the training loop evaluates it with no special
case (its BatchNorm statistics must be recalibrated at the center, as the training loop does).

Three ways to evaluate the replicas' gradients (``mode``):

* ``"batched"``: one pass of :class:`flatminima.forward.BatchedForward` over the stacked replicas
  (batched matrix products for an MLP, else vmap over ``functional_call``), each on its own minibatch
  from ``closure.sample()`` (needs a :class:`flatminima.train.MinibatchClosure`,
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
from ..forward import BatchedForward
from . import schedules
from ._utils import BNGuard, CouplingMixin, check_choice, check_int, check_number, grads_of, sgd_

__all__ = ["ReplicatedSGD"]


class ReplicatedSGD(CouplingMixin, torch.optim.Optimizer):
    """Replicated-SGD as a :class:`torch.optim.Optimizer` whose parameters are the center.

    Parameters
    ----------
    params : the model's parameters (or param-group dicts; any option below except ``replicas``,
        ``mode``, ``distributed`` may be set per group).
    lr : learning rate of the replicas.
    replicas : y, the total number of replicas (over all ranks in distributed mode).
    momentum, nesterov, weight_decay : per-replica SGD options, as in :class:`torch.optim.SGD` (sacreddnn:
        Nesterov momentum 0.9, weight decay 5e-4).
    gamma : gamma0 (a number or ``"auto"``: balance the data loss and the coupling after the first
        step, the ICLR 2021 code's rule), or a :class:`~flatminima.optim.schedules.Schedule` (or its spec
        dict; e.g. ``schedules.Linear`` for the PNAS 2016 code's additive ``γstep``).
    scoping, gamma_max : the exponential schedule ``gamma0 (1 + scoping)^t`` capped at ``gamma_max`` when
        ``gamma`` is a number (sacreddnn's ``grate``, counted here in optimizer steps, and ``gmax``).
    center : ``"mean"`` (c = replica mean, traced out: sacreddnn's default, the PNAS 2016 code's
        ``center=false``) or ``"explicit"`` (an elastic center moved with the replicas' ``lr``:
        ``use_center=True``, ``center=true``).
    init_noise : replicas start at ``c + init_noise * N(0, I)`` (0: all equal to the model, the PNAS
        2016 code's ``init_equal=true``; > 0 stands in for sacreddnn's independently initialized
        replicas); the center is then set to their mean.
    mode : ``"auto"`` | ``"batched"`` | ``"sequential"`` (see the module docstring; ``"sequential"``
        holds one replica's activations at a time).
    distributed, process_group : multi-process mode over :mod:`torch.distributed`.
    seed : seeds the optimizer's :class:`torch.Generator`, which draws the initial replica noise (None:
        a seed drawn from torch's global generator at construction). Its state is in ``state_dict()``.
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
        gamma_max: float = math.inf,
        center: str = "mean",
        init_noise: float = 0.0,
        mode: str = "auto",
        distributed: bool = False,
        process_group: Any = None,
        seed: int | None = None,
    ) -> None:
        self.replicas = check_int("replicas", replicas, low=1)
        self.mode = check_choice("mode", mode, ("auto", "batched", "sequential"))
        self.center = check_choice("center", center, ("mean", "explicit"))
        self.init_noise = check_number("init_noise", init_noise)
        self.distributed = bool(distributed) or process_group is not None
        self.process_group = process_group
        self._diag: dict[str, Any] = {}
        self._forward: BatchedForward | None = None
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
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, gamma=gamma,
                        scoping=scoping, gamma_max=gamma_max)
        super().__init__(params, defaults)
        self._seed_generator(seed)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_number("lr", g["lr"])
        check_number("momentum", g["momentum"], high=1.0, high_open=True)
        check_number("weight_decay", g["weight_decay"])
        if g["nesterov"] and not g["momentum"]:
            raise ConfigError("Nesterov momentum needs momentum > 0")
        self._check_gamma(g)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_diag", {})
        self.__dict__.setdefault("_forward", None)

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
            for _, ps in groups:
                for p in ps:
                    # noise for all y replicas (the same on every rank given one seed), this rank's slice kept
                    z = torch.randn((self.replicas, *p.shape), generator=self.generator, device=p.device,
                                    dtype=p.dtype)
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
        """Gradients of every local replica, (k, *shape) per parameter, and their minibatch losses (k,),
        from ONE batched forward pass (:class:`~flatminima.forward.BatchedForward` over the stacked
        replicas, each on its own minibatch) and one backward pass. The model's buffers (BatchNorm
        statistics) enter as per-replica copies that are then discarded: the center's are never touched."""
        model: nn.Module = closure.model
        if self._forward is None or self._forward.model is not model:
            self._forward = BatchedForward(model)
        names = {id(p): n for n, p in model.named_parameters()}
        stacked: dict[str, Tensor] = {}
        order: list[Tensor] = []
        for _, ps in groups:
            for p in ps:
                if id(p) not in names:
                    raise ConfigError("ReplicatedSGD's parameters must belong to closure.model")
                w = self.state[p]["replicas"].detach().requires_grad_()
                stacked[names[id(p)]] = w
                order.append(w)
        buffers = {n: b.unsqueeze(0).repeat(self.local, *([1] * b.dim())) for n, b in model.named_buffers()}
        batches = [closure.sample() for _ in range(self.local)]
        X = torch.stack([b[0] for b in batches])
        Y = torch.stack([b[1] for b in batches])
        with torch.enable_grad():
            out = self._forward.stacked({**stacked, **buffers}, X, per_copy=True)  # (k, B, ...)
            losses = closure.loss_fn(out.flatten(0, 1), Y.flatten(0, 1)).view(Y.shape[:2]).mean(1)
            grads = torch.autograd.grad(losses.sum(), order, allow_unused=True)
        closure.count(self.local)
        it = iter(torch.zeros_like(w) if g is None else g for g, w in zip(grads, order))
        return [[next(it) for _ in ps] for _, ps in groups], losses.detach()

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
            if gam:
                torch._foreach_add_(G, diff, alpha=gam)
            sgd_([self.state[p] for p in ps], W, G, lr=g["lr"], momentum=g["momentum"],
                 weight_decay=g["weight_decay"], nesterov=g["nesterov"])
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
                else:  # c <- c - lr * gamma * (y c - sum_a w_a)
                    p.add_(self.replicas * p - s, alpha=-g["lr"] * gam)
        dist2 = extras[0] / self.replicas
        mean_loss = extras[1] / self.replicas
        self._advance_clock((mean_loss, dist2))
        self._diag = {"gamma": gammas[0] if gammas else 0.0, "dist2": dist2, "loss": mean_loss}
        return mean_loss

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
