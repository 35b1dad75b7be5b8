"""The jamming study end to end at a tiny scale: points run, the summary tables and verdict are built from
certified outcomes only."""

import torch

from flatminima.store import Store
from flatminima.studies import run_study

torch.set_num_threads(1)

TINY = {"P": [24], "d": 3, "depths": [1], "seeds": 1, "activations": ["relu", "softplus"], "stats_depth": 1,
        "max_iter": 600, "polish": 30, "polish_time": 5.0, "rtol": 0.3}


def test_jamming_study_runs_at_a_tiny_scale(tmp_path):
    summary, folder = run_study("jamming", overrides=TINY, store=Store(tmp_path), progress=False)
    assert (folder / "report.html").exists() or (folder / "summary.md").exists()
    m = summary.measured
    assert {"phase_diagram", "outcomes", "jammed_next_to_nstar"} <= set(m)
    runs = m["n_runs"]
    assert runs == sum(m[f"{o}_runs"] for o in ("sat", "jammed", "in_between", "kink", "unresolved"))
    for row in m["phase_diagram"]:
        lo, hi = row["brackets"][0]
        assert hi is not None and (lo is None or lo < hi)
    for j in m["jammed_next_to_nstar"]:  # the lower bracket ends are certified minima
        assert j["certificate"] in ("minimum", "kink_minimum")
        assert j["grad_rel"] <= 1e-10 and (j["lambda_ratio"] is None or j["lambda_ratio"] >= -1e-9)
    assert "P/N* per depth" in summary.tables and "outcomes of every run (certified)" in summary.tables
    assert "never counted as jammed" in summary.verdict
