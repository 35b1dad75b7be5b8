"""``make demo``: the main job, end to end on real data, in about five minutes on two cores.

1. Trains the MLP 784-256-256-10 on Fashion-MNIST with SGD for 5 epochs (a stored run, exactly what
   ``flatminima train --data fashion-mnist --model mlp:256,256 --optimizer sgd --epochs 5`` does) and
   prints its test error.
2. Runs the headline study, ``flatness-vs-generalization``, at its small named scale ``demo`` (the study's
   training recipes, SGD, Adam, SAM, Entropy-SGD and Replicated-SGD, each trained to training error
   <= 0.5 % on a smaller subset with a smaller MLP, then measured by local energy and Hessian) on two
   worker processes, prints its tables and its decision, renders the HTML reports and says where they are.
   ``make reproduce`` runs the study at its ``default`` scale, the one whose decision is the study's.

Both steps store their results in the run store (``$FLATMINIMA_HOME`` or ``./flatminima-runs``); a
second ``make demo`` reuses the finished study points.
"""

from __future__ import annotations

import os
import sys
import time

from .commands.train import train_run
from .errors import FlatminimaError
from .store import Store
from .train import TrainConfig

#: the headline study and the scale ``make demo`` runs
STUDY = "flatness-vs-generalization"
SCALE = "demo"
#: tables of the study printed on the terminal (the per-model table is in the report)
PRINTED_TABLES = ("precondition", "kendall_tau", "optimizers", "excluded")


def _describe(cfg: dict) -> str:
    """'46 models (23 recipes x 2 seeds) on 2048 Fashion-MNIST training examples, mlp:64' for a scale config."""
    n = len(cfg["models"]) * cfg["seeds"]
    data = f"{cfg['train_subset']}" if cfg["train_subset"] else "all 60000"
    return (f"{n} models ({len(cfg['models'])} recipes x {cfg['seeds']} seeds) on {data} Fashion-MNIST training "
            f"examples, network {cfg['model']}")


def main() -> int:
    """Run both steps; returns the exit status (2, with one line on stderr, on a flatminima error)."""
    t0 = time.perf_counter()
    cfg = TrainConfig(data="fashion-mnist", model="mlp:256,256", optimizer="sgd", lr=0.05, momentum=0.9,
                      epochs=5, batch_size=128, scheduler="cosine", seed=0)
    print("flatminima demo 1/2: MLP 784-256-256-10, SGD (lr 0.05, momentum 0.9, cosine), 5 epochs on Fashion-MNIST")
    try:
        store = Store()
        run, result = train_run(store, cfg, name="demo", progress=sys.stdout.isatty())
        for row in result.history:
            print(f"  epoch {row['epoch']:.0f}: train loss {row['train_loss']:.4f}, test error {row['test_error']:.4f}")
        print(f"test error: {result.final['test_error']:.4f} ({result.seconds:.1f} s); run {run.id} stored in {run.folder}")

        from .report import render_all, render_study
        from .studies import get, run_study

        study = get(STUDY)
        print(f"\nflatminima demo 2/2: study {STUDY} at its small '{SCALE}' scale: "
              f"{_describe(study.config(SCALE))}; each trained to training error <= 0.5 %, then measured "
              "(local energy, top Hessian eigenvalue, Hessian trace)")
        print(f"  the study's own scale is 'default' ({_describe(study.config('default'))}): `make reproduce` "
              f"runs it (or: flatminima study run {STUDY} --workers 2)")
        workers = max(1, min(2, os.cpu_count() or 1))
        summary, folder = run_study(STUDY, scale=SCALE, store=store, workers=workers, progress=sys.stderr.isatty())
        for name in PRINTED_TABLES:
            if name in summary.tables:
                print(f"\n{name}\n{summary.tables[name]}")
        print(f"\nverdict at the '{SCALE}' scale: {summary.verdict}")
        if summary.decision is not None:
            print(f"decision at the '{SCALE}' scale (the study's decision is the default scale's): {summary.decision}")
        page = render_study(folder)
        index = render_all(store)
    except FlatminimaError as exc:
        print(f"flatminima: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"\nreport: {page}")
    print(f"all study reports: {index}")
    print(f"`make reproduce` runs {STUDY} (and every study) at the default scale.")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
