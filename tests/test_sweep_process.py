"""Sweep executor hygiene: a killed sweep leaves no process behind; results do not depend on --workers;
Dask is optional."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatminima.errors import ConfigError
from flatminima.store import Store
from flatminima.studies.registry import Study, Summary, _call_point, register, run_study

TESTS = Path(__file__).resolve().parent


def probe_points(cfg):
    return [{"seed": s} for s in range(cfg["seeds"])]


def probe_point(point):
    """Numbers that change with torch's thread count: parallel sums split their work by thread."""
    x = torch.randn(1_000_003, generator=torch.Generator().manual_seed(point["seed"]))
    return {"sum": float(x.sum()), "dot": float(x @ x), "threads": torch.get_num_threads()}


register(Study(name="thread-probe", paper="none (a test fixture)", claim="none", scales={"default": {"seeds": 4}},
               points=probe_points, run_point=probe_point, summarize=lambda cfg, results, out: Summary()))


@pytest.fixture(autouse=True)
def importable_test_studies(monkeypatch):
    """Spawned pool workers import the studies' point functions from this folder."""
    monkeypatch.setenv("FLATMINIMA_STUDY_MODULES", "toy_study")
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_results_do_not_depend_on_the_worker_count(tmp_path):
    threads_before = torch.get_num_threads()
    one, two = (_call_point(probe_point, {"seed": 0}, k)[0] for k in (1, 2))
    assert (one["sum"], one["dot"]) != (two["sum"], two["dot"])  # the probe does see the thread count
    assert torch.get_num_threads() == threads_before  # the serial path restores the caller's setting
    by_seed = {}
    for workers in (1, 2):
        st = Store(tmp_path / f"workers{workers}")
        run_study("thread-probe", store=st, workers=workers, threads=2, progress=False)
        by_seed[workers] = sorted(st.points("thread-probe", "default"), key=lambda pr: pr[0]["seed"])
    assert by_seed[1] == by_seed[2] and len(by_seed[1]) == 4
    assert {r["threads"] for _, r in by_seed[1]} == {2}


def test_a_killed_sweep_leaves_no_process_behind(tmp_path):
    psutil = pytest.importorskip("psutil")
    log = tmp_path / "calls.log"
    env = {**os.environ, "TOY_STUDY_LOG": str(log), "TOY_STUDY_SLEEP": "60"}
    script = ("import sys; from flatminima.store import Store; from flatminima.studies import run_study; "
              "run_study('toy', store=Store(sys.argv[1]), workers=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store")], env=env)
    descendants = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
            assert proc.poll() is None, "the sweep ended before both workers started a point"
            time.sleep(0.1)
        assert len(log.read_text().splitlines()) == 2  # both workers are inside a point
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 2
        proc.kill()
        proc.wait()
        time.sleep(5)

        def alive(p):
            try:
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        survivors = [p for p in descendants if alive(p)]
        assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
    finally:
        for p in [proc, *descendants]:
            try:
                p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass


def test_dask_is_optional_and_a_bad_address_is_one_line(tmp_path, monkeypatch):
    script = ("import sys, flatminima.studies as s, flatminima.store, flatminima.report; s.list_studies(); "
              "sys.exit(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", script], env=os.environ.copy()).returncode == 0
    with pytest.raises(ConfigError, match="cannot connect to the Dask scheduler 'nonsense'"):
        run_study("toy", store=Store(tmp_path / "a"), dask="nonsense", progress=False)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    with pytest.raises(ConfigError, match=r"install flatminima\[dask\]"):
        run_study("toy", store=Store(tmp_path / "b"), dask="tcp://127.0.0.1:8786", progress=False)
    assert Store(tmp_path / "b").points("toy", "default") == []


@pytest.mark.parametrize("option", [{"workers": 0}, {"workers": 1.5}, {"threads": 0}, {"threads": True}])
def test_bad_worker_and_thread_counts(tmp_path, option):
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        run_study("toy", store=Store(tmp_path), progress=False, **option)
