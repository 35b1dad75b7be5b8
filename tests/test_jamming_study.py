"""The jamming study end to end at a tiny scale: points run, the summary tables and verdict are built from
certified outcomes only."""

import copy
import dataclasses

import pytest
import torch

from flatminima.jamming import OUTCOMES
from flatminima.store import Store
from flatminima.studies import run_study

torch.set_num_threads(1)

TINY = {"P": [24], "d": 3, "depths": [1], "seeds": 1, "activations": ["relu", "softplus"], "stats_depth": 1,
        "max_iter": 600, "polish": 30, "polish_time": 5.0, "rtol": 0.3}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    return run_study("jamming", overrides=TINY, store=Store(tmp_path_factory.mktemp("store")), progress=False)


def check_study(summary, folder):
    """Everything a jamming summary must satisfy, whatever the runs found."""
    md = (folder / "summary.md").read_text()
    assert summary.verdict and "## Verdict" in md and summary.verdict in md
    m = summary.measured
    assert {"phase_diagram", "outcomes", "jammed_next_to_nstar"} <= set(m)
    assert m["n_runs"] > 0 and m["n_runs"] == sum(m[f"{o}_runs"] for o in OUTCOMES)
    assert m["phase_diagram"]
    for row in m["phase_diagram"]:
        lo, hi = row["brackets"][0]
        assert hi is not None and (lo is None or lo < hi)
    for j in m["jammed_next_to_nstar"]:  # the lower bracket ends are certified minima
        assert j["certificate"] in ("minimum", "kink_minimum")
        assert j["grad_rel"] <= 1e-10 and (j["lambda_ratio"] is None or j["lambda_ratio"] >= -1e-9)
    for name in ("P/N* per depth", "outcomes of every run (certified)"):
        assert name in summary.tables and f"## {name}" in md
    assert "never counted as jammed" in summary.verdict


def test_jamming_study_runs_at_a_tiny_scale(tiny_study):
    check_study(*tiny_study)


def _broken(summary, change):
    measured = copy.deepcopy(summary.measured)
    change(measured)
    return dataclasses.replace(summary, measured=measured)


@pytest.mark.parametrize("change", [
    lambda m: m.update(sat_runs=m["sat_runs"] + 1),  # a run counted twice
    lambda m: m["jammed_next_to_nstar"].append(  # an uncertified saddle reported as jammed
        {"certificate": "saddle", "grad_rel": 1e-12, "lambda_ratio": -1e-3}),
    lambda m: m["phase_diagram"][0].update(brackets=[[30, 20]]),  # an inverted bracket
])
def test_the_check_catches_a_broken_summary(tiny_study, change):
    summary, folder = tiny_study
    with pytest.raises(AssertionError):
        check_study(_broken(summary, change), folder)


def test_the_check_catches_a_summary_file_without_the_verdict(tiny_study, tmp_path):
    summary, folder = tiny_study
    (tmp_path / "summary.md").write_text((folder / "summary.md").read_text().replace(summary.verdict, ""))
    with pytest.raises(AssertionError):
        check_study(summary, tmp_path)
