"""Pieces shared by several studies."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=2)
def fashion_subset(train_subset: int):
    """Standardised Fashion-MNIST with a class-balanced training subset of ``train_subset`` examples
    (0: all), the same subset for every point; cached, so points run in one process share it."""
    from .. import data

    ds = data.standardize(data.load("fashion-mnist"))
    if train_subset:
        ds = data.balanced_subset(ds, train_subset, seed=0)
    return ds


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
