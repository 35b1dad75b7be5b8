"""Study ``archetypal-landscapes``: Verpoort, Lee & Wales, "Archetypal landscapes for deep neural networks",
PNAS 117, 21857 (2020).

Claim tested: the loss landscape of a network is funnelled (a single funnel, "palm tree") in the shallow or
data-rich limit, while in the deep or data-poor limit the number of minima grows and they have similar
losses separated by low barriers.

Protocol (ours; the paper's exact architectures, data sets and sizes could not be retrieved, see
``shared/reference/landscapes.md``): a tanh MLP with softmax cross-entropy plus ``l2 |w|^2`` over all
parameters (the Wales-group loss), full batch, float64, on scikit-learn digits restricted to a few classes
and reduced by PCA, for every (training-set size, depth) cell of a grid. Per cell: basin-hopping with several
walkers, then a connect-all pass (DNEB + eigenvector-following + pushoffs, Dijkstra missing connections to
the global minimum), then landscape metrics and a disconnectivity graph coloured by test error.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .registry import Study, Summary, register

DEFAULT = {
    "dataset": "digits",
    "classes": [3, 5, 8],
    "pca_dim": 5,
    "width": 3,
    "depths": [1, 2, 3],
    "sizes": [20, 200],
    "l2": 1e-3,
    "walkers": 4,
    "bh_steps": 40,
    "temperature": 0.05,
    "step_size": 0.6,
    "connect_cycles": 2,
    "connect_tries": 2,
    "max_connect": 12,
    "n_images": 8,
    "quench_gtol": 1e-6,
    "seed": 0,
}
PAPER = {**DEFAULT, "classes": list(range(10)), "pca_dim": 10, "width": 10, "depths": [1, 2, 3, 4, 5],
         "sizes": [50, 100, 500, 1000], "walkers": 8, "bh_steps": 500, "connect_cycles": 10, "max_connect": 500}


def points(cfg):
    return [{**{k: v for k, v in cfg.items() if k not in ("depths", "sizes")}, "depth": int(d), "size": int(n)}
            for n in cfg["sizes"] for d in cfg["depths"]]


def run_point(point):
    import torch

    from ..data import load
    from ..data.preprocess import balanced_subset, pca, select_classes
    from ..explore import Database, basin_hopping, tanh_network_potential
    from ..explore.connect import connect_all
    from ..explore.metrics import landscape_metrics

    t0 = time.time()
    ds = select_classes(load(point["dataset"]), point["classes"])
    ds = pca(ds, point["pca_dim"], whiten=True)
    ds = balanced_subset(ds, min(point["size"], len(ds.y_train)), seed=point["seed"])
    X = ds.X_train.reshape(len(ds.y_train), -1).double()
    pot = tanh_network_potential(X, ds.y_train, hidden=[point["width"]] * point["depth"], l2=point["l2"],
                                 n_classes=len(point["classes"]))
    db = Database(potential=pot)
    basin_hopping(pot, steps=point["bh_steps"], temperature=point["temperature"], seed=point["seed"], database=db,
                  walkers=point["walkers"], step_size=point["step_size"], gtol=point["quench_gtol"])
    t_bh = time.time() - t0
    n_conn = connect_all(pot, db, max_cycles=point["connect_cycles"], max_tries=point["connect_tries"],
                         max_minima=point["max_connect"], n_images=point["n_images"], ts_gtol=point["quench_gtol"])
    Xte = ds.X_test.reshape(len(ds.y_test), -1).double()
    minima = db.minima()
    thetas = torch.as_tensor(np.stack([m.coords for m in minima]))
    test_err = pot.landscape.with_data((Xte, ds.y_test)).batched_error(thetas).tolist()
    train_err = pot.landscape.batched_error(thetas).tolist()
    tss = db.transition_states()
    n_neg = [int(t.props["n_neg"]) for t in tss]  # Hessian index of every stored TS (verified on insertion)
    return {
        "n_params": pot.ndim,
        "n_train": int(len(ds.y_train)),
        "minima": {str(m.id): m.energy for m in minima},
        "log_prod": {str(m.id): m.log_prod for m in minima if m.log_prod is not None},
        "ts": [[t.min1, t.min2, t.energy] for t in tss],
        "test_error": {str(m.id): e for m, e in zip(minima, test_err)},
        "train_error": {str(m.id): e for m, e in zip(minima, train_err)},
        "ts_index": n_neg,
        "n_connected": n_conn,
        "metrics": landscape_metrics(db),
        "seconds_bh": t_bh,
        "seconds": time.time() - t0,
    }


def _fmt(v, digits=3):
    return "nan" if v != v else f"{v:.{digits}g}"


def summarize(cfg, results, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..explore.graph import disconnectivity_graph

    results = sorted(results, key=lambda pr: (pr[0]["size"], pr[0]["depth"]))
    sizes = sorted({p["size"] for p, _ in results})
    depths = sorted({p["depth"] for p, _ in results})
    fig, axes = plt.subplots(len(sizes), len(depths), figsize=(3.6 * len(depths), 3.2 * len(sizes)), squeeze=False)
    rows = ["| N_train | depth | params | minima | TS | connected | funnels (MSB) | loss spread "
            "| median barrier to gmin | barrier / spread | frustration | test error (gmin) | test error range | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = {}
    for p, r in results:
        ax = axes[sizes.index(p["size"])][depths.index(p["depth"])]
        energies = {int(k): v for k, v in r["minima"].items()}
        terr = {int(k): v for k, v in r["test_error"].items()}
        disconnectivity_graph(energies, r["ts"], n_levels=25, color_by=terr, ax=ax, ylabel="loss",
                              color_label="test error",
                              title=f"N={r['n_train']}, depth {p['depth']}")
        m = r["metrics"]
        gid = min(energies, key=energies.get)
        conn_err = [terr[int(k)] for k in r["minima"]]
        ratio = m["barrier_to_gmin"]["median"] / m["energy_spread"] if m["energy_spread"] > 0 else float("nan")
        rows.append(f"| {r['n_train']} | {p['depth']} | {r['n_params']} | {m['n_minima']} | {m['n_ts']} | "
                    f"{m['n_connected']} | {m['n_funnels']} | {_fmt(m['energy_spread'])} | "
                    f"{_fmt(m['barrier_to_gmin']['median'])} | {_fmt(ratio)} | {_fmt(m['frustration_index'])} | "
                    f"{terr[gid]:.3f} | {min(conn_err):.3f}-{max(conn_err):.3f} | {r['seconds']:.0f} |")
        cells[(p["size"], p["depth"])] = m
    fig.tight_layout()
    fig.savefig(out / "disconnectivity_graphs.png", dpi=110)
    plt.close(fig)

    lo_n, hi_n, lo_d, hi_d = sizes[0], sizes[-1], depths[0], depths[-1]
    rich_shallow = cells.get((hi_n, lo_d))
    poor_deep = cells.get((lo_n, hi_d))
    measured = {f"N={n},depth={d}": {"minima": c["n_minima"], "ts": c["n_ts"], "funnels": c["n_funnels"],
                                      "median_barrier_to_gmin": c["barrier_to_gmin"]["median"]}
                for (n, d), c in cells.items()}
    verdict = "incomplete grid"
    if rich_shallow and poor_deep:
        single = rich_shallow["n_funnels"] == 1
        more = poor_deep["n_minima"] > rich_shallow["n_minima"]
        verdict = (f"Shallow/data-rich cell (N={hi_n}, depth {lo_d}): {rich_shallow['n_minima']} minima, "
                   f"{rich_shallow['n_funnels']} funnel(s) -> "
                   f"{'single funnel, as claimed' if single else 'not a single funnel'}. "
                   f"Deep/data-poor cell (N={lo_n}, depth {hi_d}): {poor_deep['n_minima']} minima "
                   f"({'more' if more else 'not more'} than the shallow/data-rich cell), loss spread "
                   f"{_fmt(poor_deep['energy_spread'])}, median barrier to the global minimum "
                   f"{_fmt(poor_deep['barrier_to_gmin']['median'])}. Small sampling budget: counts are lower bounds.")
    return Summary(
        tables={"landscape metrics per cell": "\n".join(rows)},
        figures=["disconnectivity_graphs.png"],
        verdict=verdict,
        measured=measured,
        published={"shallow or data-rich": "single funnel", "deep or data-poor":
                   "more minima, similar losses, low barriers (qualitative; no numbers retrieved)"},
        notes="Architectures, data sets and sizes of the paper could not be retrieved; this grid is ours. "
              "Minima are deduplicated up to hidden-unit permutations and tanh sign flips.",
    )


register(Study(
    name="archetypal-landscapes",
    paper="Verpoort, Lee & Wales, Archetypal landscapes for deep neural networks, PNAS 117:21857 (2020)",
    claim="single-funnel landscapes for shallow or data-rich networks; many minima of similar loss separated "
          "by low barriers for deep or data-poor networks",
    scales={"default": DEFAULT, "paper": PAPER},
    points=points, run_point=run_point, summarize=summarize,
    description=__doc__,
))
