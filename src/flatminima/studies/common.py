"""Pieces shared by several studies: the Fashion-MNIST subsets they train on and two ways to train.

* :func:`train_at_budget`: a fixed budget of minibatch gradient evaluations (equal compute).
* :func:`train_to_loss`: until the training loss reaches a target (a minimum), checked every effective
  epoch, within a maximal budget; it reports whether the target was reached, and the effective epochs
  (gradient evaluations / minibatches per epoch) it took.
"""

from __future__ import annotations

import functools
import math
from typing import Any


@functools.lru_cache(maxsize=2)
def fashion_subset(train_subset: int):
    """Standardised Fashion-MNIST with a class-balanced training subset of ``train_subset`` examples
    (0: all), the same subset for every point; cached, so points run in one process share it."""
    from .. import data

    ds = data.standardize(data.load("fashion-mnist"))
    if train_subset:
        ds = data.balanced_subset(ds, train_subset, seed=0)
    return ds


@functools.lru_cache(maxsize=2)
def fashion_split(train_subset: int, val_size: int):
    """A class-balanced subset of ``train_subset`` Fashion-MNIST training images (0: all 60 000), split
    into training and validation examples, and the full test set.

    The validation split is carved out of the subset: its last ``val_size`` examples (the subset's
    order interleaves the classes, so both parts stay balanced); the remaining ``train_subset - val_size``
    are the training set. Inputs are standardised by the full training split's mean and standard
    deviation. Returns ``(ds, (X_val, y_val))``: ``ds`` a :class:`~flatminima.data.Dataset` whose training
    split excludes the validation examples (``X_val``: (val_size, 1, 28, 28), ``y_val``: (val_size,)).
    Cached, so points run in one process share it.
    """
    from .. import data
    from ..errors import ConfigError

    ds = data.standardize(data.load("fashion-mnist"))
    total = train_subset or int(ds.X_train.shape[0])
    if not 0 < val_size < total:
        raise ConfigError(f"the validation split must hold between 1 and {total - 1} of the {total} examples, "
                          f"got {val_size}")
    if train_subset:
        ds = data.balanced_subset(ds, train_subset, seed=0)
    n_train = total - val_size
    X, y = ds.X_train, ds.y_train
    ds = ds.with_(f"validation split: last {val_size} examples held out", X_train=X[:n_train], y_train=y[:n_train])
    return ds, (X[n_train:], y[n_train:])


def train_at_budget(model, ds, optimizer: str, hyper: dict, grad_evals: int, batch_size: int, seed: int,
                    evals: int = 1):
    """Train ``model`` with a registry optimizer for (at most) ``grad_evals`` minibatch gradient evaluations.

    ``hyper``: ``lr``, ``momentum``, optional ``weight_decay``, ``options`` (optimizer-specific) and
    ``gamma_factor`` (the coupling grows by this total factor over the run: sets ``scoping``). The budget is
    rounded down to whole optimizer steps; the learning rate follows a cosine schedule over those steps;
    ``evals`` evaluations are spread over the run. Returns the :class:`~flatminima.train.TrainResult`.
    """
    import torch

    from ..optim.registry import build_optimizer, grad_evals_per_step
    from ..train import fit

    options = dict(hyper.get("options", {}))
    cost = grad_evals_per_step(optimizer, options)
    steps = max(1, grad_evals // cost)
    if "gamma_factor" in hyper:
        options["scoping"] = hyper["gamma_factor"] ** (1.0 / steps) - 1.0
    opt = build_optimizer(optimizer, model, lr=hyper["lr"], momentum=hyper["momentum"],
                          weight_decay=hyper.get("weight_decay", 0.0), **options)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return fit(model, ds, opt, grad_evals=steps * cost, batch_size=batch_size, scheduler=sched,
               scheduler_interval="step", seed=seed, eval_every=max(1, steps // evals), progress=False)


class _TargetReached(Exception):
    """Raised by the callback of :func:`train_to_loss` to end :func:`~flatminima.train.fit` at the target."""


def train_to_loss(model, ds, optimizer: str, hyper: dict, *, target_loss: float, max_effective_epochs: float,
                  batch_size: int, seed: int, val: tuple | None = None) -> dict[str, Any]:
    """Train ``model`` until its training loss is at most ``target_loss``, within ``max_effective_epochs``.

    The whole training set is evaluated after every effective epoch (every ``round(P / B / cost)`` optimizer
    steps, where an optimizer step costs ``cost`` minibatch gradient evaluations: L for Entropy-SGD, y for
    Replicated-SGD, 2 for SAM) and training stops at the first evaluation at or below the target. The
    learning rate is constant (a run of unknown length has no schedule to follow); the couplings follow
    the optimizers' own per-step scoping (``hyper["options"]``). Same ``seed``: same initialisation (the
    caller seeds the model), same minibatch order, same optimizer noise.

    ``ds``: a :class:`~flatminima.data.Dataset` (training and test split); ``val``: ``(X_val, y_val)``, the
    validation split (none: no validation numbers). ``hyper``: ``lr``, ``momentum``, optional
    ``weight_decay`` and ``options`` (optimizer-specific, see :func:`flatminima.optim.registry.build_optimizer`).

    Returns a JSON-able dict: ``reached`` (bool), ``diverged`` (bool: the loss became non-finite),
    ``effective_epochs`` and ``grad_evals`` spent, ``steps``, ``train_loss``/``train_error`` (whole training
    set, at the last check), ``val_loss``/``val_error`` and ``test_loss``/``test_error`` (whole validation and
    test sets, measured once, at the end; NaN after a divergence), and ``curve``: one row per check (effective
    epochs, gradient evaluations, steps, train loss and error).
    """
    from ..errors import ConfigError
    from ..landscape import per_example_loss
    from ..optim.registry import build_optimizer, grad_evals_per_step
    from ..train import evaluate, fit

    if not (math.isfinite(target_loss) and target_loss > 0):
        raise ConfigError(f"target_loss must be a positive number, got {target_loss}")
    options = dict(hyper.get("options", {}))
    cost = grad_evals_per_step(optimizer, options)
    opt = build_optimizer(optimizer, model, lr=hyper["lr"], momentum=hyper["momentum"],
                          weight_decay=hyper.get("weight_decay", 0.0), **options)
    n_train = int(ds.X_train.shape[0])
    per_epoch = max(1, n_train // min(batch_size, n_train))  # minibatches per epoch (the tail is dropped)
    curve: list[dict[str, float]] = []

    def check(row: dict[str, float]) -> None:
        curve.append({k: row[k] for k in ("effective_epochs", "grad_evals", "step", "train_loss", "train_error")})
        if row["train_loss"] <= target_loss:
            raise _TargetReached

    diverged = False
    try:
        # fit evaluates its test split at every check; those numbers are not used, so it gets one example,
        # and the validation and test sets are evaluated once, at the end
        fit(model, ((ds.X_train, ds.y_train), (ds.X_test[:1], ds.y_test[:1])), opt,
            effective_epochs=max_effective_epochs, batch_size=batch_size, seed=seed,
            eval_every=max(1, round(per_epoch / cost)), eval_train_examples=None, progress=False, callbacks=[check])
    except _TargetReached:
        pass
    except ConfigError as exc:
        if not str(exc).startswith("training diverged"):
            raise
        diverged = True
    nan = math.nan
    last = curve[-1] if curve else {"effective_epochs": nan, "grad_evals": 0, "step": 0, "train_loss": nan,
                                    "train_error": nan}
    out: dict[str, Any] = {"reached": False, "diverged": diverged, "effective_epochs": last["effective_epochs"],
                           "grad_evals": int(last["grad_evals"]), "steps": int(last["step"]), "train_loss": nan,
                           "train_error": nan, "val_loss": nan, "val_error": nan, "test_loss": nan, "test_error": nan,
                           "curve": curve}
    if diverged:
        return out
    loss_fn = per_example_loss("cross_entropy")
    out.update(reached=bool(last["train_loss"] <= target_loss), train_loss=last["train_loss"],
               train_error=last["train_error"])
    if val is not None:
        out["val_loss"], out["val_error"] = evaluate(model, val[0], val[1], loss_fn)
    out["test_loss"], out["test_error"] = evaluate(model, ds.X_test, ds.y_test, loss_fn)
    return out
