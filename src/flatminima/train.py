"""One training loop for any ``torch.optim`` optimizer, closure-based ones included.

:func:`fit` draws minibatches from a seeded stream, calls ``optimizer.step(closure)`` with a
:class:`MinibatchClosure` (each call draws a *fresh* minibatch, so Entropy-SGD's inner steps and SAM's
second pass see the data as their papers prescribe), counts gradient evaluations (effective epochs),
evaluates train and test metrics, steps LR schedulers, writes checkpoints atomically every K steps and
resumes from them bit for bit on CPU. It logs through ``callbacks`` and writes nothing but its checkpoints.

A :class:`TrainConfig` names everything a run needs (data, model, optimizer, budget, schedule, seed);
:func:`prepare_data`, :func:`build_model` and :func:`build_optimizer` turn it into the objects :func:`fit`
takes. ``flatminima train`` stores the config and the results of such a run in the run store.

>>> from flatminima import data, models
>>> from flatminima.train import fit
>>> ds = data.load("digits")
>>> model = models.build("mlp:64", ds.input_shape, ds.n_classes)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> result = fit(model, ds, opt, epochs=5, batch_size=64, seed=0)   # doctest: +SKIP
>>> result.final["test_error"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import data as fmdata
from . import models
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write_bytes, to_json
from .landscape import per_example_loss, predictions_error
from .optim import build_optimizer as _optimizer_by_name
from .optim import grad_evals_per_step

__all__ = [
    "MinibatchStream",
    "MinibatchClosure",
    "TrainResult",
    "fit",
    "evaluate",
    "recalibrate_bn",
    "has_batchnorm",
    "save_checkpoint",
    "load_checkpoint",
    "TrainConfig",
    "prepare_data",
    "build_model",
    "build_optimizer",
    "budget_steps",
    "check_model",
    "restore_checkpoint",
    "MAX_PARAMS",
]

CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "stream", "rng", "step", "grad_evals", "history", "running_loss")
MAX_PARAMS = 200_000_000  # the largest model a run may build (its weights alone would take 0.8 GB in float32)


class MinibatchStream:
    """Seeded minibatches of a training set: random permutations, one per epoch, cut into batches.

    The state (epoch, position, generator) is part of checkpoints, so a resumed run draws exactly the
    minibatches an uninterrupted run would have drawn.
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int, seed: int = 0, device: torch.device | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.X, self.y = X, y
        self.n = int(X.shape[0])
        self.batch_size = min(int(batch_size), self.n)
        self.device = device or X.device
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(self.n, generator=self.generator)
        self.pos = 0
        self.epoch = 0
        self.drawn = 0  # minibatches drawn so far

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.n // self.batch_size)

    def next(self) -> tuple[Tensor, Tensor]:
        if self.pos + self.batch_size > self.n:  # drop the incomplete tail: every batch has the same size
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        self.drawn += 1
        return self.X[idx].to(self.device, non_blocking=True), self.y[idx].to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos,
                "epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos, self.epoch, self.drawn = int(state["pos"]), int(state["epoch"]), int(state["drawn"])


class MinibatchClosure:
    """The closure handed to ``optimizer.step``.

    ``closure()`` draws a fresh minibatch, zeroes the model's gradients, runs forward and backward and
    returns the detached mean loss; each call counts one gradient evaluation. Optimizers that evaluate
    gradients themselves (for example several replicas in one vmapped pass) use :meth:`sample` to draw
    minibatches and :meth:`count` to report the gradient evaluations they made.

    Attributes: ``model`` (the module being trained), ``loss_fn(outputs, targets) -> (B,)`` per-example
    losses, ``grad_evals`` (minibatch gradient evaluations so far), ``batch_size``.
    """

    def __init__(self, model: nn.Module, stream: MinibatchStream, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.model = model
        self.stream = stream
        self.loss_fn = loss_fn
        self.grad_evals = 0
        self.last_loss: float = float("nan")

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    def sample(self) -> tuple[Tensor, Tensor]:
        """A fresh minibatch ``(x (B, ...), y (B,))`` on the model's device (no gradient is computed)."""
        return self.stream.next()

    def count(self, n: int = 1) -> None:
        """Record ``n`` gradient evaluations made outside :meth:`__call__`."""
        self.grad_evals += int(n)

    def __call__(self) -> Tensor:
        x, y = self.sample()
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y).mean()
            loss.backward()
        self.grad_evals += 1
        self.last_loss = float(loss.detach())
        return loss.detach()


@dataclass
class TrainResult:
    """What :func:`fit` returns: the metric history (one dict per evaluation), the final metrics and
    the trained model (the same object that was passed in)."""

    history: list[dict[str, float]]
    final: dict[str, float]
    model: nn.Module
    steps: int
    grad_evals: int
    seconds: float
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, X: Tensor, batch_size: int = 256, max_examples: int | None = 10000) -> None:
    """Re-estimate BatchNorm running statistics on training inputs X (P, ...).

    Running means and variances are reset and recomputed as exact averages over the first
    ``max_examples`` inputs (deterministic: a function of the weights and X only). Dropout stays off.
    The model's train/eval mode is restored afterwards. Does nothing for models without BatchNorm.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.eval()
    for m in bns:
        m.train()
    device = next(model.parameters()).device
    n = X.shape[0] if max_examples is None else min(X.shape[0], max_examples)
    for i in range(0, n, batch_size):
        model(X[i : min(i + batch_size, n)].to(device))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
             batch_size: int = 2048) -> tuple[float, float]:
    """Mean loss and error of ``model`` (in eval mode) on (X (P, ...), y (P,)). Returns ``(loss, error)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tot_loss, tot_err = 0.0, 0.0
    for i in range(0, X.shape[0], batch_size):
        xb, yb = X[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out = model(xb)
        tot_loss += float(loss_fn(out, yb).sum())
        tot_err += float(predictions_error(out, yb).sum())
    model.train(was_training)
    return tot_loss / X.shape[0], tot_err / X.shape[0]


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file + rename): a kill never leaves a half-written file."""
    buf = io.BytesIO()
    torch.save({"flatminima_checkpoint": CHECKPOINT_VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a flatminima checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "flatminima_checkpoint" not in state:
        raise CheckpointError(f"{path} is not a flatminima checkpoint")
    return state


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_checkpoint(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: Any = None) -> None:
    """Load a checkpoint of :func:`fit` into ``model``, ``optimizer`` and ``scheduler``.

    Raises :class:`CheckpointError` when the checkpoint lacks a part of the training state or was written
    for another model, optimizer or schedule. Loading the same checkpoint twice gives the same state, so a
    caller can check a checkpoint with this function before it commits to resuming from it.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)} (written by an older flatminima?)")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"the checkpoint does not fit this model and optimizer: {detail}") from None
    if (scheduler is None) != (state["scheduler"] is None):
        raise CheckpointError("the checkpoint was written with another learning-rate schedule")
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])


# ------------------------------------------------------------------------------------------ the loop
def fit(
    model: nn.Module,
    data: Any,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    grad_evals: int | None = None,
    effective_epochs: float | None = None,
    batch_size: int = 128,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    seed: int = 0,
    eval_every: int | None = None,
    eval_train_examples: int | None = 10000,
    checkpoint_every: int | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool | dict[str, Any] = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    callbacks: Iterable[Callable[[dict[str, float]], None]] = (),
) -> TrainResult:
    """Train ``model`` on ``data`` with ``optimizer``.

    Parameters
    ----------
    data : Dataset or ((X_train, y_train), (X_test, y_test))
    epochs, steps, grad_evals :
        The budget, in passes over the training set (counted in optimizer steps of one minibatch each),
        in optimizer steps, or in minibatch gradient evaluations (to compare optimizers at equal compute:
        an Entropy-SGD step with L inner steps costs L). Training stops at the first budget reached.
    effective_epochs :
        The budget in effective epochs, as the papers compare optimizers: minibatch gradient evaluations
        divided by the minibatches per epoch (``ceil(effective_epochs * batches_per_epoch)`` gradient
        evaluations; with ``grad_evals`` too, the smaller budget applies).
    scheduler : an LR scheduler of ``optimizer``, stepped once per epoch (``scheduler_interval="epoch"``)
        or per step (``"step"``).
    seed : seeds minibatch order and the global torch RNG (noise in optimizers, dropout).
    eval_every : steps between evaluations (default: once per epoch).
    eval_train_examples : training examples used to measure train loss/error (None = all).
    checkpoint_every : write ``run_dir/checkpoint.pt`` every K steps (atomic).
    resume : ``True``: continue from ``run_dir/checkpoint.pt`` if present; a dict: continue from this
        checkpoint (as :func:`load_checkpoint` returns it). Weights, optimizer, schedule, minibatch order,
        random state, the running minibatch loss and the metric history all continue, so the result and
        the history equal an uninterrupted run's.
    callbacks : functions called with each evaluation row, in order (``flatminima train`` logs the rows
        to the run store this way).

    Returns
    -------
    TrainResult with ``history`` rows holding step, epoch, grad_evals, effective_epochs, lr,
    train_loss, train_error, test_loss, test_error, the running minibatch loss and the optimizer's
    ``diagnostics()`` (if it has that method).
    """
    if isinstance(data, (tuple, list)):
        (Xtr, ytr), (Xte, yte) = data
    else:
        Xtr, ytr, Xte, yte = data.X_train, data.y_train, data.X_test, data.y_test
    if epochs is None and steps is None and grad_evals is None and effective_epochs is None:
        raise ConfigError("give a budget: epochs, steps, grad_evals or effective_epochs")
    for name, v in (("epochs", epochs), ("steps", steps), ("grad_evals", grad_evals),
                    ("effective_epochs", effective_epochs)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a positive number, got {v}")
    if scheduler_interval not in ("epoch", "step"):
        raise ConfigError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    loss_fn = per_example_loss(loss)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / "checkpoint.pt" if run_dir is not None else None
    if checkpoint_every is not None and (checkpoint_every < 1 or run_dir is None):
        raise ConfigError("checkpoint_every needs a positive number of steps and a run_dir")

    torch.manual_seed(seed)
    stream = MinibatchStream(Xtr, ytr, batch_size, seed=seed, device=device)
    closure = MinibatchClosure(model, stream, loss_fn)
    spe = stream.batches_per_epoch
    if effective_epochs is not None:
        grad_evals = min(grad_evals or math.inf, math.ceil(effective_epochs * spe))
    max_steps = min(
        math.ceil(epochs * spe) if epochs is not None else math.inf,
        steps if steps is not None else math.inf,
    )
    eval_every = eval_every or spe
    history: list[dict[str, float]] = []
    step = 0
    elapsed = 0.0
    running = float("nan")  # exponential moving average of the minibatch losses
    state = resume if isinstance(resume, dict) else None
    if resume is True and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
    if state is not None:
        restore_checkpoint(state, model, optimizer, scheduler)
        stream.load_state_dict(state["stream"])
        _set_rng_state(state["rng"])
        step, closure.grad_evals = int(state["step"]), int(state["grad_evals"])
        history = list(state["history"])
        running = float(state["running_loss"])
        elapsed = float(state.get("seconds", 0.0))

    def budget_left() -> bool:
        return step < max_steps and (grad_evals is None or closure.grad_evals < grad_evals)

    def eval_row(running: float) -> dict[str, float]:
        if has_batchnorm(model):
            recalibrate_bn(model, Xtr, max_examples=eval_train_examples)
        n_tr = Xtr.shape[0] if eval_train_examples is None else min(Xtr.shape[0], eval_train_examples)
        tr_loss, tr_err = evaluate(model, Xtr[:n_tr], ytr[:n_tr], loss_fn)
        te_loss, te_err = evaluate(model, Xte, yte, loss_fn)
        row = {
            "step": step, "epoch": step / spe, "grad_evals": closure.grad_evals,
            "effective_epochs": closure.grad_evals / spe, "lr": optimizer.param_groups[0]["lr"],
            "minibatch_loss": running, "train_loss": tr_loss, "train_error": tr_err,
            "test_loss": te_loss, "test_error": te_err, "seconds": elapsed + time.perf_counter() - t0,
        }
        diag = getattr(optimizer, "diagnostics", None)
        if callable(diag):
            row.update({k: float(v) for k, v in diag().items()})
        return row

    from tqdm.auto import tqdm

    total = max_steps if math.isfinite(max_steps) else None
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress, leave=False)
    t0 = time.perf_counter()
    model.train()
    try:
        while budget_left():
            out = optimizer.step(closure)
            step += 1
            lval = float(out) if out is not None else closure.last_loss
            running = lval if math.isnan(running) else 0.9 * running + 0.1 * lval
            if not math.isfinite(lval):
                raise ConfigError(
                    f"training diverged at step {step} (minibatch loss {lval}, learning rate "
                    f"{optimizer.param_groups[0]['lr']:.3g}); likely causes: a learning rate too high for this "
                    "model and batch size, a schedule that raises it or keeps it high, or inputs on a large "
                    "scale (standardize them)")
            if scheduler is not None and (scheduler_interval == "step" or step % spe == 0):
                scheduler.step()
            bar.update(1)
            if step % eval_every == 0 or not budget_left():
                row = eval_row(running)
                history.append(row)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", test_err=f"{row['test_error']:.4f}")
                for cb in callbacks:
                    cb(row)
            if checkpoint_every is not None and step % checkpoint_every == 0:
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "stream": stream.state_dict(), "rng": _rng_state(), "step": step,
                    "grad_evals": closure.grad_evals, "history": history, "running_loss": running,
                    "seconds": elapsed + time.perf_counter() - t0,
                })
    finally:
        bar.close()
    if not history or history[-1]["step"] != step:
        history.append(eval_row(running))
    seconds = elapsed + time.perf_counter() - t0
    return TrainResult(history=history, final=dict(history[-1]), model=model, steps=step,
                       grad_evals=closure.grad_evals, seconds=seconds, run_dir=run_dir)


# ------------------------------------------------------------------------------------------ runs from a config
_INT_FIELDS = ("steps", "grad_evals", "batch_size", "seed", "train_subset", "checkpoint_every", "eval_every")
_POSITIVE = ("epochs", "effective_epochs", "steps", "grad_evals", "batch_size", "train_subset", "checkpoint_every", "eval_every")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable: a stored run's config is this, as a dict).

    The budget is ``epochs``, ``steps``, ``grad_evals`` or ``effective_epochs`` (gradient evaluations per
    training-set size in minibatches, the papers' unit for comparing optimizers; the first budget reached
    ends the run). The schedule
    ``scheduler`` is ``None`` (constant learning rate), ``"cosine"`` (from ``lr`` down to 0 over the whole
    budget, whichever unit it is given in) or ``"step:E:F"`` (multiply the learning rate by F in (0, 1]
    every E epochs). Every field is checked on construction (:meth:`validate`).
    """

    data: str = "fashion-mnist"
    model: str = "mlp:256,256"
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # optimizer-specific options
    epochs: float | None = 5.0
    steps: int | None = None
    grad_evals: int | None = None
    effective_epochs: float | None = None
    batch_size: int = 128
    loss: str = "cross_entropy"
    scheduler: str | None = "cosine"  # None, "cosine", "step:E:F" (xF every E epochs)
    seed: int = 0
    train_subset: int | None = None  # balanced subset of P training examples
    standardize: bool = True  # inputs shifted/scaled by the training set's global mean and std
    data_dir: str | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value no run could use (wrong type, not finite, out of range)."""
        for name in ("data", "model", "optimizer", "loss", "dtype"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.data not in fmdata.DATASETS:
            raise ConfigError(f"unknown data set {self.data!r}; choose one of {sorted(fmdata.DATASETS)}")
        if not (_is_number(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a number >= 0, got {self.weight_decay}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"optimizer options must be a dict, got {self.options!r}")
        if self.epochs is None and self.steps is None and self.grad_evals is None and self.effective_epochs is None:
            raise ConfigError("give a budget: epochs, steps, grad_evals or effective_epochs")
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if v is not None and not _is_int(v):
                raise ConfigError(f"{name.replace('_', ' ')} must be an integer, got {v!r}")
        for name in ("epochs", "effective_epochs"):
            v = getattr(self, name)
            if v is not None and not _is_number(v):
                raise ConfigError(f"{name.replace('_', ' ')} must be a finite number, got {v!r}")
        for name in _POSITIVE:
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {v}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if not isinstance(self.standardize, bool):
            raise ConfigError(f"standardize must be true or false, got {self.standardize!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path, got {self.data_dir!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")
        per_example_loss(self.loss)
        _parse_scheduler(self.scheduler)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of a stored run, checked like a new one; unknown keys are a :class:`ConfigError`."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(to_json(asdict(self)))


def _parse_scheduler(spec: str | None) -> tuple[str, float, float] | None:
    """``None`` | ``("cosine", 0, 0)`` | ``("step", epochs, factor)``, checked."""
    if spec is None or spec == "none":
        return None
    if spec == "cosine":
        return ("cosine", 0.0, 0.0)
    if not isinstance(spec, str):
        raise ConfigError(f"scheduler must be a string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "step":
        try:
            every, factor = (float(v) for v in rest.split(":"))
        except ValueError:
            raise ConfigError(f"step schedule {spec!r} must look like step:EPOCHS:FACTOR, e.g. step:10:0.1") from None
        if not (math.isfinite(every) and every > 0):
            raise ConfigError(f"step schedule {spec!r}: EPOCHS must be a positive number, got {every:g}")
        if not (math.isfinite(factor) and 0 < factor <= 1):
            raise ConfigError(f"step schedule {spec!r}: FACTOR must be in (0, 1], got {factor:g}")
        return ("step", every, factor)
    raise ConfigError(f"unknown scheduler {spec!r}; use 'none', 'cosine' or 'step:EPOCHS:FACTOR'")


def prepare_data(cfg: TrainConfig) -> fmdata.Dataset:
    """Load the run's data set with the preprocessing its config asks for."""
    ds = fmdata.load(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed if cfg.data != "fashion-mnist" else 0)
    if cfg.standardize and ds.X_train.is_floating_point():
        ds = fmdata.standardize(ds)
    if cfg.train_subset is not None:
        ds = fmdata.balanced_subset(ds, min(cfg.train_subset, ds.X_train.shape[0]), seed=cfg.seed)
    return ds


def check_model(cfg: TrainConfig, ds: fmdata.Dataset) -> int:
    """Check that the run's model can be built and fits its data, without allocating it; returns its
    parameter count.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory) and two training examples
    go through it and the loss there, which catches a model for other inputs (``--data fortunes --model
    mlp:8``) as well as one too large to allocate (more than :data:`MAX_PARAMS` parameters).
    """
    try:
        with torch.device("meta"):
            model = models.build(cfg.model, ds.input_shape, ds.n_classes)
    except RuntimeError as exc:  # e.g. a negative width
        raise ConfigError(f"bad model spec {cfg.model!r}: {' '.join(str(exc).split())[:160]}") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMS:
        raise ConfigError(f"model {cfg.model!r} has {n:.3g} parameters for this data, more than the "
                          f"{MAX_PARAMS:.0e} a run may allocate")
    x, y = ds.X_train[:2], ds.y_train[:2]
    if x.is_floating_point():
        x = x.to(getattr(torch, cfg.dtype))
    try:
        per_example_loss(cfg.loss)(model.to(getattr(torch, cfg.dtype))(x.to("meta")), y.to("meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"model {cfg.model!r} does not fit data set {cfg.data!r} (inputs {tuple(ds.input_shape)}, "
                          f"{ds.n_classes} classes, loss {cfg.loss}): {detail}") from None
    return n


def build_model(cfg: TrainConfig, ds: fmdata.Dataset) -> nn.Module:
    """The run's model, initialised from the run's seed (checked first by :func:`check_model`)."""
    check_model(cfg, ds)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, ds.input_shape, ds.n_classes)
    return model.to(getattr(torch, cfg.dtype))


def budget_steps(cfg: TrainConfig, n_train: int) -> int:
    """The number of optimizer steps of the run's budget on ``n_train`` training examples (the first of
    ``epochs``, ``steps``, ``grad_evals`` and ``effective_epochs`` reached; a step of the optimizer costs
    :func:`flatminima.optim.grad_evals_per_step` gradient evaluations)."""
    spe = max(1, n_train // min(cfg.batch_size, n_train))
    budget = math.inf
    if cfg.epochs is not None:
        budget = math.ceil(cfg.epochs * spe)
    if cfg.steps is not None:
        budget = min(budget, cfg.steps)
    cost = grad_evals_per_step(cfg.optimizer, cfg.options)
    if cfg.grad_evals is not None:
        budget = min(budget, math.ceil(cfg.grad_evals / cost))
    if cfg.effective_epochs is not None:
        budget = min(budget, math.ceil(math.ceil(cfg.effective_epochs * spe) / cost))
    return int(budget)


def build_optimizer(cfg: TrainConfig, model: nn.Module, n_train: int) -> tuple[torch.optim.Optimizer, Any]:
    """The run's optimizer by name (``sgd``, ``adam``, ``adamw``, ``entropy-sgd``, ``replicated-sgd``,
    ``sam``; options validated by :mod:`flatminima.optim.registry`) and its LR scheduler (None without one).

    The scheduler is stepped once per optimizer step (``fit(..., scheduler_interval="step")``): the cosine
    schedule spans the whole budget (:func:`budget_steps` on ``n_train`` examples), in whichever unit the
    budget is given, and ends at 0; ``step:E:F`` multiplies the learning rate by F every E epochs.
    """
    opt = _optimizer_by_name(cfg.optimizer, model, lr=cfg.lr, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay, **cfg.options)
    spec = _parse_scheduler(cfg.scheduler)
    if spec is None:
        return opt, None
    kind, every, factor = spec
    if kind == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget_steps(cfg, n_train))
    spe = max(1, n_train // min(cfg.batch_size, n_train))
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, round(every * spe)), gamma=factor)
