"""Study ``wide-flat-minima``: wide flat minima of the binary perceptron and the algorithms that find them.

Reproduces the perceptron part of Baldassi, Pittorino, Zecchina, "Shaping the learning landscape in
neural networks around wide flat minima", PNAS 117:161 (2020), with the algorithms of Baldassi et al.
PNAS 113:E7655 (2016).

Three kinds of points:

* ``curve``: a teacher-student binary perceptron (N weights, load alpha); a reference solution is
  found by a solver (fbp, rsgd, ce-mc, le-mc, sa) or is the teacher itself (the planted solution,
  distributed as a *typical* equilibrium solution); its Franz-Parisi local entropy S(d) is computed
  by BP (gamma scan + Legendre transform) and its local energy (training error after flipping a
  random fraction d of the weights) by Monte Carlo.
* ``success``: random-label instances at several loads; success (zero training errors) and time of
  every solver.
* ``sgd``: continuous perceptron, SGD on the cross-entropy with the free norm, a slowly increased norm,
  or a slowly reduced norm; local energy (error after relative Gaussian weight noise, exact) of the
  solution and its minimal normalised stability.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .registry import Study, Summary, register  # noqa: E402

CURVE_REFS = ("teacher", "fbp", "rsgd", "ce-mc", "le-mc", "sa")
SGD_PROTOCOLS = {"free norm": None, "norm 1 -> 8 (slow increase)": (1.0, 8.0), "norm 8 -> 2 (slow reduction)": (8.0, 2.0)}
REPORT_D = (0.005, 0.01, 0.02, 0.05, 0.1)


def _floats(text: str) -> list[float]:
    return [float(t) for t in str(text).split(",") if t.strip()]


def _words(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def points(cfg: dict) -> list[dict]:
    pts = []
    sizes = [cfg["n"]] + ([cfg["small_n"]] if cfg.get("small_n") else [])
    for n in sizes:
        for ref, seed in ((r, s) for r in _words(cfg["curve_refs"]) for s in range(cfg["curve_seeds"])):
            pts.append({"kind": "curve", "ref": ref, "n": n, "alpha": cfg["curve_alpha"], "seed": seed,
                        "distances": cfg["distances"], "n_gamma": cfg["n_gamma"], "le_samples": cfg["le_samples"],
                        "bp_max_iters": cfg["bp_max_iters"], "bp_tol": cfg["bp_tol"]})
    for solver in _words(cfg["success_solvers"]):
        for alpha in _floats(cfg["success_alphas"]):
            for seed in range(cfg["success_seeds"]):
                pts.append({"kind": "success", "solver": solver, "n": cfg["n"], "alpha": alpha, "seed": seed})
    for name in SGD_PROTOCOLS:
        for seed in range(cfg["sgd_seeds"]):
            pts.append({"kind": "sgd", "protocol": name, "n": cfg["n"], "alpha": cfg["sgd_alpha"], "seed": seed,
                        "epochs": cfg["sgd_epochs"]})
    return pts


def run_point(point: dict) -> dict:
    import torch

    from ..perceptron import (
        local_energy_binary,
        local_energy_continuous,
        local_entropy,
        random_instance,
        sgd_cross_entropy,
        solve,
        teacher_instance,
    )

    torch.set_num_threads(1)
    kind = point["kind"]
    if kind == "curve":
        X, y, w_t = teacher_instance(point["n"], point["alpha"], seed=1000 + point["seed"])
        out: dict = {"ref": point["ref"]}
        if point["ref"] == "teacher":
            w, out["solver_seconds"], out["solved"] = w_t, 0.0, True
        else:
            res = solve(X, y, point["ref"], seed=point["seed"])
            w, out["solver_seconds"], out["solved"], out["errors"] = res.w, res.seconds, res.solved, res.errors
        if not out["solved"]:
            return out
        dist = _floats(point["distances"])
        c = local_entropy(X, y, w, sorted(set(dist) | set(REPORT_D)), n_gamma=point["n_gamma"],
                          max_iters=point["bp_max_iters"], tol=point["bp_tol"])
        at = dict(zip(c.distances.tolist(), c.entropy.tolist()))
        out.update({"S": [at[d] for d in dist], "distances": dist, "scan_d": c.scan_d.tolist(), "scan_S": c.scan_S.tolist(),
                    "scan_gamma": c.scan_gamma.tolist(), "scan_converged": c.scan_converged.tolist(),
                    "scan_iterations": c.scan_iterations.tolist(), "bp_seconds": c.seconds})
        out["S_report"] = [at[d] for d in REPORT_D]  # NaN outside the scanned range
        out["local_energy_d"] = [0.005, 0.01, 0.02, 0.05]
        out["local_energy"] = local_energy_binary(X, y, w, out["local_energy_d"], samples=point["le_samples"],
                                                  seed=point["seed"]).tolist()
        return out
    if kind == "success":
        X, y = random_instance(point["n"], point["alpha"], seed=2000 + point["seed"])
        t0 = time.perf_counter()
        res = solve(X, y, point["solver"], seed=point["seed"])
        return {"solved": res.solved, "errors": res.errors, "steps": res.steps, "seconds": time.perf_counter() - t0}
    if kind == "sgd":
        X, y = random_instance(point["n"], point["alpha"], seed=3000 + point["seed"])
        res = sgd_cross_entropy(X, y, epochs=point["epochs"], norm=SGD_PROTOCOLS[point["protocol"]], seed=point["seed"])
        sig = [0.1, 0.2, 0.3, 0.5]
        return {"solved": res.solved, "errors": res.errors, "kappa_min": res.history[-1]["kappa_min"],
                "rho": res.history[-1]["rho"], "sigmas": sig,
                "local_energy": local_energy_continuous(X, y, res.w, sig).tolist(), "seconds": res.seconds}
    raise ValueError(f"unknown point kind {kind!r}")


def _h2(d):
    from ..perceptron.models import binary_entropy

    return binary_entropy(d)


def _curves_at(cfg: dict, curves: list, n_cur: int, out: Path, measured: dict):
    """Table, figure and gaps H2(0.01) - S(0.01) of the curve points of one size."""
    refs = [r for r in CURVE_REFS if any(p["ref"] == r for p, _ in curves)]
    rep = np.array(REPORT_D)
    gap = {}
    rows = ["| reference | solved | S(0.005) | S(0.01) | S(0.02) | S(0.05) | S(0.1) | H2(0.01) - S(0.01) "
            "| local energy d=0.01 | local energy d=0.05 | BP converged | solver s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, ref in enumerate(refs):
        rs = [r for p, r in curves if p["ref"] == ref]
        ok = [r for r in rs if r.get("solved") and "S_report" in r]
        if ok:
            S = np.nanmean([r["S_report"] for r in ok], axis=0)
            le = np.mean([r["local_energy"] for r in ok], axis=0)
            conv = sum(int(np.sum(r["scan_converged"])) for r in ok), sum(len(r["scan_converged"]) for r in ok)
            gap[ref] = float(_h2(0.01) - S[1])
            rows.append(f"| {ref} | {len(ok)}/{len(rs)} | " + " | ".join(f"{v:.4f}" for v in S) +
                        f" | {gap[ref]:.4f} | {le[1]:.4f} | {le[3]:.4f} | {conv[0]}/{conv[1]} | "
                        f"{np.mean([r['solver_seconds'] for r in rs]):.1f} |")
            for j, r in enumerate(ok):
                d, s, c = (np.asarray(r[k]) for k in ("scan_d", "scan_S", "scan_converged"))
                c = c.astype(bool)
                o = np.argsort(d[c])
                kw = {"label": ref} if j == 0 else {}
                ax.plot(d[c][o], s[c][o], "o-", ms=2.5, color=f"C{i}", **kw)
                ax2.plot(d[c][o], _h2(d[c][o]) - s[c][o], "o-", ms=2.5, color=f"C{i}", **kw)
            measured[f"S(0.01) {ref} N={n_cur}"] = float(S[1])
            measured[f"local_energy(0.01) {ref} N={n_cur}"] = float(le[1])
        else:
            rows.append(f"| {ref} | 0/{len(rs)} | " + " | ".join("-" for _ in rep) + " | - | - | - | - | "
                        f"{np.mean([r.get('solver_seconds', 0) for r in rs]):.1f} |")
        measured[f"solved {ref} N={n_cur}"] = f"{len(ok)}/{len(rs)}"
    grid = np.linspace(1e-4, 0.25, 200)
    ax.plot(grid, _h2(grid), "k--", lw=1, label="H2(d)")
    ax.set_xlim(0, 0.25)
    ax.set_ylim(0, 0.6)
    ax.set_xlabel("d")
    ax.set_ylabel("S(d)")
    ax.set_title(f"BP local entropy, N={n_cur}, alpha={cfg['curve_alpha']}", fontsize=9)
    ax.legend(fontsize=7)
    ax2.set_xlim(0, 0.25)
    ax2.set_xlabel("d")
    ax2.set_ylabel("H2(d) - S(d)")
    ax2.set_title("distance from a perfectly flat minimum", fontsize=9)
    fig.tight_layout()
    fig_name = f"local_entropy_N{n_cur}.png"
    fig.savefig(out / fig_name, dpi=90)
    plt.close(fig)
    return gap, fig_name, "\n".join(rows)


def summarize(cfg: dict, results: list[tuple[dict, dict]], out: Path) -> Summary:
    figures, tables, measured = [], {}, {}
    # ---------------------------------------------------------------- local entropy curves
    gaps: dict[int, dict] = {}
    sizes = sorted({p["n"] for p, _ in results if p["kind"] == "curve"}, reverse=True)
    for n_cur in sizes:
        gap, fig_name, table = _curves_at(cfg, [(p, r) for p, r in results if p["kind"] == "curve" and p["n"] == n_cur],
                                          n_cur, out, measured)
        gaps[n_cur] = gap
        figures.append(fig_name)
        tables[f"local entropy of the solutions (teacher-student, BP, N={n_cur})"] = table
    # ---------------------------------------------------------------- success rate
    succ = [(p, r) for p, r in results if p["kind"] == "success"]
    solvers = list(dict.fromkeys(p["solver"] for p, _ in succ))
    alphas = sorted({p["alpha"] for p, _ in succ})
    rows = ["| solver | " + " | ".join(f"alpha={a:g}" for a in alphas) + " | mean s |",
            "|---|" + "---|" * (len(alphas) + 1)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, s in enumerate(solvers):
        rates = []
        for a in alphas:
            rr = [r for p, r in succ if p["solver"] == s and p["alpha"] == a]
            rates.append(np.mean([r["solved"] for r in rr]))
        secs = np.mean([r["seconds"] for p, r in succ if p["solver"] == s])
        rows.append(f"| {s} | " + " | ".join(f"{x:.2f}" for x in rates) + f" | {secs:.1f} |")
        ax.plot(alphas, rates, "o-", label=s, color=f"C{i}")
        measured[f"success {s}"] = dict(zip([f"{a:g}" for a in alphas], [float(x) for x in rates]))
    ax.set_xlabel("alpha = P / N")
    ax.set_ylabel("success rate")
    ax.set_title(f"random patterns, N={cfg['n']}, {cfg['success_seeds']} seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "success_rate.png", dpi=90)
    plt.close(fig)
    figures.append("success_rate.png")
    tables["success rate against alpha (random labels)"] = "\n".join(rows)
    # ---------------------------------------------------------------- continuous SGD
    sg = [(p, r) for p, r in results if p["kind"] == "sgd"]
    rows = ["| protocol | solved | final norm | min stability | local energy s=0.1 | s=0.2 | s=0.3 | s=0.5 |",
            "|---|---|---|---|---|---|---|---|"]
    le_sgd = {}
    for name in SGD_PROTOCOLS:
        rr = [r for p, r in sg if p["protocol"] == name]
        if not rr:
            continue
        le = np.mean([r["local_energy"] for r in rr], axis=0)
        le_sgd[name] = le
        rows.append(f"| {name} | {sum(r['solved'] for r in rr)}/{len(rr)} | {np.mean([r['rho'] for r in rr]):.2f} | "
                    f"{np.mean([r['kappa_min'] for r in rr]):.3f} | " + " | ".join(f"{v:.4f}" for v in le) + " |")
        measured[f"sgd local_energy(0.3) {name}"] = float(le[2])
    tables["continuous perceptron, SGD on cross-entropy"] = "\n".join(rows)
    # ---------------------------------------------------------------- verdict
    parts = []
    for n_cur in sizes:
        gap = gaps[n_cur]
        refs = [p["ref"] for p, _ in results if p["kind"] == "curve" and p["n"] == n_cur]
        parts.append(f"N = {n_cur}:")
        if "teacher" in gap:
            tg = gap["teacher"]
            ent = {k: v for k, v in gap.items() if k in ("fbp", "rsgd", "le-mc")}
            if ent:
                wide = [k for k, v in ent.items() if v < 0.5 * tg]
                parts.append(f"At d = 0.01 the typical (planted teacher) solution is {tg:.3f} below H2(d); the entropic "
                             "solvers are " + ", ".join(f"{k} {v:.3f}" for k, v in ent.items()) + " below: "
                             + ("wide flat minima exist and " + ", ".join(wide) + " land in them" if wide else
                                "no entropic solver is markedly flatter than the typical solution") + ".")
            if "ce-mc" in gap:
                parts.append(f"The cross-entropy minimiser (ce-mc) is {gap['ce-mc']:.3f} below H2: "
                             + ("it lands in a wide flat minimum." if gap["ce-mc"] < 0.5 * tg else "not in a wide flat minimum."))
            if "sa" in gap:
                others = [v for k, v in gap.items() if k not in ("sa", "teacher")]
                narrower = others and gap["sa"] > max(others)
                parts.append(f"Simulated annealing on the error count: {gap['sa']:.3f} below H2 ("
                             + ("narrower than every other solver" if narrower else "not narrower than all other solvers") + ").")
            elif "sa" in refs:
                parts.append("Simulated annealing on the error count found no solution at this size and load within its "
                             "budget, so its minima could not be measured (itself a sign of the hardness of isolated solutions).")
    red, free = le_sgd.get("norm 8 -> 2 (slow reduction)"), le_sgd.get("free norm")
    if red is not None and free is not None:
        parts.append(f"Continuous weights, SGD on cross-entropy: local energy at sigma = 0.3 is {red[2]:.4f} with the "
                     f"slowly reduced norm vs {free[2]:.4f} with the free norm ("
                     + ("the reduction gives flatter minima" if red[2] < free[2] else
                        "the reduction does not give flatter minima in this protocol") + ").")
    notes = ("Curves: BP (Gaussian factor approximation) around each reference, gamma scan with warm starts in both "
             "directions (the fixed point with the larger free entropy kept), S(d) = phi - gamma q, interpolated "
             "from converged points only (NaN outside the scanned range); across a first-order jump of the scan "
             "(an isolated solution) the value is the concave hull, an upper bound of S(d). "
             "'teacher' = the planted teacher of a teacher-student instance, distributed as a typical (equilibrium) "
             "solution. The paper's curves are not reproduced numerically here (no verified published values); "
             "the norm-schedule parametrisation of the SGD protocol is ours (the paper's exact one was not retrieved).")
    return Summary(tables=tables, figures=figures, verdict=" ".join(parts), measured=measured, published={},
                   notes=notes)


register(Study(
    name="wide-flat-minima",
    paper="Baldassi, Pittorino, Zecchina, PNAS 117:161 (2020); Baldassi et al., PNAS 113:E7655 (2016)",
    claim=("The error loss of the binary perceptron has rare wide flat minima (local entropy close to H2(d)) next to "
           "typical isolated solutions; entropic algorithms (focusing BP, replicated SGD, entropy-driven MC) and "
           "cross-entropy minimisers land in them, simulated annealing on the error count finds narrower ones; "
           "with continuous weights a slow reduction of the norm leads SGD on cross-entropy to wide flat minima."),
    scales={
        "default": {"n": 1001, "curve_alpha": 0.4, "curve_seeds": 1, "curve_refs": ",".join(CURVE_REFS),
                    "distances": "0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2", "n_gamma": 10, "le_samples": 200,
                    "bp_max_iters": 150, "bp_tol": 1e-7, "small_n": 201, "success_solvers": "fbp,rsgd,le-mc,ce-mc,sa",
                    "success_alphas": "0.3,0.5,0.6,0.7", "success_seeds": 2, "sgd_alpha": 0.6, "sgd_epochs": 100,
                    "sgd_seeds": 2},
        "paper": {"n": 2001, "curve_alpha": 0.4, "curve_seeds": 5, "curve_refs": ",".join(CURVE_REFS),
                  "distances": "0.0025,0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2", "n_gamma": 24,
                  "le_samples": 500, "bp_max_iters": 1000, "bp_tol": 1e-7, "success_solvers": "fbp,rsgd,le-mc,ce-mc,sa",
                  "success_alphas": "0.3,0.4,0.5,0.6,0.65,0.7,0.75", "success_seeds": 10, "small_n": 401, "sgd_alpha": 0.6,
                  "sgd_epochs": 300, "sgd_seeds": 5},
    },
    points=points,
    run_point=run_point,
    summarize=summarize,
    description=__doc__ or "",
    zero_turns_off=frozenset({"small_n"}),  # small_n = 0: no second, smaller N
))
