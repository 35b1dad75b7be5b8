"""The three studies that no other test runs, end to end at a tiny scale: every point runs, the summary
has its tables, figures and verdict, and the report renders. (What they conclude at such a scale means
nothing; that they run after a change to the libraries they call is what is checked.)"""

from __future__ import annotations

import pytest

from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import get, run_study

TINY = {
    "archetypal-landscapes": {"depths": [1], "sizes": [20], "bh_steps": 10, "max_connect": 3},
    "wide-flat-minima": {"n": 101, "small_n": 41, "success_alphas": "0.3", "success_seeds": 1, "sgd_epochs": 5,
                         "sgd_seeds": 1, "le_samples": 20, "n_gamma": 4, "success_solvers": "fbp,sa"},
    "flatness-vs-generalization": {"train_subset": 300, "measure_examples": 200, "grad_evals": 100, "le_samples": 8,
                                   "sgld_steps": 4, "sgld_burn_in": 2, "trace_matvecs": 10},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_study_runs_end_to_end_at_a_tiny_scale(name, tmp_path):
    store = Store(tmp_path / "store")
    summary, folder = run_study(name, overrides=TINY[name], store=store, progress=False)
    n_points = len(get(name).points(get(name).config("default", TINY[name])))
    assert n_points > 0 and len(store.points(name, folder.name)) == n_points
    assert summary.verdict and summary.tables and all(t.count("\n") >= 2 for t in summary.tables.values())
    for fig in summary.figures:
        assert (folder / fig).stat().st_size > 1000
    assert "<table" in render_study(folder).read_text()
