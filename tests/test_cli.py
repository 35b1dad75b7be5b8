"""The CLI: real runs, and bad input as one line on stderr with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flatminima.store import Store

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, home):
    env = {**os.environ, "FLATMINIMA_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "flatminima.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_train_then_list_and_show(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:32", "--epochs", "2", "--lr", "0.1", "--seed", "3",
                "--scheduler", "none", "-o", "nesterov=true", "--name", "first", "-q", home=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split()[1].rstrip(":")
    st = Store(tmp_path)
    run = st.get(run_id)
    assert (run.kind, run.name, run.status) == ("train", "first", "finished")
    cfg = run.config
    assert (cfg["data"], cfg["model"], cfg["lr"], cfg["seed"], cfg["epochs"], cfg["scheduler"], cfg["options"]) == (
        "digits", "mlp:32", 0.1, 3, 2.0, None, {"nesterov": True})
    assert json.loads((run.folder / "config.json").read_text()) == cfg
    history = json.loads((run.folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1.0, 2.0]
    logged = {(s, k): v for s, k, v in st.metrics(run_id)}
    for row in history:  # every evaluation row is in the index, at its step
        assert all(logged[(row["step"], k)] == pytest.approx(v) for k, v in row.items() if k != "step")
    results = st.results(run_id)
    assert results["test_error"] == history[-1]["test_error"]
    assert f"test error {results['test_error']:.4f}" in r.stdout

    ls = run_cli("runs", "list", home=tmp_path)
    assert ls.returncode == 0 and run_id in ls.stdout and f"{results['test_error']:.4f}" in ls.stdout
    show = run_cli("runs", "show", run_id[:12], home=tmp_path)
    assert show.returncode == 0, show.stderr
    assert f"test_error: {results['test_error']}" in show.stdout and f"(step {history[-1]['step']})" in show.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--model", "mlp:abc", "--data", "digits"], "bad model spec"),
        (["train", "--model", "transformer", "--data", "digits"], "unknown model"),
        (["train", "--lr", "-1", "--data", "digits"], "learning rate"),
        (["train", "--data", "cifar-10"], "unknown data set"),
        (["train", "--data", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install dataset-fashion-mnist"),
        (["train", "--data", "digits", "-o", "nonsense"], "KEY=VALUE"),
        (["train", "--data", "digits", "--optimizer", "sgd", "-o", "foo=1"], "unknown option"),
        (["train", "--data", "digits", "--optimizer", "lbfgs-magic"], "optimizer"),
        (["runs", "show", "no-such-run"], "no run"),
        (["train", "--resume", "no-such-run"], "no run"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    r = run_cli(*args, home=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("*")), "a failed command left a run behind"


def test_corrupt_checkpoint_on_resume(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:16", "--steps", "10", "--checkpoint-every", "5", "-q",
                home=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = run_cli("train", "--resume", run_dir.name, home=tmp_path)
    assert r.returncode == 2 and "corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_option_is_a_usage_error(tmp_path):
    r = run_cli("train", "--bogus", home=tmp_path)
    assert r.returncode == 2 and "No such option" in r.stderr


VERBS = [["train"], ["runs"], ["runs", "list"], ["runs", "show"], ["measure"], ["jamming"], ["jamming", "locate"],
         ["jamming", "phase-diagram"], ["jamming", "stats"], ["explore"], ["explore", "run"], ["explore", "connect"],
         ["explore", "graph"], ["explore", "metrics"], ["explore", "export"], ["perceptron"],
         ["perceptron", "solve"], ["perceptron", "entropy"], ["perceptron", "local-entropy"], ["study"],
         ["study", "list"], ["study", "run"], ["study", "report"], ["report"]]


def test_help_everywhere(tmp_path):
    from typer.testing import CliRunner

    from flatminima.cli import app

    top = CliRunner().invoke(app, ["--help"])
    assert top.exit_code == 0
    assert all(verb in top.output for verb in ("train", "runs", "measure", "jamming", "explore", "perceptron",
                                               "study", "report"))
    for args in VERBS:
        r = CliRunner().invoke(app, [*args, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, args
        writes = args in (["train"], ["measure"], ["jamming", "locate"], ["jamming", "phase-diagram"],
                          ["jamming", "stats"], ["explore", "run"], ["perceptron", "solve"],
                          ["perceptron", "entropy"], ["perceptron", "local-entropy"], ["study", "run"], ["report"])
        assert not writes or "--store" in r.output, f"{args} writes to the store but has no --store"
