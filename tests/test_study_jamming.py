"""Study ``jamming``: each part of its pass rule (PASS / FAIL / INCONCLUSIVE on synthetic numbers), N* from
certified brackets, the preconditions (uncertified runs excluded and counted), and a tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flatminima.errors import ConfigError
from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.claims import FAIL, INCONCLUSIVE, PASS
from flatminima.studies.jamming import (
    NAME,
    exponent_part,
    jump_parts,
    nstar_by_seed,
    points,
    ratio_parts,
    run_point,
    summarize,
)

torch.set_num_threads(1)


def _outcomes(parts):
    return [p.outcome for p in parts]


def _fit(value, half, n=400, decades=2.5):
    return {"value": value, "ci": [value - half, value + half], "n": n, "decades": decades}


def _measured(jump=0.5, between=0.05, ratios=None, theta=(0.3, 0.1), gamma=(0.2, 0.1), certified=30):
    ratios = ratios or {"2": (2.9, 0.1), "3": (3.0, 0.1), "5": (3.1, 0.1)}
    means = [m for m, _ in ratios.values()]
    return {
        "n_certified": certified, "n_jammed": 10, "jammed_min_n_delta_over_N": jump, "between_fraction": between,
        "P_over_nstar": {d: {"mean": m, "stderr": s, "n": 2} for d, (m, s) in ratios.items()},
        "P_over_nstar_spread": (max(means) - min(means)) / float(np.mean(means)),
        "exponents": {"theta": _fit(*theta), "gamma": _fit(*gamma)},
    }


def test_jump_part_passes_fails_and_stays_inconclusive():
    assert _outcomes(jump_parts(_measured())) == [PASS, PASS]
    assert _outcomes(jump_parts(_measured(jump=0.2))) == [FAIL, PASS]  # a jammed run with a small N_Delta
    assert _outcomes(jump_parts(_measured(between=0.2))) == [PASS, FAIL]  # too many runs in between
    assert _outcomes(jump_parts(_measured(certified=4))) == [INCONCLUSIVE]
    assert _outcomes(jump_parts({**_measured(), "n_jammed": 0})) == [INCONCLUSIVE]


def test_ratio_parts_pass_fail_and_stay_inconclusive():
    assert _outcomes(ratio_parts(_measured())) == [PASS] * 4
    low = ratio_parts(_measured(ratios={"2": (1.6, 0.05), "3": (1.7, 0.05), "5": (1.65, 0.05)}))
    assert _outcomes(low) == [FAIL, FAIL, FAIL, PASS]  # out of [2, 3.5] but depth-independent
    spread = ratio_parts(_measured(ratios={"2": (2.2, 0.05), "3": (2.9, 0.05), "5": (3.4, 0.05)}))
    assert _outcomes(spread)[-1] == FAIL and _outcomes(spread)[:3] == [PASS] * 3
    unsure = ratio_parts(_measured(ratios={"2": (2.05, 0.1), "3": (3.0, 0.1), "5": (3.1, 0.1)}))
    assert _outcomes(unsure)[0] == INCONCLUSIVE  # 2 s.e. interval straddles 2
    one_seed = _measured()
    one_seed["P_over_nstar"]["3"]["n"] = 1
    assert _outcomes(ratio_parts(one_seed))[1:] == [INCONCLUSIVE, PASS, INCONCLUSIVE]
    assert _outcomes(ratio_parts({})) == [INCONCLUSIVE, INCONCLUSIVE]


def test_exponent_part_passes_fails_and_stays_inconclusive():
    assert exponent_part("theta", _fit(0.35, 0.1), 0.3).outcome == PASS
    assert exponent_part("theta", _fit(0.7, 0.1), 0.3).outcome == FAIL
    assert exponent_part("theta", _fit(0.3, 0.4), 0.3).outcome == INCONCLUSIVE  # not resolved
    assert exponent_part("theta", _fit(0.3, 0.1, n=20), 0.3).outcome == INCONCLUSIVE  # too few gaps
    assert exponent_part("theta", _fit(0.3, 0.1, decades=1.0), 0.3).outcome == INCONCLUSIVE  # range too short
    assert exponent_part("gamma", None, 0.2).outcome == INCONCLUSIVE


def test_the_rule_combines_its_parts():
    study = get(NAME)
    assert study.decide(_measured()).outcome == PASS
    assert study.decide(_measured(gamma=(0.6, 0.1))).outcome == FAIL
    assert study.decide(_measured(theta=(0.3, 0.5))).outcome == INCONCLUSIVE
    assert study.decide({}).outcome == INCONCLUSIVE


def test_nstar_from_certified_brackets():
    runs = [(100, "jammed"), (150, "jammed"), (200, "in_between"), (250, "sat"), (300, "sat")]
    assert nstar_by_seed(runs) == {"lo": 150, "hi": 200, "nstar": 175.0, "inversions": 0}
    # a SAT run below the largest jammed one: the bracket still starts at the largest jammed N, and counts it
    assert nstar_by_seed([(100, "sat"), (150, "jammed"), (300, "sat")]) == {"lo": 150, "hi": 300, "nstar": 225.0,
                                                                          "inversions": 1}
    assert nstar_by_seed([(100, "sat"), (200, "sat")]) is None
    assert nstar_by_seed([(100, "jammed"), (200, "jammed")]) is None


def test_points_cover_the_scan_of_square_networks():
    cfg = get(NAME).config("default")
    pts = points(cfg)
    assert len(pts) == cfg["seeds"] * sum(len(cfg["widths"][str(d)]) for d in cfg["depths"])
    for p in pts:
        assert p["N"] == p["depth"] * p["h"] ** 2 + p["h"]
    ratios = [cfg["P"] / p["N"] for p in pts]
    assert min(ratios) < 1.7 and max(ratios) > 3.6  # P/N spans about 1.5 to 4
    with pytest.raises(ConfigError):
        points({**cfg, "widths": {"2": [8]}})  # depths 3 and 5 without widths
    paper = get(NAME).config("paper")
    assert paper["P"] >= 1000 and paper["adam_steps"] == 2_000_000 and paper["lr"] == 1e-4


def _power_law(n, exponent, rng, scale=1.0):
    return scale * rng.random(n) ** (1.0 / (exponent + 1.0))


def _synthetic_results(P=500):
    """Two seeds at depths 2, 3, 5 with a planted transition at P/N = 2.7, power-law stabilities at the
    jammed runs (theta = 0.3, gamma = 0.2), and two runs without a certificate."""
    rng = np.random.default_rng(0)
    out = []
    for depth, hs in ((2, [8, 9, 10, 11, 12]), (3, [6, 7, 8, 9, 10]), (5, [5, 6, 7, 8, 9])):
        for h in hs:
            N = depth * h * h + h
            for seed in (0, 1):
                jammed = P / N > 2.7
                nd = int(0.6 * N) if jammed else 0
                rec = {"N": N, "outcome": "jammed" if jammed else "sat", "certificate": "minimum" if jammed else
                       "zero_loss", "reason": "", "loss": 1e-3 if jammed else 0.0, "n_delta": nd, "n_delta_over_N": nd / N,
                       "adam_loss": 0.1, "adam_n_delta": nd + 3, "cpu_adam": 30.0, "cpu_bridge": 1.0,
                       "cpu_polish": 5.0, "cpu_seconds": 36.0, "seconds": 40.0, "dead_layer": False,
                       "dead_patterns": 0, "stuck_patterns": 0}
                if jammed:
                    pos = _power_law(nd, 0.3, rng, math.sqrt(1e-3))
                    neg = -_power_law(P - nd, -0.2, rng)
                    rec["delta"] = np.concatenate([pos, neg]).tolist()
                out.append(({"P": P, "depth": depth, "h": h, "seed": seed, "N": N}, rec))
    out[0][1].update(outcome="unresolved", certificate="none")
    out[1][1].update(outcome="kink", certificate="kink")
    dead = ({"P": P, "depth": 2, "h": 4, "seed": 0, "N": 36},
            {**out[-1][1], "N": 36, "outcome": "in_between", "n_delta": 3, "dead_patterns": 40, "stuck_patterns": 3})
    return out + [dead]  # certified, but every unsatisfied pattern stuck in a dead region: excluded


def test_summary_excludes_uncertified_runs_and_measures_the_planted_transition(tmp_path):
    cfg = {**get(NAME).config("default"), "depths": [2, 3, 5], "P": 500}
    summary = summarize(cfg, _synthetic_results(), tmp_path)
    m = summary.measured
    assert m["n_runs"] == 31 and m["n_certified"] == 28
    assert m["excluded"] == {"certified outcome (zero loss or a certified local minimum)": 2,
                             "at most 5% of the unsatisfied patterns stuck in a dead region (a hidden layer all off)": 1}
    assert "excluded runs" in summary.tables
    for v in m["P_over_nstar"].values():  # every bracket straddles the planted P/N = 2.7
        for row in v["per_seed"]:
            assert 500 / row["hi"] < 2.7 < 500 / row["lo"]
    assert m["jammed_min_n_delta_over_N"] == pytest.approx(0.6, abs=0.01) and m["between_fraction"] == 0.0
    ex = m["exponents"]
    assert ex["theta"]["ci"][0] - 0.1 < 0.3 < ex["theta"]["ci"][1] + 0.1
    assert ex["gamma"]["ci"][0] - 0.1 < 0.2 < ex["gamma"]["ci"][1] + 0.1
    assert (tmp_path / "ndelta_curve.png").exists() and (tmp_path / "delta_histograms.png").exists()
    verdict = get(NAME).decide(m)
    assert verdict.parts[0].outcome == PASS and verdict.parts[1].outcome == PASS


TINY = {"P": 40, "depths": [2], "seeds": 1, "widths": {"2": [2, 5]}, "adam_steps": 3000, "decay_every": 1000,
        "bridge_iter": 500, "polish": 50, "polish_time": 20.0}


def test_tiny_run_end_to_end(tmp_path):
    summary, folder = run_study(NAME, overrides=TINY, store=Store(tmp_path / "store"), progress=False)
    m = summary.measured
    assert m["n_runs"] == 2 and summary.decision is not None
    assert m["n_certified"] + sum(m["excluded"].values()) == 2
    assert (folder / "summary.md").exists()


def test_the_pipeline_certifies_a_jammed_square_network_near_nstar():
    # d = h = 4, depth 2: N = 36 weights for P = 100 patterns (P/N = 2.8, next to the published P/N* ~ 3)
    point = {"P": 100, "depth": 2, "h": 4, "seed": 1, "N": 36, "adam_steps": 20_000, "lr": 1e-2,
             "decay_every": 5000, "bridge_iter": 20_000, "push": 1e-3, "homotopy_iter": 3000, "gtol": 1e-7,
             "polish": 100, "polish_time": 20.0}
    r = run_point(point)
    assert r["outcome"] == "jammed" and r["certificate"] in ("minimum", "kink_minimum")
    assert r["n_delta_over_N"] > 0.3 and r["loss"] > 0 and len(r["delta"]) == 100
    assert not r["dead_layer"] and r["stuck_patterns"] <= r["dead_patterns"]
    assert r["homotopy_loss"] <= r["bridge_loss"]
