"""Optimizers by CLI name: ``sgd``, ``adam``, ``adamw``, ``entropy-sgd``, ``replicated-sgd``, ``sam``.

:func:`build_optimizer` turns a name, the common hyperparameters (learning rate, momentum, weight
decay) and optimizer-specific options (``flatminima train -o KEY=VALUE``) into an optimizer, with
every option validated (unknown names and bad values raise :class:`~flatminima.errors.ConfigError`).
:func:`grad_evals_per_step` says what one step costs, to compare optimizers at equal compute.

>>> import torch
>>> from flatminima.optim.registry import build_optimizer, grad_evals_per_step
>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer("entropy-sgd", model, lr=1.0, momentum=0.0, inner_steps=5)
>>> grad_evals_per_step("entropy-sgd", {"inner_steps": 5})
5
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .entropy_sgd import EntropySGD
from .replicated import ReplicatedSGD
from .sam import SAM

__all__ = ["OptimizerSpec", "OPTIMIZERS", "build_optimizer", "grad_evals_per_step", "options_of"]


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[..., torch.optim.Optimizer]  # build(params, lr, momentum, weight_decay, **options)
    options: tuple[str, ...]  # optimizer-specific option names
    help: str


def _kwonly_and_defaults(fn: Callable, exclude: Iterable[str]) -> tuple[str, ...]:
    sig = inspect.signature(fn)
    skip = {"self", "params", "lr", "momentum", "weight_decay", *exclude}
    return tuple(n for n, p in sig.parameters.items() if n not in skip and p.kind is not p.VAR_KEYWORD)


def _sgd(params, lr, momentum, weight_decay, **o):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **o)


def _adam(params, lr, momentum, weight_decay, **o):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **o)


def _adamw(params, lr, momentum, weight_decay, **o):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **o)


def _esgd(params, lr, momentum, weight_decay, **o):
    return EntropySGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **o)


def _rsgd(params, lr, momentum, weight_decay, **o):
    return ReplicatedSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **o)


_SAM_BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _sam(params, lr, momentum, weight_decay, base: str = "sgd", rho: float = 0.05, adaptive: bool = False,
         nesterov: bool = False):
    if base not in _SAM_BASES:
        raise ConfigError(f"SAM base optimizer must be one of {sorted(_SAM_BASES)}, got {base!r}")
    kw: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay)
    if base == "sgd":
        kw.update(momentum=momentum, nesterov=nesterov)
    return SAM(params, _SAM_BASES[base], rho=rho, adaptive=adaptive, **kw)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", _sgd, ("nesterov", "dampening"), "SGD with momentum (torch.optim.SGD)"),
    "adam": OptimizerSpec("adam", _adam, ("betas", "eps", "amsgrad"), "Adam (momentum is ignored)"),
    "adamw": OptimizerSpec("adamw", _adamw, ("betas", "eps", "amsgrad"), "AdamW (momentum is ignored)"),
    "entropy-sgd": OptimizerSpec("entropy-sgd", _esgd, _kwonly_and_defaults(EntropySGD.__init__, ()),
                                 "Entropy-SGD (Chaudhari et al. 2017): L SGLD steps per outer step"),
    "replicated-sgd": OptimizerSpec("replicated-sgd", _rsgd,
                                    _kwonly_and_defaults(ReplicatedSGD.__init__, ("distributed", "process_group")),
                                    "Replicated-SGD (Baldassi et al. 2016, Pittorino et al. 2021): y coupled replicas"),
    "sam": OptimizerSpec("sam", _sam, ("base", "rho", "adaptive", "nesterov"),
                         "SAM / ASAM (Foret et al. 2021) around SGD, Adam or AdamW"),
}


def options_of(name: str) -> tuple[str, ...]:
    """The option names ``-o KEY=VALUE`` accepts for optimizer ``name``."""
    return _spec(name).options


def _spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None


def build_optimizer(name: str, model: nn.Module | Iterable[Any], lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0, **options: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` for ``model`` (a module, or an iterable of parameters / param groups).

    ``options`` are optimizer-specific (see :data:`OPTIMIZERS` / :func:`options_of`); unknown names and
    invalid values raise :class:`ConfigError`.
    """
    spec = _spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for optimizer {name!r}; "
                          f"valid options: {', '.join(spec.options) or 'none'}")
    for key, val in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(f"{key} must be a number, got {val!r}")
    if lr <= 0:
        raise ConfigError(f"learning rate must be positive, got {lr}")
    params = model.parameters() if isinstance(model, nn.Module) else model
    if "betas" in options and isinstance(options["betas"], list):
        options["betas"] = tuple(options["betas"])
    try:
        return spec.build(params, lr, momentum, weight_decay, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for optimizer {name!r}: {exc}") from None


def grad_evals_per_step(name: str, options: dict[str, Any] | None = None) -> int:
    """Minibatch gradient evaluations one step of optimizer ``name`` costs with ``options``."""
    o = options or {}
    _spec(name)
    if name == "entropy-sgd":
        return max(int(o.get("inner_steps", 20)), 1)
    if name == "replicated-sgd":
        return int(o.get("replicas", 4))
    if name == "sam":
        return 2
    return 1
