"""The compare-optimizers study runs end to end at a tiny scale and reports what it measured."""

from __future__ import annotations

import json

from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.registry import point_key

OPTS = ("sgd", "sam", "entropy-sgd", "replicated-sgd")


def test_compare_optimizers_tiny_run(tmp_path):
    study = get("compare-optimizers")
    cfg = study.config("default")
    pts = study.points(cfg)
    assert len(pts) == 2 * 4 * cfg["seeds"] and cfg["seeds"] >= 3
    assert {p["optimizer"] for p in pts} == set(OPTS)
    over = {"seeds": 1, "train_subset": 300, "mlp": "mlp:16", "mlp_grad_evals": 30, "lenet_channels": [2, 4],
            "lenet_hidden": 8, "lenet_grad_evals": 30, "evals": 2}
    store = Store(tmp_path)
    summary, folder = run_study("compare-optimizers", "default", over, store=store, progress=False)
    rec = json.loads((folder / "summary.json").read_text())
    assert (folder / "test_error_vs_grad_evals.png").stat().st_size > 1000
    table = next(iter(summary.tables.values()))
    assert table.count("\n") == 1 + 8  # header and separator, then one row per (model, optimizer)
    for arch in ("mlp", "lenet"):
        for opt in OPTS:
            assert 0.0 <= rec["measured"][f"{arch} {opt} test error"] <= 1.0
    # equal compute: every run made exactly the budgeted gradient evaluations (30 = multiple of 2, 3 and 5)
    scale_key = "default+" + point_key(over)
    results = [store.get_point("compare-optimizers", scale_key, point_key(p))
               for p in study.points(study.config("default", over))]
    assert {r["grad_evals"] for r in results} == {30}
    assert {r["steps"] for r in results} == {30, 15, 6, 10}
    assert rec["verdict"]
