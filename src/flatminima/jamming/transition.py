"""Locating the jamming transition N*: runs at one (P, N, depth, seed), bisection over N, sweeps.

A run (:func:`jamming_run`) builds the data and the network, minimises the hinge loss to a certified outcome
(:mod:`.minimize`, :mod:`.certify`) and classifies it (:func:`classify`):

``"sat"``         zero loss, certified exactly;
``"jammed"``      a certified local minimum with L > 0 and N_Delta > 0.1 N (the rule of the authors' code);
``"in_between"``  a certified local minimum with L > 0 but N_Delta <= 0.1 N (counted with the SAT side, as
                  the authors' rule does);
``"kink"``        a ReLU point with only the weaker nonsmooth first-order certificate;
``"unresolved"``  no certificate within the budget (still descending, or a saddle it could not leave).

Only "jammed" runs are ever counted as jammed. :func:`find_threshold` is a generic bracketing bisection
over an integer parameter for a (noisy) monotone oracle; :func:`locate_nstar` applies it per seed with the
oracle "SAT side" (sat or in_between), then reports the *certified* bracket: its upper end is a certified
SAT-side run, its lower end the largest N below it whose run is certified jammed (searching further down
when the bisection's own lower end was not certified).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.mlp import ACTIVATIONS, widths_for_params
from .certify import CERTIFIED_MINIMA
from .minimize import METHODS, minimize
from .problem import HingeProblem, fashion_pca_data, n_params, network, random_data

__all__ = ["RunConfig", "jamming_run", "find_threshold", "Threshold", "locate_nstar", "classify", "OUTCOMES"]

DATASETS = ("random", "fashion-pca")
#: A run is jammed when N_Delta > JAMMED_FRACTION * N (the rule of the authors' transition search).
JAMMED_FRACTION = 0.1
OUTCOMES = ("sat", "jammed", "in_between", "kink", "unresolved")


def classify(certificate: str, n_delta: int, n: int) -> str:
    """The outcome of a run from its certificate and N_Delta (``n``: the parameter count N of the rule)."""
    if certificate == "zero_loss":
        return "sat"
    if certificate in CERTIFIED_MINIMA:
        return "jammed" if n_delta > JAMMED_FRACTION * n else "in_between"
    if certificate == "kink":
        return "kink"
    return "unresolved"


@dataclass
class RunConfig:
    """One run: data (``"random"`` or ``"fashion-pca"``), P patterns in dimension d, a network of depth
    ``depth`` with about N parameters (counted as ``count``), activation, seed (data and initialisation),
    and the minimiser's method and budgets: first-order iterations, second-order polish iterations, and a
    wall-clock cap on the polish (a safety net; the iteration budgets make runs reproducible)."""

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
    polish: int = 2000
    polish_time: float | None = 300.0
    time_limit: float | None = None
    device: str | None = None

    def validate(self) -> None:
        """Raise ConfigError unless every field is of the right kind and in range."""
        for name in ("P", "N", "d", "depth", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.polish, bool) or not isinstance(self.polish, int) or self.polish < 0:
            raise ConfigError(f"polish must be an integer >= 0, got {self.polish!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("polish_time", "time_limit"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds or None, got {value!r}")
        choices = {"data": DATASETS, "activation": tuple(ACTIVATIONS), "method": METHODS,
                   "count": ("weights", "all", "relu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


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
    """Minimise one instance to a certified outcome; returns a JSON-able record.

    Keys: P, N (requested), N_actual (as ``count`` counts), n_all (all parameters), widths, loss, n_delta,
    grad_norm, train_errors, certificate and its numbers (grad_rel, lambda_min, lambda_max, lambda_ratio,
    kinks, ...), iterations, polish_iterations, seconds, ``outcome`` (:func:`classify`), ``sat``, ``jammed``
    (outcome == "jammed": certified minimum with N_Delta > 0.1 N), and with ``keep_delta`` the stabilities ``delta`` (list), with ``keep_theta`` the
    parameters.
    """
    problem, model = make_problem(cfg)
    res = minimize(problem, method=cfg.method, max_iter=cfg.max_iter, polish=cfg.polish, time_limit=cfg.time_limit,
                   polish_time=cfg.polish_time)
    n_act = n_params(model, cfg.count)
    outcome = classify(res.certificate, res.n_delta, n_act)
    out = {
        "P": cfg.P, "N": cfg.N, "N_actual": n_act, "n_all": problem.N, "widths": list(model.widths),
        **res.as_dict(), "outcome": outcome, "sat": outcome == "sat", "jammed": outcome == "jammed",
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
    max_down: int = 4,
    **run_options: Any,
) -> dict[str, Any]:
    """N* for P patterns: bisection over N per seed (initial bracket around P / guess), on certified outcomes.

    The oracle at N is "SAT side": the run certified zero loss, or a minimum with N_Delta <= 0.1 N (the
    authors' rule). Runs that certify nothing, or only the weaker "kink" certificate, answer False to keep
    the search going upwards but never serve as the lower end of the reported bracket: that is the largest
    evaluated N below the upper end whose run is certified *jammed* (if the bisection's lower end is not,
    up to ``max_down`` further runs at N / 1.25, N / 1.25^2, ... look for one). Brackets and N* are in
    parameters actually present (``N_actual``: the fractional widths round the requested N down, and
    requests that give the same network share one run). N* is the midpoint of the certified bracket.

    ``done``: records of runs already computed, keyed by (seed, N) (a resumed sweep skips them);
    ``progress(record)`` is called after every new run (to checkpoint it). ``keep=True`` keeps the
    stabilities and parameters of every run (keys ``delta``, ``theta``); the certified jammed run at each
    seed's lower bracket end is returned under ``jammed_runs``. Returns a dict: ``nstar`` (per-seed
    estimates), ``bracket`` (per seed, [lo, hi] certified, in N_actual; lo is None when no certified jammed run
    was found), ``certified`` (per seed: both ends certified),
    ``nstar_mean``, ``nstar_std``, ``P_over_nstar`` (and its mean and std), ``runs`` (every run record),
    ``outcomes`` (counts over the runs) and the jump ``jump`` (N_Delta / N of the jammed run at each
    certified lower end).
    """
    runs: list[dict[str, Any]] = []
    stars, jumps, jammed_runs, brackets, certified = [], [], [], [], []
    for seed in seeds:
        recs: dict[int, dict[str, Any]] = {}
        by_widths: dict[tuple[int, ...], dict[str, Any]] = {}

        def run_at(N: int, seed=seed) -> dict[str, Any]:
            if N in recs:
                return recs[N]
            count = run_options.get("count", "weights")
            widths = tuple(widths_for_params(N, d, depth, 1, count)[1])
            if widths in by_widths:
                # the fractional widths map several N onto one network: the same seed gives the same run
                rec = {**by_widths[widths], "N": N}
            else:
                if done is not None and (seed, N) in done:
                    rec = done[(seed, N)]
                else:
                    cfg = RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=seed, data=data,
                                    **run_options)
                    rec = {**jamming_run(cfg, keep_delta=keep, keep_theta=keep), "seed": seed, "depth": depth,
                           "activation": activation}
                    if progress is not None:
                        progress(rec)
                runs.append(rec)
                by_widths[widths] = rec
            recs[N] = rec
            return rec

        def oracle(N: int) -> tuple[bool, dict]:
            rec = run_at(N)
            return rec.get("outcome", "sat" if rec["sat"] else "jammed") in ("sat", "in_between"), rec

        lo = max(int(P / (guess * 1.5)), 2)
        hi = max(int(P * 1.5 / guess), lo + 1)
        th = find_threshold(oracle, lo, hi, rtol=rtol, x_min=2)
        below = [N for N, r in recs.items() if N < th.hi and r["jammed"]]
        N = th.lo
        for _ in range(max_down if not below else 0):
            N = int(N / 1.25)
            if N < 2:
                break
            if run_at(N)["jammed"]:
                below = [N]
                break
        lo_c = max(below) if below else None
        # the bracket in parameters actually present (the fractional widths round N down)
        hi_a = recs[th.hi]["N_actual"]
        lo_a = recs[lo_c]["N_actual"] if lo_c is not None else None
        brackets.append([lo_a, hi_a])
        certified.append(lo_c is not None)
        stars.append(0.5 * (lo_a + hi_a) if lo_c is not None else 0.5 * (recs[th.lo]["N_actual"] + hi_a))
        if lo_c is not None:
            jumps.append(recs[lo_c]["n_delta_over_N"])
            jammed_runs.append(recs[lo_c])
    stars_a = np.asarray(stars, dtype=float)
    ratio = P / stars_a
    counts = {o: sum(1 for r in runs if r.get("outcome") == o) for o in OUTCOMES}
    return {
        "P": P, "depth": depth, "activation": activation, "data": data, "seeds": list(seeds),
        "nstar": stars, "bracket": brackets, "certified": certified, "nstar_mean": float(stars_a.mean()),
        "nstar_std": float(stars_a.std(ddof=1)) if len(stars) > 1 else 0.0,
        "P_over_nstar": [float(r) for r in ratio], "P_over_nstar_mean": float(ratio.mean()),
        "P_over_nstar_std": float(ratio.std(ddof=1)) if len(stars) > 1 else 0.0,
        "jump": jumps, "runs": runs, "jammed_runs": jammed_runs, "outcomes": counts,
    }
