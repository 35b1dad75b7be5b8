"""Fully-connected networks, including the fractional-width construction of the jamming studies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


class Erf(nn.Module):
    """erf activation (the error function), as in mean-field and kernel studies."""

    #: applied elementwise: batched forward passes treat it like torch's activations
    elementwise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "erf": Erf,
    "linear": nn.Identity,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """Fully-connected network ``d_in -> widths[0] -> ... -> widths[-1] -> d_out``.

    Inputs of any shape (P, ...) are flattened to (P, d_in). Output (P, d_out).
    """

    def __init__(
        self,
        d_in: int,
        widths: Sequence[int],
        d_out: int,
        activation_name: str = "relu",
        bias: bool = True,
        init: str = "default",
    ) -> None:
        widths = [int(w) for w in widths]
        if d_in < 1 or d_out < 1 or any(w < 1 for w in widths):
            raise ConfigError(f"layer sizes must be positive, got d_in={d_in}, widths={widths}, d_out={d_out}")
        layers: list[nn.Module] = [nn.Flatten()]
        sizes = [d_in, *widths]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b, bias=bias), activation(activation_name)]
        layers.append(nn.Linear(sizes[-1], d_out, bias=bias))
        super().__init__(*layers)
        self.d_in, self.widths, self.d_out, self.activation_name = d_in, widths, d_out, activation_name
        if init not in ("default", "orthogonal", "normal"):
            raise ConfigError(f"init must be 'default', 'orthogonal' or 'normal', got {init!r}")
        if init != "default":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    if init == "orthogonal":
                        nn.init.orthogonal_(m.weight)
                    else:
                        nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @property
    def n_weights(self) -> int:
        """Number of weights (biases excluded), the N of the jamming papers."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    @property
    def n_neurons(self) -> int:
        return sum(self.widths)


def mlp(
    d_in: int,
    widths: Sequence[int] | int,
    d_out: int = 10,
    activation: str = "relu",
    bias: bool = True,
    init: str = "default",
) -> MLP:
    """An MLP of any depth and width. ``widths``: a list of hidden widths (or one int: one hidden layer)."""
    if isinstance(widths, int):
        widths = [widths]
    return MLP(d_in, widths, d_out, activation, bias, init)


def fractional_widths(h: float, depth: int) -> list[int]:
    """Hidden widths for a fractional width ``h``: layer i (0-based) gets ``int(h + 1 - (i + 1) / depth)``.

    The fractional part of h spreads extra neurons over the layers, so the parameter count can be tuned
    finely (the construction of Geiger et al.'s code).
    """
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    # the tiny offset makes grid points h = k / depth exact despite floating-point rounding
    return [max(1, int(h + 1 - (i + 1) / depth + 1e-9)) for i in range(depth)]


def count_params(d_in: int, widths: Sequence[int], d_out: int, count: str = "weights") -> int:
    """Parameter count of an MLP: ``"weights"`` (biases excluded, as the jamming papers count),
    ``"all"`` (weights and biases) or ``"relu"`` (weights minus one per hidden neuron: ReLU homogeneity)."""
    sizes = [d_in, *widths, d_out]
    w = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if count == "weights":
        return w
    if count == "all":
        return w + sum(widths) + d_out
    if count == "relu":
        return w - sum(widths)
    raise ConfigError(f"count must be 'weights', 'all' or 'relu', got {count!r}")


def widths_for_params(N: int, d_in: int, depth: int, d_out: int = 1, count: str = "weights") -> tuple[float, list[int]]:
    """The fractional width h (and the resulting integer widths) whose parameter count is the largest <= N.

    Returns ``(h, widths)``. The count is monotone in h, so h is found by bisection on a fine grid of
    fractional widths (steps of 1/depth, the resolution of :func:`fractional_widths`).
    """
    if N < 1:
        raise ConfigError(f"target parameter count must be positive, got {N}")

    def n_of(h: float) -> int:
        return count_params(d_in, fractional_widths(h, depth), d_out, count)

    if n_of(1.0) > N:
        raise ConfigError(f"N={N} is below the smallest network (width 1) for d_in={d_in}, depth={depth}")
    lo, hi = 0, 1  # in units of 1/depth, h = 1 + k / depth
    while n_of(1 + hi / depth) <= N:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_of(1 + mid / depth) <= N:
            lo = mid
        else:
            hi = mid
    h = 1 + lo / depth
    return h, fractional_widths(h, depth)


def mlp_for_params(
    N: int,
    d_in: int,
    depth: int,
    d_out: int = 1,
    activation: str = "relu",
    count: str = "weights",
    bias: bool = True,
    init: str = "default",
) -> MLP:
    """A depth-``depth`` MLP whose parameter count (as ``count`` defines it) is the largest <= N.

    Widths are fractional (see :func:`fractional_widths`), so N is hit to within one neuron's fan-in.
    """
    _, widths = widths_for_params(N, d_in, depth, d_out, count)
    return MLP(d_in, widths, d_out, activation, bias, init)
