"""The CLI: real runs, and bad input as one line on stderr with exit code 2 (the ``flatminima`` script's
entry point, :func:`flatminima.cli.main`, run in-process)."""

import json
import re
from pathlib import Path

import pytest
from test_cli_regressions import invoke

from flatminima.store import Store

TESTS = Path(__file__).resolve().parent


def run_cli(*args, home):
    return invoke(list(args), home)


def test_train_then_list_and_show(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:32", "--epochs", "2", "--lr", "0.1", "--seed", "3",
                "--scheduler", "none", "-o", "nesterov=true", "--name", "first", "-q", home=tmp_path)
    assert r.code == 0, r.err
    run_id = r.out.split()[1].rstrip(":")
    assert f"run {run_id} started" in r.err  # announced when it starts, so an interrupted run's id is known
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
    assert f"test error {results['test_error']:.4f}" in r.out

    ls = run_cli("runs", "list", home=tmp_path)
    assert ls.code == 0 and run_id in ls.out and f"{results['test_error']:.4f}" in ls.out
    show = run_cli("runs", "show", run_id[:12], home=tmp_path)
    assert show.code == 0, show.err
    assert f"test_error: {results['test_error']}" in show.out and f"(step {history[-1]['step']})" in show.out


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
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.err
    assert not tmp_path.joinpath("index.sqlite").exists() and not tmp_path.joinpath("runs").exists(), \
        "a failed command wrote to the store"


def test_corrupt_checkpoint_on_resume(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:16", "--steps", "10", "--checkpoint-every", "5", "-q",
                home=tmp_path)
    assert r.code == 0, r.err
    run_dir = next((tmp_path / "runs").iterdir())
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = run_cli("train", "--resume", run_dir.name, home=tmp_path)
    assert r.code == 2 and "corrupt" in r.err and len(r.err.strip().splitlines()) == 1
    assert Store(tmp_path).get(run_dir.name).status == "finished"  # a failed resume changes nothing


def test_unknown_option_is_a_usage_error(tmp_path):
    r = run_cli("train", "--bogus", home=tmp_path)
    assert r.code == 2 and r.err == "flatminima: error: No such option: --bogus\n"
    r = run_cli("runs", "show", home=tmp_path)
    assert r.code == 2 and r.err == "flatminima: error: Missing argument 'run_id'.\n"


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
        assert "<bool>" not in r.output, f"{args}: flags are listed with a type"


def test_flags_are_real_boolean_flags():
    from typer.testing import CliRunner

    from flatminima.cli import app

    for args, flag in ((["measure"], "--hessian / --no-hessian"), (["jamming", "stats"], "--spectrum / --no-spectrum"),
                       (["perceptron", "solve"], "--teacher / --random-labels"),
                       (["perceptron", "entropy"], "--fully-connected / --tree")):
        assert flag in CliRunner().invoke(app, [*args, "--help"]).output, flag


def test_no_verb_prints_help():
    r = invoke([], None)
    assert r.code == 0 and "Usage: flatminima" in r.out and "train" in r.out


def test_runs_list_shows_full_ids_in_a_narrow_terminal(tmp_path, monkeypatch):
    st = Store(tmp_path)
    ids = [st.create_run(kind, {"data": "digits", "model": "mlp:8", "optimizer": "entropy-sgd"}).id
           for kind in ("train", "explore")]
    monkeypatch.setenv("COLUMNS", "60")
    r = run_cli("runs", "list", home=tmp_path)
    assert r.code == 0 and all(re.search(rf"\b{re.escape(i)}\b", r.out) for i in ids), r.out


def test_study_run_passes_threads_and_validates_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATMINIMA_STUDY_MODULES", "toy_study")
    monkeypatch.syspath_prepend(str(TESTS))
    r = run_cli("study", "run", "toy", "--threads", "2", "--set", "n=2", "--set", "seeds=1", "-q", home=tmp_path)
    assert r.code == 0, r.err
    summary = json.loads(next((tmp_path / "studies" / "toy").glob("*/summary.json")).read_text())
    assert summary["threads_per_point"] == 2 and summary["config"] == {"n": 2, "seeds": 1}
    for bad in ("n=0", "n=2.5", "seeds=-1", "n=x", "colour=1"):
        r = run_cli("study", "run", "toy", "--set", bad, home=tmp_path / "other")
        assert r.code == 2 and len(r.err.splitlines()) == 1, (bad, r.err)
    assert not (tmp_path / "other").exists()


def test_train_with_a_budget_in_effective_epochs(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:8", "--optimizer", "entropy-sgd", "-o", "inner_steps=3",
                "--lr", "0.1", "--batch-size", "64", "--effective-epochs", "1.5", "-q", home=tmp_path)
    assert r.code == 0, r.err
    assert "after 1.50 effective epochs (33 gradient evaluations" in r.out  # ceil(1.5 x 22 minibatches)
    bad = run_cli("train", "--data", "digits", "--effective-epochs", "-1", home=tmp_path)
    assert bad.code == 2 and "effective epochs must be positive" in bad.err
