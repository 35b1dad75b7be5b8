"""Locating the jamming transition N*: runs at one (P, N, depth, seed), bisection over N, sweeps.

A run (:func:`jamming_run`) builds the data and the network, minimises the hinge loss to a certified
minimum and classifies the outcome with the rule of the authors' code: jammed when N_Delta > 0.1 N
(SAT runs end with L = 0 exactly; the rare runs in between stop with a handful of unsatisfied
constraints near N*).
:func:`find_threshold` is a generic bracketing bisection over an integer parameter for a (noisy) monotone
oracle; :func:`locate_nstar` applies it per seed and aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .minimize import minimize
from .problem import HingeProblem, fashion_pca_data, n_params, network, random_data

__all__ = ["RunConfig", "jamming_run", "find_threshold", "Threshold", "locate_nstar"]

DATASETS = ("random", "fashion-pca")
#: A run is jammed when N_Delta > JAMMED_FRACTION * N (the rule of the authors' transition search).
JAMMED_FRACTION = 0.1


@dataclass
class RunConfig:
    """One run: data (``"random"`` or ``"fashion-pca"``), P patterns in dimension d, a network of depth
    ``depth`` with about N parameters (counted as ``count``), activation, seed (data and initialisation),
    and the minimiser's method, budget and options."""

    P: int
    N: int
    depth: int = 3
    d: int = 10
    activation: str = "relu"
    seed: int = 0
    data: str = "random"
    count: str = "weights"
    init: str = "orthogonal"
    method: str = "fast"
    max_iter: int = 100_000
    time_limit: float | None = None
    device: str | None = None

    def validate(self) -> None:
        if self.P < 1 or self.N < 1 or self.d < 1 or self.depth < 1:
            raise ConfigError(f"P, N, d and depth must be positive, got {self.P}, {self.N}, {self.d}, {self.depth}")
        if self.data not in DATASETS:
            raise ConfigError(f"data must be one of {DATASETS}, got {self.data!r}")


def make_problem(cfg: RunConfig) -> tuple[HingeProblem, Any]:
    """The (problem, model) of a run config."""
    cfg.validate()
    if cfg.data == "random":
        X, y = random_data(cfg.P, cfg.d, seed=cfg.seed)
    else:
        X, y, _, _ = fashion_pca_data(cfg.P, cfg.d, seed=cfg.seed)
    model = network(cfg.N, cfg.d, cfg.depth, cfg.activation, seed=cfg.seed, count=cfg.count, init=cfg.init)
    return HingeProblem(model, X, y, device=cfg.device), model


def jamming_run(cfg: RunConfig, keep_delta: bool = False, keep_theta: bool = False) -> dict[str, Any]:
    """Minimise one instance; returns a JSON-able record.

    Keys: P, N (requested), N_actual (as ``count`` counts), n_all (all parameters), widths, loss, n_delta,
    grad_norm, train_errors, certificate, iterations, seconds, sat (certified L = 0), jammed (N_Delta >
    0.1 N, the authors' rule; runs in between are the rare ones that stop with a handful of unsatisfied
    constraints near N*),
    and with ``keep_delta`` the stabilities ``delta`` (list), with ``keep_theta`` the parameters.
    """
    problem, model = make_problem(cfg)
    res = minimize(problem, method=cfg.method, max_iter=cfg.max_iter, time_limit=cfg.time_limit)
    n_act = n_params(model, cfg.count)
    # a plateau with few unsatisfied constraints is typical of a run that is still slowly emptying (the
    # authors' "stopped too early" runs): continue with a 10x stricter plateau test over a 3x longer window
    if res.certificate == "plateau" and res.n_delta <= 0.1 * n_act and res.iterations < cfg.max_iter:
        more = minimize(problem, res.theta, method=cfg.method, max_iter=cfg.max_iter - res.iterations,
                        ftol=1e-4, stable=30, time_limit=cfg.time_limit)
        more.iterations += res.iterations
        more.seconds += res.seconds
        res = more
    out = {
        "P": cfg.P, "N": cfg.N, "N_actual": n_act, "n_all": problem.N, "widths": list(model.widths),
        **res.as_dict(), "sat": res.certificate == "zero_loss", "jammed": res.n_delta > JAMMED_FRACTION * n_act,
        "n_delta_over_N": res.n_delta / n_act,
    }
    if keep_delta:
        out["delta"] = problem.stabilities(res.theta).reshape(-1).tolist()
    if keep_theta:
        out["theta"] = res.theta.tolist()
    return out


@dataclass
class Threshold:
    """Result of :func:`find_threshold`: the bracket ``lo < x* <= hi`` (oracle False at lo, True at hi),
    the estimate ``(lo + hi) / 2`` and every evaluation ``(x, oracle value, record)``."""

    lo: int
    hi: int
    evaluations: list[tuple[int, bool, Any]] = field(default_factory=list)

    @property
    def estimate(self) -> float:
        return 0.5 * (self.lo + self.hi)


def find_threshold(
    oracle: Callable[[int], bool | tuple[bool, Any]],
    lo: int,
    hi: int,
    rtol: float = 0.05,
    max_evals: int = 40,
    x_min: int = 1,
    x_max: int = 10**9,
) -> Threshold:
    """Bisection for the threshold of an integer monotone oracle (False below, True at and above x*).

    ``oracle(x)`` returns a bool, or ``(bool, record)`` to keep a record of each evaluation. The initial
    bracket [lo, hi] is widened geometrically (factor 2, within [x_min, x_max]) until oracle(lo) is False
    and oracle(hi) is True; then the bracket is halved (geometric midpoints) until ``hi - lo <=
    max(1, rtol * lo)``. Raises :class:`ConfigError` when no bracket is found within ``max_evals``.
    """
    if not 1 <= x_min <= lo < hi <= x_max or rtol < 0:
        raise ConfigError(f"need x_min <= lo < hi <= x_max and rtol >= 0, got {x_min}, {lo}, {hi}, {x_max}, {rtol}")
    evals: list[tuple[int, bool, Any]] = []
    cache: dict[int, bool] = {}

    def ask(x: int) -> bool:
        if x in cache:
            return cache[x]
        if len(evals) >= max_evals:
            raise ConfigError(f"threshold search ran out of its {max_evals} evaluations")
        r = oracle(x)
        val, rec = (bool(r[0]), r[1]) if isinstance(r, tuple) else (bool(r), None)
        evals.append((x, val, rec))
        cache[x] = val
        return val

    while ask(hi) is False:
        if hi >= x_max:
            raise ConfigError(f"the oracle is False up to x_max={x_max}: no threshold")
        lo, hi = hi, min(2 * hi, x_max)
    while ask(lo) is True:
        if lo <= x_min:
            raise ConfigError(f"the oracle is True down to x_min={x_min}: no threshold")
        hi, lo = lo, max(lo // 2, x_min)
    while hi - lo > max(1.0, rtol * lo):
        mid = int(round(math.sqrt(lo * hi)))
        mid = min(max(mid, lo + 1), hi - 1)
        if ask(mid):
            hi = mid
        else:
            lo = mid
    return Threshold(lo=lo, hi=hi, evaluations=evals)


def locate_nstar(
    P: int,
    depth: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
    d: int = 10,
    activation: str = "relu",
    data: str = "random",
    rtol: float = 0.05,
    guess: float = 3.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    keep: bool = False,
    done: dict[tuple[int, int], dict[str, Any]] | None = None,
    **run_options: Any,
) -> dict[str, Any]:
    """N* for P patterns: bisection over N per seed (initial bracket around P / guess).

    ``done``: records of runs already computed, keyed by (seed, N) (a resumed sweep skips them);
    ``progress(record)`` is called after every new run (to checkpoint it). ``keep=True`` keeps the stabilities and parameters of every run (keys ``delta``, ``theta``); the
    jammed run at each seed's lower bracket end is returned under ``jammed_runs``.
    The oracle at N is "not jammed" (N_Delta <= 0.1 N at the certified minimum, the authors' rule). Returns a
    dict: ``nstar`` (per-seed estimates), ``nstar_mean``, ``nstar_std``, ``P_over_nstar`` (mean and std of
    P / N*), ``runs`` (every run record, for the N_Delta / N curve) and the jump ``jump`` (smallest
    N_Delta / N among jammed runs at the bracket's lower end).
    """
    runs: list[dict[str, Any]] = []
    stars, jumps, jammed_runs = [], [], []
    for seed in seeds:
        def oracle(N: int, seed=seed) -> tuple[bool, dict]:
            if done is not None and (seed, N) in done:
                rec = done[(seed, N)]
            else:
                cfg = RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=seed, data=data, **run_options)
                rec = {**jamming_run(cfg, keep_delta=keep, keep_theta=keep), "seed": seed, "depth": depth,
                       "activation": activation}
                if progress is not None:
                    progress(rec)
            runs.append(rec)
            return not rec["jammed"], rec

        lo = max(int(P / (guess * 1.5)), 2)
        hi = max(int(P * 1.5 / guess), lo + 1)
        th = find_threshold(oracle, lo, hi, rtol=rtol, x_min=2)
        stars.append(th.estimate)
        at_lo = [r for x, v, r in th.evaluations if x == th.lo]
        if at_lo:
            jumps.append(at_lo[0]["n_delta_over_N"])
            jammed_runs.append(at_lo[0])
    stars_a = np.asarray(stars, dtype=float)
    ratio = P / stars_a
    return {
        "P": P, "depth": depth, "activation": activation, "data": data, "seeds": list(seeds),
        "nstar": stars, "nstar_mean": float(stars_a.mean()), "nstar_std": float(stars_a.std(ddof=1)) if len(stars) > 1 else 0.0,
        "P_over_nstar": [float(r) for r in ratio], "P_over_nstar_mean": float(ratio.mean()),
        "P_over_nstar_std": float(ratio.std(ddof=1)) if len(stars) > 1 else 0.0,
        "jump": jumps, "runs": runs, "jammed_runs": jammed_runs,
    }

