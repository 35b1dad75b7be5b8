"""Focusing belief propagation (fBP; Baldassi et al., PNAS 2016) for binary perceptrons and committees.

fBP is BP on y replicas of the machine, each coupled to a centre configuration with strength gamma
(the robust-ensemble measure), with the centre traced out. With replica-symmetric messages every
replica's weight i receives, besides the messages of its own patterns (data field H_i = sum_mu u_{mu,i}),
the message of the centre built from the other y - 1 replicas:

    g_i = T(gamma, (y - 1) * T(gamma, H_i)),      T(gamma, x) = atanh(tanh(gamma) tanh(x)),

computed from the data field of the previous sweep. gamma = inf gives g_i = (y - 1) H_i. Raising
y and gamma during the run (the *focusing protocol*) concentrates the measure on the densest
regions of solutions; the candidate solution is the centre's sign, sign(H_i).

Protocols (sequences of (gamma, y) steps, each run for at most ``iters_per_step`` sweeps or until
the messages converge):

* :func:`reinforcement` (gamma = inf, y = 1 / (1 - x), x = r, 2r, ... < 1): equivalent to BP with
  reinforcement;
* :func:`scoping` (y fixed, gamma = gamma0 (1 + rate)^t): the scoping protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .bp import atanh_tanh_product, sweep
from .models import n_errors, patterns


def reinforcement(r: float = 0.01, x_max: float = 0.999) -> list[tuple[float, float]]:
    """Standard reinforcement protocol: gamma = inf and y = 1 / (1 - x) for x = r, 2r, ..., <= x_max."""
    if not 0 < r < 1:
        raise ConfigError(f"the reinforcement step r must be in (0, 1), got {r}")
    n = int(x_max / r)
    return [(math.inf, 1.0 / (1.0 - r * t)) for t in range(1, n + 1)]


def scoping(y: float = 7.0, gamma0: float = 0.05, rate: float = 0.1, gamma_max: float = 20.0) -> list[tuple[float, float]]:
    """Scoping protocol: y fixed, gamma = gamma0 (1 + rate)^t up to gamma_max, then gamma = inf."""
    if y < 1 or gamma0 <= 0 or rate <= 0:
        raise ConfigError("scoping needs y >= 1, gamma0 > 0 and rate > 0")
    out, g = [], gamma0
    while g < gamma_max:
        out.append((g, float(y)))
        g *= 1.0 + rate
    out.append((math.inf, float(y)))
    return out


def focusing_field(H: torch.Tensor, gamma: float, y: float) -> torch.Tensor:
    """Field g = T(gamma, (y-1) T(gamma, H)) sent by the traced-out centre to a replica's weights."""
    if y == 1:
        return torch.zeros_like(H)
    return atanh_tanh_product(gamma, (y - 1.0) * atanh_tanh_product(gamma, H))


@dataclass
class SolverResult:
    """Outcome of a solver. w: (K*n,) +-1 weights (float); errors: training errors of w;
    solved: errors == 0; steps: iterations (sweeps, flips or epochs, per solver); seconds;
    history: per-iteration diagnostics (solver dependent)."""

    w: torch.Tensor
    errors: int
    solved: bool
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def fbp(
    X,
    y,
    K: int = 1,
    tree: bool = True,
    protocol: Iterable[tuple[float, float]] | None = None,
    iters_per_step: int = 5,
    damping: float = 0.5,
    tol: float = 1e-4,
    seed: int | None = None,
    device=None,
    progress: bool = False,
) -> SolverResult:
    """Focusing BP: find a +-1 weight vector classifying all patterns (X (P, N), y (P,)).

    protocol: sequence of (gamma, y) (default :func:`reinforcement` with r = 0.05); each step runs up
    to ``iters_per_step`` damped parallel sweeps (stops early when max |du| < tol). Stops as soon as
    sign(H) has zero training errors. ``seed`` adds 1e-3 noise to the initial messages.
    Returns a :class:`SolverResult` (steps = sweeps; history: errors and (gamma, y) per focusing step).
    """
    pat = patterns(X, y, K=K, tree=tree, device=device)
    if iters_per_step < 1:
        raise ConfigError("iters_per_step must be >= 1")
    if not 0 <= damping < 1:
        raise ConfigError(f"damping must be in [0, 1), got {damping}")
    protocol = list(protocol) if protocol is not None else reinforcement(0.05)
    if not protocol:
        raise ConfigError("the focusing protocol is empty")
    xi = pat.xi
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
        u = (1e-3 * torch.randn(xi.shape, generator=g, dtype=xi.dtype)).to(xi.device)
    else:
        u = torch.zeros_like(xi)
    t0 = time.perf_counter()
    H = u.sum(0)
    sweeps = 0
    history = []
    best_w, best_err = torch.where(H >= 0, 1.0, -1.0).to(xi.dtype), pat.P + 1
    from tqdm.auto import tqdm

    bar = tqdm(total=len(protocol), desc="focusing BP", unit="step", disable=not progress, leave=False)
    for gamma, yy in protocol:
        bar.update(1)
        if yy < 1:
            raise ConfigError(f"the number of replicas y must be >= 1, got {yy}")
        for _ in range(iters_per_step):
            h_ext = focusing_field(H, gamma, yy)
            new = torch.nan_to_num(sweep(pat, u, h_ext), nan=0.0)
            delta = float((new - u).abs().max()) if u.numel() else 0.0
            u = damping * u + (1 - damping) * new
            H = u.sum(0)
            sweeps += 1
            w = torch.where(H >= 0, 1.0, -1.0).to(xi.dtype)
            err = int(n_errors(w, pat))
            if err < best_err:
                best_w, best_err = w, err
            if err == 0 or delta < tol:
                break
        history.append({"gamma": gamma, "y": yy, "errors": err, "sweeps": sweeps})
        if best_err == 0:
            break
    bar.close()
    return SolverResult(best_w.reshape(-1), best_err, best_err == 0, sweeps, time.perf_counter() - t0, history)
