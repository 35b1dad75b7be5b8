"""Preprocessing used by the studies. Each function takes a :class:`Dataset` and returns a new one,
recording the step in ``meta['preprocessing']``. Statistics (means, principal axes) are always fitted
on the training split only and applied to both splits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .datasets import Dataset


def flatten(ds: Dataset) -> Dataset:
    """Inputs (P, ...) -> (P, d)."""
    return ds.with_(
        "flatten",
        X_train=ds.X_train.reshape(ds.X_train.shape[0], -1),
        X_test=ds.X_test.reshape(ds.X_test.shape[0], -1),
    )


def center(ds: Dataset) -> Dataset:
    """Subtract the training mean input from both splits."""
    mu = ds.X_train.mean(0, keepdim=True)
    return ds.with_("center", X_train=ds.X_train - mu, X_test=ds.X_test - mu)


def rescale_to_sphere(ds: Dataset, radius: float | None = None) -> Dataset:
    """Rescale every input to Euclidean norm ``radius`` (default sqrt(d))."""
    d = ds.input_dim
    r = math.sqrt(d) if radius is None else float(radius)

    def f(X: torch.Tensor) -> torch.Tensor:
        flat = X.reshape(X.shape[0], -1)
        norm = flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
        return (flat * (r / norm)).reshape(X.shape)

    return ds.with_(f"rescale to norm {r:.6g}", X_train=f(ds.X_train), X_test=f(ds.X_test))


def pca(ds: Dataset, d: int, whiten: bool = True) -> Dataset:
    """Project (flattened, centred) inputs on the first ``d`` principal axes of the training split.

    With ``whiten`` each component is divided by its standard deviation (unit variance on train).
    """
    Xtr = ds.X_train.reshape(ds.X_train.shape[0], -1).double()
    Xte = ds.X_test.reshape(ds.X_test.shape[0], -1).double()
    if not 1 <= d <= min(Xtr.shape):
        raise ConfigError(f"PCA dimension must be in [1, {min(Xtr.shape)}], got {d}")
    mu = Xtr.mean(0, keepdim=True)
    Xc = Xtr - mu
    cov = Xc.T @ Xc / (Xc.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:d]
    V, lam = evecs[:, order], evals[order]
    # fix the sign of each axis (largest entry positive) so results are reproducible across LAPACKs
    V = V * torch.sign(V[V.abs().argmax(0), torch.arange(d)])
    scale = lam.clamp_min(1e-12).sqrt() if whiten else torch.ones_like(lam)
    f = lambda X: ((X - mu) @ V / scale).to(ds.X_train.dtype)  # noqa: E731
    return ds.with_(
        f"pca d={d}{' whitened' if whiten else ''}", X_train=f(Xtr), X_test=f(Xte),
    )


def binary_labels(ds: Dataset, positive: Iterable[int] | None = None) -> Dataset:
    """Class labels -> +-1 labels: +1 for classes in ``positive`` (default: even class indices)."""
    pos = sorted(set(range(0, ds.n_classes, 2) if positive is None else positive))
    if not pos or any(not 0 <= c < ds.n_classes for c in pos):
        raise ConfigError(f"positive classes must be a non-empty subset of 0..{ds.n_classes - 1}, got {pos}")
    p = torch.tensor(pos)
    f = lambda y: torch.where(torch.isin(y, p), 1.0, -1.0)  # noqa: E731
    meta_step = f"binary labels, +1 = classes {pos}"
    return ds.with_(meta_step, y_train=f(ds.y_train), y_test=f(ds.y_test), n_classes=2)


def balanced_subset(ds: Dataset, P: int, seed: int = 0, split: str = "train") -> Dataset:
    """Keep P examples of the training split (or the test split), as balanced over classes as possible.

    Examples are drawn per class with a seeded permutation and interleaved, so that every prefix of the
    result is balanced too (as in the jamming code).
    """
    X, y = (ds.X_train, ds.y_train) if split == "train" else (ds.X_test, ds.y_test)
    if not 1 <= P <= len(y):
        raise ConfigError(f"P must be in [1, {len(y)}], got {P}")
    rng = np.random.default_rng(seed)
    yn = y.numpy()
    per_class = [rng.permutation(np.flatnonzero(yn == c)) for c in np.unique(yn)]
    order = []
    for i in range(max(len(c) for c in per_class)):
        order.extend(int(c[i]) for c in per_class if i < len(c))
    idx = torch.tensor(order[:P])
    step = f"balanced subset P={P} of {split} (seed {seed})"
    if split == "train":
        return ds.with_(step, X_train=X[idx], y_train=y[idx])
    return ds.with_(step, X_test=X[idx], y_test=y[idx])


def select_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
    """Keep only the given classes, relabelled 0..len(classes)-1."""
    cl = torch.tensor(list(classes))
    remap = {int(c): i for i, c in enumerate(cl)}

    def f(X, y):
        keep = torch.isin(y, cl)
        return X[keep], torch.tensor([remap[int(v)] for v in y[keep]], dtype=torch.int64)

    Xtr, ytr = f(ds.X_train, ds.y_train)
    Xte, yte = f(ds.X_test, ds.y_test)
    return ds.with_(f"classes {list(classes)}", X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte,
                    n_classes=len(cl))


def standardize(ds: Dataset) -> Dataset:
    """Shift and scale all inputs by the training split's global mean and standard deviation."""
    mu, sd = ds.X_train.mean(), ds.X_train.std().clamp_min(1e-12)
    return ds.with_(f"standardize (mean {float(mu):.4g}, std {float(sd):.4g})",
                    X_train=(ds.X_train - mu) / sd, X_test=(ds.X_test - mu) / sd)
