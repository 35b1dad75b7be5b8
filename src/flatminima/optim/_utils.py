"""Helpers shared by the optimizers: argument checks, BatchNorm guard, torch's SGD step, the coupling clock."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd

from ..errors import ConfigError
from . import schedules


def check_number(name: str, value: Any, *, low: float | None = 0.0, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or :class:`ConfigError` if it is not a finite number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def check_int(name: str, value: Any, low: int = 0) -> int:
    """``value`` as an int, or :class:`ConfigError` if it is not an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value``, or :class:`ConfigError` if it is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class BNGuard:
    """Context manager that restores a model's BatchNorm running statistics on exit.

    Forward passes at points other than the model's own parameters (Entropy-SGD's Langevin iterates,
    SAM's perturbed weights, replicas) must not leave their statistics in the evaluated model.
    """

    def __init__(self, model: nn.Module | None) -> None:
        self.buffers = [] if model is None else [
            b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        self.saved: list[Tensor] = []

    def __enter__(self) -> BNGuard:
        self.saved = [b.clone() for b in self.buffers]
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)


def grads_of(params: Iterable[Tensor]) -> list[Tensor]:
    """The ``.grad`` of each parameter (zeros where a parameter received no gradient)."""
    out = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(p.grad)
    return out


def sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Sum of squares of all entries of ``tensors``, as a 0-d tensor (no host sync)."""
    return torch.stack(torch._foreach_norm(list(tensors))).square().sum()


def sgd_(states: Sequence[dict[str, Any]], params: list[Tensor], grads: list[Tensor], *, lr: float,
         momentum: float, weight_decay: float, nesterov: bool) -> None:
    """torch.optim.SGD's update of ``params`` along ``grads``: its functional form :func:`torch.optim.sgd.sgd`.

    The momentum buffer of ``params[i]`` lives in ``states[i]["momentum_buffer"]`` (an optimizer's
    per-parameter state); an empty state starts one as torch does at a first step (the buffer is the
    first direction). ``grads`` may be modified in place.
    """
    bufs: list[Tensor | None] = [st.get("momentum_buffer") for st in states]
    sgd(params, grads, bufs, weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=0.0,
        nesterov=nesterov, maximize=False)
    if momentum:
        for st, b in zip(states, bufs):
            st["momentum_buffer"] = b


class CouplingMixin:
    """The coupling schedule, its clock and the seeded generator of the entropic optimizers.

    Per-group scalars (``step``: outer steps taken; ``gamma0``: an automatically calibrated gamma0) live
    in ``self.state`` of the group's first parameter, so ``state_dict`` round-trips them. The optimizer
    owns a :class:`torch.Generator` on the device of its first parameter, seeded with ``seed`` or, when
    ``seed`` is None, with a number drawn from torch's global generator at construction; its state is
    saved in ``state_dict()`` under ``"generator"`` (a uint8 tensor: loadable with ``weights_only=True``).
    """

    param_groups: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]
    generator: torch.Generator

    def _seed_generator(self, seed: int | None) -> None:
        seed = int(torch.randint(2**63 - 1, ())) if seed is None else check_int("seed", seed)
        self.generator = torch.Generator(device=self.param_groups[0]["params"][0].device).manual_seed(seed)

    @staticmethod
    def _check_gamma(group: dict[str, Any]) -> None:
        """Turn a group's gamma, scoping, gamma_max into a schedule spec of plain numbers and strings."""
        scoping = check_number("scoping", group["scoping"], low=-1.0, low_open=True)
        group["gamma"] = schedules.resolve(group["gamma"], scoping, group["gamma_max"]).spec()

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        st = self.state[group["params"][0]]
        st.setdefault("step", 0)
        return st

    def gamma(self, group: dict[str, Any] | None = None) -> float:
        """The coupling the next step of ``group`` (default: the first group) will use."""
        group = group or self.param_groups[0]
        st = self._group_state(group)
        return schedules.from_spec(group["gamma"])(int(st["step"]), st.get("gamma0"))

    def _advance_clock(self, calib: tuple[Tensor, Tensor] | None) -> None:
        """Advance every group's scoping clock; calibrate an automatic gamma0 from ``calib`` = (loss,
        squared distance): gamma0 = loss / (dist^2 / 2)."""
        for g in self.param_groups:
            st = self._group_state(g)
            st["step"] = int(st["step"]) + 1
            sched = schedules.from_spec(g["gamma"])
            if sched.auto and "gamma0" not in st and st["step"] >= sched.calibrate_after and calib is not None:
                loss, dist2 = (float(v) for v in calib)
                st["gamma0"] = loss / (0.5 * dist2) if dist2 > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen_state = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)  # type: ignore[misc]
        if gen_state is not None:
            self.generator.set_state(gen_state)
