"""The compare-optimizers study: its pass criterion on synthetic numbers, the screening of runs that missed a
precondition, the training to a target loss, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flatminima import models
from flatminima.optim import SAM, EntropySGD, ReplicatedSGD
from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.common import fashion_split, train_to_loss
from flatminima.studies.compare_optimizers import ARCHS, OPTIMIZERS, choose_hyperparameters, summarize
from flatminima.studies.registry import point_key

NAME = "compare-optimizers"
GRID = {"sgd": [0.05], "sam": [0.05], "entropy-sgd": [0.2], "replicated-sgd": [0.01]}
CHOSEN = {a: {o: v[0] for o, v in GRID.items()} for a in ARCHS}
#: a tiny scale: 200 training and 200 validation images, tiny models, a loose target the MLP reaches in a few
#: epochs (the tiny CNN does not: its runs are excluded)
TINY = {"train_subset": 400, "val_size": 200, "seeds": 1, "batch_size": 25, "mlp": "mlp:16", "lenet_channels": [2, 4],
        "lenet_hidden": 8, "max_effective_epochs": 15, "target_loss": 0.6, "grid": GRID, "chosen": CHOSEN}
STEP_OF = {"sgd": torch.optim.SGD, "sam": SAM, "entropy-sgd": EntropySGD, "replicated-sgd": ReplicatedSGD}


def measured(diffs: dict[str, tuple[float, float, int]], sgd_error: float = 0.18) -> dict:
    """Synthetic ``Summary.measured``: per '<arch> <optimizer>', a paired difference (mean, s.e., pairs)."""
    m: dict = {f"{a} sgd test error": sgd_error for a in ARCHS}
    for key, (d, se, n) in diffs.items():
        m[f"{key} - sgd"], m[f"{key} - sgd se"], m[f"{key} - sgd pairs"] = d, se, n
    return m


ALL = [f"{a} {o}" for a in ARCHS for o in ("entropy-sgd", "replicated-sgd")]


def test_criterion_passes_fails_and_stays_inconclusive():
    decide = get(NAME).decide
    # every difference 2 points below zero, s.e. 0.3 points: the interval lies below 0
    assert decide(measured({k: (-0.02, 0.003, 10) for k in ALL})).outcome == "PASS"
    # one difference above zero beyond 2 s.e.: contradicted
    worse = {k: (-0.02, 0.003, 10) for k in ALL} | {"lenet entropy-sgd": (0.006, 0.002, 10)}
    v = decide(measured(worse))
    assert v.outcome == "FAIL" and [p.outcome for p in v.parts].count("FAIL") == 1
    # a difference whose interval [-0.4, 0] points excludes the claimed improvement (5 % of 18 % = 0.9 points)
    small = {k: (-0.02, 0.003, 10) for k in ALL} | {"mlp replicated-sgd": (-0.002, 0.001, 10)}
    v = decide(measured(small))
    assert v.outcome == "FAIL" and "excludes the claimed" in str(v)
    # an interval [-1.3, +0.3] points that holds both 0 and the claimed improvement: not decided
    wide = {k: (-0.02, 0.003, 10) for k in ALL} | {"mlp entropy-sgd": (-0.005, 0.004, 10)}
    assert decide(measured(wide)).outcome == "INCONCLUSIVE"
    # too few seeds with both runs valid, or nothing measured
    few = {k: (-0.02, 0.003, 10) for k in ALL} | {"lenet replicated-sgd": (-0.02, 0.003, 5)}
    v = decide(measured(few))
    assert v.outcome == "INCONCLUSIVE" and "only 5 seeds" in str(v)
    assert decide({}).outcome == "INCONCLUSIVE"


def fake_result(train_loss: float, test_error: float, val_error: float = 0.2, reached: bool = True) -> dict:
    return {"reached": reached, "diverged": False, "effective_epochs": 30.0, "grad_evals": 450, "steps": 450,
            "train_loss": train_loss, "train_error": 0.0, "val_loss": 0.8, "val_error": val_error, "test_loss": 0.9,
            "test_error": test_error, "curve": [{"effective_epochs": 1.0, "grad_evals": 15, "step": 15,
                                                "train_loss": 1.0, "train_error": 0.3}], "n_params": 10}


def test_runs_that_miss_a_precondition_are_excluded_and_counted(tmp_path):
    """Synthetic results through the study's summary: an SGD run that did not reach the target loss and an
    Entropy-SGD run whose hyperparameter is not the validation choice leave their seeds out of the pairs."""
    study = get(NAME)
    grid = {**GRID, "sgd": [0.02, 0.05]}
    cfg = study.config("default", {**TINY, "seeds": 3, "grid": grid})
    results = []
    for p in study.points(cfg):
        if p["kind"] == "tune":  # validation prefers lr 0.02 for SGD on the LeNet: its comparison runs (0.05) go
            better = p["optimizer"] == "sgd" and (p["arch"], p["value"]) in (("lenet", 0.02), ("mlp", 0.05))
            results.append((p, fake_result(0.005, 0.2, val_error=0.1 if better else 0.2)))
        elif p["arch"] == "mlp" and p["optimizer"] == "sgd" and p["seed"] == 2:
            results.append((p, fake_result(0.05, 0.15, reached=False)))  # stopped at the budget, loss 0.05
        else:
            err = 0.20 - 0.01 * (p["optimizer"] == "entropy-sgd")
            results.append((p, fake_result(0.005 + 0.001 * p["seed"], err + 0.001 * p["seed"])))
    s = summarize(cfg, results, tmp_path)
    m = s.measured
    target = next(k for k in m["excluded"] if k.startswith("training loss"))
    assert m["excluded"] == {target: 1, "hyperparameter = validation choice (seed 0)": 3}
    assert m["mlp entropy-sgd - sgd pairs"] == 2 and m["mlp sgd kept"] == 2
    assert m["mlp entropy-sgd - sgd"] == pytest.approx(-0.01) and m["mlp entropy-sgd - sgd se"] == pytest.approx(0)
    assert m["lenet sgd kept"] == 0 and m["lenet entropy-sgd - sgd pairs"] == 0
    assert m["mlp sgd worst train loss"] == pytest.approx(0.008)  # the unconverged run (0.05) is not compared
    assert m["stored choice agrees"] is False and m["chosen"]["lenet"]["sgd"] == 0.02
    assert "Excluded comparison runs" in s.tables and "MLP SGD, lr = 0.05, seed 2" in s.tables["Excluded comparison runs"]
    assert "set `chosen` to the validation choice" in s.verdict
    assert get(NAME).decide(m).outcome == "INCONCLUSIVE"  # 2 pairs of 6 needed
    assert all((tmp_path / f).stat().st_size > 1000 for f in s.figures)


def test_train_to_loss_stops_at_the_first_check_below_the_target():
    ds, val = fashion_split(400, 200)
    torch.manual_seed(0)
    model = models.build("mlp:32", ds.input_shape, ds.n_classes)
    r = train_to_loss(model, ds, "sgd", {"lr": 0.05, "momentum": 0.9}, target_loss=0.3, max_effective_epochs=60,
                      batch_size=50, seed=0, val=val)
    losses = [c["train_loss"] for c in r["curve"]]
    assert r["reached"] and losses[-1] <= 0.3 < min(losses[:-1])
    assert [c["effective_epochs"] for c in r["curve"]] == list(range(1, len(losses) + 1))  # a check every epoch
    assert r["effective_epochs"] == len(losses) and r["grad_evals"] == 4 * len(losses)
    assert 0 < r["val_error"] < 0.6 and 0 < r["test_error"] < 0.6
    # the validation split is carved out of the subset: disjoint from the training images, balanced
    assert len(ds.X_train) == len(val[0]) == 200 and torch.bincount(val[1]).tolist() == [20] * 10
    assert not (ds.X_train.flatten(1)[:, None, :] == val[0].flatten(1)[None]).all(-1).any()
    # an unreachable target: the whole budget is spent and the run says so
    torch.manual_seed(0)
    model = models.build("mlp:32", ds.input_shape, ds.n_classes)
    r = train_to_loss(model, ds, "entropy-sgd", {"lr": 1.0, "momentum": 0.0, "options": {"inner_steps": 2}},
                      target_loss=1e-6, max_effective_epochs=3, batch_size=50, seed=0)
    assert not r["reached"] and r["grad_evals"] == 12 and math.isnan(r["val_error"])


def test_tiny_study_runs_end_to_end(tmp_path):
    study = get(NAME)
    cfg = study.config("default")
    pts = study.points(cfg)
    evals = [p for p in pts if p["kind"] == "eval"]
    assert len(evals) == len(ARCHS) * len(OPTIMIZERS) * cfg["seeds"] and cfg["seeds"] >= 6
    assert {p["seed"] for p in pts if p["kind"] == "tune"} == {0} and 0 not in {p["seed"] for p in evals}
    assert all(p["hyper"]["options"]["inner_steps"] == 5 for p in pts if p["optimizer"] == "entropy-sgd")
    assert all(p["hyper"]["options"]["replicas"] == 3 for p in pts if p["optimizer"] == "replicated-sgd")

    store = Store(tmp_path / "store")
    summary, folder = run_study(NAME, overrides=TINY, store=store, progress=False)
    tiny = study.points(study.config("default", TINY))
    stored = [store.get_point(NAME, "default+" + point_key(TINY), point_key(p)) for p in tiny]
    assert all(r is not None and "test_error" in r for r in stored)  # every point ran
    assert len(summary.tables) >= 2 and summary.figures
    rec = json.loads((folder / "summary.json").read_text())
    assert rec["decision"]["outcome"] in ("PASS", "FAIL", "INCONCLUSIVE") and rec["criterion"]["rule"]
    assert all((folder / f).is_file() for f in summary.figures)
    assert render_study(folder).stat().st_size > 1000
    # the summary reports the points' own numbers (one seed: the mean is the run's value)
    for p, r in zip(tiny, stored):
        if p["kind"] == "eval" and r["reached"] and summary.measured["chosen"][p["arch"]][p["optimizer"]] is not None:
            assert rec["measured"][f"{p['arch']} {p['optimizer']} test error"] == r["test_error"]


def test_the_tune_points_alone_give_the_chosen_values():
    """The command that fills a scale's ``chosen``: the tune points' validation choice, as a config value."""
    grid = {**GRID, "sgd": [0.02, 0.05]}
    chosen, runs = choose_hyperparameters("default", {**TINY, "grid": grid, "mlp": "mlp:8"}, progress=False)
    assert len(runs) == 2 * 5 and {p["kind"] for p, _, _ in runs} == {"tune"}
    mlp_sgd = {p["value"]: r for p, r, _ in runs if p["arch"] == "mlp" and p["optimizer"] == "sgd"}
    reached = {v: r["val_error"] for v, r in mlp_sgd.items() if r["reached"]}
    assert chosen["mlp"]["sgd"] == (min(reached, key=lambda v: (reached[v], mlp_sgd[v]["val_loss"])) if reached else None)
    assert get(NAME).config("default", {"chosen": {a: {o: v or GRID[o][0] for o, v in c.items()}
                                                   for a, c in chosen.items()}})  # a valid override


def mlp_point(optimizer: str, seed: int = 1) -> dict:
    study = get(NAME)
    return next(p for p in study.points(study.config("default", TINY))
                if p["arch"] == "mlp" and p["optimizer"] == optimizer and p["kind"] == "eval") | {"seed": seed}


@pytest.mark.parametrize("optimizer", ["entropy-sgd", "replicated-sgd"])
def test_study_points_are_reproducible_and_depend_on_the_seed(optimizer):
    study = get(NAME)
    a, b = (study.run_point(mlp_point(optimizer)) for _ in range(2))
    assert a == b
    assert study.run_point(mlp_point(optimizer, seed=2))["curve"] != a["curve"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_an_optimizer_that_does_not_move_misses_the_target(optimizer, monkeypatch):
    """The precondition can fail: every optimizer reaches the tiny target loss, but not with a step that
    evaluates the closure (so the budget is spent) and never updates the parameters."""
    study = get(NAME)
    assert study.run_point(mlp_point(optimizer))["reached"]

    def no_op_step(self, closure=None):
        return closure()

    monkeypatch.setattr(STEP_OF[optimizer], "step", no_op_step)
    r = study.run_point(mlp_point(optimizer))
    assert not r["reached"] and r["effective_epochs"] >= TINY["max_effective_epochs"]
