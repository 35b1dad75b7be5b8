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
