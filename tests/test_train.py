import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from flatminima import data
from flatminima.commands.train import load_run, train_run
from flatminima.errors import CheckpointError, ConfigError
from flatminima.landscape import per_example_loss
from flatminima.store import Store
from flatminima.train import (
    MinibatchStream,
    TrainConfig,
    check_model,
    evaluate,
    fit,
    load_checkpoint,
    recalibrate_bn,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return data.standardize(data.load("digits"))


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_sgd_learns_digits(digits):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    res = fit(model, digits, opt, epochs=5, batch_size=64, seed=0, progress=False)
    assert res.history[0]["train_loss"] > res.final["train_loss"]
    assert res.final["test_error"] < 0.1
    assert res.grad_evals == res.steps == 5 * (digits.X_train.shape[0] // 64)
    assert res.final["effective_epochs"] == pytest.approx(5.0)


def test_same_seed_same_run(digits):
    m1 = tiny_mlp()
    r1 = fit(m1, digits, torch.optim.SGD(m1.parameters(), lr=0.1), steps=20, seed=4, progress=False)
    m2 = tiny_mlp()
    r2 = fit(m2, digits, torch.optim.SGD(m2.parameters(), lr=0.1), steps=20, seed=4, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert r1.final["test_error"] == r2.final["test_error"]
    m3 = tiny_mlp()
    fit(m3, digits, torch.optim.SGD(m3.parameters(), lr=0.1), steps=20, seed=5, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters()))


class TwoClosureCalls(torch.optim.Optimizer):
    """A closure-based optimizer that evaluates the gradient twice per step (like SAM)."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        closure()
        with torch.enable_grad():
            loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(p.grad, alpha=-g["lr"])
        return loss


def test_closure_optimizers_are_counted_in_gradient_evaluations(digits):
    model = tiny_mlp()
    res = fit(model, digits, TwoClosureCalls(model.parameters(), 0.05), grad_evals=40, batch_size=32,
              progress=False)
    assert res.grad_evals == 40 and res.steps == 20


def test_closure_draws_fresh_minibatches():
    X = torch.arange(12.0).view(12, 1)
    s = MinibatchStream(X, torch.zeros(12), batch_size=4, seed=0)
    seen = torch.cat([s.next()[0] for _ in range(3)]).view(-1)
    assert sorted(seen.tolist()) == list(range(12))  # one epoch = a permutation
    assert s.epoch == 0
    s.next()
    assert s.epoch == 1


def test_scheduler_changes_learning_rate(digits):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    res = fit(model, digits, opt, epochs=3, scheduler=sched, batch_size=128, progress=False)
    lrs = [round(r["lr"], 6) for r in res.history]
    assert lrs == [0.05, 0.025, 0.0125]


@pytest.mark.parametrize("budget", [{"epochs": 3}, {"steps": 66}, {"grad_evals": 198}, {"effective_epochs": 9.0}],
                         ids=["epochs", "steps", "grad-evals", "effective-epochs"])
def test_default_cosine_schedule_spans_the_whole_budget(tmp_path, budget):
    """The lr falls monotonically from lr to 0 over the whole budget, whatever its unit (the old default took
    one epoch as the period under --steps and --grad-evals: the lr fell to 0 and jumped back every epoch)."""
    entropic = "grad_evals" in budget or "effective_epochs" in budget
    optimizer = {"optimizer": "entropy-sgd", "options": {"inner_steps": 3}} if entropic else {}
    cfg = TrainConfig(data="digits", model="mlp:8", lr=0.1, batch_size=64, eval_every=4,
                      **{"epochs": None, **budget}, **optimizer)
    _, res = train_run(Store(tmp_path), cfg, progress=False)
    assert res.steps == 66  # 22 minibatches per epoch; an Entropy-SGD step costs its 3 inner steps
    if entropic:  # 198 gradient evaluations = 9 effective epochs of 22 minibatches
        assert res.grad_evals == 198 and res.final["effective_epochs"] == pytest.approx(9.0)
    lrs = [row["lr"] for row in res.history]
    assert len(lrs) == 17 and lrs[0] == pytest.approx(0.1 * (1 + math.cos(math.pi * 4 / 66)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_multiplies_the_lr_every_epochs(tmp_path):
    cfg = TrainConfig(data="digits", model="mlp:8", lr=0.1, batch_size=64, epochs=3, scheduler="step:1:0.5")
    _, res = train_run(Store(tmp_path), cfg, progress=False)
    assert [round(row["lr"], 9) for row in res.history] == [0.05, 0.025, 0.0125]


@pytest.mark.parametrize("spec", ["step:1:-5", "step:0:0.5", "step:1:0", "step:1:1.5", "step:inf:0.5", "step:1",
                                  "step:a:b"])
def test_bad_step_schedules_are_refused(spec):
    with pytest.raises(ConfigError, match="step"):
        TrainConfig(scheduler=spec)


def test_divergence_names_its_likely_causes(digits):
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="learning rate.*schedule.*standardize"):
        fit(model, digits, torch.optim.SGD(model.parameters(), lr=1e30), steps=20, progress=False)


def test_a_model_too_large_or_unfit_for_its_data_is_refused_before_it_is_built():
    ds = data.load("digits")
    with pytest.raises(ConfigError, match="parameters"):
        check_model(TrainConfig(data="digits", model="mlp:100000000000"), ds)
    with pytest.raises(ConfigError, match="does not fit"):
        check_model(TrainConfig(data="digits", model="lstm:8"), ds)
    assert check_model(TrainConfig(data="digits", model="mlp:8"), ds) == 64 * 8 + 8 + 8 * 10 + 10


def test_stored_configs_are_checked_like_new_ones():
    good = TrainConfig(data="digits").to_dict()
    for key, value in (("epochs", float("nan")), ("seed", -1), ("steps", 1.5), ("batch_size", True),
                       ("lr", "0.1"), ("options", []), ("standardize", 1)):
        with pytest.raises(ConfigError):
            TrainConfig.from_dict({**good, key: value})
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([1, 2])


def test_recalibrate_bn_gives_exact_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    X = torch.randn(100, 3)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3) * 5)  # pollute the running statistics
    recalibrate_bn(model, X, batch_size=100)
    h = model[0](X).detach()
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, h.var(0, unbiased=True), atol=1e-5)
    assert model.training  # mode restored


def test_budget_and_config_validation(digits):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError):
        fit(model, digits, opt, progress=False)
    with pytest.raises(ConfigError):
        fit(model, digits, opt, steps=-1, progress=False)
    with pytest.raises(ConfigError):
        TrainConfig(lr=-0.1)
    with pytest.raises(ConfigError):
        TrainConfig(scheduler="exp")
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({"lr": 0.1, "wat": 1})


def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 3})
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pt")


def test_fit_logs_every_evaluation_through_its_callbacks(digits):
    model = tiny_mlp()
    rows = []
    res = fit(model, digits, torch.optim.SGD(model.parameters(), lr=0.1), steps=30, eval_every=10,
              progress=False, callbacks=[rows.append])
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows == res.history


def test_stored_run_and_load_run(tmp_path):
    st = Store(tmp_path)
    cfg = TrainConfig(data="digits", model="mlp:32", epochs=2, batch_size=64)
    run, res = train_run(st, cfg, progress=False)
    assert st.get(run.id).status == "finished"
    assert run.config == cfg.to_dict() and TrainConfig.from_dict(run.config) == cfg
    assert st.results(run.id)["test_error"] == pytest.approx(res.final["test_error"])
    assert sorted({s for s, _, _ in st.metrics(run.id)}) == [r["step"] for r in res.history]
    model, ds, config = load_run(st, run.id)
    _, err = evaluate(model, ds.X_test, ds.y_test, per_example_loss("cross_entropy"))
    assert err == pytest.approx(res.final["test_error"])
    assert config["model"] == "mlp:32"


def test_train_run_resumes_only_training_runs(tmp_path):
    st = Store(tmp_path)
    other = st.create_run("explore", {"spec": "lj13"})
    with pytest.raises(ConfigError, match="not 'train'"):
        train_run(st, resume=other.id, progress=False)
    with pytest.raises(ConfigError):
        train_run(st, TrainConfig(data="digits"), resume=other.id, progress=False)
    assert st.get(other.id).status == "running" and len(st.runs()) == 1


def _cli(*args, env):
    return subprocess.Popen([sys.executable, "-m", "flatminima.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    env = {**os.environ, "FLATMINIMA_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    args = ["train", "--data", "mnist-5k", "--model", "mlp:128", "--steps", "1500", "--batch-size", "32",
            "--checkpoint-every", "25", "--lr", "0.05", "--seed", "3", "-q"]
    proc = _cli(*args, env=env)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.glob("*/checkpoint.pt")) if runs.exists() else []
        if found:
            ckpt = found[0]
            break
        time.sleep(0.01)
    assert ckpt is not None, "no checkpoint was written"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    run_id = ckpt.parent.name
    step = load_checkpoint(ckpt)["step"]
    assert 0 < step < 1500
    assert not (ckpt.parent / "final.pt").exists()

    resumed = _cli("train", "--resume", run_id, "-q", env=env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    clean_env = {**env, "FLATMINIMA_HOME": str(tmp_path / "clean")}
    clean = _cli(*[a for a in args if a not in ("--checkpoint-every", "25")], env=clean_env)
    out2, err2 = clean.communicate(timeout=300)
    assert clean.returncode == 0, err2
    clean_final = next((tmp_path / "clean" / "runs").glob("*/final.pt"))
    a = torch.load(ckpt.parent / "final.pt", weights_only=True)
    b = torch.load(clean_final, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    st = Store(tmp_path)
    assert st.get(run_id).status == "finished"
    steps = sorted({s for s, _, _ in st.metrics(run_id)})
    assert steps == sorted(set(steps)) and steps[-1] == 1500
    # the metric log, running minibatch loss included, equals the uninterrupted run's row for row
    clean_store = Store(tmp_path / "clean")
    (clean_run,) = clean_store.runs("train")

    def rows(store, rid):
        return {(s, k): v for s, k, v in store.metrics(rid) if k != "seconds"}

    resumed_rows, clean_rows = rows(st, run_id), rows(clean_store, clean_run.id)
    assert len(resumed_rows) == len(clean_rows) > 0
    assert resumed_rows == clean_rows
    assert {k for _, k in clean_rows} >= {"minibatch_loss", "train_loss", "test_error", "lr"}
