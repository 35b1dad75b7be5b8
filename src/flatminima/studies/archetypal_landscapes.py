"""Study ``archetypal-landscapes``: Verpoort, Lee & Wales, "Archetypal landscapes for deep neural networks",
PNAS 117, 21857 (2020).

Claim tested: the loss landscape of a network is funnelled (a single funnel, "palm tree") in the shallow or
data-rich limit, while in the deep or data-poor limit the number of minima grows and they have similar
losses separated by low barriers.

Protocol (ours; the paper's exact architectures, data sets and sizes could not be retrieved, see
``shared/reference/landscapes.md``): a tanh MLP (``width`` units per hidden layer) with softmax cross-entropy
plus ``l2 |w|^2`` over all parameters (the Wales-group loss; ``l2 = 1e-2`` as in the Wales group's
MLbasinhopping examples), full batch, float64, on scikit-learn digits
restricted to a few classes and reduced by PCA (whitened), for every (training-set size N, depth) cell of the
grid; one cell is one study point. Per cell:

1. **Basin-hopping** (:func:`~flatminima.explore.basin_hopping`): ``walkers`` walkers of ``bh_steps`` steps
   each (at least 300), Metropolis at ``temperature`` on quenched losses, random displacements of
   ``step_size`` (fixed: ``adapt_steps`` false; the acceptance-driven adaptation of GMIN grows the step
   without bound on these landscapes, where most trials quench back to the same minimum, and the search
   degenerates into random restarts), quenches to an RMS gradient below ``quench_gtol``. Every new minimum is
   verified with the exact Hessian (index 0): a quench that stalled on a saddle's shoulder, where the gradient
   is also small, is pushed on downhill (:func:`~flatminima.explore.optimize.escape_saddle`); before this
   check, a default run counted 8 "minima" at (N = 20, depth 3) (4 with it), and the late find of
   (N = 20, depth 2) that broke its saturation was an index-1 saddle. Minima are deduplicated up to
   hidden-unit permutations and tanh sign flips (the potential's alignment). The step at which each minimum
   was first found is recorded.
2. **Saturation**: the share of the minima first found in the second half of the run (over all walkers);
   the search is saturated when it is below 20 %. The number of minima of a cell is the number the
   basin-hopping search found; an unsaturated count is only a lower bound.
3. **Connection**: every stored minimum to the global one (DNEB, eigenvector-following, index-1 check,
   pushoffs whose quenches end at verified minima; Dijkstra missing-connection strategy), sweep after sweep
   until every minimum is connected or a sweep adds no transition state (at most ``connect_passes`` sweeps).
4. Landscape metrics (monotonic-sequence funnels, minimax barrier of every minimum to the global one, loss
   spread) on the connected graph, and a disconnectivity graph coloured by test error.

Preconditions (per cell; a cell that fails one is excluded from the parts of the claim that need it,
counted and shown): the search is saturated (for every part); the graph is connected, every minimum joined to
the global minimum (for the funnel count and the barrier). Pass criterion: :func:`decide`.

``default`` scale: 6 cells, 16 walkers x 800 steps each. Measured on 2026-12-02: 867 CPU seconds in all, from 44
(N = 20, depth 1) to 337 (N = 200, depth 3; basin-hopping costs most), 880 s of wall time with ``--workers 1``;
with ``--workers 2`` the costliest cell bounds it at about 7 minutes.

``paper`` scale: the same protocol on a larger grid (more classes, wider and deeper networks, more data, more
walkers and steps); it needs a cluster or a long run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .claims import FAIL, INCONCLUSIVE, PASS, Check, Criterion, Part, Verdict, at_least, at_most, combine, screen
from .registry import Study, Summary, register

NAME = "archetypal-landscapes"
#: a search is saturated when fewer than this share of its minima were first found in the second half
LATE_MAX = 0.2
#: the deep/data-poor cell must hold at least this many times the minima of the shallow/data-rich one
RATIO_MIN = 3.0
#: a landscape needs at least this many basin-hopping steps per walker
MIN_BH_STEPS = 300

DEFAULT: dict[str, Any] = {
    "dataset": "digits",
    "classes": [3, 5, 8],
    "pca_dim": 5,
    "width": 3,
    "depths": [1, 2, 3],
    "sizes": [20, 200],
    "l2": 1e-2,
    "walkers": 16,
    "bh_steps": 800,
    "temperature": 0.05,
    "step_size": 1.5,
    "adapt_steps": False,
    "connect_passes": 10,
    "connect_cycles": 4,
    "connect_tries": 3,
    "n_images": 8,
    "quench_gtol": 1e-6,
    "seed": 0,
}
PAPER: dict[str, Any] = {**DEFAULT, "classes": list(range(10)), "pca_dim": 10, "width": 10, "depths": [1, 2, 3, 4, 5],
                         "sizes": [50, 100, 500, 1000], "walkers": 32, "bh_steps": 2000, "connect_passes": 50,
                         "connect_cycles": 10}


def points(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (training-set size, depth) cell, the costliest (largest N, deepest) first so that a pool of
    workers finishes them together."""
    if cfg["bh_steps"] < 2:
        raise ConfigError(f"bh_steps must be >= 2 (saturation compares the two halves of the run), got {cfg['bh_steps']}")
    if len(set(cfg["sizes"])) != len(cfg["sizes"]) or len(set(cfg["depths"])) != len(cfg["depths"]):
        raise ConfigError(f"sizes and depths must not repeat, got {cfg['sizes']} and {cfg['depths']}")
    return [{**{k: v for k, v in cfg.items() if k not in ("depths", "sizes")}, "depth": int(d), "size": int(n)}
            for n in sorted(cfg["sizes"], reverse=True) for d in sorted(cfg["depths"], reverse=True)]


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Basin-hopping, saturation, connection and metrics of one (size, depth) cell."""
    import torch

    from ..data import load
    from ..data.preprocess import balanced_subset, pca, select_classes
    from ..explore import Database, basin_hopping, components, connect_all, landscape_metrics, tanh_network_potential
    from ..explore.basinhopping import saturation

    t0 = time.process_time()
    ds = select_classes(load(point["dataset"]), point["classes"])
    ds = pca(ds, point["pca_dim"], whiten=True)
    ds = balanced_subset(ds, min(point["size"], len(ds.y_train)), seed=point["seed"])
    X = ds.X_train.reshape(len(ds.y_train), -1).double()
    pot = tanh_network_potential(X, ds.y_train, hidden=[point["width"]] * point["depth"], l2=point["l2"],
                                 n_classes=len(point["classes"]))
    db = Database(potential=pot)
    steps = int(point["bh_steps"])
    basin_hopping(pot, steps=steps, temperature=point["temperature"], seed=point["seed"], database=db,
                  walkers=point["walkers"], step_size=point["step_size"], gtol=point["quench_gtol"],
                  adapt_interval=10 if point["adapt_steps"] else steps + 1, check_index=True)
    found = db.found_steps()
    sat = saturation(found, steps)
    n_bh = db.n_minima()
    t_bh = time.process_time() - t0
    ts_before = db.n_ts()
    n_conn = connect_all(pot, db, passes=point["connect_passes"], max_cycles=point["connect_cycles"],
                         max_tries=point["connect_tries"], n_images=point["n_images"], ts_gtol=point["quench_gtol"])
    minima = db.minima()
    comp = components(db)
    gmin = minima[0].id
    Xte = ds.X_test.reshape(len(ds.y_test), -1).double()
    thetas = torch.as_tensor(np.stack([m.coords for m in minima]))
    test_err = pot.landscape.with_data((Xte, ds.y_test)).batched_error(thetas).tolist()
    train_err = pot.landscape.batched_error(thetas).tolist()
    tss = db.transition_states()
    return {
        "n_params": pot.ndim,
        "n_train": int(len(ds.y_train)),
        "n_minima_bh": n_bh,
        "found_steps": {str(k): v for k, v in found.items()},
        "late_fraction": sat["late_fraction"],
        "n_late": sat["n_late"],
        "minima": {str(m.id): m.energy for m in minima},
        "ts": [[t.min1, t.min2, t.energy] for t in tss],
        "ts_index": [int(t.props["n_neg"]) for t in tss],  # Hessian index of every stored TS (checked on insertion)
        "test_error": {str(m.id): e for m, e in zip(minima, test_err)},
        "train_error": {str(m.id): e for m, e in zip(minima, train_err)},
        "n_connected": n_conn,
        "all_connected": all(comp[m.id] == comp[gmin] for m in minima),
        "ts_from_connect": db.n_ts() - ts_before,
        "metrics": landscape_metrics(db),
        "cpu_seconds_bh": t_bh,
        "cpu_seconds": time.process_time() - t0,
    }


SATURATED = Check(f"saturated search (≥ {MIN_BH_STEPS} steps per walker, < {LATE_MAX:.0%} of the minima first "
                  "found in the second half)",
                  lambda p, r: p["bh_steps"] >= MIN_BH_STEPS and r["n_minima_bh"] >= 1 and r["late_fraction"] < LATE_MAX)
CONNECTED = Check("connected graph (every minimum joined to the global minimum)", lambda p, r: bool(r["all_connected"]))


def cell_key(size: int, depth: int) -> str:
    return f"N={size},depth={depth}"


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def summarize(cfg: dict[str, Any], results: list[tuple[dict, dict]], out: Path) -> Summary:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..explore.graph import disconnectivity_graph

    results = sorted(results, key=lambda pr: (pr[0]["size"], pr[0]["depth"]))
    sizes = sorted({p["size"] for p, _ in results})
    depths = sorted({p["depth"] for p, _ in results})
    counted = screen(results, [SATURATED])
    graphed = screen(results, [SATURATED, CONNECTED])
    ok_count = {id(r) for _, r in counted.kept}
    cells: dict[str, dict[str, Any]] = {}
    rows = ["| N_train | depth | params | minima (basin-hopping) | late share | saturated | minima (after connect) "
            "| TS | connected | funnels (MSB) | loss spread | median barrier to gmin | barrier / spread "
            "| test error (gmin) | test error range | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(len(sizes), len(depths), figsize=(3.6 * len(depths), 3.2 * len(sizes)), squeeze=False)
    for p, r in results:
        m = r["metrics"]
        energies = {int(k): v for k, v in r["minima"].items()}
        terr = {int(k): v for k, v in r["test_error"].items()}
        gid = min(energies, key=energies.get)
        spread, barrier = m["energy_spread"], m["barrier_to_gmin"]["median"]
        ratio = barrier / spread if spread > 0 and math.isfinite(barrier) else float("nan")
        sat, conn = id(r) in ok_count, bool(r["all_connected"])
        rows.append(f"| {r['n_train']} | {p['depth']} | {r['n_params']} | {r['n_minima_bh']} | "
                    f"{r['late_fraction']:.2f} ({r['n_late']}) | {'yes' if sat else 'no'} | {m['n_minima']} | "
                    f"{m['n_ts']} | {r['n_connected']}/{m['n_minima']} | {m['n_funnels']} | {_fmt(spread)} | "
                    f"{_fmt(barrier)} | {_fmt(ratio)} | {terr[gid]:.3f} | {min(terr.values()):.3f}-"
                    f"{max(terr.values()):.3f} | {r['cpu_seconds']:.0f} |")
        cells[cell_key(p["size"], p["depth"])] = {
            "minima": r["n_minima_bh"], "minima_after_connect": m["n_minima"], "late_fraction": r["late_fraction"],
            "saturated": sat, "connected": conn, "funnels": m["n_funnels"],
            "loss_spread": spread, "median_barrier_to_gmin": barrier, "ts": m["n_ts"]}
        ax = axes[sizes.index(p["size"])][depths.index(p["depth"])]
        disconnectivity_graph(energies, r["ts"], n_levels=25, color_by=terr, ax=ax, ylabel="loss",
                              color_label="test error", title=f"N={r['n_train']}, depth {p['depth']}")
    fig.tight_layout()
    fig.savefig(out / "disconnectivity_graphs.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for p, r in results:
        steps = sorted(r["found_steps"].values())
        ax.step([0, *steps, p["bh_steps"]], [0, *range(1, len(steps) + 1), len(steps)], where="post",
                label=f"N={p['size']}, depth {p['depth']}")
    ax.axvline(cfg["bh_steps"] / 2, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("basin-hopping step (every walker)")
    ax.set_ylabel("distinct minima found")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "discovery_curves.png", dpi=110)
    plt.close(fig)

    tables = {"landscape metrics per cell": "\n".join(rows)}
    excluded = graphed.table(lambda p: f"N={p['size']}, depth {p['depth']}")
    if excluded:
        tables["cells that failed a precondition (saturation: every part; connection: funnels and barriers)"] = excluded
    measured = {"sizes": sizes, "depths": depths, "cells": cells,
                "excluded": {"unsaturated": len(counted.excluded),
                             "not connected": len(graphed.excluded) - len(counted.excluded)}}
    verdict = (f"{len(counted.kept)} of {len(results)} cells saturated, {len(graphed.kept)} saturated and connected. "
               "Minima per cell (basin-hopping, saturated cells exact, others lower bounds): "
               + ", ".join(f"{k} {c['minima']}{'' if c['saturated'] else '+'}" for k, c in cells.items()) + ".")
    return Summary(
        tables=tables,
        figures=["disconnectivity_graphs.png", "discovery_curves.png"],
        verdict=verdict,
        measured=measured,
        published={"shallow or data-rich": "single funnel", "deep or data-poor":
                   "more minima, similar losses, low barriers (qualitative; no numbers retrieved)"},
        notes="Architectures, data sets and sizes of the paper could not be retrieved; this grid is ours. "
              "Minima are deduplicated up to hidden-unit permutations and tanh sign flips. The number of minima "
              "of a cell is the number its basin-hopping search found (minima found by the connection searches "
              "are shown after the connection, not counted). 'late share': minima first found in the second half "
              "of the basin-hopping steps (their number in brackets).",
    )


# ---- the pass criterion -----------------------------------------------------------------------------------


def _count(cells: Mapping[str, Any], size: int, depth: int) -> int | None:
    """The number of minima of a cell when its search saturated, else None (absent or unsaturated)."""
    c = cells.get(cell_key(size, depth))
    return int(c["minima"]) if c and c.get("saturated") else None


def monotone(name: str, lines: Mapping[str, list[int | None]], rising: bool, what: str) -> Part:
    """Part 'counts rise (``rising``) or fall along every line, strictly across at least one'.

    ``lines``: label -> counts in the order of the varied quantity (None: a cell that cannot be counted).
    FAIL when a line that can be read reverses between neighbours (a tie is no reversal), or when every
    line can be read and none changes from its first cell to its last; INCONCLUSIVE when no line reverses but
    some cannot be read; PASS otherwise.
    """
    sign = 1 if rising else -1
    text = "; ".join(f"{k}: " + " → ".join("?" if c is None else str(c) for c in v) for k, v in lines.items())
    full = {k: v for k, v in lines.items() if v and all(c is not None for c in v)}
    if len(next(iter(lines.values()), [])) < 2:
        return Part(name, INCONCLUSIVE, f"{what}: fewer than two grid values")
    reversed_ = [k for k, v in full.items() if any(sign * (b - a) < 0 for a, b in zip(v[:-1], v[1:]))]
    if reversed_:
        return Part(name, FAIL, f"{what}: {text}; reverses at {', '.join(reversed_)}")
    if len(full) < len(lines):
        return Part(name, INCONCLUSIVE, f"{what}: {text}; '?' = unsaturated or missing cell")
    if not any(sign * (v[-1] - v[0]) > 0 for v in full.values()):
        return Part(name, FAIL, f"{what}: {text}; no change from the first grid value to the last on any line")
    return Part(name, PASS, f"{what}: {text}")


def decide(measured: Mapping[str, Any]) -> Verdict:
    """The verdict on the measured cells (``measured["cells"]``: cell_key -> dict with ``minima``,
    ``saturated``, ``connected``, ``funnels``, ``loss_spread``, ``median_barrier_to_gmin``; ``sizes`` and
    ``depths``: the grid). See the criterion's rule."""
    cells = measured.get("cells") or {}
    sizes, depths = sorted(measured.get("sizes") or []), sorted(measured.get("depths") or [])
    if not sizes or not depths:
        return combine([Part("grid", INCONCLUSIVE, "no cells measured")])
    n_lo, n_hi, d_lo, d_hi = sizes[0], sizes[-1], depths[0], depths[-1]
    rich, poor = cells.get(cell_key(n_hi, d_lo)) or {}, cells.get(cell_key(n_lo, d_hi)) or {}
    parts = []
    label_rich, label_poor = f"(N={n_hi}, depth {d_lo})", f"(N={n_lo}, depth {d_hi})"
    if rich.get("saturated") and rich.get("connected"):
        f = int(rich["funnels"])
        parts.append(Part("single funnel", PASS if f == 1 else FAIL,
                          f"{label_rich}: {f} funnel(s) among {rich['minima_after_connect']} connected minima"))
    else:
        parts.append(Part("single funnel", INCONCLUSIVE, f"{label_rich}: search unsaturated or graph not connected"))
    parts.append(monotone("minima rise with depth", {f"N={n}": [_count(cells, n, d) for d in depths] for n in sizes},
                          True, "minima by depth " + "/".join(map(str, depths))))
    parts.append(monotone("minima fall with N", {f"depth {d}": [_count(cells, n, d) for n in sizes] for d in depths},
                          False, "minima by N " + "/".join(map(str, sizes))))
    c_rich, c_poor = _count(cells, n_hi, d_lo), _count(cells, n_lo, d_hi)
    ratio = None if c_rich is None or c_poor is None else c_poor / c_rich
    parts.append(at_least(f"≥ {RATIO_MIN:g}× minima", ratio, RATIO_MIN,
                          f"minima {label_poor} / {label_rich} = {c_poor}/{c_rich}" if ratio is not None
                          else f"minima {label_poor} / {label_rich} (unsaturated)"))
    if poor.get("saturated") and poor.get("connected"):
        b, s = poor.get("median_barrier_to_gmin"), poor.get("loss_spread")
        parts.append(at_most("low barriers", b if s is not None and math.isfinite(s) else None,
                             s if s is not None and math.isfinite(s) else 0.0,
                             f"{label_poor}: median barrier to the global minimum (vs the loss spread "
                             f"{_fmt(s)} of its minima)"))
    else:
        parts.append(Part("low barriers", INCONCLUSIVE, f"{label_poor}: search unsaturated or graph not connected"))
    return combine(parts)


RULE = (f"Per (N, depth) cell, the number of minima is the number of distinct minima (up to hidden-unit "
        f"permutations and sign flips) found by basin-hopping of at least {MIN_BH_STEPS} steps per walker; a cell "
        f"counts only when its search saturated (fewer than {LATE_MAX:.0%} of its minima first found in the "
        f"second half of the steps), and its funnels and barriers only when its graph is also connected (every "
        f"minimum joined to the global one after repeated connection sweeps). PASS when all five hold: "
        f"(1) the largest-N, shallowest cell has a single funnel (monotonic-sequence basins); "
        f"(2) minima rise with depth: at every N the counts never decrease from one depth to the next (a tie is "
        f"allowed) and at least one N has more minima at the largest depth than at the smallest; "
        f"(3) minima fall with N: at every depth the counts never increase from one N to the next (ties allowed) "
        f"and at least one depth has fewer minima at the largest N than at the smallest; "
        f"(4) the smallest-N, deepest cell has at least {RATIO_MIN:g}× the minima of the largest-N, shallowest cell; "
        f"(5) in the smallest-N, deepest cell the median minimax barrier to the global minimum is at most the "
        f"loss spread of its minima. A part FAILs when the cells it reads contradict it (a reversal counts even "
        f"when another line is unreadable) and is INCONCLUSIVE when a cell it needs failed its precondition.")


register(Study(
    name=NAME,
    paper="Verpoort, Lee & Wales, Archetypal landscapes for deep neural networks, PNAS 117:21857 (2020)",
    claim="single-funnel landscapes for shallow or data-rich networks; many minima of similar loss separated "
          "by low barriers for deep or data-poor networks",
    scales={"default": DEFAULT, "paper": PAPER},
    points=points, run_point=run_point, summarize=summarize,
    description=__doc__ or "",
    criterion=Criterion(
        published=("Shallow or data-rich networks: a single funnel; deep or data-poor: more minima, of similar "
                   "loss, separated by low barriers (Verpoort, Lee & Wales, PNAS 2020, abstract; qualitative, no "
                   "numbers retrieved)"),
        rule=RULE,
        decide=decide,
    ),
))
