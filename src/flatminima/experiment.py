"""Stored training runs: a validated config -> data, model, optimizer -> a run in the store.

This is what ``flatminima train`` does, as a library function, so that studies, the CLI and tests
share it. A run's folder holds ``config.json``, ``checkpoint.pt`` (every K steps), ``final.pt`` (the
trained model's state_dict), ``history.json`` and figures; its metrics and results are in the index.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as fmdata
from . import models
from .errors import CheckpointError, ConfigError
from .store import Run, Store, atomic_write_text, to_json
from .train import TrainResult, fit, load_checkpoint

__all__ = ["TrainConfig", "prepare_data", "build_model", "build_optimizer", "train_run", "load_run"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable; stored as the run's config)."""

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
        if self.data not in fmdata.DATASETS:
            raise ConfigError(f"unknown data set {self.data!r}; choose one of {sorted(fmdata.DATASETS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.epochs is None and self.steps is None and self.grad_evals is None:
            raise ConfigError("give a budget: epochs, steps or grad_evals")
        for name in ("epochs", "steps", "grad_evals", "train_subset", "checkpoint_every", "eval_every"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {v}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")
        _parse_scheduler(self.scheduler)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(to_json(asdict(self)))


def _parse_scheduler(spec: str | None) -> tuple[str, float, float] | None:
    if spec is None or spec == "none":
        return None
    if spec == "cosine":
        return ("cosine", 0.0, 0.0)
    kind, _, rest = spec.partition(":")
    if kind == "step":
        try:
            every, factor = rest.split(":")
            return ("step", float(every), float(factor))
        except ValueError:
            pass
    raise ConfigError(f"unknown scheduler {spec!r}; use 'cosine' or 'step:EPOCHS:FACTOR'")


def prepare_data(cfg: TrainConfig) -> fmdata.Dataset:
    """Load the run's data set with the preprocessing its config asks for."""
    ds = fmdata.load(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed if cfg.data != "fashion-mnist" else 0)
    if cfg.standardize and ds.X_train.is_floating_point():
        ds = fmdata.standardize(ds)
    if cfg.train_subset is not None:
        ds = fmdata.balanced_subset(ds, min(cfg.train_subset, ds.X_train.shape[0]), seed=cfg.seed)
    return ds


def build_model(cfg: TrainConfig, ds: fmdata.Dataset) -> nn.Module:
    """The run's model, initialised from the run's seed."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, ds.input_shape, ds.n_classes)
    return model.to(getattr(torch, cfg.dtype))


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer by name (``sgd``, ``adam``, ``adamw``, ``entropy-sgd``, ``replicated-sgd``,
    ``sam``), with its options validated by :mod:`flatminima.optim.registry`."""
    from .optim.registry import build_optimizer as _build

    return _build(cfg.optimizer, model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                  **cfg.options)


def _build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, epochs: float | None):
    spec = _parse_scheduler(cfg.scheduler)
    if spec is None:
        return None
    kind, every, factor = spec
    if kind == "cosine":
        T = max(1, math.ceil(epochs or 1))
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(every)), gamma=factor)


def train_run(cfg: TrainConfig, store: Store | None = None, run_id: str | None = None, resume: bool = False,
              progress: bool = True, name: str | None = None) -> tuple[Run, TrainResult]:
    """Train a stored run (a new one, or ``run_id`` resumed from its last checkpoint).

    Returns the run record and the :class:`~flatminima.train.TrainResult`.
    """
    store = store or Store()
    if resume:
        if run_id is None:
            raise ConfigError("resume needs a run id")
        run = store.get(run_id)
        cfg = TrainConfig.from_dict(run.config)
    else:
        cfg.validate()
    # everything that can fail on bad input happens before the run is registered: nothing half-written
    ds = prepare_data(cfg)
    model = build_model(cfg, ds)
    opt = build_optimizer(cfg, model)
    sched = _build_scheduler(cfg, opt, cfg.epochs)
    if not resume:
        run = store.create_run("train", cfg.to_dict(), name=name, run_id=run_id)
    store.set_status(run.id, "running")
    try:
        result = fit(
            model, ds, opt, epochs=cfg.epochs, steps=cfg.steps, grad_evals=cfg.grad_evals,
            batch_size=cfg.batch_size, loss=cfg.loss, scheduler=sched, seed=cfg.seed,
            eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, run_dir=run.folder,
            resume=resume, store=store, run_id=run.id, progress=progress,
        )
    except BaseException:
        store.set_status(run.id, "interrupted")
        raise
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    from .store import atomic_write_bytes

    atomic_write_bytes(run.folder / "final.pt", buf.getvalue())
    atomic_write_text(run.folder / "history.json", to_json(result.history))
    for k in ("test_error", "test_loss", "train_loss", "train_error", "grad_evals", "effective_epochs", "seconds"):
        store.put_result(run.id, k, result.final[k])
    store.put_result(run.id, "n_params", sum(p.numel() for p in model.parameters()))
    store.set_status(run.id, "finished")
    return store.get(run.id), result


def load_run(run_id: str, store: Store | None = None) -> tuple[nn.Module, fmdata.Dataset, dict[str, Any]]:
    """The trained model of a stored run (its ``final.pt``, else its last checkpoint), its data, its config."""
    store = store or Store()
    run = store.get(run_id)
    cfg = TrainConfig.from_dict(run.config)
    ds = prepare_data(cfg)
    model = build_model(cfg, ds)
    final = Path(run.folder) / "final.pt"
    if final.exists():
        try:
            state = torch.load(final, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{final} is corrupt ({type(exc).__name__})") from None
    else:
        state = load_checkpoint(Path(run.folder) / "checkpoint.pt")["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the weights of run {run.id} do not fit its model: {exc}") from None
    model.eval()
    return model, ds, run.config
