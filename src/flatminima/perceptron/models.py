"""Shallow models on random patterns: binary/continuous perceptrons and committee machines.

Conventions used by the whole :mod:`flatminima.perceptron` package:

* A data set is ``X`` (P, N) with labels ``y`` (P,) in {-1, +1} (numpy arrays or tensors).
* A machine has ``K`` hidden units (K odd; ``K = 1`` is the perceptron). In a **tree** committee
  unit k sees the k-th block of ``n = N / K`` inputs; in a **fully connected** committee every unit
  sees all ``n = N`` inputs. Weights are stored as a (K, n) array (flattened row-major to (K*n,)).
* The output is ``sign(sum_k sign(w_k . x_k))``; a pattern is classified when the output equals y.
  Ties (a hidden field exactly 0) count as a -1 hidden output, so a perceptron needs y (w . x) > 0
  strictly. With Gaussian inputs ties have probability zero; with +-1 inputs use an odd n.
* Labels are absorbed into the patterns, ``xi_mu = y_mu x_mu`` (sign is odd, so this is exact).
  :class:`Patterns` holds ``xi`` with shape (P, K, n), float64 by default.
* Stabilities are normalised by sqrt(n): Delta_{mu,k} = xi_{mu,k} . w_k / sqrt(n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import random_patterns
from ..errors import ConfigError


def _as_tensor(a, dtype=torch.float64, device=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype=dtype, device=device if device is not None else a.device)
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


@dataclass
class Patterns:
    """Label-absorbed patterns of a (committee) machine.

    xi: (P, K, n) tensor, xi[mu, k] = y_mu * (inputs seen by unit k of pattern mu).
    K: number of hidden units (odd); tree: True for a tree committee (or a perceptron).
    """

    xi: torch.Tensor
    K: int
    tree: bool

    @property
    def P(self) -> int:
        return self.xi.shape[0]

    @property
    def n(self) -> int:
        """Inputs per hidden unit."""
        return self.xi.shape[2]

    @property
    def n_weights(self) -> int:
        """Number of weights K * n."""
        return self.K * self.n

    @property
    def xi2(self) -> torch.Tensor:
        """xi squared (cached)."""
        c = self.__dict__.get("_xi2")
        if c is None or c.shape != self.xi.shape:
            c = self.xi * self.xi
            self.__dict__["_xi2"] = c
        return c


def patterns(X, y, K: int = 1, tree: bool = True, device=None, dtype=torch.float64) -> Patterns:
    """Build :class:`Patterns` from inputs ``X`` (P, N) and labels ``y`` (P,) in {-1, +1}.

    K = 1: perceptron with N weights. K > 1 (odd): tree committee (N divisible by K, K*(N/K) weights)
    or fully connected committee (``tree=False``, K*N weights).
    """
    X = _as_tensor(X, dtype, device)
    y = _as_tensor(y, dtype, X.device)
    if X.ndim != 2:
        raise ConfigError(f"X must be a (P, N) array, got shape {tuple(X.shape)}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ConfigError(f"y must be a (P,) array matching X (P={X.shape[0]}), got shape {tuple(y.shape)}")
    if y.numel() and not bool(((y == 1) | (y == -1)).all()):
        raise ConfigError("labels y must be +1 or -1")
    if K < 1 or K % 2 == 0:
        raise ConfigError(f"the number of hidden units K must be odd and positive, got {K}")
    P, N = X.shape
    if N < 1:
        raise ConfigError("X needs at least one input column")
    if not bool(torch.isfinite(X).all()):
        raise ConfigError("X contains NaN or infinite values")
    xi = y[:, None] * X
    if K == 1 or tree:
        if N % K:
            raise ConfigError(f"a tree committee needs N divisible by K, got N={N}, K={K}")
        xi = xi.reshape(P, K, N // K)
    else:
        xi = xi[:, None, :].expand(P, K, N).contiguous()
    return Patterns(xi, K, K == 1 or tree)


def as_weights(w, pat: Patterns) -> torch.Tensor:
    """Weights as a (K, n) tensor of the patterns' dtype/device (accepts (K*n,) or (K, n))."""
    w = _as_tensor(w, pat.xi.dtype, pat.xi.device)
    if w.numel() != pat.n_weights:
        raise ConfigError(f"weights must have {pat.n_weights} entries (K={pat.K}, n={pat.n}), got {w.numel()}")
    return w.reshape(pat.K, pat.n)


def hidden_fields(w, pat: Patterns) -> torch.Tensor:
    """Normalised hidden stabilities Delta (P, K) = xi . w_k / sqrt(n).

    w: (K*n,) or (K, n) -> (P, K); a batch (B, K, n) -> (B, P, K)."""
    if not (isinstance(w, torch.Tensor) and w.ndim == 3):
        w = as_weights(w, pat)
    else:
        w = w.to(dtype=pat.xi.dtype, device=pat.xi.device)
    if w.ndim == 2:
        return torch.einsum("pkn,kn->pk", pat.xi, w) / math.sqrt(pat.n)
    return torch.einsum("pkn,bkn->bpk", pat.xi, w) / math.sqrt(pat.n)


def outputs(w, pat: Patterns) -> torch.Tensor:
    """Signed output y_mu * machine(x_mu) in {-1, +1} per pattern: (P,) or (B, P) for batched w."""
    tau = torch.where(hidden_fields(w, pat) > 0, 1, -1)
    return torch.where(tau.sum(-1) > 0, 1, -1)


def n_errors(w, pat: Patterns) -> torch.Tensor:
    """Number of misclassified patterns (int tensor; batched over a leading axis of w if present)."""
    return (outputs(w, pat) < 0).sum(-1)


def _n_patterns(N: int, alpha: float, K: int, tree: bool) -> int:
    """P = round(alpha * number of weights) for a machine with N inputs and K hidden units."""
    if N < 1 or not 0 <= alpha < math.inf:
        raise ConfigError(f"need N >= 1 and a finite alpha >= 0, got N={N}, alpha={alpha}")
    if K < 1 or K % 2 == 0:
        raise ConfigError(f"K must be odd and positive, got {K}")
    return int(round(alpha * (N if (tree or K == 1) else K * N)))


def random_instance(N: int, alpha: float, seed: int = 0, K: int = 1, tree: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A random instance: P = round(alpha * number of weights) standard Gaussian patterns with random +-1
    labels (:func:`flatminima.data.random_patterns`). Returns ``(X (P, N), y (P,))`` as float64 tensors;
    the same seed gives the same instance."""
    P = _n_patterns(N, alpha, K, tree)
    if P == 0:
        return torch.zeros(0, N, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return random_patterns(P, N, seed=seed, dtype=torch.float64)


def teacher_instance(
    N: int, alpha: float, seed: int = 0, K: int = 1, tree: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-student instance: Gaussian inputs labelled y = machine(w*, x) by a random +-1 teacher w* (K, n).

    Returns ``(X (P, N), y (P,), w* (K*n,))``, float64. The teacher is a solution drawn from the
    uniform (equilibrium) measure over the solutions of its own instance (planting), so it is the
    reference for a *typical* solution."""
    P = _n_patterns(N, alpha, K, tree)
    g = torch.Generator().manual_seed(int(seed))
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    ones = torch.ones(P, dtype=torch.float64)
    pat = patterns(X, ones, K=K, tree=tree)
    w_t = torch.randint(0, 2, (pat.K, pat.n), generator=g).double() * 2 - 1
    y = outputs(w_t, pat).double() if P else ones
    return X, y, w_t.reshape(-1)


def binary_entropy(d) -> np.ndarray:
    """H2(d) = -d log d - (1-d) log(1-d) (natural log), the entropy of all +-1 vectors at
    normalised Hamming distance d from a reference: the upper bound of any local entropy."""
    d = np.asarray(d, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.where(d > 0, d * np.log(d), 0.0) - np.where(d < 1, (1 - d) * np.log1p(-d), 0.0)
    return out
