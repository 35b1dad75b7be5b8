"""Study ``flatness-vs-generalization``: its pass rule on synthetic numbers, the exclusion of models that miss
the precondition, a tiny end-to-end run, the pieces it is built from, and ``make demo``'s use of it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flatminima.errors import ConfigError
from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import claims as C
from flatminima.studies import flatness_vs_generalization as F
from flatminima.studies import get, run_study

NAME = "flatness-vs-generalization"


def _measured(tau: float, p: float, lower: float, upper: float, n: int = 40) -> dict:
    return {"n_models": n, "kendall_tau": {"local_energy": {"tau": tau, "p": p, "n": n, "lower": lower,
                                                            "upper": upper}}}


def test_the_pass_rule_on_synthetic_numbers():
    decide = get(NAME).decide
    assert decide(_measured(0.45, 1e-4, 0.25, 0.62)).outcome == C.PASS
    # tau significant but its interval lies below the claimed 0.3: FAIL
    assert decide(_measured(0.12, 0.04, 0.01, 0.24)).outcome == C.FAIL
    # significantly negative: FAIL
    assert decide(_measured(-0.35, 0.001, -0.55, 0.05)).outcome == C.FAIL
    # interval contains both 0.3 and 0: INCONCLUSIVE
    assert decide(_measured(0.2, 0.08, -0.05, 0.45)).outcome == C.INCONCLUSIVE
    # a strong correlation, but too few models met the precondition: INCONCLUSIVE
    few = decide(_measured(0.6, 1e-4, 0.4, 0.8, n=F.MIN_MODELS - 1))
    assert few.outcome == C.INCONCLUSIVE and "models" in str(few)
    assert decide({}).outcome == C.INCONCLUSIVE


def _synthetic(n: int, rng: np.random.Generator, optimizer: str = "sgd") -> list[tuple[dict, dict]]:
    pts = get(NAME).points(get(NAME).config("default"))
    out = []
    for i in range(n):
        p = dict(pts[i % len(pts)], optimizer=optimizer, seed=i)
        le = 0.02 + 0.001 * i
        r = {"converged": True, "train_error": 0.004, "effective_epochs": 30.0, "test_error": 0.15 + 0.002 * i
             + 0.0005 * rng.standard_normal(), "local_energy": le, "top_eigenvalue": 10.0 + i, "trace": 100.0 - i,
             "trace_stderr": 1.0, "local_energy_curve": {"sigmas": [0.1, 0.5], "delta": [le / 5, le * 2],
                                                         "stderr": [1e-4, 1e-4]}}
        out.append((p, r))
    return out


def test_models_missing_the_precondition_are_excluded_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = _synthetic(10, rng) + _synthetic(4, rng, "entropy-sgd")
    # an unconverged model (with a tiny local energy and the best test error: it would change tau) ...
    p_bad, r_bad = _synthetic(1, rng)[0]
    r_bad.update(converged=False, train_error=0.03, test_error=0.01, local_energy=0.0)
    p_bad = dict(p_bad, label="unconverged", seed=99)
    # ... one that claims convergence but is above the target, and one whose Lanczos solver failed
    p_over, r_over = _synthetic(1, rng)[0]
    r_over.update(train_error=0.02)
    p_nan, r_nan = _synthetic(1, rng)[0]
    r_nan.update(top_eigenvalue=float("nan"))
    summary = F.summarize(get(NAME).config("default"), good + [(p_bad, r_bad), (p_over, r_over), (p_nan, r_nan)],
                          tmp_path)
    m = summary.measured
    assert m["n_models"] == 14 and m["n_total"] == 17
    assert m["excluded"] == {"training error <= target within the budget": 2, "every measure computed": 1}
    assert "unconverged seed 99" in summary.tables["excluded"]
    assert m["kendall_tau"]["local_energy"]["n"] == 14
    assert m["kendall_tau"]["local_energy"]["tau"] > 0.8  # the excluded outlier did not enter
    assert m["worst_train_error"]["sgd"] == pytest.approx(0.004)
    vs = m["optimizers"]["entropic_vs_sgd"]["entropy-sgd"]["local_energy"]
    assert vs["flatter"] and vs["diff"] < 0  # the four entropic models have the smaller local energies here
    # fewer than MIN_MODELS kept: the decision cannot pass
    assert get(NAME).decide(m).outcome == C.INCONCLUSIVE
    assert (tmp_path / "measures_vs_test_error.png").stat().st_size > 1000


TINY = {"models": ["sgd b128 lr0.05 m0.9", "sam b128 rho0.05", "esgd b128 g0.3x10", "rsgd b128 g0.01x300"],
        "seeds": 1, "train_subset": 200, "model": "mlp:16", "target_train_error": 0.05, "max_epochs": 60.0,
        "le_sigmas": [0.1, 0.3], "le_samples": 4, "trace_matvecs": 6, "top_tol": 1e-2}


def test_a_tiny_run_end_to_end(tmp_path):
    store = Store(tmp_path / "store")
    summary, folder = run_study(NAME, overrides=TINY, store=store, progress=False)
    n_points = len(get(NAME).points(get(NAME).config("default", TINY)))
    assert n_points == 4 and len(store.points(NAME, folder.name)) == n_points
    assert summary.measured["n_total"] == 4 and summary.measured["n_models"] >= 1
    for name in ("precondition", "kendall_tau", "optimizers", "models"):
        assert summary.tables[name].count("\n") >= 2
    for fig in summary.figures:
        assert (folder / fig).stat().st_size > 1000
    record = json.loads((folder / "summary.json").read_text())
    assert record["decision"]["outcome"] == C.INCONCLUSIVE  # 4 models < MIN_MODELS
    assert record["criterion"]["rule"].startswith("PASS when at least 24 models")
    for _, r in store.points(NAME, folder.name):
        assert (r["train_error"] <= 0.05) == r["converged"]
        assert math.isfinite(r["local_energy"]) == r["converged"]
    assert "<table" in render_study(folder).read_text()


def test_training_stops_at_the_target_or_the_budget():
    from flatminima.data import Dataset

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=g)
    y = (X[:, 0] > 0).long()
    ds = Dataset(name="toy", X_train=X, y_train=y, X_test=X[:16], y_test=y[:16], n_classes=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    hyper = {"lr": 0.1, "momentum": 0.9, "options": {}}
    out = F.train_to_target(model, ds, "sgd", hyper, batch_size=16, seed=0, target=0.0, max_epochs=200.0)
    assert out["converged"] and out["train_error"] == 0.0 and out["effective_epochs"] < 200
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    out = F.train_to_target(model, ds, "sgd", {**hyper, "lr": 1e-5}, batch_size=16, seed=0, target=0.0,
                            max_epochs=2.0)
    assert not out["converged"] and out["effective_epochs"] == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        F.train_to_target(model, ds, "sgd", hyper, batch_size=16, seed=0, target=1.5, max_epochs=2.0)


def test_local_energy_area_and_config_checks():
    # dE(sigma) = sigma on [0, 0.5]: area 0.125, divided by 0.5
    assert F.local_energy_area([0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.25)
    assert F.local_energy_area([0.5], [0.2]) == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        F.local_energy_area([0.3, 0.2], [0.1, 0.1])
    study = get(NAME)
    with pytest.raises(ConfigError, match="recipes"):
        study.points(study.config("default", {"models": ["no such recipe"]}))
    with pytest.raises(ConfigError, match="increasing"):
        study.points(study.config("default", {"le_sigmas": [0.3, 0.1]}))
    for scale in ("demo", "default", "paper"):
        pts = study.points(study.config(scale))
        assert len(pts) > F.MIN_MODELS and all(p["target_train_error"] == 0.005 for p in pts)


def test_make_demo_runs_the_named_demo_scale(monkeypatch, capsys, tmp_path):
    """The demo's study step runs the 'demo' scale, says so, and points to make reproduce (the work faked)."""
    import flatminima.report as report
    import flatminima.studies as studies
    from flatminima import demo
    from flatminima.studies.registry import Summary

    class Result:
        history = [{"epoch": 1.0, "train_loss": 0.5, "test_error": 0.2}]
        final = {"test_error": 0.2}
        seconds = 0.1

    class Run:
        id, folder = "r1", tmp_path

    calls = []

    def fake_run_study(name, scale="default", **kw):
        calls.append((name, scale))
        s = Summary(tables={"kendall_tau": "| a |\n|---|\n| 1 |"}, verdict="measured")
        s.decision = C.combine([C.Part("x", C.INCONCLUSIVE, "y")])
        return s, tmp_path

    monkeypatch.setenv("FLATMINIMA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(demo, "train_run", lambda *a, **k: (Run(), Result()))
    monkeypatch.setattr(studies, "run_study", fake_run_study)
    monkeypatch.setattr(report, "render_study", lambda folder: tmp_path / "page.html")
    monkeypatch.setattr(report, "render_all", lambda store: tmp_path / "index.html")
    assert demo.main() == 0
    text = capsys.readouterr().out
    assert calls == [(NAME, "demo")]
    assert "'demo' scale" in text and "make reproduce" in text and "46 models" in text
    assert "decision at the 'demo' scale" in text
