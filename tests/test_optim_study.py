"""The compare-optimizers study at a tiny scale: every optimizer trains the MLP, runs are reproducible,
the summary reports what the points measured, and a broken optimizer fails these checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flatminima.optim import SAM, EntropySGD, ReplicatedSGD
from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.registry import point_key

OPTS = ("sgd", "sam", "entropy-sgd", "replicated-sgd")
TINY = {"seeds": 1, "train_subset": 300, "mlp": "mlp:16", "mlp_grad_evals": 30, "lenet_channels": [2, 4],
        "lenet_hidden": 8, "lenet_grad_evals": 30, "evals": 2}
STEP_OF = {"sgd": torch.optim.SGD, "sam": SAM, "entropy-sgd": EntropySGD, "replicated-sgd": ReplicatedSGD}


def check_learned(result: dict) -> None:
    """An MLP point trained: 30 gradient evaluations take its training error on 300 examples far below
    chance (0.9 for 10 classes) and its loss well below that of a uniform prediction (log 10)."""
    assert result["train_error"] < 0.5, result
    assert result["train_loss"] < 0.6 * math.log(10), result


def mlp_point(optimizer: str, seed: int = 0) -> dict:
    study = get("compare-optimizers")
    return next(p for p in study.points(study.config("default", TINY))
                if p["arch"] == "mlp" and p["optimizer"] == optimizer) | {"seed": seed}


def test_compare_optimizers_tiny_run(tmp_path):
    study = get("compare-optimizers")
    cfg = study.config("default")
    pts = study.points(cfg)
    assert len(pts) == 2 * 4 * cfg["seeds"] and cfg["seeds"] >= 3
    assert {p["optimizer"] for p in pts} == set(OPTS)
    store = Store(tmp_path)
    summary, folder = run_study("compare-optimizers", "default", TINY, store=store, progress=False)
    rec = json.loads((folder / "summary.json").read_text())
    assert (folder / "test_error_vs_grad_evals.png").stat().st_size > 1000
    table = next(iter(summary.tables.values()))
    assert table.count("\n") == 1 + 8  # header and separator, then one row per (model, optimizer)
    scale_key = "default+" + point_key(TINY)
    pts = study.points(study.config("default", TINY))
    results = {(p["arch"], p["optimizer"]): store.get_point("compare-optimizers", scale_key, point_key(p)) for p in pts}
    for (arch, opt), r in results.items():
        # the summary reports the points' own numbers (one seed: the mean is the point's value)
        assert rec["measured"][f"{arch} {opt} test error"] == r["test_error"]
        assert rec["measured"][f"{arch} {opt} train loss"] == r["train_loss"]
        if arch == "mlp":  # the tiny LeNet stays near chance in 30 evaluations: only the MLP must learn
            check_learned(r)
    # equal compute: every run made exactly the budgeted gradient evaluations (30 = multiple of 2, 3 and 5)
    assert {r["grad_evals"] for r in results.values()} == {30}
    assert {r["steps"] for r in results.values()} == {30, 15, 6, 10}
    assert f"mlp: SGD {100 * results['mlp', 'sgd']['test_error']:.2f}%" in rec["verdict"]


@pytest.mark.parametrize("optimizer", ["entropy-sgd", "replicated-sgd"])
def test_study_points_are_reproducible_and_depend_on_the_seed(optimizer):
    study = get("compare-optimizers")
    drop = ("seconds",)
    a, b = (study.run_point(mlp_point(optimizer)) for _ in range(2))
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert study.run_point(mlp_point(optimizer, seed=1))["train_loss"] != a["train_loss"]


@pytest.mark.parametrize("optimizer", OPTS)
def test_an_optimizer_that_does_not_move_fails_the_learning_check(optimizer, monkeypatch):
    """The check can fail: with a step that evaluates the closure (so the budget is spent) but never
    updates the parameters, the MLP stays at its initial error."""

    def no_op_step(self, closure=None):
        return closure()

    monkeypatch.setattr(STEP_OF[optimizer], "step", no_op_step)
    with pytest.raises(AssertionError):
        check_learned(get("compare-optimizers").run_point(mlp_point(optimizer)))
