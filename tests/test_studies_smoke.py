"""Studies that no other test runs, end to end at a tiny scale: every point runs, the summary
has its tables, figures and verdict, and the report renders. (What they conclude at such a scale means
nothing; that they run after a change to the libraries they call is what is checked.)"""

from __future__ import annotations

import pytest

from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import get, run_study

TINY = {
    "flatness-vs-generalization": {"models": ["sgd b128 lr0.05 m0.9", "rsgd b128 g0.1x30"], "seeds": 1,
                                   "train_subset": 200, "model": "mlp:16", "target_train_error": 0.05,
                                   "max_epochs": 40.0, "le_sigmas": [0.2], "le_samples": 4, "trace_matvecs": 6,
                                   "top_tol": 1e-2},
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
