"""``flatminima train``, and the glue between :mod:`flatminima.train` and the run store.

:func:`train_run` trains a :class:`~flatminima.train.TrainConfig` into a stored run (or resumes one) and
:func:`load_run` gives a stored run's trained model back. A run's folder holds ``config.json``,
``checkpoint.pt`` (every K steps), ``final.pt`` (the trained model's state_dict) and ``history.json``;
its metrics (one row per evaluation) and results are in the store's index.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from ..data import Dataset
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_bytes, atomic_write_text, to_json
from ..store import Run, Store
from ..train import (
    TrainConfig,
    TrainResult,
    build_model,
    build_optimizer,
    fit,
    load_checkpoint,
    prepare_data,
    restore_checkpoint,
)
from ._common import QuietOpt, StoreOpt, announce, parse_options, resume_run

__all__ = ["train", "train_run", "load_run"]

RESULTS = ("test_error", "test_loss", "train_loss", "train_error", "grad_evals", "effective_epochs", "seconds")


def train_run(store: Store | str | os.PathLike | None, cfg: TrainConfig | None = None, *, resume: str | None = None,
              name: str | None = None, progress: bool = True,
              on_start: Callable[[Run], None] | None = None) -> tuple[Run, TrainResult]:
    """Train ``cfg`` into a new stored run, or continue the stored run ``resume`` from its last checkpoint.

    ``store`` is a :class:`~flatminima.store.Store` or the root of one. Everything that can fail on bad
    input (the config, the data, the model and its size, the optimizer, the checkpoint and whether it fits)
    is checked before a new store is created, a run is registered or a stored run is changed: a failed
    start, or a failed resume, leaves the store as it was. ``on_start(run)`` is called once the run has
    started. Returns the run record and the :class:`~flatminima.train.TrainResult`.
    """
    if (cfg is None) == (resume is None):
        raise ConfigError("give either a config or the id of a run to resume")
    state = None
    if resume is not None:
        store = store if isinstance(store, Store) else Store(store, create=False)
        run = resume_run(store, resume, "train")
        cfg = TrainConfig.from_dict(run.config)
        ckpt = run.folder / "checkpoint.pt"
        state = load_checkpoint(ckpt) if ckpt.exists() else None
    else:
        cfg.validate()
    ds = prepare_data(cfg)
    model = build_model(cfg, ds)
    opt, sched = build_optimizer(cfg, model, ds.X_train.shape[0])
    if state is not None:
        restore_checkpoint(state, model, opt, sched)
    if resume is None:
        store = store if isinstance(store, Store) else Store(store)
        run = store.create_run("train", cfg.to_dict(), name=name)

    def log(row: dict[str, float]) -> None:
        store.log_metrics(run.id, int(row["step"]), {k: v for k, v in row.items() if k != "step"})

    with store.running(run.id):
        if resume is not None:  # the resumed run logs the rows after its checkpoint again
            store.drop_metrics_after(run.id, int(state["step"]) if state is not None else 0)
        if on_start is not None:
            on_start(run)
        result = fit(model, ds, opt, epochs=cfg.epochs, steps=cfg.steps, grad_evals=cfg.grad_evals,
                     effective_epochs=cfg.effective_epochs,
                     batch_size=cfg.batch_size, loss=cfg.loss, scheduler=sched, scheduler_interval="step",
                     seed=cfg.seed, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                     run_dir=run.folder, resume=state if state is not None else False, progress=progress,
                     callbacks=[log])
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(run.folder / "final.pt", buf.getvalue())
        atomic_write_text(run.folder / "history.json", to_json(result.history))
        for key in RESULTS:
            store.put_result(run.id, key, result.final[key])
        store.put_result(run.id, "n_params", sum(p.numel() for p in model.parameters()))
    return store.get(run.id), result


def load_run(store: Store, run_id: str) -> tuple[nn.Module, Dataset, dict[str, Any]]:
    """The trained model of a stored run (its ``final.pt``, else its last checkpoint), its data, its config."""
    run = store.get(run_id)
    cfg = TrainConfig.from_dict(run.config)
    ds = prepare_data(cfg)
    model = build_model(cfg, ds)
    final = run.folder / "final.pt"
    if final.exists():
        try:
            state = torch.load(final, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt or not a torch file
            raise CheckpointError(f"{final} is corrupt ({type(exc).__name__})") from None
    else:
        state = load_checkpoint(run.folder / "checkpoint.pt")["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the weights of run {run.id} do not fit its model: {exc}") from None
    model.eval()
    return model, ds, run.config


def train(
    data: str = typer.Option("fashion-mnist", help="Data set: fashion-mnist, digits, mnist-5k."),
    model: str = typer.Option("mlp:256,256", help="Model spec: mlp:W1,W2[:act], lenet[:bn], allcnn[:w], resnet:D[xW]."),
    optimizer: str = typer.Option("sgd", help="sgd, adam, adamw, entropy-sgd, replicated-sgd, sam."),
    lr: float = typer.Option(0.05, help="Learning rate (outer learning rate for Entropy-SGD)."),
    momentum: float = typer.Option(0.9, help="Momentum."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    option: list[str] = typer.Option([], "--option", "-o", help="Optimizer option KEY=VALUE (repeatable)."),
    epochs: float | None = typer.Option(None, help="Budget in epochs (default 5 if no budget is given)."),
    steps: int | None = typer.Option(None, help="Budget in optimizer steps."),
    grad_evals: int | None = typer.Option(None, help="Budget in minibatch gradient evaluations."),
    effective_epochs: float | None = typer.Option(None, help="Budget in effective epochs: gradient evaluations / "
                                                  "minibatches per epoch (how the papers compare optimizers: an "
                                                  "Entropy-SGD step with L inner steps costs L)."),
    batch_size: int = typer.Option(128, help="Minibatch size."),
    scheduler: str = typer.Option("cosine", help="LR schedule: none, cosine (to 0 over the whole budget), "
                                  "step:EPOCHS:FACTOR (xFACTOR every EPOCHS epochs, FACTOR in (0, 1])."),
    seed: int = typer.Option(0, help="Seed (initialisation, minibatch order, noise)."),
    train_subset: int | None = typer.Option(None, help="Use a class-balanced subset of P training examples."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with the data files (Fashion-MNIST IDX)."),
    checkpoint_every: int | None = typer.Option(None, help="Checkpoint every K steps (enables resume)."),
    resume: str | None = typer.Option(None, help="Resume the run with this id from its last checkpoint."),
    name: str | None = typer.Option(None, help="A name for the run."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a model and store the run (config, metrics, checkpoints, final weights).

    With --resume RUN_ID the stored run continues from its last checkpoint with its own config (the other
    options are not used).
    """
    cfg = None
    if resume is None:
        if epochs is None and steps is None and grad_evals is None and effective_epochs is None:
            epochs = 5.0
        cfg = TrainConfig(
            data=data, model=model, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
            options=parse_options(option), epochs=epochs, steps=steps, grad_evals=grad_evals,
            effective_epochs=effective_epochs, batch_size=batch_size, scheduler=None if scheduler == "none" else scheduler, seed=seed,
            train_subset=train_subset, data_dir=str(data_dir) if data_dir else None,
            checkpoint_every=checkpoint_every,
        )
    run, result = train_run(store, cfg, resume=resume, name=name, progress=not quiet, on_start=announce)
    f = result.final
    typer.echo(
        f"run {run.id}: test error {f['test_error']:.4f}, test loss {f['test_loss']:.4f}, "
        f"train loss {f['train_loss']:.4f} after {f['effective_epochs']:.2f} effective epochs "
        f"({result.grad_evals} gradient evaluations, {result.seconds:.1f} s)"
    )
    typer.echo(f"stored in {run.folder}")
