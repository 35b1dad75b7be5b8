"""Claims as code: the decision helpers, the screening of preconditions, the verdict recorded by run_study,
printed by the CLI, rendered in reports, and the README's claims table generated from the recorded runs."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau
from test_cli_regressions import invoke

from flatminima.errors import ConfigError
from flatminima.report import (
    README_BEGIN,
    README_END,
    claims_table,
    read_records,
    readme_with_table,
    render_study,
    update_readme,
)
from flatminima.store import Store
from flatminima.studies import claims as C

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_below_decides_pass_fail_and_inconclusive():
    assert C.below("d", -0.01, 0.002).outcome == C.PASS  # interval [-0.014, -0.006] < 0
    assert C.below("d", 0.01, 0.002).outcome == C.FAIL  # interval above 0
    assert C.below("d", -0.001, 0.002).outcome == C.INCONCLUSIVE  # contains 0 and negative values
    # the claimed improvement -0.005 is excluded by [-0.003, +0.001]: decisive FAIL although it contains 0
    assert C.below("d", -0.001, 0.001, claimed=-0.005).outcome == C.FAIL
    assert C.below("d", -0.001, 0.003, claimed=-0.005).outcome == C.INCONCLUSIVE
    assert C.below("d", float("nan"), 0.1).outcome == C.INCONCLUSIVE
    assert C.below("d", -1.0, 0.1, z=2).reason.startswith("d = -1")


def test_in_range_with_and_without_an_interval():
    assert C.in_range("r", 3.0, 2, 3.5).outcome == C.PASS
    assert C.in_range("r", 4.0, 2, 3.5).outcome == C.FAIL
    assert C.in_range("r", 3.0, 2, 3.5, low=2.5, high=3.2).outcome == C.PASS
    assert C.in_range("r", 3.4, 2, 3.5, low=3.0, high=3.9).outcome == C.INCONCLUSIVE
    assert C.in_range("r", 4.0, 2, 3.5, low=3.6, high=4.5).outcome == C.FAIL
    assert C.in_range("r", None, 2, 3.5).outcome == C.INCONCLUSIVE


def test_counted_bounds():
    assert C.at_least("f", 0.3, 0.3).outcome == C.PASS and C.at_least("f", 0.29, 0.3).outcome == C.FAIL
    assert C.at_most("f", 0.1, 0.1).outcome == C.PASS and C.at_most("f", 0.11, 0.1).outcome == C.FAIL
    assert C.at_least("f", None, 1).outcome == C.INCONCLUSIVE
    assert C.not_enough("n", 3, 5).outcome == C.INCONCLUSIVE and C.not_enough("n", 5, 5) is None


def test_correlation_rule():
    assert C.correlation("t", 0.5, 0.001, 30, 0.4, 0.01).outcome == C.PASS
    assert C.correlation("t", -0.5, 0.001, 30, -0.4, 0.01).outcome == C.PASS
    assert C.correlation("t", 0.5, 0.02, 30, 0.4, 0.01).outcome == C.INCONCLUSIVE  # right size, not significant
    assert C.correlation("t", 0.1, 0.4, 30, 0.4, 0.01, lower=-0.1, upper=0.3).outcome == C.FAIL  # 0.4 excluded
    assert C.correlation("t", 0.3, 0.02, 30, 0.4, 0.01, lower=0.05, upper=0.55).outcome == C.INCONCLUSIVE
    assert C.correlation("t", -0.5, 0.001, 30, 0.4, 0.01).outcome == C.FAIL  # significant, wrong sign
    assert C.correlation("t", 0.9, 0.001, 4, 0.4, 0.01).outcome == C.INCONCLUSIVE  # too few points


def test_combine_is_a_conjunction():
    p, f, i = (C.Part("a", C.PASS, ""), C.Part("b", C.FAIL, ""), C.Part("c", C.INCONCLUSIVE, ""))
    assert C.combine([p, p]).outcome == C.PASS
    assert C.combine([p, i]).outcome == C.INCONCLUSIVE
    assert C.combine([p, i, f]).outcome == C.FAIL
    with pytest.raises(ConfigError):
        C.combine([])
    with pytest.raises(ConfigError):
        C.Part("x", "MAYBE", "")
    v = C.combine([p, f])
    assert C.Verdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    assert str(v).startswith("FAIL: a PASS") and "**FAIL**" in v.markdown()


def test_kendall_matches_scipy_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40)
    k = C.kendall(x, y, n_boot=500)
    ref = kendalltau(x, y)
    assert k["tau"] == pytest.approx(ref.statistic, abs=1e-15) and k["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert k["lower"] < k["tau"] < k["upper"] and k["n"] == 40
    assert math.isnan(C.kendall([1, 2], [2, 1])["tau"])
    with pytest.raises(ConfigError):
        C.kendall([1, 2, 3], [1, 2])


def test_mean_stderr_closed_form():
    m, se, n = C.mean_stderr([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(C.mean_stderr([1.0])[1])


def test_screen_excludes_and_counts_by_the_first_failed_check():
    results = [({"i": 0}, {"loss": 0.0, "certified": True}),
               ({"i": 1}, {"loss": 0.5, "certified": True}),
               ({"i": 2}, {"loss": 0.0, "certified": False}),
               ({"i": 3}, {"loss": 0.9, "certified": False}),
               ({"i": 4}, {})]  # a result that cannot be checked is excluded, not an error
    checks = [C.Check("zero training loss", lambda p, r: r["loss"] == 0.0),
              C.Check("certified", lambda p, r: r["certified"])]
    s = C.screen(results, checks)
    assert [p["i"] for p, _ in s.kept] == [0]
    assert s.counts() == {"zero training loss": 3, "certified": 1}
    table = s.table()
    assert "i=1 | zero training loss" in table and "kept: 1, excluded: 4" in table
    assert C.screen(results[:1], checks).table() == ""


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setenv("FLATMINIMA_STUDY_MODULES", "toy_study")
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from flatminima.studies import get

    return get("toy")


def test_run_study_records_the_decision_and_the_cli_prints_it(toy, tmp_path):
    res = invoke(["study", "run", "toy", "--store", str(tmp_path), "-q"])
    assert res.code == 0, res.err
    out = res.out
    # the criterion is printed before the run, the decision and its parts after it
    assert out.index("pass criterion (fixed before the run): y(1) in [0.9, 1.1]") < out.index("verdict: PASS")
    assert "y(1): PASS, y(1) = 1" in out
    folder = tmp_path / "studies" / "toy" / "default"
    s = json.loads((folder / "summary.json").read_text())
    assert s["decision"]["outcome"] == "PASS" and s["criterion"]["rule"] == "y(1) in [0.9, 1.1]"
    assert s["wall_seconds"] > 0 and s["workers"] == 1 and s["points_reused"] == 0
    assert "**PASS**" in (folder / "summary.md").read_text()
    page = render_study(folder).read_text()
    assert "Verdict: PASS" in page and "Pass criterion (fixed before the run)" in page
    # a failing measurement fails: the same rule on other numbers
    assert toy.decide({"y(1)": 1.5}).outcome == C.FAIL


def test_readme_table_is_generated_from_the_recorded_runs(toy, tmp_path):
    from flatminima.studies import run_study

    store = Store(tmp_path / "store")
    run_study("toy", store=store, progress=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{README_BEGIN}\nold, typed by hand\n{README_END}\n\nafter\n")
    update_readme(readme, store, studies=[toy])
    text = readme.read_text()
    rec = json.loads((tmp_path / "results" / "toy.json").read_text())
    assert rec["decision"]["outcome"] == "PASS"
    assert "typed by hand" not in text and text.startswith("# title") and text.endswith("after\n")
    row = next(line for line in text.splitlines() if line.startswith("| `toy`"))
    assert "**PASS**" in row and "y(1) in [0.9, 1.1]" in row and "0.0 min, 1 worker |" in row
    # regenerating from results/ alone (no store) gives the same README
    update_readme(readme, None, studies=[toy])
    assert readme.read_text() == text
    # a study with no record says so instead of numbers
    assert "not run at default scale" in claims_table({}, studies=[toy])
    with pytest.raises(ConfigError):
        readme_with_table("no markers here", "")


def test_cli_report_readme_needs_the_markers_before_writing(tmp_path):
    Store(tmp_path / "store")
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    res = invoke(["report", "--store", str(tmp_path / "store"), "--readme", str(readme)])
    assert res.code == 2 and "claims-table" in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "store" / "report").exists() and readme.read_text() == "no markers\n"


def test_the_readme_claims_table_is_what_the_recorded_runs_hold():
    """README.md's claims table equals the table generated from results/*.json (the recorded default-scale
    summaries): regenerate it with `flatminima report --readme README.md` after `make reproduce`."""
    text = (ROOT / "README.md").read_text()
    assert readme_with_table(text, claims_table(read_records(ROOT / "results"))) == text


def _stratified_tau_by_loops(x, y, g):
    num = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if g[i] != g[j]:
                continue
            sx, sy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
            num += sx * sy
            tx += sx != 0
            ty += sy != 0
    return num / math.sqrt(tx * ty)


def test_stratified_kendall_compares_pairs_within_groups_only():
    rng = np.random.default_rng(1)
    g = np.repeat([0, 1, 2], [9, 12, 7])
    x = np.round(rng.standard_normal(28), 1)  # rounded: ties in x and y
    y = np.round(x + g * 3.0 + 0.5 * rng.standard_normal(28), 1)
    k = C.kendall(x, y, groups=list(g), n_boot=300, n_perm=2000)
    assert k["tau"] == pytest.approx(_stratified_tau_by_loops(x, y, g), abs=1e-14)
    assert k["groups"] == 3 and k["n"] == 28 and k["lower"] <= k["tau"] <= k["upper"]
    assert k["p"] < 0.01
    # one group: the plain tau-b of scipy
    one = C.kendall(x, y, groups=[0] * 28, n_boot=50, n_perm=200)
    assert one["tau"] == pytest.approx(kendalltau(x, y).statistic, abs=1e-14)
    # one group, weak correlation: the permutation p-value is scipy's (asymptotic) p-value
    xw, yw = rng.standard_normal(30), rng.standard_normal(30)
    yw = yw + 0.35 * xw
    weak = C.kendall(xw, yw, groups=[0] * 30, n_boot=10, n_perm=20000)
    assert 0.005 < kendalltau(xw, yw).pvalue < 0.5
    assert weak["p"] == pytest.approx(kendalltau(xw, yw).pvalue, abs=0.01)
    # the group offset (3 per group, unrelated to x) dilutes the pooled tau, not the within-group one
    assert kendalltau(x, y).statistic < k["tau"] - 0.3
    # independent within groups: the permutation p-value is not small
    null = C.kendall(x, rng.permutation(y), groups=list(g), n_boot=50, n_perm=2000)
    assert null["p"] > 0.01 or abs(null["tau"]) > 0.3
    with pytest.raises(ConfigError):
        C.kendall(x, y, groups=[0, 1])
    assert math.isnan(C.kendall([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], groups=[0, 1, 2])["tau"])
