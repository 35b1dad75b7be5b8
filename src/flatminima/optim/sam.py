"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) and its adaptive form ASAM (Kwon et al., 2021).

Each step takes the gradient g at w, moves to the (approximate) worst point of a rho-ball,
``w + e`` with ``e = rho g / |g|`` (ASAM: ``e = rho T^2 g / |T g|``, T = |w|), takes the gradient
there, comes back to w and lets the base optimizer step with that second gradient. Two gradient
evaluations per step.

Unlike the popular reference implementation, :class:`SAM` follows the torch ``step(closure)``
convention (the closure computes the loss and gradients, the optimizer calls it as often as it
needs, ``step`` returns the loss), its ``state_dict`` holds the base optimizer's state (momentum
buffers and all), and it protects BatchNorm statistics from the perturbed pass by itself.

With a :class:`flatminima.train.MinibatchClosure` both passes use the *same* minibatch, as in the
paper (one ``closure.sample()``, two forward/backward passes, two gradient evaluations counted);
with a plain closure, the closure is called twice (by torch convention it re-evaluates the same batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ._utils import BNGuard, check_number

__all__ = ["SAM"]


class SAM(torch.optim.Optimizer):
    """SAM / ASAM wrapped around a base optimizer.

    Parameters
    ----------
    params : parameters or param-group dicts (``rho`` and ``adaptive`` may be set per group).
    base_optimizer : a :class:`torch.optim.Optimizer` subclass (e.g. ``torch.optim.SGD``), built on the
        same param groups (so LR schedulers on the SAM object drive the base optimizer).
    rho : radius of the neighbourhood. adaptive : ASAM (scale-invariant neighbourhood).
    **base_kwargs : the base optimizer's arguments (lr, momentum, ...).
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs: Any) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ConfigError(f"base_optimizer must be a torch.optim.Optimizer class (e.g. torch.optim.SGD), got {base_optimizer!r}")
        check_number("rho", rho)
        super().__init__(params, dict(rho=rho, adaptive=bool(adaptive), **base_kwargs))
        for g in self.param_groups:
            check_number("rho", g["rho"])
        try:
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad arguments for the base optimizer {base_optimizer.__name__}: {exc}") from None
        self.param_groups = self.base_optimizer.param_groups  # shared: schedulers see one set of groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _perturbation(self) -> list[tuple[Tensor, Tensor]]:
        """(param, e) pairs with e = rho g / |g| (ASAM: rho T^2 g / |T g|), |.| over all parameters."""
        pairs, scaled = [], []
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                sg = p.grad * p.abs() if g["adaptive"] else p.grad
                scaled.append(sg)
                pairs.append((p, g))
        if not pairs:
            return []
        dev = pairs[0][0].device
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s).to(dev) for s in scaled]))
        out = []
        for (p, g), sg in zip(pairs, scaled):
            e = (sg * p.abs() if g["adaptive"] else sg) * (g["rho"] / (norm + 1e-12))
            out.append((p, e))
        return out

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Two gradient evaluations (at w and at w + e), then the base optimizer's step. Returns the loss at w."""
        if closure is None:
            raise ConfigError("SAM.step needs a closure that computes the loss and its gradients")
        model = getattr(closure, "model", None)
        passes = closure
        if all(hasattr(closure, a) for a in ("model", "loss_fn", "sample", "count")):
            x, y = closure.sample()  # type: ignore[attr-defined]

            def passes() -> Tensor:
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = closure.loss_fn(model(x), y).mean()  # type: ignore[attr-defined]
                    loss.backward()
                closure.count(1)  # type: ignore[attr-defined]
                return loss.detach()

        with torch.enable_grad():
            loss = passes()
        pert = self._perturbation()
        with torch.no_grad():
            for p, e in pert:
                p.add_(e)
        with BNGuard(model), torch.enable_grad():
            passes()
        with torch.no_grad():
            for p, e in pert:
                p.sub_(e)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's complete state_dict (its state and the shared param groups, rho included)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # re-link after the base rebuilt its groups
