"""Bad input at the command line, one named case each (issue 16): exit code 2, one line on stderr, no
traceback, and nothing written: the run store is byte-identical afterwards (or still absent).

The CLI runs in-process (:func:`flatminima.cli.main` with an argv), as the ``flatminima`` script runs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from flatminima.cli import main
from flatminima.store import Store
from flatminima.train import TrainConfig, save_checkpoint


@dataclass
class Result:
    code: int
    out: str
    err: str


@contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def invoke(argv: list[str], home: Path | str | None = None) -> Result:
    """Run ``flatminima ARGV`` in this process with ``FLATMINIMA_HOME=home``; its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    with environ(FLATMINIMA_HOME=None if home is None else str(home), COLUMNS="200"), \
            redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def snapshot(root: Path) -> dict[str, str] | None:
    """The hash of every file under ``root`` by relative path (folders too); None when ``root`` is absent."""
    if not root.exists():
        return None
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_one_line_and_nothing_written(argv: list[str], home: Path, watched: list[Path] = (),
                                        message: str | None = None) -> Result:
    """Run argv and check the promise: exit 2, one line on stderr, no traceback, nothing changed."""
    before = [snapshot(p) for p in [home, *watched]]
    r = invoke(argv, home)
    lines = r.err.strip().splitlines()
    assert r.code == 2, (argv, r.code, r.out, r.err)
    assert len(lines) == 1 and lines[0].startswith("flatminima: error: "), (argv, r.err)
    assert "Traceback" not in r.err + r.out, argv
    assert [snapshot(p) for p in [home, *watched]] == before, f"{argv} changed the store"
    if message is not None:
        assert message in lines[0], (message, lines[0])
    return r


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (gzipped when ``path`` ends in .gz)."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def fashion_folder(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """A folder holding a tiny but valid set of the four Fashion-MNIST IDX files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store with a finished training run (its checkpoint garbage), an explore run and a landscape database."""
    root = tmp_path_factory.mktemp("store")
    st = Store(root)
    cfg = TrainConfig(data="digits", model="mlp:8", steps=4, batch_size=16, checkpoint_every=2)
    train = st.create_run("train", cfg.to_dict(), run_id="train-run")
    (train.folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    st.set_status(train.id, "finished")
    other = st.create_run("train", cfg.to_dict(), run_id="train-other-model")
    model = torch.nn.Linear(3, 2)
    save_checkpoint(other.folder / "checkpoint.pt", {
        "model": model.state_dict(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "scheduler": None, "stream": {}, "rng": {}, "step": 2, "grad_evals": 2, "history": [], "running_loss": 1.0})
    st.set_status(other.id, "finished")
    explore = st.create_run("explore", {"spec": {"kind": "muller-brown"}}, run_id="explore-run")
    st.set_status(explore.id, "finished")
    for kind in ("jamming-locate", "jamming-phase-diagram"):
        st.set_status(st.create_run(kind, {"P": 0}, run_id=f"{kind}-bad-config").id, "finished")
    r = invoke(["explore", "run", "--potential", "muller-brown", "--steps", "3", "--walkers", "2",
                "--temperature", "40", "--db", str(root.parent / "mb.sqlite"), "-q"], root)
    assert r.code == 0, r.err
    return root


TRAIN = ["train", "--data", "digits", "--model", "mlp:8", "--steps", "3", "-q"]

# (name, argv, a fragment of the expected message); ``{db}`` is the landscape database beside the store
CASES = [
    # train: every argument checked (finite, in range, right type), the model sized and fitted to the data
    ("epochs-nan", [*TRAIN, "--epochs", "nan"], "epochs must be a finite number"),
    ("epochs-inf", [*TRAIN, "--epochs", "inf"], "epochs must be a finite number"),
    ("epochs-negative", [*TRAIN, "--epochs", "-1"], "epochs must be positive"),
    ("epochs-not-a-number", [*TRAIN, "--epochs", "abc"], "Invalid value for '--epochs'"),
    ("seed-negative", [*TRAIN, "--seed", "-1"], "seed must be in [0, 2**63)"),
    ("lr-nan", [*TRAIN, "--lr", "nan"], "learning rate"),
    ("lr-zero", [*TRAIN, "--lr", "0"], "learning rate"),
    ("momentum-one", [*TRAIN, "--momentum", "1"], "momentum"),
    ("weight-decay-negative", [*TRAIN, "--weight-decay", "-0.1"], "weight decay"),
    ("batch-size-zero", [*TRAIN, "--batch-size", "0"], "batch size must be positive"),
    ("steps-zero", [*TRAIN, "--steps", "0"], "steps must be positive"),
    ("grad-evals-negative", [*TRAIN, "--grad-evals", "-3"], "grad evals must be positive"),
    ("train-subset-zero", [*TRAIN, "--train-subset", "0"], "train subset must be positive"),
    ("checkpoint-every-zero", [*TRAIN, "--checkpoint-every", "0"], "checkpoint every must be positive"),
    ("optimizer-option-nan", [*TRAIN, "--optimizer", "entropy-sgd", "-o", "inner_steps=NaN"], "not a finite number"),
    ("fortunes-with-an-mlp", ["train", "--data", "fortunes", "--model", "mlp:8", "--steps", "3"],
     "does not fit data set 'fortunes'"),
    ("digits-with-an-lstm", [*TRAIN, "--model", "lstm:8"], "does not fit data set 'digits'"),
    ("model-too-large", [*TRAIN, "--model", "mlp:100000000000"], "more than the 2e+08"),
    ("model-spec-empty", [*TRAIN, "--model", ""], "model spec"),
    ("scheduler-negative-factor", [*TRAIN, "--scheduler", "step:1:-5"], "FACTOR must be in (0, 1]"),
    ("scheduler-growing-factor", [*TRAIN, "--scheduler", "step:1:2"], "FACTOR must be in (0, 1]"),
    ("scheduler-zero-epochs", [*TRAIN, "--scheduler", "step:0:0.5"], "EPOCHS must be a positive number"),
    ("scheduler-unknown", [*TRAIN, "--scheduler", "linear"], "unknown scheduler"),
    ("unknown-option", [*TRAIN, "--bogus"], "No such option: --bogus"),
    ("resume-missing-run", ["train", "--resume", "no-such-run"], "no run 'no-such-run'"),
    ("resume-other-kind", ["train", "--resume", "explore-run"], "not 'train'"),
    ("resume-corrupt-checkpoint", ["train", "--resume", "train-run"], "corrupt"),
    ("resume-checkpoint-of-another-model", ["train", "--resume", "train-other-model"], "does not fit"),
    # runs
    ("runs-show-like-pattern", ["runs", "show", "%"], "no run '%'"),
    ("runs-show-ambiguous-prefix", ["runs", "show", "train"], "ambiguous"),
    # measure
    ("measure-k-zero", ["measure", "train-run", "--hessian", "--k", "0"], "k must be >= 1"),
    ("measure-nothing-chosen", ["measure", "train-run"], "choose at least one measure"),
    ("measure-beta-negative", ["measure", "train-run", "--local-entropy", "--beta", "-1"], "beta must be > 0"),
    ("measure-unknown-device", ["measure", "train-run", "--hessian", "--device", "tpu"], "device"),
    # studies and reports
    ("study-seeds-zero", ["study", "run", "compare-optimizers", "--set", "seeds=0"], "must be positive"),
    ("study-seeds-fraction", ["study", "run", "compare-optimizers", "--set", "seeds=1.5"], "is not a valid int"),
    ("study-unknown-option", ["study", "run", "compare-optimizers", "--set", "speed=9"], "has no option 'speed'"),
    ("study-unknown-scale", ["study", "run", "compare-optimizers", "--scale", "huge"], "no scale 'huge'"),
    ("study-unknown-name", ["study", "run", "no-such-study"], "unknown study"),
    ("study-dask-nonsense", ["study", "run", "compare-optimizers", "--dask", "nonsense"], "not a scheduler address"),
    ("study-workers-zero", ["study", "run", "compare-optimizers", "--workers", "0"], "--workers must be >= 1"),
    ("study-threads-zero", ["study", "run", "compare-optimizers", "--threads", "0"], "--threads must be >= 1"),
    ("study-report-unknown-scale", ["study", "report", "jamming", "--scale", "huge"], "no scale 'huge'"),
    # explore
    ("explore-steps-negative", ["explore", "run", "--steps", "-5"], "--steps must be >= 1"),
    ("explore-temperature-zero", ["explore", "run", "--temperature", "0"], "--temperature must be > 0"),
    ("explore-unknown-potential", ["explore", "run", "--potential", "argon"], "unknown potential"),
    ("explore-cluster-too-large", ["explore", "run", "--potential", "lj1000000"], "number of atoms"),
    ("explore-metrics-missing-db", ["explore", "metrics", "--db", "/nonexistent/x.sqlite"], "no landscape database"),
    ("explore-graph-color-by-unknown", ["explore", "graph", "--db", "{db}", "--color-by", "colour"], "--color-by"),
    ("explore-connect-unknown-minimum", ["explore", "connect", "--db", "{db}", "--a", "1", "--b", "999"],
     "--b 999 is not a minimum"),
    # jamming
    ("jamming-locate-P-zero", ["jamming", "locate", "--P", "0"], "--P must be >= 1"),
    ("jamming-locate-depth-zero", ["jamming", "locate", "--depth", "0"], "--depth must be >= 1"),
    ("jamming-locate-seeds-zero", ["jamming", "locate", "--seeds", "0"], "--seeds must be >= 1"),
    ("jamming-locate-rtol-above-one", ["jamming", "locate", "--rtol", "1.5"], "--rtol must be < 1"),
    ("jamming-locate-rtol-nan", ["jamming", "locate", "--rtol", "nan"], "--rtol must be a finite number"),
    ("jamming-locate-unknown-method", ["jamming", "locate", "--method", "lbfgs"], "--method must be one of"),
    ("jamming-locate-unknown-activation", ["jamming", "locate", "--activation", "swish"], "--activation"),
    ("jamming-locate-unknown-data", ["jamming", "locate", "--data", "mnist"], "--data must be one of"),
    ("jamming-locate-polish-negative", ["jamming", "locate", "--polish", "-1"], "--polish must be >= 0"),
    ("jamming-locate-polish-time-zero", ["jamming", "locate", "--polish-time", "0"], "--polish-time must be > 0"),
    ("jamming-locate-max-iter-zero", ["jamming", "locate", "--max-iter", "0"], "--max-iter must be >= 1"),
    ("jamming-locate-resume-missing", ["jamming", "locate", "--resume", "no-such-run"], "no run"),
    ("jamming-locate-resume-bad-config", ["jamming", "locate", "--resume", "jamming-locate-bad-config"],
     "--P must be >= 1"),
    ("jamming-phase-diagram-bad-depths", ["jamming", "phase-diagram", "--depths", "2,x"], "--depths"),
    ("jamming-phase-diagram-zero-depth", ["jamming", "phase-diagram", "--depths", "2,0"], "every depth"),
    ("jamming-stats-N-zero", ["jamming", "stats", "--N", "0"], "--N must be >= 1"),
    ("jamming-stats-spectrum-too-large", ["jamming", "stats", "--N", "50000"], "--no-spectrum"),
    # perceptron
    ("perceptron-even-k", ["perceptron", "solve", "--k", "2"], "--k must be odd"),
    ("perceptron-alpha-negative", ["perceptron", "solve", "--alpha", "-1"], "--alpha must be > 0"),
    ("perceptron-n-zero", ["perceptron", "entropy", "--n", "0"], "--n must be >= 1"),
    ("perceptron-unknown-solver", ["perceptron", "solve", "--solver", "magic"], "--solver must be one of"),
    ("perceptron-instance-too-large", ["perceptron", "solve", "--n", "100000", "--alpha", "1"], "numbers"),
    ("perceptron-exact-too-large", ["perceptron", "entropy", "--method", "exact", "--n", "101"], "2^101"),
    ("perceptron-damping-one", ["perceptron", "entropy", "--damping", "1"], "--damping must be < 1"),
    ("perceptron-distance-above-half", ["perceptron", "local-entropy", "--distances", "0.7"], "distance"),
    ("perceptron-reference-missing", ["perceptron", "local-entropy", "--reference", "nowhere.json"], "no such file"),
    ("perceptron-data-missing", ["perceptron", "entropy", "--data", "/nonexistent.npz"], "no such file"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(home, argv, message):
    db = home.parent / "mb.sqlite"
    argv = [str(db) if a == "{db}" else a for a in argv]
    assert_one_line_and_nothing_written(argv, home, [db], message)


def test_the_cases_cover_the_issue():
    assert len(CASES) >= 44


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable GPU")
def test_measure_on_cuda_without_a_gpu(home):
    assert_one_line_and_nothing_written(["measure", "train-run", "--hessian", "--device", "cuda"], home,
                                        message="device 'cuda' is not available")


@pytest.mark.parametrize("broken", ["short-header", "too-few-labels"])
def test_idx_files_that_cannot_be_used(home, tmp_path, broken):
    folder = fashion_folder(tmp_path / "fashion")
    if broken == "short-header":
        (folder / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 8]))
        message = "header is cut short"
    else:
        write_idx(folder / "train-labels-idx1-ubyte", np.zeros(5))
        message = "8 images but 5 labels"
    assert_one_line_and_nothing_written(["train", "--data", "fashion-mnist", "--data-dir", str(folder), "--model",
                                         "mlp:8", "--steps", "2", "-q"], home, message=message)


def test_a_store_location_that_is_a_file(tmp_path):
    location = tmp_path / "a-file"
    location.write_text("not a store")
    assert_one_line_and_nothing_written(TRAIN, location, message="is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_store_location(tmp_path):
    location = tmp_path / "read-only"
    location.mkdir()
    location.chmod(0o555)
    try:
        assert_one_line_and_nothing_written(TRAIN, location, message="not writable")
    finally:
        location.chmod(0o755)


def test_a_store_under_a_missing_folder_is_not_created(tmp_path):
    location = tmp_path / "missing" / "store"
    assert_one_line_and_nothing_written(TRAIN, location, message="is not an existing folder")
    assert not location.parent.exists()


def test_an_index_truncated_to_100_bytes(home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    index = copy / "index.sqlite"
    index.write_bytes(index.read_bytes()[:100])
    for argv in (["runs", "list"], ["runs", "show", "train-run"], TRAIN, ["report"]):
        assert_one_line_and_nothing_written(argv, copy)


@pytest.mark.parametrize("argv", [["runs", "list"], ["runs", "show", "x"], ["report"], ["measure", "x", "--hessian"],
                                  ["train", "--resume", "x"], ["jamming", "locate", "--resume", "x"],
                                  ["study", "report", "jamming"]])
def test_readers_of_a_missing_store_create_nothing(tmp_path, argv):
    assert_one_line_and_nothing_written(argv, tmp_path / "nowhere", message="no run store")
    assert not (tmp_path / "nowhere").exists()


def test_report_out_is_a_file(home, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("")
    assert_one_line_and_nothing_written(["report", "--out", str(out)], home, [out], message="is a file, not a folder")
