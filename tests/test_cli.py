"""The CLI: real runs, and bad input as one line on stderr with exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, home):
    env = {**os.environ, "FLATMINIMA_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "flatminima.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_train_then_list_and_show(tmp_path):
    r = run_cli("train", "--data", "digits", "--model", "mlp:32", "--epochs", "2", "-q", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test error" in r.stdout
    run_id = r.stdout.split()[1].rstrip(":")
    ls = run_cli("runs", "list", home=tmp_path)
    assert ls.returncode == 0 and "digits" in ls.stdout
    show = run_cli("runs", "show", run_id, home=tmp_path)
    assert show.returncode == 0 and "test_error" in show.stdout


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


def test_help_everywhere(tmp_path):
    for args in (["--help"], ["train", "--help"], ["runs", "--help"], ["runs", "list", "--help"]):
        r = run_cli(*args, home=tmp_path)
        assert r.returncode == 0 and "Usage" in r.stdout
