"""Study entropy-sgd-rnn: the decision rule on synthetic numbers, the preconditions (Adam converged, no
divergence) and their exclusions, the corpus split and the learning-rate drops, and a tiny end-to-end run."""

import json
import math
from pathlib import Path

import pytest

from flatminima.errors import ConfigError
from flatminima.report import render_study
from flatminima.store import Store
from flatminima.studies import claims as C
from flatminima.studies import entropy_sgd_rnn as M
from flatminima.studies import get, run_study

FORTUNES = pytest.mark.skipif(not Path("/usr/share/games/fortunes").exists(), reason="Debian fortunes not installed")

#: a tiny protocol: 3 000 characters, a one-layer LSTM of 8 units; L = 2 so an Entropy-SGD step costs 2
TINY = {"chars": 3000, "seq_len": 20, "hidden": 8, "layers": 1, "batch_size": 8, "seeds": 1, "adam_epochs": 2.0,
        "esgd_epochs": 1.0, "eval_every_epochs": 0.5, "esgd_inner_steps": 2}


def measured(diff, se, pairs=3, ratio=0.5):
    return {M.KEY_DIFF: diff, M.KEY_SE: se, M.KEY_PAIRS: pairs, M.KEY_RATIO: ratio, "excluded": {}}


def test_the_criterion_passes_fails_and_stays_inconclusive():
    decide = get("entropy-sgd-rnn").decide
    # the paper's case: Entropy-SGD 0.009 nats/char better, interval [-0.013, -0.005] below +0.005
    assert decide(measured(-0.009, 0.002)).outcome == C.PASS
    # Entropy-SGD 0.02 nats/char worse at half the cost: interval [0.016, 0.024] above +0.005
    assert decide(measured(0.02, 0.002)).outcome == C.FAIL
    # the interval [-0.016, +0.024] contains +0.005: undecided
    assert decide(measured(0.004, 0.01)).outcome == C.INCONCLUSIVE
    # a better loss bought with more than half of Adam's gradient evaluations is not the claim
    assert decide(measured(-0.05, 0.002, ratio=0.51)).outcome == C.FAIL
    # too few seed pairs met their preconditions: no decision, even with a clear difference
    v = decide(measured(0.05, 0.001, pairs=2))
    assert v.outcome == C.INCONCLUSIVE and "only 2" in v.parts[0].reason
    assert decide(measured(math.nan, math.nan, pairs=0, ratio=None)).outcome == C.INCONCLUSIVE


def _curve(losses, budget):
    """An evaluation every effective epoch up to ``budget``, with the given test losses (nats/char)."""
    return [{"effective_epochs": (i + 1) * budget / len(losses), "grad_evals": i + 1, "test_loss": v,
             "train_loss": v, "lr": 0.1} for i, v in enumerate(losses)]


def _result(losses, budget, grad_evals, diverged=False):
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite) if finite else math.nan
    return {"diverged": diverged, "best_test_loss": best, "best_at_effective_epochs": 1.0, "train_loss_at_best": best,
            "final_test_loss": losses[-1], "grad_evals": grad_evals, "budget_effective_epochs": budget,
            "minibatches_per_epoch": 10, "train_characters": 900, "test_characters": 100, "cpu_seconds": 1.0,
            "curve": _curve(losses, budget)}


def test_tail_improvement_measures_the_gain_in_the_last_fifth():
    flat = _result([2.0, 1.5, 1.3, 1.29, 1.3, 1.31, 1.32, 1.33, 1.34, 1.35], 10, 100)  # best at 40 %: overfits
    assert M.tail_improvement(flat) == 0.0
    still = _result([2.0, 1.8, 1.6, 1.5, 1.45, 1.42, 1.40, 1.38, 1.36, 1.30], 10, 100)  # best 0.08 lower at the end
    assert M.tail_improvement(still) == pytest.approx(0.08)


def test_a_run_failing_a_precondition_is_excluded_and_counted(tmp_path):
    adam_ok = [2.0, 1.6, 1.4, 1.35, 1.33, 1.32, 1.32, 1.32, 1.321, 1.32]
    adam_still_learning = [2.0, 1.8, 1.6, 1.5, 1.45, 1.42, 1.40, 1.38, 1.36, 1.30]
    esgd = [1.8, 1.5, 1.4, 1.33, 1.32]
    results = []
    for seed in range(4):
        adam = adam_still_learning if seed == 1 else adam_ok
        results.append(({"optimizer": "adam", "seed": seed}, _result(adam, 50.0, 1000)))
        results.append(({"optimizer": "entropy-sgd", "seed": seed},
                        _result(esgd[:3] + [math.nan] * 2, 25.0, 500, diverged=True) if seed == 3
                        else _result(esgd, 25.0, 500)))
    m, screened, pairs = M.measure(results)
    assert [s for s, _, _ in pairs] == [0, 2]  # seed 1: Adam still learning; seed 3: Entropy-SGD diverged
    assert sorted(screened.counts().values()) == [1, 1] and len(m["excluded"]) == 2
    assert m[M.KEY_PAIRS] == 2 and m[M.KEY_DIFF] == pytest.approx(0.0) and m[M.KEY_RATIO] == 0.5
    assert get("entropy-sgd-rnn").decide(m).outcome == C.INCONCLUSIVE  # 2 pairs < 3 needed
    cfg = get("entropy-sgd-rnn").config("default")
    summary = M.summarize(cfg, results, tmp_path)
    table = summary.tables["Excluded runs"]
    assert "adam, seed 1" in table and "entropy-sgd, seed 3" in table and "kept: 6, excluded: 2" in table
    assert "no (excluded)" in summary.tables["Paired by seed (nats/char)"]
    assert (tmp_path / "test_loss.png").exists()


def test_learning_rate_drops_at_fractions_of_the_budget():
    f = M._step_drops(100, [0.3, 0.6, 0.9], 0.2)
    assert [f(s) for s in (0, 29, 30, 59, 60, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])


def test_points_pair_the_seeds_and_keep_each_optimizer_to_its_options():
    pts = M.points(get("entropy-sgd-rnn").config("default"))
    assert [(p["optimizer"], p["seed"]) for p in pts] == [("adam", 0), ("adam", 1), ("adam", 2),
                                                         ("entropy-sgd", 0), ("entropy-sgd", 1), ("entropy-sgd", 2)]
    assert not any(k.startswith("esgd_") for k in pts[0]) and not any(k.startswith("adam_") for k in pts[3])
    assert pts[0]["chars"] >= 300_000  # the minimum corpus


@FORTUNES
def test_corpus_takes_the_first_characters_and_splits_them_90_10():
    ds = M.corpus(2000, 10)
    assert ds.X_train.shape == (179, 10) and ds.X_test.shape == (19, 10)  # 1800 and 200 characters
    assert (ds.y_train[:, :-1] == ds.X_train[:, 1:]).all() and (ds.X_train[1:, 0] == ds.y_train[:-1, -1]).all()
    full = M.corpus(4000, 10)  # the same text, longer: the training text starts the same way
    assert (full.X_train[:100] == ds.X_train[:100]).all()
    with pytest.raises(ConfigError):
        M.corpus(10**9, 10)
    with pytest.raises(ConfigError):
        M.corpus(50, 10)


@FORTUNES
def test_tiny_end_to_end_run_records_a_decision(tmp_path):
    summary, folder = run_study("entropy-sgd-rnn", overrides=TINY, store=Store(tmp_path / "store"), progress=False)
    record = json.loads((folder / "summary.json").read_text())
    assert record["n_points"] == 2 and record["decision"]["outcome"] in C.OUTCOMES
    assert record["criterion"]["rule"].startswith("Per seed d = best test loss")
    assert (folder / "test_loss.png").exists() and summary.figures == ["test_loss.png"]
    main = summary.tables["Best test loss (nats/char)"]
    assert "adam" in main and "entropy-sgd" in main
    # Entropy-SGD's budget never exceeds half of Adam's gradient evaluations (whole outer steps, rounded down)
    by = {p["optimizer"]: r for p, r in Store(tmp_path / "store").points("entropy-sgd-rnn", folder.name)}
    assert by["entropy-sgd"]["grad_evals"] <= 0.5 * by["adam"]["grad_evals"]
    assert by["entropy-sgd"]["grad_evals"] % TINY["esgd_inner_steps"] == 0
    assert all(math.isfinite(c["test_loss"]) and c["test_loss"] > 0 for r in by.values() for c in r["curve"])
    assert render_study(folder).exists()
