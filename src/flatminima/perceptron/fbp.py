"""Focusing belief propagation (fBP; Baldassi et al., PNAS 2016) for binary perceptrons and committees.

fBP is BP on y replicas of the machine, each coupled to a centre configuration with strength gamma
(the robust-ensemble measure), with the centre traced out. With replica-symmetric messages every
replica's weight i receives, besides the messages of its own patterns (data field H_i = sum_mu u_{mu,i}),
the message of the centre built from the other y - 1 replicas,
``g_i = atanh(tanh(gamma) tanh((y - 1) atanh(tanh(gamma) tanh(H_i))))``, computed from the data field of
the previous sweep. The protocol used here is the reinforcement one: gamma = inf, where ``g_i = (y - 1) H_i``,
and y = 1 / (1 - x) for x = r, 2r, ... <= 0.999, which is equivalent to BP with reinforcement. Raising y
during the run concentrates the measure on the densest regions of solutions; the candidate solution is
the centre's sign, sign(H_i).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .bp import sweep
from .models import n_errors, patterns


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
    r: float = 0.05,
    iters_per_step: int = 5,
    damping: float = 0.5,
    tol: float = 1e-4,
    device=None,
    progress: bool = False,
) -> SolverResult:
    """Focusing BP: find a +-1 weight vector classifying all patterns (X (P, N), y (P,)).

    The reinforcement protocol runs y = 1 / (1 - r t) for t = 1, 2, ... while r t <= 0.999; each step runs
    up to ``iters_per_step`` damped parallel sweeps (stops early when max |du| < tol). Stops as soon as
    sign(H) has zero training errors. Returns a :class:`SolverResult` (steps = sweeps; history: errors
    and y per focusing step).
    """
    pat = patterns(X, y, K=K, tree=tree, device=device)
    if not 0 < r < 1:
        raise ConfigError(f"the reinforcement step r must be in (0, 1), got {r}")
    if iters_per_step < 1:
        raise ConfigError("iters_per_step must be >= 1")
    if not 0 <= damping < 1:
        raise ConfigError(f"damping must be in [0, 1), got {damping}")
    xi = pat.xi
    u = torch.zeros_like(xi)
    t0 = time.perf_counter()
    H = u.sum(0)
    sweeps = 0
    history = []
    best_w, best_err = torch.where(H >= 0, 1.0, -1.0).to(xi.dtype), pat.P + 1
    replicas = [1.0 / (1.0 - r * t) for t in range(1, int(0.999 / r) + 1)]  # x = r t <= 0.999
    bar = tqdm(total=len(replicas), desc="focusing BP", unit="step", disable=not progress, leave=False)
    for yy in replicas:
        bar.update(1)
        for _ in range(iters_per_step):
            h_ext = (yy - 1.0) * H  # the centre's field at gamma = inf
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
        history.append({"y": yy, "errors": err, "sweeps": sweeps})
        if best_err == 0:
            break
    bar.close()
    return SolverResult(best_w.reshape(-1), best_err, best_err == 0, sweeps, time.perf_counter() - t0, history)
