"""Helpers shared by the optimizers: argument validation, BatchNorm buffer guards, flat noise."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError


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
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def bn_buffers(model: nn.Module | None) -> list[Tensor]:
    """The running statistics (mean, var, batch counter) of every BatchNorm layer of ``model``."""
    if model is None:
        return []
    out: list[Tensor] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out


class BNGuard:
    """Context manager that restores a model's BatchNorm running statistics on exit.

    Forward passes at points other than the model's own parameters (Entropy-SGD's Langevin iterates,
    SAM's perturbed weights, replicas) must not leave their statistics in the evaluated model.
    """

    def __init__(self, model: nn.Module | None, enabled: bool = True) -> None:
        self.buffers = bn_buffers(model) if enabled else []
        self.saved: list[Tensor] = []

    def __enter__(self) -> "BNGuard":
        self.saved = [b.clone() for b in self.buffers]
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)


def flat_normal(tensors: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """Standard normal noise shaped like ``tensors``, drawn in one call (one flat buffer, split into views)."""
    if not tensors:
        return []
    t0 = tensors[0]
    n = sum(t.numel() for t in tensors)
    flat = torch.randn(n, generator=generator, device=t0.device, dtype=t0.dtype)
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def grads_of(params: Iterable[Tensor]) -> list[Tensor]:
    """The ``.grad`` of each parameter (zeros where a parameter received no gradient)."""
    out = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(p.grad)
    return out


def sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Sum of squares of all entries of ``tensors`` as a 0-d tensor (no host sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.stack([n * n for n in torch._foreach_norm(list(tensors))]).sum()


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Sum over tensors of the elementwise products, as a 0-d tensor."""
    if not a:
        return torch.zeros(())
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


class CouplingMixin:
    """Scoping clock, coupling schedule and seeded noise generator of the entropic optimizers.

    Per-group scalars (``step``: outer steps taken; ``gamma0``: an automatically calibrated gamma0) live
    in ``self.state`` of the group's first parameter, so ``state_dict`` round-trips them; the private
    generator's state is saved under the ``"generator"`` key of ``state_dict``.
    """

    _seed: int | None
    _generator: torch.Generator | None

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        st = self.state[group["params"][0]]  # type: ignore[attr-defined]
        st.setdefault("step", 0)
        return st

    def gamma(self, group: dict[str, Any] | None = None) -> float:
        """The coupling the next step of ``group`` (default: the first group) will use."""
        from . import schedules

        group = group or self.param_groups[0]  # type: ignore[attr-defined]
        st = self._group_state(group)
        return schedules.from_spec(group["gamma"])(int(st["step"]), st.get("gamma0"))

    def _advance_clock(self, calib: tuple[Any, Any] | None) -> None:
        """Advance every group's scoping clock; calibrate an automatic gamma0 (loss / (dist^2 / 2))."""
        from . import schedules

        for g in self.param_groups:  # type: ignore[attr-defined]
            st = self._group_state(g)
            st["step"] = int(st["step"]) + 1
            sched = schedules.from_spec(g["gamma"])
            if sched.auto and "gamma0" not in st and st["step"] >= sched.calibrate_after and calib is not None:
                loss, dist2 = (float(v) for v in calib)
                st["gamma0"] = loss / (0.5 * dist2) if dist2 > 0 else 0.0

    def _gen(self, device: torch.device) -> torch.Generator | None:
        if self._seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(int(self._seed))
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        if self._seed is not None:
            sd["generator"] = self._gen(self.param_groups[0]["params"][0].device).get_state()  # type: ignore[attr-defined]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen_state = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)  # type: ignore[misc]
        if gen_state is not None:
            if self._seed is None:
                self._seed = 0
            self._gen(self.param_groups[0]["params"][0].device).set_state(gen_state)  # type: ignore[attr-defined]
