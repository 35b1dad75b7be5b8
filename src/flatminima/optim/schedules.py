"""Coupling (scoping) schedules gamma(t) shared by Entropy-SGD and Replicated-SGD.

A schedule is a small immutable object: ``schedule(t)`` is the coupling after ``t`` optimizer steps
(the scoping clock counts *outer* parameter updates, and it advances: see the reference
implementations' bug where it never did). Every schedule is described by a plain dict of numbers and
strings (:meth:`Schedule.spec`), which is what the optimizers keep in their ``param_groups``; that
keeps ``optimizer.state_dict()`` loadable with ``torch.load(..., weights_only=True)`` and lets a user
change a group's schedule between steps.

Schedules
---------
``Constant(gamma0)``                         gamma(t) = gamma0
``Exponential(gamma0, rate)``                gamma(t) = gamma0 (1 + rate)^t          (Chaudhari et al.: rate 1e-3)
``Linear(gamma0, slope)``                    gamma(t) = gamma0 + slope t              (Baldassi et al. 2016: additive)
``Cosine(gamma0, gamma_end, total_steps)``   gamma0 + (gamma_end - gamma0) (1 - cos(pi t / T)) / 2, then gamma_end
``Exponential.to_factor(gamma0, factor, total_steps)``   exponential growth by ``factor`` over ``total_steps``
                                             (sacreddnn's ``gmax`` rule: rate = factor^(1/T) - 1)

Every schedule is clipped to ``[0, gamma_max]``. ``gamma0="auto"`` asks the optimizer to choose
gamma0 itself after ``calibrate_after`` steps run without coupling, so that the coupling term
balances the data loss (``gamma0 = loss / (1/2 |w - c|^2)``, the ICLR 2021 code's rule); the
calibrated value is kept in the optimizer state, and ``schedule(t, gamma0=value)`` uses it.
Before calibration, ``schedule(t)`` returns 0.

>>> from flatminima.optim import schedules
>>> s = schedules.Exponential(0.03, 1e-3)
>>> round(s(1000), 5)
0.08151
>>> schedules.from_spec(s.spec()) == s
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError

__all__ = ["Schedule", "Constant", "Exponential", "Linear", "Cosine", "from_spec", "resolve", "KINDS"]

AUTO = "auto"


def _check_gamma0(gamma0: Any) -> float | str:
    if isinstance(gamma0, str):
        if gamma0 != AUTO:
            raise ConfigError(f"gamma0 must be a number >= 0 or 'auto', got {gamma0!r}")
        return gamma0
    if isinstance(gamma0, bool) or not isinstance(gamma0, (int, float)) or not math.isfinite(gamma0) or gamma0 < 0:
        raise ConfigError(f"gamma0 must be a finite number >= 0 or 'auto', got {gamma0!r}")
    return float(gamma0)


def _check_nonneg(name: str, v: Any, allow_inf: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Schedule:
    """Base class: ``gamma0`` (number or ``"auto"``), ``gamma_max`` (cap), ``calibrate_after`` (steps
    without coupling before an automatic gamma0 is chosen; ignored unless ``gamma0 == "auto"``)."""

    gamma0: float | str = 0.0
    gamma_max: float = field(default=math.inf, kw_only=True)
    calibrate_after: int = field(default=1, kw_only=True)
    kind: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma0", _check_gamma0(self.gamma0))
        object.__setattr__(self, "gamma_max", _check_nonneg("gamma_max", self.gamma_max, allow_inf=True))
        if isinstance(self.calibrate_after, bool) or not isinstance(self.calibrate_after, int) or self.calibrate_after < 1:
            raise ConfigError(f"calibrate_after must be an integer >= 1, got {self.calibrate_after!r}")

    @property
    def auto(self) -> bool:
        """True when gamma0 is to be calibrated by the optimizer."""
        return self.gamma0 == AUTO

    def _value(self, t: int, g0: float) -> float:  # pragma: no cover - overridden
        return g0

    def __call__(self, t: int, gamma0: float | None = None) -> float:
        """gamma after ``t`` >= 0 outer steps. ``gamma0`` replaces an ``"auto"`` gamma0 (the calibrated value)."""
        if t < 0:
            raise ConfigError(f"the scoping clock must be >= 0, got {t}")
        g0 = self.gamma0 if gamma0 is None else float(gamma0)
        if g0 == AUTO:
            return 0.0
        return float(min(max(self._value(int(t), float(g0)), 0.0), self.gamma_max))

    def spec(self) -> dict[str, Any]:
        """A dict of plain numbers and strings that :func:`from_spec` turns back into this schedule."""
        d = asdict(self)
        d["kind"] = self.kind
        return d


@dataclass(frozen=True)
class Constant(Schedule):
    kind: ClassVar[str] = "constant"

    def _value(self, t: int, g0: float) -> float:
        return g0


@dataclass(frozen=True)
class Exponential(Schedule):
    """gamma0 (1 + rate)^t (Entropy-SGD's scoping with rate 1e-3; sacreddnn's 'exp')."""

    rate: float = 1e-3
    kind: ClassVar[str] = "exp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not math.isfinite(self.rate) or self.rate <= -1:
            raise ConfigError(f"scoping rate must be a finite number > -1, got {self.rate!r}")
        object.__setattr__(self, "rate", float(self.rate))

    def _value(self, t: int, g0: float) -> float:
        # (1 + rate)^t overflows for long runs; the cap takes over long before
        try:
            return g0 * math.exp(t * math.log1p(self.rate))
        except OverflowError:
            return math.inf

    @classmethod
    def to_factor(cls, gamma0: float | str, factor: float, total_steps: int, gamma_max: float = math.inf,
                  calibrate_after: int = 1) -> Exponential:
        """Exponential growth by a total ``factor`` over ``total_steps`` steps (then capped at ``gamma_max``)."""
        factor = _check_nonneg("factor", factor)
        if factor <= 0 or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"factor must be > 0 and total_steps a positive integer, got {factor}, {total_steps}")
        return cls(gamma0, factor ** (1.0 / total_steps) - 1.0, gamma_max=gamma_max, calibrate_after=calibrate_after)


@dataclass(frozen=True)
class Linear(Schedule):
    """gamma0 + slope t (the additive scoping of Baldassi et al. 2016)."""

    slope: float = 1e-4
    kind: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.slope, bool) or not isinstance(self.slope, (int, float)) or not math.isfinite(self.slope):
            raise ConfigError(f"slope must be a finite number, got {self.slope!r}")
        object.__setattr__(self, "slope", float(self.slope))

    def _value(self, t: int, g0: float) -> float:
        return g0 + self.slope * t


@dataclass(frozen=True)
class Cosine(Schedule):
    """From gamma0 to gamma_end along half a cosine over ``total_steps`` steps, then gamma_end."""

    gamma_end: float = 1.0
    total_steps: int = 1000
    kind: ClassVar[str] = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "gamma_end", _check_nonneg("gamma_end", self.gamma_end))
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ConfigError(f"total_steps must be a positive integer, got {self.total_steps!r}")

    def _value(self, t: int, g0: float) -> float:
        s = min(t, self.total_steps) / self.total_steps
        return g0 + (self.gamma_end - g0) * 0.5 * (1.0 - math.cos(math.pi * s))


KINDS: dict[str, type[Schedule]] = {c.kind: c for c in (Constant, Exponential, Linear, Cosine)}


def from_spec(spec: dict[str, Any] | Schedule) -> Schedule:
    """Build a schedule from :meth:`Schedule.spec` output (a schedule passes through)."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"a schedule spec is a dict with a 'kind' ({', '.join(KINDS)}), got {spec!r}")
    d = dict(spec)
    kind = d.pop("kind")
    if kind not in KINDS:
        raise ConfigError(f"unknown schedule kind {kind!r}; choose one of {sorted(KINDS)}")
    try:
        return KINDS[kind](**d)
    except TypeError as exc:
        raise ConfigError(f"bad options for a {kind!r} schedule: {exc}") from None


def resolve(gamma: Any, scoping: float = 0.0, gamma_max: float = math.inf) -> Schedule:
    """The schedule meant by the optimizers' ``gamma``, ``scoping`` and ``gamma_max`` arguments.

    ``gamma`` a :class:`Schedule` or a spec dict: used as given (it carries its own cap). Otherwise
    ``gamma`` is gamma0 (a number or ``"auto"``): ``Exponential(gamma0, scoping)`` (Chaudhari et al.'s
    gamma0 (1 + gamma1)^t) when ``scoping`` != 0, else ``Constant(gamma0)``, capped at ``gamma_max``.
    """
    if isinstance(gamma, (Schedule, dict)):
        return from_spec(gamma)
    if scoping:
        return Exponential(gamma, scoping, gamma_max=gamma_max)
    return Constant(gamma, gamma_max=gamma_max)
