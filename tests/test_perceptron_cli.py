"""The ``perceptron`` CLI (solve | entropy | local-entropy) and the ``wide-flat-minima`` study at a tiny scale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from flatminima.commands.perceptron import app
from flatminima.errors import ConfigError, DataNotFoundError
from flatminima.perceptron import entropy, local_entropy, random_instance, teacher_instance
from flatminima.store import Store

runner = CliRunner()


def test_solve_stores_a_verified_solution(tmp_path):
    res = runner.invoke(app, ["solve", "--n", "101", "--alpha", "0.4", "--store", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    st = Store(tmp_path)
    (run,) = st.runs("perceptron-solve")
    assert run.status == "finished"
    assert run.config == {"solver": "fbp", "n": 101, "alpha": 0.4, "seed": 0, "k": 1, "fully_connected": False,
                          "teacher": False, "data": None}
    assert st.results(run.id)["solved"] is True and st.results(run.id)["errors"] == 0
    w = np.array(json.loads((run.folder / "weights.json").read_text()))
    X, y = random_instance(101, 0.4, seed=0)
    assert np.all(y.numpy() * (X.numpy() @ w) > 0)


def test_entropy_exact_and_bp(tmp_path):
    for method in ("exact", "bp"):
        res = runner.invoke(app, ["entropy", "--n", "17", "--alpha", "0.3", "--method", method, "--store", str(tmp_path)])
        assert res.exit_code == 0, res.output
    st = Store(tmp_path)
    vals = {r.config["method"]: st.results(r.id)["log_count"] for r in st.runs("perceptron-entropy")}
    X, y = random_instance(17, 0.3, seed=0)
    assert math.isclose(vals["exact"], entropy(X, y, method="exact"))
    assert abs(vals["bp"] - vals["exact"]) <= 1.0  # O(1) Bethe error, see test_perceptron.py


def test_local_entropy_command_stores_the_library_curve(tmp_path):
    res = runner.invoke(app, ["local-entropy", "--n", "101", "--alpha", "0.3", "--teacher", "--reference", "teacher",
                              "--distances", "0.02,0.1", "--n-gamma", "6", "--store", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    st = Store(tmp_path)
    (run,) = st.runs("perceptron-local-entropy")
    assert run.status == "finished" and run.config["distances"] == [0.02, 0.1]
    X, y, w = teacher_instance(101, 0.3, seed=0)
    expected = local_entropy(X, y, w, [0.02, 0.1], n_gamma=6)
    curve = json.loads((run.folder / "curve.json").read_text())
    assert curve["entropy"] == pytest.approx(expected.entropy.tolist(), abs=1e-12)
    assert st.results(run.id)["entropy"] == curve["entropy"]
    assert (run.folder / "local_entropy.png").stat().st_size > 0


def test_cli_bad_input_raises_library_errors(tmp_path):
    res = runner.invoke(app, ["entropy", "--k", "2", "--store", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    res = runner.invoke(app, ["solve", "--data", str(tmp_path / "missing.npz"), "--store", str(tmp_path)])
    assert isinstance(res.exception, DataNotFoundError)
    res = runner.invoke(app, ["local-entropy", "--distances", "a,b", "--store", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    for args in (["local-entropy", "--reference", str(tmp_path / "w.json"), "--n", "21"], ["solve", "--alpha", "nan"],
                 ["entropy", "--method", "exact", "--n", "41"], ["solve", "--solver", "sa", "--k", "3", "--n", "21"]):
        (tmp_path / "w.json").write_text("[1, -1, 1]")  # 3 weights, not 21
        res = runner.invoke(app, [*args, "--store", str(tmp_path / "store")])
        assert isinstance(res.exception, ConfigError), (args, res.output)
    assert not (tmp_path / "store").exists()


def test_data_file_input(tmp_path):
    X, y = random_instance(15, 0.3, seed=3)
    np.savez(tmp_path / "inst.npz", X=X.numpy(), y=y.numpy())
    res = runner.invoke(app, ["entropy", "--data", str(tmp_path / "inst.npz"), "--method", "exact", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"{entropy(X, y, method='exact'):.6g}" in res.output


def test_wide_flat_minima_study_runs_at_a_tiny_scale(tmp_path):
    from flatminima.studies import run_study

    over = {"n": 81, "small_n": 0, "curve_seeds": 1, "curve_refs": "teacher,fbp", "n_gamma": 5,
            "success_solvers": "fbp,ce-mc", "success_alphas": "0.3", "success_seeds": 1, "sgd_seeds": 1,
            "sgd_epochs": 5, "le_samples": 10}
    summary, folder = run_study("wide-flat-minima", overrides=over, store=Store(tmp_path), progress=False)
    assert (folder / "summary.md").exists() and all((folder / f).exists() for f in summary.figures)
    assert summary.measured["solved fbp N=81"] == "1/1"
    assert "success rate against alpha (random labels)" in summary.tables
    assert summary.verdict


def test_study_rejects_unknown_options():
    from flatminima.studies import get

    with pytest.raises(ConfigError):
        get("wide-flat-minima").config("default", {"nope": 1})
