"""Study ``flatness-in-a-controlled-model``: its pass rule, its preconditions, the BP-value check, and a
tiny end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from flatminima.errors import ConfigError
from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.claims import FAIL, INCONCLUSIVE, PASS
from flatminima.studies.flatness_controlled import NAME, SETTINGS, bp_bracket, summarize

TINY = {"n": 101, "instances": 1, "seeds": 1, "settings": ["fbp r=0.2", "ce-mc lam=16"], "n_gamma": 6,
        "bp_max_iters": 100, "le_draws": 40, "le_batches": 4}


def _measured(n: int, s_eps: tuple, de_eps: tuple, s_de: tuple) -> dict:
    """A measured dict as summarize writes it; each pair is (tau, p, lower, upper)."""
    pack = lambda t: {"tau": t[0], "p": t[1], "n": n, "lower": t[2], "upper": t[3]}  # noqa: E731
    return {"n_kept": n, "tau(S, eps)": pack(s_eps), "tau(dE, eps)": pack(de_eps), "tau(S, dE)": pack(s_de)}


def test_the_rule_passes_fails_and_stays_inconclusive():
    study = get(NAME)
    strong = _measured(30, (-0.6, 1e-5, -0.75, -0.4), (0.55, 1e-4, 0.35, 0.7), (-0.7, 1e-6, -0.8, -0.55))
    assert study.decide(strong).outcome == PASS
    # local entropy and generalization: weak, its interval excludes -0.4
    weak = _measured(30, (-0.1, 0.4, -0.3, 0.1), (0.55, 1e-4, 0.35, 0.7), (-0.7, 1e-6, -0.8, -0.55))
    verdict = study.decide(weak)
    assert verdict.outcome == FAIL and verdict.parts[0].outcome == FAIL
    # the opposite sign, significant
    assert study.decide(_measured(30, (-0.6, 1e-5, -0.75, -0.4), (-0.5, 1e-4, -0.65, -0.3),
                                  (-0.7, 1e-6, -0.8, -0.55))).outcome == FAIL
    # beyond the threshold but p not small enough and an interval that contains both: inconclusive
    unsure = _measured(30, (-0.45, 0.02, -0.8, 0.0), (0.55, 1e-4, 0.35, 0.7), (-0.7, 1e-6, -0.8, -0.55))
    assert study.decide(unsure).outcome == INCONCLUSIVE
    # too few solutions met their preconditions: inconclusive even with strong correlations
    few = _measured(12, (-0.6, 1e-5, -0.75, -0.4), (0.55, 1e-4, 0.35, 0.7), (-0.7, 1e-6, -0.8, -0.55))
    assert study.decide(few).outcome == INCONCLUSIVE
    # nothing measured: inconclusive, not an error
    assert study.decide({}).outcome == INCONCLUSIVE


def _synthetic(n: int = 30) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        flat = i / n
        S = 0.06 + 0.03 * flat + 1e-4 * rng.standard_normal()
        out.append(({"instance": 0, "setting": "fbp r=0.05" if i % 2 else "ce-mc lam=16",
                     "solver": "fbp" if i % 2 else "ce-mc", "seed": i},
                    {"solved": True, "errors": 0, "R": 0.5, "eps": 0.45 - 0.1 * flat + 1e-3 * rng.standard_normal(),
                     "S": S, "dE": 0.05 - 0.04 * flat, "dE_stderr": 1e-3, "bp_converged": True, "bp_value": True,
                     "solver_seconds": 1.0, "bp_seconds": 2.0}))
    return out


def test_points_failing_a_precondition_are_excluded_and_counted(tmp_path):
    cfg = get(NAME).config("default")
    results = _synthetic()
    results[0][1].update({"solved": False, "errors": 3})
    for k in ("S", "dE", "dE_stderr", "bp_converged", "bp_value", "bp_seconds"):
        results[0][1].pop(k)
    results[1][1]["bp_converged"] = False
    results[2][1]["bp_value"] = False
    results[3][1]["S"] = math.nan
    summary = summarize(cfg, results, tmp_path)
    m = summary.measured
    assert m["n_points"] == 30 and m["n_kept"] == 26
    assert m["excluded"] == {"solver reached zero training errors": 1, "BP converged at every gamma of the scan": 1,
                             "S(d) is a BP value (no jump of the gamma scan at d)": 2}
    assert m["tau(S, eps)"]["n"] == 26
    table = summary.tables["excluded solutions (failed preconditions)"]
    assert "kept: 26, excluded: 4" in table
    # the excluded points never enter a correlation
    kept = results[4:]
    ref = kendalltau([r["S"] for _, r in kept], [r["eps"] for _, r in kept])
    assert m["tau(S, eps)"]["tau"] == pytest.approx(ref.statistic)  # one instance: the stratified tau is tau-b
    assert get(NAME).decide(m).outcome == PASS
    assert (tmp_path / "flatness_vs_generalization.png").stat().st_size > 1000


def test_the_correlations_compare_solutions_of_one_instance_only(tmp_path):
    cfg = get(NAME).config("default")
    results = _synthetic(30)
    for i, (p, r) in enumerate(results):  # instance 1, the flatter half: same ranking, but its teacher is harder
        if i >= 15:
            p["instance"] = 1
            r["eps"] += 0.2
    m = summarize(cfg, results, tmp_path).measured
    within = [kendalltau([r["S"] for p, r in results if p["instance"] == k],
                         [r["eps"] for p, r in results if p["instance"] == k]).statistic for k in (0, 1)]
    assert min(within) <= m["tau(S, eps)"]["tau"] <= max(within) and m["tau(S, eps)"]["tau"] < -0.9
    assert m["pooled tau (all pairs, not the rule)"]["tau(S, eps)"] > -0.5  # pooling mixes the two teachers


def test_bp_bracket_tells_a_bp_value_from_a_hull_chord():
    d = np.array([0.001, 0.01, 0.03, 0.08])
    S = -d * np.log(d) - (1 - d) * np.log(1 - d)  # a concave curve, slopes dS/dd = log((1-d)/d) = 2 gamma
    gam = 0.5 * np.log((1 - d) / d)
    ok = bp_bracket(gam, d, S, [True] * 4, 0.02)
    assert ok["bp_value"] and ok["bracket"] == [0.01, 0.03]
    # the scan point at d = 0.03 did not converge: the bracket spans a skipped gamma
    skipped = bp_bracket(gam, d, S, [True, True, False, True], 0.02)
    assert skipped["bracket"] == [0.01, 0.08] and not skipped["neighbours"] and not skipped["bp_value"]
    # a jump: the hot branch stays frozen (S ~ 0 at tiny d) and then lands on the cold branch
    jump_d, jump_S = np.array([1e-4, 2e-4, 0.05, 0.1]), np.array([1e-3, 2e-3, 0.19, 0.31])
    jump_g = np.array([8.0, 7.0, 1.4, 1.0])
    hull = bp_bracket(jump_g, jump_d, jump_S, [True] * 4, 0.02)
    assert hull["neighbours"] and not hull["concave"] and not hull["bp_value"]
    assert not bp_bracket(gam, d, S, [True] * 4, 0.2)["bp_value"]  # outside the scanned range


def test_points_and_config_checks():
    study = get(NAME)
    cfg = study.config("default")
    pts = study.points(cfg)
    n_fbp = sum(SETTINGS[s][0] == "fbp" for s in cfg["settings"])
    assert len(pts) == cfg["instances"] * (n_fbp + (len(cfg["settings"]) - n_fbp) * cfg["seeds"]) >= 24
    assert len({json.dumps(p, sort_keys=True) for p in pts}) == len(pts)
    with pytest.raises(ConfigError):
        study.points(study.config("default", {"settings": ["sgd"]}))
    with pytest.raises(ConfigError):
        study.points(study.config("default", {"le_draws": 10, "le_batches": 20}))


def test_tiny_run_end_to_end(tmp_path):
    store = Store(tmp_path / "store")
    summary, folder = run_study(NAME, overrides=TINY, store=store, progress=False)
    n_points = len(get(NAME).points(get(NAME).config("default", TINY)))
    assert n_points == 2 and len(store.points(NAME, folder.name)) == n_points
    assert summary.tables and summary.figures and summary.verdict
    for fig in summary.figures:
        assert (folder / fig).stat().st_size > 1000
    record = json.loads((folder / "summary.json").read_text())
    assert record["decision"]["outcome"] == INCONCLUSIVE  # 2 solutions: never enough to decide
    assert record["criterion"]["rule"]
    for _, r in store.points(NAME, folder.name):
        assert 0 <= r["eps"] <= 1 and math.isclose(r["eps"], math.acos(r["R"]) / math.pi)
    assert "<table" in render_study(folder).read_text()
