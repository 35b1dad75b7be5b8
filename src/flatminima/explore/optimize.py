"""Batched L-BFGS quenches: K independent minimisations advanced together, one vectorised energy/gradient
call per iteration for all K points (basin-hopping walkers, pushoffs on both sides of a saddle).

The step follows the GMIN/pele convention: an L-BFGS direction capped at ``max_step`` (Euclidean norm),
accepted when the energy does not rise by more than ``max_rise``, halved otherwise; no Wolfe line search.
Convergence: RMS gradient ``|g| / sqrt(n) < gtol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["QuenchResult", "lbfgs_batch"]


@dataclass
class QuenchResult:
    """Result of a batch of K quenches: x (K, n), energy (K,), rms gradient (K,), converged (K,), nfev (K,)."""

    x: np.ndarray
    energy: np.ndarray
    rms: np.ndarray
    converged: np.ndarray
    nfev: np.ndarray


def lbfgs_batch(
    energy_gradient_batch,
    X0: np.ndarray,
    gtol: float = 1e-6,
    max_iter: int = 2000,
    memory: int = 8,
    max_step: float = 0.2,
    max_rise: float = 1e-4,
) -> QuenchResult:
    """Minimise K points at once with L-BFGS.

    energy_gradient_batch : callable (M, n) -> ((M,), (M, n)); called on the still-active rows only.
    X0 : (K, n) starting points.
    """
    X = np.array(X0, dtype=np.float64, copy=True)
    if X.ndim != 2:
        raise ConfigError(f"X0 must be (K, n), got shape {X.shape}")
    if gtol <= 0 or max_iter < 1 or memory < 1 or max_step <= 0:
        raise ConfigError("gtol, max_step must be > 0 and max_iter, memory >= 1")
    K, n = X.shape
    E, G = energy_gradient_batch(X)
    E, G = np.array(E, dtype=np.float64), np.array(G, dtype=np.float64)
    nfev = np.ones(K, dtype=np.int64)
    # history in a ring shared by all rows (slot = iteration % memory); a row without a usable pair in a
    # slot has rho = 0 there, which makes the two-loop recursion skip it
    S = np.zeros((memory, K, n))
    Y = np.zeros((memory, K, n))
    rho = np.zeros((memory, K))
    H0 = np.full(K, 0.1)
    sqrtn = np.sqrt(n)
    rms = np.linalg.norm(G, axis=1) / sqrtn
    active = rms >= gtol
    it = 0
    while active.any() and it < max_iter:
        it += 1
        # two-loop recursion for all rows at once (converged rows get a zero step)
        q = G.copy()
        alpha = np.zeros((memory, K))
        for j in range(1, memory + 1):
            slot = (it - j) % memory
            al = rho[slot] * np.einsum("kn,kn->k", S[slot], q)
            alpha[slot] = al
            q -= al[:, None] * Y[slot]
        z = H0[:, None] * q
        for j in range(memory, 0, -1):
            slot = (it - j) % memory
            be = rho[slot] * np.einsum("kn,kn->k", Y[slot], z)
            z += (alpha[slot] - be)[:, None] * S[slot]
        d = -z
        uphill = np.einsum("kn,kn->k", d, G) > 0
        if uphill.any():  # bad curvature information: restart from steepest descent
            d[uphill] = -H0[uphill, None] * G[uphill]
            rho[:, uphill] = 0.0
        d *= np.minimum(1.0, max_step / np.maximum(np.linalg.norm(d, axis=1), 1e-300))[:, None]
        d[~active] = 0.0
        # backtracking on the energy rise: only active rows are evaluated, only rejected rows again
        Xn, En, Gn = X.copy(), E.copy(), G.copy()
        todo = np.flatnonzero(active)
        for _ in range(12):
            Xt = X[todo] + d[todo]
            Et, Gt = energy_gradient_batch(Xt)
            nfev[todo] += 1
            Xn[todo], En[todo], Gn[todo] = Xt, Et, Gt
            bad = ~(Et - E[todo] <= max_rise)  # also rejects nan
            if not bad.any():
                break
            todo = todo[bad]
            d[todo] *= 0.5
            rho[:, todo] = 0.0  # forget history where the model was wrong
        s_new = Xn - X
        y_new = Gn - G
        sy = np.einsum("kn,kn->k", s_new, y_new)
        yy = np.einsum("kn,kn->k", y_new, y_new)
        good = active & (sy > 1e-12 * np.sqrt(np.einsum("kn,kn->k", s_new, s_new) * yy))
        slot = it % memory
        S[slot] = s_new
        Y[slot] = y_new
        rho[slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        H0 = np.where(good, sy / np.where(good, yy, 1.0), H0)
        # negative curvature (e.g. just off a saddle): no pair to store; lengthen the trial step instead of
        # creeping down with the old scale (the step stays capped at max_step)
        bad_curv = active & ~good
        H0[bad_curv] = np.minimum(4.0 * H0[bad_curv], 1e8)
        X, E, G = Xn, En, Gn
        rms = np.where(active, np.linalg.norm(G, axis=1) / sqrtn, rms)
        active = active & np.isfinite(E) & (rms >= gtol)
    return QuenchResult(X, E, rms, rms < gtol, nfev)
