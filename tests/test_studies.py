"""The study machinery: registry, resume after a kill, process pool and Dask give the same results, reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flatminima.errors import ConfigError
from flatminima.report import markdown_to_html, render_all
from flatminima.store import Store
from flatminima.studies import get

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(autouse=True)
def toy_env(monkeypatch):
    monkeypatch.setenv("FLATMINIMA_STUDY_MODULES", "toy_study")
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_run_resume_and_report(tmp_path, monkeypatch):
    from flatminima.studies import get, run_study

    log = tmp_path / "calls.log"
    monkeypatch.setenv("TOY_STUDY_LOG", str(log))
    st = Store(tmp_path)
    summary, folder = run_study("toy", store=st, progress=False)
    assert len(log.read_text().splitlines()) == 8
    assert summary.measured["y(1)"] == pytest.approx(1.0, abs=0.05)
    run_study("toy", store=st, progress=False)  # everything is done: nothing recomputed
    assert len(log.read_text().splitlines()) == 8
    s = json.loads((folder / "summary.json").read_text())
    assert s["software"]["torch"] and s["config"] == {"n": 4, "seeds": 2}
    index = render_all(st)
    page = index.parent / "toy--default.html"
    text = page.read_text()
    assert "data:image/png;base64," in text and "flatminima study run toy" in text and "<table>" in text
    assert "toy--default.html" in index.read_text()
    with pytest.raises(ConfigError):
        get("toy").config("default", {"nope": 1})
    with pytest.raises(ConfigError):
        get("no-such-study")


def test_process_pool_and_dask_equal_the_sequential_results(tmp_path):
    from distributed import Client, LocalCluster

    from flatminima.studies import run_study

    seq = Store(tmp_path / "seq")
    run_study("toy", store=seq, progress=False)
    pool = Store(tmp_path / "pool")
    run_study("toy", store=pool, workers=2, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dsk = Store(tmp_path / "dask")
        run_study("toy", store=dsk, dask=client, progress=False)
    key = lambda pr: (pr[0]["x"], pr[0]["seed"])  # noqa: E731
    a, b, c = (sorted(s.points("toy", "default"), key=key) for s in (seq, pool, dsk))
    assert a == b == c and len(a) == 8


def test_killed_sweep_finishes_only_the_missing_points(tmp_path):
    log = tmp_path / "calls.log"
    env = {**os.environ, "FLATMINIMA_HOME": str(tmp_path), "TOY_STUDY_LOG": str(log), "TOY_STUDY_SLEEP": "0.4"}
    cmd = [sys.executable, "-m", "flatminima.cli", "study", "run", "toy", "--scale", "paper", "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    st = Store(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(st.points("toy", "paper")) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = {(p["x"], p["seed"]) for p, _ in st.points("toy", "paper")}
    assert 5 <= len(done_before) < 24
    calls_before = len(log.read_text().splitlines())
    env["TOY_STUDY_SLEEP"] = "0"
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    new_calls = log.read_text().splitlines()[calls_before:]
    recomputed = {(round(float(x), 6), int(s)) for x, s in (c.split(",") for c in new_calls)}
    assert len(st.points("toy", "paper")) == 24
    assert not recomputed & {(round(x, 6), s) for x, s in done_before}
    assert len(new_calls) == 24 - len(done_before)  # the point in flight at the kill is redone, nothing else
    assert "report:" in r.stdout


def test_cli_study_list_and_bad_names(tmp_path):
    env = {**os.environ, "FLATMINIMA_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "flatminima.cli", "study", "list"], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "toy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "flatminima.cli", "study", "run", "nope"], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown study" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "flatminima.cli", "study", "run", "toy", "--set", "wat=1"], env=env,
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no option 'wat'" in r.stderr


def test_markdown_tables_render():
    h = markdown_to_html("# Title\n\n| a | b |\n|---|---|\n| 1 | `x` |\n\ntext **bold**\n- item")
    assert "<table>" in h and "<th>a</th>" in h and "<td><code>x</code></td>" in h
    assert "<strong>bold</strong>" in h and "<li>item</li>" in h


@pytest.mark.skipif(not Path("/usr/share/games/fortunes").exists(), reason="Debian fortunes not installed")
def test_entropy_sgd_rnn_study_runs_at_a_tiny_scale(tmp_path):
    from flatminima.studies import run_study

    tiny = {"chars": 3000, "seq_len": 12, "hidden": 8, "layers": 1, "batch_size": 4, "seeds": 1, "adam_epochs": 1.0,
            "esgd_epochs": 0.5, "eval_every_epochs": 0.5, "esgd_inner_steps": 2}
    summary, folder = run_study("entropy-sgd-rnn", overrides=tiny, store=Store(tmp_path), progress=False)
    assert (folder / "test_loss.png").exists()
    table = summary.tables["Best test loss (nats/char)"]
    assert all(opt in table for opt in ("adam", "entropy-sgd"))
    assert summary.decision is not None and summary.decision.outcome in ("PASS", "FAIL", "INCONCLUSIVE")
    losses = [r["best_test_loss"] for _, r in Store(tmp_path).points("entropy-sgd-rnn", folder.name)]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)  # cross-entropies in nats/char, not perplexities


def test_study_config_reads_and_checks_overrides():
    study = get("toy")
    assert study.config("default", {"seeds": "3", "n": 5}) == {"n": 5, "seeds": 3}
    for bad in ({"seeds": "0"}, {"seeds": 0}, {"seeds": "1.5"}, {"seeds": 1.5}, {"seeds": "true"}, {"seeds": True},
                {"n": "-2"}, {"wat": 1}):
        with pytest.raises(ConfigError):
            study.config("default", bad)
    with pytest.raises(ConfigError):
        study.config("huge")


def test_an_option_that_zero_turns_off_may_be_zero():
    study = get("wide-flat-minima")
    assert study.config("default", {"small_n": "0"})["small_n"] == 0
    with pytest.raises(ConfigError):
        study.config("default", {"small_n": -1})
    with pytest.raises(ConfigError):
        study.config("default", {"n": 0})
