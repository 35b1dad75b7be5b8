"""A tiny study for testing the study machinery (registry, resume, process pool, Dask, report)."""

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flatminima.studies.claims import Criterion, combine, in_range  # noqa: E402
from flatminima.studies.registry import Study, Summary, register  # noqa: E402


def points(cfg):
    return [{"x": float(x), "seed": s} for x in np.linspace(0, 1, cfg["n"]) for s in range(cfg["seeds"])]


def run_point(point):
    log = os.environ.get("TOY_STUDY_LOG")
    if log:  # record every evaluation, to check that resumed sweeps skip finished points
        with open(log, "a") as fh:
            fh.write(f"{point['x']:.6f},{point['seed']}\n")
    time.sleep(float(os.environ.get("TOY_STUDY_SLEEP", "0")))
    rng = np.random.default_rng(point["seed"])
    return {"y": point["x"] ** 2 + 0.01 * float(rng.standard_normal())}


def summarize(cfg, results, out: Path):
    xs = np.array([p["x"] for p, _ in results])
    ys = np.array([r["y"] for _, r in results])
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(xs, ys, "o")
    fig.savefig(out / "toy.png", dpi=60)
    plt.close(fig)
    table = "| x | y |\n|---|---|\n" + "\n".join(f"| {x:.2f} | {y:.4f} |" for x, y in zip(xs, ys))
    return Summary(tables={"points": table}, figures=["toy.png"], verdict="y grows like x^2",
                   measured={"y(1)": float(ys[-1])}, published={"y(1)": 1.0})


CRITERION = Criterion(published="y(1) = 1 (the fixture's definition)", rule="y(1) in [0.9, 1.1]",
                      decide=lambda m: combine([in_range("y(1)", m["y(1)"], 0.9, 1.1)]))

register(Study(name="toy", paper="none (a test fixture)", claim="y = x^2", scales={"default": {"n": 4, "seeds": 2},
               "paper": {"n": 8, "seeds": 3}}, points=points, run_point=run_point, summarize=summarize,
               criterion=CRITERION))
