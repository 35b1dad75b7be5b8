"""``make demo``: the main job, end to end on real data.

1. Trains the MLP 784-256-256-10 on Fashion-MNIST with SGD for 5 epochs (a stored run, exactly what
   ``flatminima train --data fashion-mnist --model mlp:256,256 --optimizer sgd --epochs 5`` does) and
   prints its test error.
2. Runs the headline study, ``flatness-vs-generalization`` at its default scale (SGD, Entropy-SGD,
   Replicated-SGD, SAM and Adam on Fashion-MNIST, each minimum measured by local energy, Hessian and
   local entropy) on two worker processes, renders the HTML reports and prints where they are.

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

        print("\nflatminima demo 2/2: study flatness-vs-generalization (entropic optimizers vs SGD and SAM, "
              "with their flatness), default scale")
        from .report import render_all, render_study
        from .studies import run_study

        workers = max(1, min(2, os.cpu_count() or 1))
        summary, folder = run_study("flatness-vs-generalization", store=store, workers=workers)
        for name, table in summary.tables.items():
            print(f"\n{name}\n{table}")
        print(f"\nverdict: {summary.verdict}")
        page = render_study(folder)
        index = render_all(store)
    except FlatminimaError as exc:
        print(f"flatminima: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"\nreport: {page}")
    print(f"all study reports: {index}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
