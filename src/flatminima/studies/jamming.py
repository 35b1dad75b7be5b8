"""Study ``jamming``: the jamming transition of square ReLU networks fitting random data.

Geiger, Spigler, d'Ascoli, Sagun, Baity-Jesi, Biroli, Wyart, "Jamming transition as a paradigm to
understand the loss landscape of deep neural networks", Phys. Rev. E 100, 012115 (2019) (code:
mariogeiger/nn_jamming).

Protocol (the published geometry, at a size one CPU can certify):

* Data: P random Gaussian patterns in dimension d = h with random +-1 labels (centred, norm sqrt(d)); the
  data and the initialisation (orthogonal weights, zero biases) of seed s are fixed by s.
* Networks: *square* ReLU networks as in the authors' runs (``--dim h --width h``): depth L = 2, 3, 5 hidden
  layers of width h, one output; N = L h^2 + h weights (biases excluded, as the papers count).
* A scan over N, not a bisection: at every depth a grid of widths h chosen so that P/N spans about 1.5 to 4,
  every (depth, h, seed) one point. A scan measures what a bisection cannot: how many certified runs end
  between SAT and jammed.
* Dynamics of every point: the published one first, full-batch Adam in float64 for a fixed number of steps
  with a step-decaying rate (:mod:`flatminima.jamming.fullbatch`; the authors: lr 1e-4 divided by 10 every
  250k of 2M steps; here ``adam_steps`` steps from ``lr`` divided by 10 every ``decay_every``), ending early
  only at exact zero loss. No stall rule decides when it hands over. Then an L-BFGS bridge
  (:mod:`flatminima.jamming.bfgs`, at the pushed margin first so that zero loss is reached exactly when it
  exists nearby); a run still at L > 0 then descends by a softplus homotopy
  (:func:`flatminima.jamming.bfgs.softplus_homotopy`: L-BFGS on the network with every ReLU replaced by
  softplus_beta, beta = 1e2 ... 1e12), because near N* the Adam endpoint is not yet a minimum (the
  homotopy lowers L by up to 20 % there) and the minima sit on nested activation kinks that a kink-resolving
  Newton method reaches only in steps shorter than the distance to the next kink. Last, the certified
  polish and the certificate of :func:`flatminima.jamming.minimize` (``first_order=False``).
* Outcomes (:func:`flatminima.jamming.classify`): ``sat`` (zero loss, certified exactly, or a certified
  minimum whose every stability is within 1e-12 kappa of zero), ``jammed`` (a certified local minimum with
  N_Delta > 0.1 N), ``in_between`` (a certified minimum with 0 < N_Delta <= 0.1 N), and the uncertified
  ``kink`` / ``unresolved``.
* The certificate's stationarity tolerance is GTOL = 1e-7 (the nonsmooth KKT residual relative to the force
  scale), not the library's round-off default 1e-10; its second-order test is unchanged (lambda_min >= -1e-9
  lambda_max on the tangent space of the binding kinks, case by case at nested kinks). The homotopy ends
  where float64 no longer resolves a decrease of L, which leaves that residual at 1e-9 to 1e-7, and the
  Newton-KKT polish that would take it to round-off does not model nested kinks. A certified point is
  therefore a point where no descent of L is resolved in float64, with no negative curvature on its kink
  manifold: a minimum to the resolution of the loss, not a round-off-exact one.

Preconditions, per point, in order: (1) a live network (a hidden layer with no unit active on any pattern
makes the output constant); (2) at most 5 % of the unsatisfied patterns (Delta > 0) *stuck* in a dead region
(some hidden layer all off for that pattern: its output is constant nearby and no descent can fit it, an
artefact of layers a few units wide, absent at the published widths of 40-60; dead patterns that are
satisfied, as narrow networks route many of one label there, are harmless); (3) the run ends with a
certificate (zero loss, or a certified local minimum). Runs that fail one are excluded from every
criterion, counted and listed.

From the certified runs:

* N* per depth and seed: the midpoint between the largest N whose run is certified jammed and the smallest
  larger N whose run is certified on the SAT side (sat or in_between); P/N* averaged over seeds with its
  standard error.
* The jump: N_Delta / N of every certified jammed run, and the share of certified runs in between.
* theta and gamma: maximum-likelihood power laws (:func:`flatminima.jamming.jamming_exponents`) of the
  stabilities of the certified jammed runs next to N* (the largest jammed N of each depth and seed), pooled.

Scales: ``default`` uses P = 300 random patterns, 3 seeds, widths chosen so that P/N spans 1.6 to 3.9 at
every depth, 1e5 Adam steps, 1e4 L-BFGS iterations per homotopy stage; about 20 minutes with ``--workers 2``
(P = 500 and 1000 did not fit a 30-minute budget: the cost of a point grows as P N and the time to a minimum
grows near N*). ``paper`` is the published protocol (P = 24 000, N ~ 8k, 2M Adam steps from lr 1e-4): a GPU
or cluster run.

Status (2026-12-02): not recorded as a result, because at the widths a CPU affords the runs are not in the
published regime. A pilot of this default scale (at commit 3d4b032: 30 runs, 1231 s with ``--workers 2``; its
dead-region rule then counted every dead pattern, satisfied or not) counted 10 runs and excluded 16 for
patterns in dead regions, 3 without a certificate and 1 dead network. At depth 2 it measured P/N* =
2.65 +- 0.16, and at depths 3 and 5 no seed kept a certified bracket. Every run it classed "in between" had N_Delta
equal to its number of patterns stuck in dead regions. So with layers of 4 to 9 units, and above all at depth
5, the networks route patterns into regions where a whole layer is off. Some of those patterns stay
unsatisfied and no descent can fit them: the runs become neither SAT nor jammed in the paper's sense. Six more
probes with Adam at lr 1e-3 (single points, ``--set lr=1e-3``) certified none and left 5 to 51 patterns stuck
per run (51 at depth 5, P/N = 1.6). Of the jammed runs that do certify, the certified minima sit on nested
kinks, and the homotopy reaches them to the loss's resolution. Two probes at about P/N = 2.9 with wider layers
ran with this scale's dynamics. At depth 3, h = 10 (P = 900) the run left 89 patterns stuck and took 448
CPU s. At depth 2, h = 12 (P = 870) no pattern was dead, but the homotopy took L from 8.6e-2 (the end of 1e5 Adam
steps at lr 1e-2) down to 6e-4. It was still descending when the polish ran out, so that run ended
uncertified. Both point the same way: the fast Adam schedule (lr 1e-2) is far from a minimum near N*, and it
kills patterns. With the published rate (``--set lr=1e-4 --set decay_every=250000``), the depth-3, h = 10 run
left 4 patterns stuck instead of 89. It did not certify either: residual 1.5e-6, 224 CPU s. At the default
widths the published rate does not save the runs. At depth 3, h = 5 and 6, seeds 0 and 1 (``--set 'depths=[3]'
--set 'widths={"3": [5, 6]}' --set seeds=2`` with that rate) it left 0, 48, 18 and 52 patterns stuck, and none
certified. What would decide the claim: widths of about 20 or more (P of a few thousand, beyond a 30-minute
CPU budget; a GPU scale), and a polish that models nested kinks, so that more of the runs near N* certify. The
``paper`` scale cannot decide it yet either: above N = 3000 the certificate runs on Lanczos instead of a dense
Hessian, and a point on kinks then gets only the weaker ``kink`` certificate, which this study excludes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .claims import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Check,
    Criterion,
    Part,
    Verdict,
    at_least,
    at_most,
    combine,
    in_range,
    mean_stderr,
    not_enough,
    screen,
)
from .registry import Study, Summary, register

NAME = "jamming"
PAPER = ("Geiger, Spigler, d'Ascoli, Sagun, Baity-Jesi, Biroli, Wyart, Phys. Rev. E 100, 012115 (2019); "
         "Spigler et al., J. Phys. A 52, 474001 (2019)")
CLAIM = ("Fitting random data with the quadratic hinge loss, square ReLU networks show a sharp jamming transition "
         "at N*: N_Delta/N jumps from 0 to a finite value, P/N* ~ 3 independent of depth, and at N* the "
         "stabilities are power-law distributed with theta ~ 0.3 and gamma ~ 0.2.")
PUBLISHED = {
    "P_over_nstar": "~3 (2.8-3.3) for L = 2, 3, 5 at N ~ 8k weights, d = h (Fig. 1B)",
    "jump": "jammed runs have N_Delta > 0.4 N; 19 of 128 runs in between (14 of them with N_Delta in [1, 4])",
    "theta": 0.3,
    "gamma": 0.2,
}

#: pass rule constants (fixed before the run)
JUMP_MIN = 0.3  # every certified jammed run has N_Delta / N >= this
BETWEEN_MAX = 0.10  # runs between SAT and jammed: at most this share of the certified runs
RATIO_RANGE = (2.0, 3.5)  # P / N* at every depth
SPREAD_MAX = 0.20  # (max - min) / mean of P / N* across depths
THETA, GAMMA = 0.3, 0.2
CI_HALF_MAX = 0.25  # an exponent whose 95 % interval is wider than +- this is not resolved
MIN_GAPS = 50  # stabilities in a power-law fit
DECADES = 2.0  # the pooled stabilities must span this many decades below the fit's x_max
MIN_CERTIFIED = 10  # certified runs needed for the jump criterion
#: Stationarity tolerance of the certificate (nonsmooth KKT residual relative to the force scale; see the
#: module docstring for why it is not the library's round-off default of 1e-10).
GTOL = 1e-7
#: A certified minimum whose largest stability is below this (times kappa) has zero loss to round-off: SAT.
ROUNDOFF_DELTA = 1e-12
#: A run counts only when at most this share of its unsatisfied patterns (Delta > 0) is *stuck*: in a dead
#: region (some hidden layer all off for the pattern), where its output is constant nearby and no descent can
#: fit it; an artefact of layers a few units wide, absent at the published widths.
STUCK_MAX = 0.05

SCALES = {
    "default": {
        "P": 300, "depths": [2, 3, 5], "seeds": 3,
        "widths": {"2": [6, 7, 8, 9], "3": [5, 6, 7], "5": [4, 5, 6]},
        "adam_steps": 100_000, "lr": 1e-2, "decay_every": 25_000, "bridge_iter": 20_000, "push": 1e-3,
        "homotopy_iter": 10_000, "gtol": GTOL, "polish": 300, "polish_time": 40.0,
    },
    "paper": {
        "P": 24_000, "depths": [2, 3, 5], "seeds": 4,
        "widths": {"2": [54, 56, 58, 60, 62, 64, 66, 68], "3": [46, 48, 50, 52, 54, 56],
                   "5": [36, 38, 40, 42, 44]},
        "adam_steps": 2_000_000, "lr": 1e-4, "decay_every": 250_000, "bridge_iter": 20_000, "push": 1e-3,
        "homotopy_iter": 20_000, "gtol": GTOL, "polish": 2000, "polish_time": 3600.0,
    },
}


def points(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (depth, width h, seed) of the scan."""
    from ..errors import ConfigError

    pts = []
    for depth in cfg["depths"]:
        hs = cfg["widths"].get(str(depth))
        if not hs:
            raise ConfigError(f"no widths given for depth {depth} (option 'widths', key {str(depth)!r})")
        for h in hs:
            if h < 1:
                raise ConfigError(f"widths must be >= 1, got {h} at depth {depth}")
            for seed in range(cfg["seeds"]):
                pts.append({"P": cfg["P"], "depth": int(depth), "h": int(h), "seed": seed, "N": depth * h * h + h,
                            "adam_steps": cfg["adam_steps"], "lr": cfg["lr"], "decay_every": cfg["decay_every"],
                            "bridge_iter": cfg["bridge_iter"], "push": cfg["push"],
                            "homotopy_iter": cfg["homotopy_iter"], "gtol": cfg["gtol"], "polish": cfg["polish"],
                            "polish_time": cfg["polish_time"]})
    return pts


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Adam (fixed steps) -> L-BFGS bridge -> softplus homotopy -> certified polish, on one square network.

    Returns a JSON-able record: the outcome and certificate, the numbers behind them, the state after each
    stage, the CPU seconds of each stage, ``dead_layer`` (a hidden layer with no unit active on any pattern:
    the network's output is constant), ``dead_patterns`` (patterns for which some hidden layer is all off)
    and ``stuck_patterns`` (those of them with Delta > 0), and the stabilities ``delta`` of a certified
    minimum with L > 0.
    """
    import torch

    from ..jamming import HingeProblem, classify, minimize, random_data
    from ..jamming.bfgs import lbfgs_bridge, softplus_homotopy
    from ..jamming.fullbatch import AdamSchedule, adam_fullbatch
    from ..jamming.problem import square_network

    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.perf_counter()
    P, h, depth, seed = point["P"], point["h"], point["depth"], point["seed"]
    X, y = random_data(P, h, seed=seed)
    model = square_network(h, depth, seed=seed)
    problem = HingeProblem(model, X, y)
    N = model.n_weights
    adam = adam_fullbatch(problem, AdamSchedule(steps=point["adam_steps"], lr=point["lr"],
                                                decay_every=point["decay_every"]),
                          record_every=max(1, point["adam_steps"] // 20))
    c1 = time.process_time()
    bridge = lbfgs_bridge(problem, adam.theta, push=point["push"], max_iter=point["bridge_iter"])
    c2 = time.process_time()
    theta, homotopy = bridge.theta, None
    if not bridge.zero_loss:
        homotopy = softplus_homotopy(problem, bridge.theta, max_iter=point["homotopy_iter"])
        theta = homotopy.theta
    c3 = time.process_time()
    res = minimize(problem, theta, first_order=False, push=point["push"], polish=point["polish"],
                   polish_time=point["polish_time"], gtol=point["gtol"])
    c4 = time.process_time()
    outcome = classify(res.certificate, res.n_delta, N)
    delta = problem.stabilities(res.theta).reshape(-1)
    max_delta = float(delta.max())
    if outcome in ("jammed", "in_between") and max_delta <= ROUNDOFF_DELTA * problem.kappa:
        outcome = "sat"  # every stability at round-off from zero: zero loss up to round-off
    dead_layer, dead_patterns, stuck_patterns = _dead_units(problem, res.theta)
    rec = {
        "N": N, "n_all": problem.N, "outcome": outcome, "certificate": res.certificate, "reason": res.reason,
        "loss": res.loss, "n_delta": res.n_delta, "n_delta_over_N": res.n_delta / N, "max_delta": max_delta,
        "grad_rel": res.check.get("grad_rel"), "kink_residual": res.check.get("kink_residual"),
        "lambda_ratio": res.check.get("lambda_ratio"), "kinks": res.check.get("kinks"),
        "dead_layer": dead_layer, "dead_patterns": dead_patterns, "stuck_patterns": stuck_patterns,
        "adam_loss": adam.loss, "adam_n_delta": adam.n_delta, "adam_steps_taken": adam.steps,
        "adam_history": adam.history, "bridge_iterations": bridge.iterations, "bridge_loss": bridge.loss,
        "bridge_n_delta": bridge.n_delta,
        "homotopy_iterations": homotopy.iterations if homotopy else 0,
        "homotopy_loss": homotopy.loss if homotopy else None, "polish_iterations": res.polish_iterations,
        "cpu_adam": c1 - c0, "cpu_bridge": c2 - c1, "cpu_homotopy": c3 - c2, "cpu_polish": c4 - c3,
        "cpu_seconds": c4 - c0, "seconds": time.perf_counter() - t0,
    }
    if res.certificate in ("minimum", "kink_minimum") and res.loss > 0:
        rec["delta"] = delta.tolist()
    return rec


def _dead_units(problem, theta) -> tuple[bool, int, int]:
    """(some hidden layer has no unit active on any pattern, number of patterns with an all-off hidden layer,
    number of those with Delta > 0: *stuck* patterns, whose output is constant nearby)."""
    from ..jamming.fullbatch import relu_layout

    layout = relu_layout(problem)
    a = problem.X.cpu().numpy()
    dead_pattern = np.zeros(a.shape[0], dtype=bool)
    dead_layer = False
    for W, b in layout.views(theta.cpu().numpy())[:-1]:
        a = a @ W.T + (0.0 if b is None else b)
        a = a * (a > 0)
        on = a > 0
        dead_layer = dead_layer or not bool(on.any())
        dead_pattern |= ~on.any(axis=1)
    stuck = dead_pattern & (problem.stabilities(theta).reshape(-1).cpu().numpy() > 0)
    return dead_layer, int(dead_pattern.sum()), int(stuck.sum())


CHECKS = [
    Check("a live network (every hidden layer has a unit active on some pattern)",
          lambda p, r: not r.get("dead_layer", False)),
    Check(f"at most {STUCK_MAX:.0%} of the unsatisfied patterns stuck in a dead region (a hidden layer all off)",
          lambda p, r: r["stuck_patterns"] <= STUCK_MAX * r["n_delta"]),
    Check("certified outcome (zero loss or a certified local minimum)",
          lambda p, r: r["outcome"] in ("sat", "jammed", "in_between")),
]


def nstar_by_seed(runs: list[tuple[int, str]]) -> dict[str, Any] | None:
    """N* of one (depth, seed) from its certified runs ``[(N, outcome)]``: the midpoint of the bracket
    [largest N certified jammed, smallest larger N certified on the SAT side (sat or in_between)].

    Returns ``{"lo", "hi", "nstar", "inversions"}`` (inversions: SAT-side runs below lo, jammed runs above
    hi), or None when either end is missing.
    """
    jammed = [N for N, o in runs if o == "jammed"]
    if not jammed:
        return None
    lo = max(jammed)
    above = [N for N, o in runs if o in ("sat", "in_between") and N > lo]
    if not above:
        return None
    hi = min(above)
    inversions = sum(1 for N, o in runs if (o in ("sat", "in_between") and N < lo))
    return {"lo": lo, "hi": hi, "nstar": 0.5 * (lo + hi), "inversions": inversions}


def _span_decades(x: np.ndarray, x_max: float) -> float:
    s = x[(x > 0) & (x <= x_max)]
    return float(math.log10(x_max / s.min())) if s.size else 0.0


def summarize(cfg: dict[str, Any], results: list[tuple[dict, dict]], out: Path) -> Summary:
    from ..jamming.plots import plot_histograms, plot_ndelta_curve
    from ..jamming.stats import delta_histograms, jamming_exponents, split_sides
    from ..jamming.transition import OUTCOMES

    P = cfg["P"]
    screened = screen(results, CHECKS)
    kept = screened.kept
    measured: dict[str, Any] = {"P": P, "n_runs": len(results), "n_certified": len(kept),
                                "excluded": screened.counts()}
    counts = {o: sum(1 for _, r in results if r["outcome"] == o) for o in OUTCOMES}
    measured["outcomes"] = counts
    kept_counts = {o: sum(1 for _, r in kept if r["outcome"] == o) for o in ("sat", "jammed", "in_between")}
    measured["outcomes_certified"] = kept_counts
    jam = [r for _, r in kept if r["outcome"] == "jammed"]
    measured["n_jammed"] = len(jam)
    measured["n_between"] = kept_counts["in_between"]
    measured["between_fraction"] = kept_counts["in_between"] / len(kept) if kept else None
    measured["jammed_min_n_delta_over_N"] = min((r["n_delta_over_N"] for r in jam), default=None)
    measured["sat_max_n_delta"] = max((r["n_delta"] for _, r in kept if r["outcome"] == "sat"), default=None)
    # ---- N* per depth
    per_depth: dict[str, Any] = {}
    next_to: list[tuple[dict, dict]] = []
    for depth in cfg["depths"]:
        seeds = sorted({p["seed"] for p, _ in results if p["depth"] == depth})
        rows = []
        for seed in seeds:
            runs = [(p["N"], r["outcome"]) for p, r in kept if p["depth"] == depth and p["seed"] == seed]
            b = nstar_by_seed(runs)
            rows.append({"seed": seed, **(b or {})})
            if b is not None:
                next_to += [(p, r) for p, r in kept if p["depth"] == depth and p["seed"] == seed and p["N"] == b["lo"]]
        ratios = [P / row["nstar"] for row in rows if "nstar" in row]
        m, se, n = mean_stderr(ratios)
        per_depth[str(depth)] = {"per_seed": rows, "P_over_nstar": ratios, "mean": m, "stderr": se, "n": n}
    measured["P_over_nstar"] = per_depth
    means = [v["mean"] for v in per_depth.values()]
    if means and all(math.isfinite(x) for x in means):
        measured["P_over_nstar_spread"] = (max(means) - min(means)) / float(np.mean(means))
    else:
        measured["P_over_nstar_spread"] = None
    # ---- exponents at the jammed runs next to N*
    deltas = [np.asarray(r["delta"]) for _, r in next_to if "delta" in r]
    losses = [r["loss"] for _, r in next_to if "delta" in r]
    measured["runs_next_to_nstar"] = len(deltas)
    ex: dict[str, Any] = {}
    if deltas:
        ex = jamming_exponents(deltas, losses)
        pos, neg = split_sides(deltas, losses)
        for name, x in (("theta", pos), ("gamma", neg)):
            if name in ex:
                ex[name]["decades"] = _span_decades(x, ex[name]["x_max"])
                ex[name]["gaps"] = int(x.size)
    measured["exponents"] = ex
    cpu = [r["cpu_seconds"] for _, r in results]
    measured["cpu_seconds_per_point"] = {"mean": float(np.mean(cpu)) if cpu else None,
                                         "max": float(np.max(cpu)) if cpu else None}
    # ---- tables
    tables: dict[str, str] = {}
    lines = ["| depth | h | N | P/N | seed | outcome | certificate | N_Delta/N | L | Adam: L, N_Delta | "
             "CPU s (Adam / bridge / homotopy / polish) | reason |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p, r in sorted(results, key=lambda pr: (pr[0]["depth"], pr[0]["N"], pr[0]["seed"])):
        lines.append(f"| {p['depth']} | {p['h']} | {r['N']} | {P / r['N']:.2f} | {p['seed']} | {r['outcome']} | "
                     f"{r['certificate']} | {r['n_delta_over_N']:.3f} | {r['loss']:.2e} | {r['adam_loss']:.2e}, "
                     f"{r['adam_n_delta']} | {r['cpu_adam']:.0f} / {r['cpu_bridge']:.0f} / {r.get('cpu_homotopy', 0):.0f} / "
                     f"{r['cpu_polish']:.0f} | "
                     f"{r['reason']} |")
    tables["every run"] = "\n".join(lines)
    lines = ["| depth | per seed: certified bracket [jammed N, SAT-side N] | P/N* per seed | P/N* (mean ± s.e.) |",
             "|---|---|---|---|"]
    for depth, v in per_depth.items():
        br = ", ".join(f"s{row['seed']}: [{row['lo']}, {row['hi']}]" if "nstar" in row else f"s{row['seed']}: none"
                       for row in v["per_seed"])
        lines.append(f"| {depth} | {br} | {', '.join(f'{x:.2f}' for x in v['P_over_nstar']) or '-'} | "
                     f"{_pm(v['mean'], v['stderr'])} |")
    lines.append("| published (L = 2, 3, 5) | N ~ 8k, P ~ 24k | - | ~3 (2.8-3.3) |")
    tables["P/N* per depth (certified brackets)"] = "\n".join(lines)
    lines = ["| | value | 95 % interval | gaps in fit / pooled | decades below x_max | published |",
             "|---|---|---|---|---|---|"]
    for name, pub in (("theta", THETA), ("gamma", GAMMA)):
        e = ex.get(name)
        if e:
            lines.append(f"| {name} | {e['value']:.3f} | [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] | {e['n']} / {e['gaps']} | "
                         f"{e['decades']:.1f} | {pub} |")
        else:
            lines.append(f"| {name} | - | - | - | - | {pub} |")
    tables[f"exponents (stabilities of {len(deltas)} certified jammed runs next to N*, pooled)"] = "\n".join(lines)
    if screened.excluded:
        tables["excluded runs"] = screened.table(
            lambda p: f"depth {p['depth']}, h {p['h']}, N {p['N']}, seed {p['seed']}")
    figures = [plot_ndelta_curve([{**r, "P": P, "N_actual": r["N"]} for _, r in results], out / "ndelta_curve.png",
                                 title=f"square ReLU networks, P = {P}, depths {cfg['depths']}")]
    if deltas:
        figures.append(plot_histograms(delta_histograms(deltas, losses), out / "delta_histograms.png", ex,
                                       title="stabilities next to N* (pooled)"))
    excluded_text = ", ".join(f"{n}: {why}" for why, n in screened.counts().items()) or "none"
    verdict = (f"{len(kept)} of {len(results)} runs certified and counted ({kept_counts['sat']} zero loss, "
               f"{kept_counts['jammed']} jammed, {kept_counts['in_between']} in between); "
               f"{len(results) - len(kept)} excluded ({excluded_text}). P/N* = " + "; ".join(f"L = {d}: {_pm(v['mean'], v['stderr'])}" for d, v in per_depth.items())
               + ".")
    notes = (f"P = {P} random patterns; square networks d = h; full-batch Adam in float64, {cfg['adam_steps']} steps "
             f"from lr {cfg['lr']:g} divided by 10 every {cfg['decay_every']} steps (no stall rule), L-BFGS bridge "
             f"(push {cfg['push']:g}), softplus homotopy (beta 1e2 to 1e12, {cfg['homotopy_iter']} L-BFGS iterations "
             f"per stage), certified polish ({cfg['polish']} iterations, {cfg['polish_time']} s) and certificate "
             f"(stationary to {cfg['gtol']:g} of the force scale, lambda_min >= -1e-9 lambda_max on the kink manifold). "
             "N counts weights (biases excluded). Exponents: maximum likelihood on the smallest values, range chosen "
             "by KS distance, exact 95 % intervals; positive side Delta / sqrt(L) per run.")
    return Summary(tables=tables, figures=figures, verdict=verdict, measured=measured, published=PUBLISHED,
                   notes=notes)


def _pm(m: float, se: float) -> str:
    if not math.isfinite(m):
        return "-"
    return f"{m:.2f}" + (f" ± {se:.2f}" if math.isfinite(se) else "")


# ------------------------------------------------------------------------------------------- the rule
def jump_parts(measured: Mapping[str, Any]) -> list[Part]:
    """(i) a sharp jump: every certified jammed run has N_Delta/N >= 0.3, and certified runs in between are at
    most 10 % of the certified runs. INCONCLUSIVE with fewer than MIN_CERTIFIED certified runs or no jammed one."""
    n = int(measured.get("n_certified") or 0)
    few = not_enough("(i) jump", n, MIN_CERTIFIED, "certified runs")
    if few is not None:
        return [few]
    if not measured.get("n_jammed"):
        return [Part("(i) jump", INCONCLUSIVE, "no certified jammed run")]
    return [at_least("(i) jump", measured.get("jammed_min_n_delta_over_N"), JUMP_MIN,
                     what="smallest N_Delta/N of a certified jammed run"),
            at_most("(i) runs in between", measured.get("between_fraction"), BETWEEN_MAX,
                    what="share of certified runs with 0 < N_Delta <= 0.1 N")]


def ratio_parts(measured: Mapping[str, Any]) -> list[Part]:
    """(ii) P/N* in [2, 3.5] at every depth (mean over seeds, 2-s.e. interval; at least 2 seeds with a certified
    bracket), and (iii) its relative spread (max - min) / mean across depths at most 20 %."""
    per = measured.get("P_over_nstar") or {}
    if not per:
        return [Part("(ii) P/N*", INCONCLUSIVE, "not measured"), Part("(iii) spread", INCONCLUSIVE, "not measured")]
    parts = []
    for depth, v in per.items():
        name = f"(ii) P/N* at L = {depth}"
        if int(v.get("n") or 0) < 2:
            parts.append(Part(name, INCONCLUSIVE, f"{int(v.get('n') or 0)} seed(s) with a certified bracket, 2 needed"))
            continue
        m, se = v["mean"], v["stderr"]
        parts.append(in_range(name, m, *RATIO_RANGE, low=m - 2 * se, high=m + 2 * se,
                              what=f"P/N* at depth {depth} (± 2 s.e.)"))
    spread = measured.get("P_over_nstar_spread")
    if any(p.outcome == INCONCLUSIVE for p in parts) or spread is None:
        parts.append(Part("(iii) spread", INCONCLUSIVE, "P/N* not measured at every depth"))
    else:
        parts.append(at_most("(iii) spread", spread, SPREAD_MAX, what="(max - min) / mean of P/N* across depths"))
    return parts


def exponent_part(name: str, fit: Mapping[str, Any] | None, published: float) -> Part:
    """(iv) an exponent against its published value: INCONCLUSIVE without MIN_GAPS stabilities in the fit, a
    pooled sample spanning DECADES decades below the fit range's end, or a 95 % interval narrower than
    +- CI_HALF_MAX; else PASS when the interval contains the published value, FAIL when it excludes it."""
    label = f"(iv) {name}"
    if not fit:
        return Part(label, INCONCLUSIVE, "not measured")
    lo, hi = fit["ci"]
    text = f"{name} = {fit['value']:.3f}, 95 % interval [{lo:.3f}, {hi:.3f}] (n = {fit['n']}), published {published:g}"
    if fit["n"] < MIN_GAPS or fit.get("decades", 0.0) < DECADES:
        return Part(label, INCONCLUSIVE, text + f"; needs >= {MIN_GAPS} gaps over >= {DECADES:g} decades "
                    f"(has {fit['n']}, {fit.get('decades', 0.0):.1f})")
    if (hi - lo) / 2 > CI_HALF_MAX:
        return Part(label, INCONCLUSIVE, text + f"; interval wider than ± {CI_HALF_MAX:g}")
    return Part(label, PASS if lo <= published <= hi else FAIL, text)


def decide(measured: Mapping[str, Any]) -> Verdict:
    """(i) and (ii)-(iii) and (iv) (see the rule in the criterion), combined: FAIL if any part fails."""
    ex = measured.get("exponents") or {}
    parts = [*jump_parts(measured), *ratio_parts(measured),
             exponent_part("theta", ex.get("theta"), THETA), exponent_part("gamma", ex.get("gamma"), GAMMA)]
    return combine(parts)


register(Study(
    name=NAME,
    paper=PAPER,
    claim=CLAIM,
    scales=SCALES,
    points=points,
    run_point=run_point,
    summarize=summarize,
    description=__doc__ or "",
    criterion=Criterion(
        published=("P/N* ~ 3 for square ReLU networks of depth 2, 3 and 5 (N ~ 8k weights, d = h, P ~ 24k; Geiger "
                   "et al., PRE 2019, Fig. 1B); jammed runs have N_Delta > 0.4 N; theta ~ 0.3, gamma ~ 0.2 "
                   "(abstract)"),
        rule=(f"Over certified runs only (zero loss or certified local minimum; others excluded and counted): "
              f"(i) every certified jammed run has N_Delta/N >= {JUMP_MIN:g} and certified runs with "
              f"0 < N_Delta <= 0.1 N are <= {BETWEEN_MAX:.0%} of the certified runs (>= {MIN_CERTIFIED} certified); "
              f"(ii) P/N* (mean over seeds ± 2 s.e., each seed's N* the midpoint of its certified bracket) in "
              f"[{RATIO_RANGE[0]:g}, {RATIO_RANGE[1]:g}] at every depth; (iii) (max - min) / mean of P/N* across "
              f"depths <= {SPREAD_MAX:.0%}; (iv) theta and gamma of the pooled stabilities of the certified jammed "
              f"runs next to N*: the 95 % interval (resolved: half-width <= {CI_HALF_MAX:g}, >= {MIN_GAPS} gaps "
              f"over >= {DECADES:g} decades) contains {THETA:g} and {GAMMA:g} respectively."),
        decide=decide,
    ),
))

__all__ = ["decide", "jump_parts", "ratio_parts", "exponent_part", "nstar_by_seed", "points", "run_point",
           "summarize"]
