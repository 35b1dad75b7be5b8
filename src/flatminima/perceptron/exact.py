"""Exhaustive enumeration of all +-1 weight vectors of a small machine (the exact oracle of BP).

All 2^(K n) vectors are generated from the bits of integer indices in chunks and classified with one
batched product per chunk (no Python loop over vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .models import Patterns, as_weights, hidden_fields

MAX_WEIGHTS = 30


@dataclass
class Enumeration:
    """Solutions of a small instance.

    count: number of +-1 vectors classifying every pattern; by_distance: (N+1,) int64 counts of those
    solutions at Hamming distance k from the reference (None without a reference); n_weights: N;
    solutions: (at most ``keep``, N) the first solutions in enumeration order (None if keep = 0).
    """

    count: int
    by_distance: np.ndarray | None
    n_weights: int
    solutions: torch.Tensor | None = None

    @property
    def log_count(self) -> float:
        return math.log(self.count) if self.count else -math.inf

    def canonical(self, gammas) -> tuple[np.ndarray, np.ndarray]:
        """Exact phi(gamma) = (1/N) log sum_sol e^{gamma w.w~} and q(gamma) = dphi/dgamma = <w.w~>/N.

        Needs a reference. Returns ``(phi, q)`` arrays over ``gammas`` (stable log-sum-exp)."""
        if self.by_distance is None:
            raise ConfigError("canonical() needs an enumeration with a reference")
        N = self.n_weights
        k = np.nonzero(self.by_distance)[0]
        if k.size == 0:
            raise ConfigError("the instance has no solution")
        logn = np.log(self.by_distance[k].astype(float))
        overlap = (N - 2 * k) / N  # w.w~ / N at distance k
        g = np.asarray(gammas, dtype=float)[:, None]
        a = logn[None, :] + g * N * overlap[None, :]
        amax = a.max(axis=1, keepdims=True)
        wts = np.exp(a - amax)
        Z = wts.sum(axis=1)
        phi = (amax[:, 0] + np.log(Z)) / N
        q = (wts * overlap[None, :]).sum(axis=1) / Z
        return phi, q


def all_vectors(n_weights: int, start: int, stop: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Vectors number start..stop-1 of {-1,+1}^n_weights (bit j of the index -> entry j): (stop-start, n_weights)."""
    idx = torch.arange(start, stop, dtype=torch.int64, device=device)
    bits = (idx[:, None] >> torch.arange(n_weights, dtype=torch.int64, device=device)) & 1
    return (2 * bits - 1).to(dtype)


def enumerate_solutions(pat: Patterns, reference=None, chunk: int = 1 << 15, keep: int = 0) -> Enumeration:
    """Count all +-1 weight vectors that classify every pattern of ``pat`` (and their distances to
    ``reference``, +-1 weights of shape (K*n,) or (K, n)); keep the first ``keep`` solutions.
    Requires K*n <= 30."""
    N = pat.n_weights
    if N > MAX_WEIGHTS:
        raise ConfigError(f"exhaustive enumeration needs at most {MAX_WEIGHTS} weights, got {N}")
    if chunk < 1:
        raise ConfigError("chunk must be positive")
    ref = as_weights(reference, pat).reshape(-1) if reference is not None else None
    total = 0
    hist = np.zeros(N + 1, dtype=np.int64) if ref is not None else None
    n_all = 1 << N
    kept: list[torch.Tensor] = []
    n_kept = 0
    for start in range(0, n_all, chunk):
        W = all_vectors(N, start, min(n_all, start + chunk), pat.xi.dtype, pat.xi.device)
        if pat.P:
            tau = torch.where(hidden_fields(W.view(-1, pat.K, pat.n), pat) > 0, 1, -1)  # (B, P, K)
            ok = (tau.sum(-1) > 0).all(-1)
        else:
            ok = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
        total += int(ok.sum())
        if n_kept < keep:
            new = W[ok][: keep - n_kept]
            kept.append(new)
            n_kept += new.shape[0]
        if ref is not None:
            dist = (W[ok] != ref).sum(-1)
            hist += torch.bincount(dist, minlength=N + 1).cpu().numpy()
    sols = torch.cat(kept) if kept else (torch.zeros(0, N, dtype=pat.xi.dtype) if keep else None)
    return Enumeration(total, hist, N, sols)
