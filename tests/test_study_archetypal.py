"""The archetypal-landscapes study: its pass criterion on synthetic cells (one set that must pass, one that must
fail, one that must stay inconclusive, and the treatment of ties and unsaturated cells), and a tiny run end to
end."""

from __future__ import annotations

import pytest

from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import get, run_study
from flatminima.studies.archetypal_landscapes import CONNECTED, SATURATED, cell_key, decide, monotone
from flatminima.studies.claims import FAIL, INCONCLUSIVE, PASS

SIZES, DEPTHS = [20, 200], [1, 2, 3]


def measured(counts, funnels=1, barrier=0.01, spread=0.05, unsaturated=(), unconnected=()):
    """Synthetic ``Summary.measured``: counts[(N, depth)] minima; every cell saturated and connected unless
    named in ``unsaturated`` / ``unconnected``."""
    cells = {}
    for (n, d), c in counts.items():
        cells[cell_key(n, d)] = {"minima": c, "minima_after_connect": c, "saturated": (n, d) not in unsaturated,
                                 "connected": (n, d) not in unconnected, "funnels": funnels if (n, d) == (200, 1) else 2,
                                 "loss_spread": spread, "median_barrier_to_gmin": barrier if c > 1 else float("nan")}
    return {"sizes": SIZES, "depths": DEPTHS, "cells": cells}


CLAIMED = {(20, 1): 2, (20, 2): 4, (20, 3): 9, (200, 1): 1, (200, 2): 1, (200, 3): 3}


def outcomes(verdict):
    return {p.name: p.outcome for p in verdict.parts}


def test_a_landscape_as_claimed_passes():
    v = decide(measured(CLAIMED))
    assert v.outcome == PASS, str(v)
    assert set(outcomes(v).values()) == {PASS} and len(v.parts) == 5


def test_ties_are_allowed_but_some_line_must_change():
    tied = {**CLAIMED, (20, 2): 2}  # 2, 2, 9 at N = 20: a tie, then a rise
    assert decide(measured(tied)).outcome == PASS
    flat = {k: 1 for k in CLAIMED}
    v = decide(measured(flat))
    assert v.outcome == FAIL
    assert outcomes(v)["minima rise with depth"] == FAIL and outcomes(v)["minima fall with N"] == FAIL


@pytest.mark.parametrize("change, failing", [
    ({}, "single funnel"),  # funnels set below
    ({(20, 2): 1}, "minima rise with depth"),  # 2 -> 1 -> 9: a reversal
    ({(200, 3): 12}, "minima fall with N"),  # more minima with more data at depth 3
    ({(20, 1): 1, (20, 2): 1, (20, 3): 2, (200, 3): 1}, "≥ 3× minima"),  # 2 / 1 < 3
    ({}, "low barriers"),  # barrier set below
])
def test_each_part_can_fail_alone(change, failing):
    kw = {"funnels": 2} if failing == "single funnel" else {"barrier": 0.2} if failing == "low barriers" else {}
    counts = {**CLAIMED, **change}
    v = decide(measured(counts, **kw))
    assert v.outcome == FAIL, str(v)
    assert [p.name for p in v.parts if p.outcome == FAIL] == [failing]


def test_unsaturated_or_unconnected_cells_leave_their_parts_inconclusive():
    v = decide(measured(CLAIMED, unsaturated=[(20, 3)]))
    o = outcomes(v)
    assert v.outcome == INCONCLUSIVE
    assert o["minima rise with depth"] == INCONCLUSIVE and o["minima fall with N"] == INCONCLUSIVE
    assert o["≥ 3× minima"] == INCONCLUSIVE and o["low barriers"] == INCONCLUSIVE
    assert o["single funnel"] == PASS  # the other cells still decide
    v = decide(measured(CLAIMED, unconnected=[(200, 1)]))
    o = outcomes(v)
    assert o["single funnel"] == INCONCLUSIVE and o["≥ 3× minima"] == PASS and v.outcome == INCONCLUSIVE
    # a reversal on a readable line fails the part even when another line cannot be read
    v = decide(measured({**CLAIMED, (200, 2): 5}, unsaturated=[(20, 3)]))
    assert outcomes(v)["minima rise with depth"] == FAIL and v.outcome == FAIL
    assert decide({"sizes": [], "depths": [], "cells": {}}).outcome == INCONCLUSIVE


def test_monotone_reads_every_line():
    assert monotone("m", {"a": [1, 1, 2], "b": [1, 1, 1]}, True, "x").outcome == PASS
    assert monotone("m", {"a": [3, 2, 2], "b": [1, 1, 1]}, False, "x").outcome == PASS
    assert monotone("m", {"a": [1, 2, 1]}, True, "x").outcome == FAIL
    assert monotone("m", {"a": [1, None, 3]}, True, "x").outcome == INCONCLUSIVE
    assert monotone("m", {"a": [1]}, True, "x").outcome == INCONCLUSIVE


def test_preconditions():
    p = {"bh_steps": 300}
    r = {"late_fraction": 0.1, "n_minima_bh": 5, "all_connected": True}
    assert SATURATED.holds(p, r) and CONNECTED.holds(p, r)
    assert not SATURATED.holds(p, {**r, "late_fraction": 0.2})  # 20 % is not fewer than 20 %
    assert not SATURATED.holds({"bh_steps": 299}, r)  # too short a search decides nothing
    assert not CONNECTED.holds(p, {**r, "all_connected": False})


def test_study_runs_end_to_end_at_a_tiny_scale(tmp_path):
    tiny = {"depths": [1], "sizes": [20], "bh_steps": 4, "walkers": 2, "connect_passes": 2, "connect_cycles": 2}
    store = Store(tmp_path / "store")
    summary, folder = run_study("archetypal-landscapes", overrides=tiny, store=store, progress=False)
    study = get("archetypal-landscapes")
    assert len(store.points("archetypal-landscapes", folder.name)) == len(study.points(study.config("default", tiny)))
    cell = summary.measured["cells"][cell_key(20, 1)]
    assert cell["minima"] >= 1 and not cell["saturated"]  # 4 steps < 300: never counted
    assert summary.decision.outcome == INCONCLUSIVE
    for fig in summary.figures:
        assert (folder / fig).stat().st_size > 1000
    assert "<table" in render_study(folder).read_text()
