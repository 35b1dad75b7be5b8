"""Study ``flatness-in-a-controlled-model``: do local entropy and local energy rank minima by generalization?

Pittorino et al. (ICLR 2021, "Entropic gradient descent algorithms and wide flat minima") state that "in simple
controlled scenarios" the two flatness measures, local entropy and local energy, correlate with each other and
with generalization. This study tests that claim where every quantity is exact or nearly so: a teacher-student
binary perceptron, whose generalization error is a closed-form function of the overlap with the teacher.

Protocol (``default`` scale: 4 instances x (2 fBP settings + 6 stochastic settings x 2 seeds) = 56 solutions,
about 40 s of one CPU core each (the BP gamma scan dominates), so about 20 minutes with ``--workers 2`` on an
idle 2-core machine):

* Instances: ``instances`` teacher-student binary perceptrons (:func:`~flatminima.perceptron.teacher_instance`),
  N = 1001 weights, alpha = P / N = 0.4 (P = 400 Gaussian patterns labelled by a random +-1 teacher w*);
  instance i uses the data seed ``INSTANCE_SEED + i``.
* Solutions: on each instance, every solver *setting* of ``settings`` (see :data:`SETTINGS`) and, for the
  stochastic solvers, ``seeds`` solver seeds (focusing BP is deterministic: one run per instance). The four
  solvers are focusing BP (fbp), replicated SGD (rsgd), simulated annealing on a cross-entropy (ce-mc) and the
  entropy-driven Monte Carlo on the local energy (le-mc); their hyperparameters are varied too (fBP's
  reinforcement step r, rSGD's coupling growth, the cross-entropy's sharpness lam, le-mc's final flip
  fraction), because the entropic solvers alone land in minima of nearly equal flatness: the sharper settings
  (ce-mc with a large lam) spread the flatness and the generalization of the pool.
* Measures of each solution w (one point = one (instance, setting, seed) solution):

  - generalization error, exact: eps = arccos(R) / pi with R = w . w* / N;
  - local entropy S(d) at d = ``d`` (0.02 by default: about 20 flipped weights of 1001): the BP Franz-Parisi
    entropy (:func:`~flatminima.perceptron.local_entropy`, gamma scan with warm starts, ``n_gamma`` points),
    read between the two BP fixed points that bracket d (cubic Hermite with the exact slopes dS/dd = 2 gamma);
  - local energy dE(sigma) at sigma = ``sigma`` (0.02 by default): mean training error (fraction of patterns)
    after flipping round(sigma N) random weights, minus the training error of w (0 for a solution), over
    ``le_draws`` draws split in ``le_batches`` batches of independent seeds; its standard error is that of
    the batch means (:func:`~flatminima.perceptron.local_energy_binary`).

Preconditions (each point that fails one is excluded, counted and shown): the solver reached zero training
errors; every BP fixed point of the gamma scan converged (max message change < ``bp_tol`` within
``bp_max_iters`` sweeps); S(d) is a BP value: the two scan points bracketing d are neighbours on the gamma
grid and the segment between them is concave (else the curve jumps there, across a first-order transition,
and the value would be a concave-hull chord, not a BP value).

Decision: the *stratified* Kendall tau of (S, eps), (dE, eps) and (S, dE) over the kept points: only pairs of
solutions of the same instance are compared (:func:`~flatminima.studies.claims.kendall` with ``groups``; p-value
by permutations within instances, interval by a bootstrap within instances). The claim is that flatness ranks
the minima of one landscape; a pair from two instances compares two teachers whose achievable overlaps differ
for reasons unrelated to flatness, which only adds noise to a pooled tau.

Revision: the first default run (instances from data seed 10000, three instances, pooled tau) ended
INCONCLUSIVE (tau(S, eps) = -0.386, 95 % interval [-0.60, -0.13], against the threshold -0.4). The
statistic was then changed to the stratified tau for the reason above and the instances were replaced by
fresh ones (data seeds from 20000, four instances), so the revised rule is tested on data it was not
chosen on.

``paper`` scale: N = 2001, more instances and seeds, a finer gamma scan and more draws (same code).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .claims import Check, Criterion, Verdict, combine, correlation, kendall, mean_stderr, not_enough, screen
from .registry import Study, Summary, register

NAME = "flatness-in-a-controlled-model"
PAPER = ("Pittorino, Lucibello, Feinauer, Perugini, Baldassi, Demyanenko, Zecchina, \"Entropic gradient descent "
         "algorithms and wide flat minima\", ICLR 2021 (arXiv 2006.07897)")
CLAIM = ("In a simple controlled scenario (teacher-student binary perceptron) the flatness of a zero-error "
         "solution, measured by its local entropy S(d) or its local energy dE(sigma), correlates with its "
         "generalization error: flatter (larger S, smaller dE) solutions generalise better, and the two "
         "measures agree with each other.")

#: data seed of instance i is INSTANCE_SEED + i (disjoint from the seeds of the wide-flat-minima study)
INSTANCE_SEED = 20_000
#: at least this many solutions must meet their preconditions for the correlations to decide anything
MIN_POINTS = 24
TAU_S_EPS, TAU_DE_EPS, TAU_S_DE, ALPHA = -0.4, 0.4, -0.5, 0.01

#: solver settings: label -> (solver of :func:`flatminima.perceptron.solve`, its options)
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "fbp r=0.05": ("fbp", {"r": 0.05}),
    "fbp r=0.2": ("fbp", {"r": 0.2}),
    "rsgd coupling x1.02": ("rsgd", {"coupling_factor": 1.02}),
    "rsgd coupling x1.1": ("rsgd", {"coupling_factor": 1.1}),
    "ce-mc lam=2": ("ce-mc", {"lam": 2.0}),
    "ce-mc lam=16": ("ce-mc", {"lam": 16.0}),
    "le-mc d 0.3->0.05": ("le-mc", {"d": [0.3, 0.05]}),
    "le-mc d 0.2->0.005": ("le-mc", {"d": [0.2, 0.005]}),
}
#: solvers whose result does not depend on the seed (one run per instance)
DETERMINISTIC = frozenset({"fbp"})

SCALES: dict[str, dict[str, Any]] = {
    "default": {"n": 1001, "alpha": 0.4, "instances": 4, "seeds": 2, "settings": list(SETTINGS),
                "d": 0.02, "sigma": 0.02, "le_draws": 1000, "le_batches": 20, "n_gamma": 20,
                "bp_max_iters": 300, "bp_tol": 1e-7},
    "paper": {"n": 2001, "alpha": 0.4, "instances": 4, "seeds": 4, "settings": list(SETTINGS),
              "d": 0.02, "sigma": 0.02, "le_draws": 4000, "le_batches": 40, "n_gamma": 32,
              "bp_max_iters": 1000, "bp_tol": 1e-7},
}


def points(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (instance, setting, seed); deterministic solvers get seed 0 only."""
    unknown = [s for s in cfg["settings"] if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown solver settings {unknown}; choose among {list(SETTINGS)}")
    if not 0 < cfg["d"] <= 0.5 or not 0 < cfg["sigma"] <= 0.5:
        raise ConfigError(f"d and sigma must be in (0, 0.5], got d={cfg['d']}, sigma={cfg['sigma']}")
    if cfg["le_draws"] < 2 * cfg["le_batches"] or cfg["le_batches"] < 2:
        raise ConfigError("need le_batches >= 2 and le_draws >= 2 * le_batches (the stderr is that of batch means)")
    pts = []
    for inst in range(cfg["instances"]):
        for label in cfg["settings"]:
            solver, options = SETTINGS[label]
            for seed in range(1 if solver in DETERMINISTIC else cfg["seeds"]):
                pts.append({"n": cfg["n"], "alpha": cfg["alpha"], "instance": inst, "setting": label,
                            "solver": solver, "options": options, "seed": seed, "d": cfg["d"],
                            "sigma": cfg["sigma"], "le_draws": cfg["le_draws"], "le_batches": cfg["le_batches"],
                            "n_gamma": cfg["n_gamma"], "bp_max_iters": cfg["bp_max_iters"], "bp_tol": cfg["bp_tol"]})
    return pts


def bp_bracket(scan_gamma, scan_d, scan_S, scan_converged, d: float) -> dict[str, Any]:
    """Whether the local entropy read at ``d`` from a gamma scan is a BP value.

    scan_*: the scan of :class:`~flatminima.perceptron.LocalEntropyCurve` (one entry per gamma of the
    decreasing grid). Mirrors the reading of :func:`~flatminima.perceptron.local_entropy`: the converged
    points sorted by d (equal d: the larger S), the segment [d0, d1] containing ``d``. The value is a BP value
    when the two ends are neighbours on the gamma grid (no gamma between them was skipped or jumped over)
    and the segment is concave with the exact end slopes dS/dd = 2 gamma (so the cubic Hermite, not the
    chord, was used). Returns ``{"bracket": [d0, d1] or None, "neighbours": bool, "concave": bool,
    "bp_value": bool}``.
    """
    g, dd, S, conv = (np.asarray(a) for a in (scan_gamma, scan_d, scan_S, scan_converged))
    idx = np.flatnonzero(conv.astype(bool) & np.isfinite(S) & np.isfinite(dd))
    out: dict[str, Any] = {"bracket": None, "neighbours": False, "concave": False, "bp_value": False}
    if idx.size < 2:
        return out
    idx = idx[np.lexsort((-S[idx], dd[idx]))]
    keep = np.concatenate([[True], np.diff(dd[idx]) > 1e-10])
    idx = idx[keep]
    j = int(np.searchsorted(dd[idx], d, side="right")) - 1
    if j < 0 or j >= idx.size - 1:
        return out
    a, b = int(idx[j]), int(idx[j + 1])
    h = dd[b] - dd[a]
    c = (S[b] - S[a]) / h
    m0, m1 = 2.0 * g[a], 2.0 * g[b]
    tol = 1e-9 * (1 + abs(c))
    concave = bool((2 * m0 + m1 >= 3 * c - tol) and (m0 + 2 * m1 <= 3 * c + tol))
    neighbours = abs(a - b) == 1
    out.update({"bracket": [float(dd[a]), float(dd[b])], "neighbours": neighbours, "concave": concave,
                "bp_value": neighbours and concave})
    return out


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Solve one instance with one solver setting and measure eps, S(d) and dE(sigma) of the solution."""
    import torch

    from ..perceptron import local_energy_binary, local_entropy, solve, teacher_instance

    torch.set_num_threads(1)
    N = point["n"]
    X, y, w_t = teacher_instance(N, point["alpha"], seed=INSTANCE_SEED + point["instance"])
    res = solve(X, y, point["solver"], seed=point["seed"], **point["options"])
    w = res.w.double().reshape(-1)
    R = float(w @ w_t) / N
    out: dict[str, Any] = {"solved": bool(res.solved), "errors": int(res.errors), "solver_steps": int(res.steps),
                           "solver_seconds": float(res.seconds), "R": R,
                           "eps": math.acos(max(-1.0, min(1.0, R))) / math.pi}
    if not res.solved:
        return out
    d = float(point["d"])
    curve = local_entropy(X, y, w, [d], n_gamma=point["n_gamma"], max_iters=point["bp_max_iters"],
                          tol=point["bp_tol"])
    br = bp_bracket(curve.scan_gamma, curve.scan_d, curve.scan_S, curve.scan_converged, d)
    out.update({"S": float(curve.entropy[0]), "bp_converged": bool(curve.all_converged),
                "bp_unconverged": int(np.sum(~curve.scan_converged)), "bp_bracket": br["bracket"],
                "bp_neighbours": br["neighbours"], "bp_concave": br["concave"], "bp_value": br["bp_value"],
                "bp_seconds": float(curve.seconds), "bp_sweeps": int(np.sum(curve.scan_iterations))})
    batches, per = point["le_batches"], point["le_draws"] // point["le_batches"]
    e0 = res.errors / max(1, X.shape[0])
    means = [float(local_energy_binary(X, y, w, [point["sigma"]], samples=per, seed=1_000_003 * (b + 1)
                                       + point["seed"])[0]) - e0 for b in range(batches)]
    m, se, _ = mean_stderr(means)
    out.update({"dE": m, "dE_stderr": se, "le_draws": batches * per})
    return out


CHECKS = [
    Check("solver reached zero training errors", lambda p, r: bool(r["solved"]) and r["errors"] == 0),
    Check("BP converged at every gamma of the scan", lambda p, r: bool(r["bp_converged"])),
    Check("S(d) is a BP value (no jump of the gamma scan at d)",
          lambda p, r: bool(r["bp_value"]) and math.isfinite(r["S"]) and math.isfinite(r["dE"])),
]


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def summarize(cfg: dict[str, Any], results: list[tuple[dict, dict]], out: Path) -> Summary:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    screened = screen(results, CHECKS)
    kept = screened.kept
    S = np.array([r["S"] for _, r in kept], float)
    dE = np.array([r["dE"] for _, r in kept], float)
    eps = np.array([r["eps"] for _, r in kept], float)
    inst = [p["instance"] for p, _ in kept]  # pairs are compared within an instance only
    taus = {"tau(S, eps)": kendall(S, eps, groups=inst), "tau(dE, eps)": kendall(dE, eps, groups=inst),
            "tau(S, dE)": kendall(S, dE, groups=inst)}
    d, sigma = cfg["d"], cfg["sigma"]
    measured: dict[str, Any] = {
        "n_points": len(results), "n_kept": len(kept), "excluded": screened.counts(), "min_points": MIN_POINTS,
        "d": d, "sigma": sigma, "le_draws": cfg["le_draws"],
        **{k: {kk: (float(v) if isinstance(v, float) else v) for kk, v in t.items()} for k, t in taus.items()},
    }
    if kept:
        measured["eps range"] = [float(eps.min()), float(eps.max())]
        measured["S range"] = [float(S.min()), float(S.max())]
        measured["dE range"] = [float(dE.min()), float(dE.max())]
        measured["max dE stderr"] = float(max(r["dE_stderr"] for _, r in kept))
    # ---------------------------------------------------------------- tables
    tables: dict[str, str] = {}
    rows = ["| pair | Kendall τ (within instances) | p (permutations) | 95 % bootstrap interval | n | required |",
            "|---|---|---|---|---|---|"]
    for (k, t), req in zip(taus.items(), (f"≤ {TAU_S_EPS:+g}", f"≥ {TAU_DE_EPS:+g}", f"≤ {TAU_S_DE:+g}")):
        rows.append(f"| {k} | {_fmt(t['tau'], '+.3f')} | {_fmt(t['p'], '.2g')} | [{_fmt(t['lower'], '+.2f')}, "
                    f"{_fmt(t['upper'], '+.2f')}] | {t['n']} | {req}, p < {ALPHA:g} |")
    pooled = {k: kendall(a, b, n_boot=0) for k, (a, b) in
              (("tau(S, eps)", (S, eps)), ("tau(dE, eps)", (dE, eps)), ("tau(S, dE)", (S, dE)))}
    measured["pooled tau (all pairs, not the rule)"] = {k: t["tau"] for k, t in pooled.items()}
    rows.append("")
    rows.append("For comparison only (not the rule): Kendall τ over all pairs, instances pooled: "
                + ", ".join(f"{k} = {_fmt(t['tau'], '+.3f')}" for k, t in pooled.items()) + ".")
    tables["correlations over the solutions that met their preconditions"] = "\n".join(rows)
    rows = [f"| setting | solver | solutions kept / run | eps | S({d:g}) | dE({sigma:g}) | solver s | BP s |",
            "|---|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(p["setting"] for p, _ in results):
        rr = [(p, r) for p, r in results if p["setting"] == label]
        kk = [r for p, r in kept if p["setting"] == label]
        m_eps = mean_stderr(r["eps"] for _, r in rr)
        m_S, m_dE = mean_stderr(r["S"] for r in kk), mean_stderr(r["dE"] for r in kk)
        rows.append(f"| {label} | {rr[0][0]['solver']} | {len(kk)}/{len(rr)} | {_fmt(m_eps[0])} | {_fmt(m_S[0])} | "
                    f"{_fmt(m_dE[0])} | {np.mean([r['solver_seconds'] for _, r in rr]):.1f} | "
                    f"{_fmt(np.mean([r['bp_seconds'] for r in kk]) if kk else None, '.1f')} |")
    tables["solver settings (means over instances and seeds)"] = "\n".join(rows)
    h2 = -d * math.log(d) - (1 - d) * math.log(1 - d)
    rows = [f"| instance | setting | seed | R | eps | S({d:g}) | H2(d) - S(d) | dE({sigma:g}) ± s.e. | kept |",
            "|---|---|---|---|---|---|---|---|---|"]
    why = {id(r): w for _, r, w in screened.excluded}
    for p, r in results:
        S_p = r.get("S")
        rows.append(f"| {p['instance']} | {p['setting']} | {p['seed']} | {r['R']:.4f} | {r['eps']:.4f} | {_fmt(S_p)} | "
                    f"{_fmt(h2 - S_p if S_p is not None else None)} | {_fmt(r.get('dE'), '.5f')} ± "
                    f"{_fmt(r.get('dE_stderr'), '.1g')} | {'no: ' + why[id(r)] if id(r) in why else 'yes'} |")
    tables["every solution"] = "\n".join(rows)
    if screened.excluded:
        tables["excluded solutions (failed preconditions)"] = screened.table(
            lambda p: f"instance {p['instance']}, {p['setting']}, seed {p['seed']}")
    # ---------------------------------------------------------------- figure
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(dict.fromkeys(p["setting"] for p, _ in kept))
    pairs = ((S, eps, f"S(d = {d:g})", "generalization error eps"), (dE, eps, f"dE(sigma = {sigma:g})",
             "generalization error eps"), (S, dE, f"S(d = {d:g})", f"dE(sigma = {sigma:g})"))
    for ax, (xv, yv, xl, yl), (tname, t) in zip(axes, pairs, taus.items()):
        for i, label in enumerate(labels):
            sel = np.array([p["setting"] == label for p, _ in kept], bool)
            ax.scatter(xv[sel], yv[sel], s=18, color=f"C{i % 10}", label=label)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{tname} = {_fmt(t['tau'], '+.2f')} (p = {_fmt(t['p'], '.1g')}, n = {t['n']})", fontsize=9)
    if labels:
        axes[0].legend(fontsize=6)
    fig.suptitle(f"teacher-student binary perceptron, N = {cfg['n']}, alpha = {cfg['alpha']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "flatness_vs_generalization.png", dpi=90)
    plt.close(fig)
    # ---------------------------------------------------------------- verdict text
    t1, t2, t3 = taus.values()
    verdict = (f"{len(kept)} of {len(results)} solutions (N = {cfg['n']}, alpha = {cfg['alpha']:g}, "
               f"{cfg['instances']} instances, {len(cfg['settings'])} solver settings) met their preconditions; "
               f"their generalization errors span {_fmt(measured.get('eps range', [math.nan])[0], '.3f')}–"
               f"{_fmt(measured.get('eps range', [math.nan, math.nan])[-1], '.3f')}. Kendall τ within instances: local entropy "
               f"S({d:g}) vs eps {_fmt(t1['tau'], '+.2f')} (p = {_fmt(t1['p'], '.1g')}), local energy "
               f"dE({sigma:g}) vs eps {_fmt(t2['tau'], '+.2f')} (p = {_fmt(t2['p'], '.1g')}), S vs dE "
               f"{_fmt(t3['tau'], '+.2f')} (p = {_fmt(t3['p'], '.1g')}).")
    notes = (f"S(d) at d = {d:g} is the Franz-Parisi local entropy by BP (Gaussian cavity approximation, gamma "
             f"scan of {cfg['n_gamma']} points, warm starts in both directions), read between the two converged BP "
             "fixed points that bracket d by the cubic Hermite with the exact slopes 2 gamma; a solution whose scan "
             "did not converge at some gamma, or whose value at d would be a concave-hull chord, is excluded and "
             f"counted. dE(sigma) = mean training error after flipping round(sigma N) random weights, {cfg['le_draws']} "
             f"draws in {cfg['le_batches']} batches (s.e. of the batch means). eps = arccos(R)/pi is exact for "
             "Gaussian inputs. The solver hyperparameters are varied on purpose (sharper cross-entropy, faster "
             "le-mc annealing) to spread flatness; the settings, d and sigma were chosen on pilot instances "
             f"(data seeds 5000, 5001) disjoint from the study's (from {INSTANCE_SEED}). The paper's exact "
             "controlled setting (sizes, loads, number of solutions) and any numeric correlation were not retrieved.")
    return Summary(tables=tables, figures=["flatness_vs_generalization.png"], verdict=verdict, measured=measured,
                   published={}, notes=notes)


def decide(measured: Mapping[str, Any]) -> Verdict:
    """PASS when, over at least MIN_POINTS valid solutions, tau(S, eps) <= -0.4, tau(dE, eps) >= 0.4 and
    tau(S, dE) <= -0.5, each with p < 0.01 (:func:`~flatminima.studies.claims.correlation`)."""
    n = int(measured.get("n_kept", 0) or 0)
    parts = []
    few = not_enough("enough valid solutions", n, MIN_POINTS, "solutions that met their preconditions")
    if few is not None:
        parts.append(few)
    for key, thr, what in (("tau(S, eps)", TAU_S_EPS, "local entropy vs generalization error"),
                           ("tau(dE, eps)", TAU_DE_EPS, "local energy vs generalization error"),
                           ("tau(S, dE)", TAU_S_DE, "local entropy vs local energy")):
        t = measured.get(key) or {}
        parts.append(correlation(key, t.get("tau"), t.get("p"), int(t.get("n", 0) or 0), thr, ALPHA,
                                 upper=t.get("upper"), lower=t.get("lower"), what=what))
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
        published=("Local entropy and local energy \"correlate strongly with each other and with generalization\" "
                   "in simple controlled scenarios (Pittorino et al., ICLR 2021, abstract of arXiv 2006.07897 "
                   "v1-v3); no numeric correlation retrieved"),
        rule=(f"Over at least {MIN_POINTS} zero-error solutions whose BP converged and whose S(d) is a BP value (not a "
              f"concave-hull chord) (teacher-student binary perceptron, "
              f"fBP / replicated SGD / cross-entropy MC / local-entropy MC, several hyperparameters and seeds): "
              f"Kendall τ over pairs of solutions of the same instance (stratified τ-b; p by permutations within "
              f"instances) τ(S(d), ε) ≤ {TAU_S_EPS:g}, τ(δE(σ), ε) ≥ {TAU_DE_EPS:g} and τ(S(d), δE(σ)) ≤ "
              f"{TAU_S_DE:g}, each with p < {ALPHA:g}; d = σ = 0.02 at the default scale, ε = arccos(R)/π exact."),
        decide=decide,
    ),
))
