"""Synthetic data: random patterns and teacher-student rules."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .datasets import Dataset


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_patterns(
    P: int, d: int, seed: int = 0, binary_inputs: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """P random patterns in d dimensions with random +-1 labels.

    Returns ``(X, y)``: X (P, d) standard Gaussian entries (or +-1 entries with ``binary_inputs``),
    y (P,) independent uniform +-1 labels (float). The same seed gives the same data.
    """
    if P < 1 or d < 1:
        raise ConfigError(f"P and d must be positive, got P={P}, d={d}")
    g = _generator(seed)
    if binary_inputs:
        X = torch.randint(0, 2, (P, d), generator=g).to(dtype) * 2 - 1
    else:
        X = torch.randn(P, d, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (P,), generator=g).to(dtype) * 2 - 1
    return X, y


def teacher_student(
    P: int,
    d: int,
    teacher: str = "perceptron",
    K: int = 3,
    seed: int = 0,
    P_test: int = 1000,
    binary_weights: bool = False,
    binary_inputs: bool = False,
    tree: bool = False,
) -> Dataset:
    """Labels produced by a random teacher network on random inputs.

    teacher="perceptron": y = sign(w* . x); teacher="committee": y = sign(sum_k sign(w*_k . x_k)) with
    K hidden units (K odd), fully connected (each unit sees all d inputs) or ``tree`` (unit k sees the
    k-th block of d/K inputs). Teacher weights are Gaussian or +-1 (``binary_weights``). The teacher is
    stored in ``meta["teacher"]`` (shape (d,) or (K, d) / (K, d/K)).
    """
    if P < 1 or d < 1 or P_test < 0:
        raise ConfigError(f"P and d must be positive and P_test >= 0, got P={P}, d={d}, P_test={P_test}")
    if teacher not in ("perceptron", "committee"):
        raise ConfigError(f"teacher must be 'perceptron' or 'committee', got {teacher!r}")
    if teacher == "committee":
        if K < 1 or K % 2 == 0:
            raise ConfigError(f"a committee teacher needs an odd number of hidden units K, got {K}")
        if tree and d % K:
            raise ConfigError(f"a tree committee needs d divisible by K, got d={d}, K={K}")
    g = _generator(seed)
    n = P + P_test
    X = (torch.randint(0, 2, (n, d), generator=g).float() * 2 - 1) if binary_inputs else torch.randn(n, d, generator=g)
    shape = (d,) if teacher == "perceptron" else ((K, d // K) if tree else (K, d))
    W = torch.randn(shape, generator=g)
    if binary_weights:
        W = torch.where(W >= 0, 1.0, -1.0)
    if teacher == "perceptron":
        h = X @ W
    elif tree:
        h = torch.sign(torch.einsum("pkj,kj->pk", X.view(n, K, d // K), W)).sum(-1)
    else:
        h = torch.sign(X @ W.T).sum(-1)
    y = torch.where(h >= 0, 1.0, -1.0)
    return Dataset(
        X[:P], y[:P], X[P:], y[P:], name=f"teacher-{teacher}", n_classes=2,
        meta={"teacher": W, "seed": seed, "K": K if teacher == "committee" else 1, "tree": tree,
              "alpha": P / d, "norm": math.sqrt(d)},
    )
