"""Batched L-BFGS quenches: K independent minimisations advanced together, one vectorised energy/gradient
call per iteration for the K points still moving (basin-hopping walkers, pushoffs on both sides of a saddle).

The step follows the GMIN/pele convention: an L-BFGS direction capped at ``max_step`` (Euclidean norm),
accepted when the energy does not rise by more than ``max_rise``, halved otherwise; no Wolfe line search.
Convergence: RMS gradient ``|g| / sqrt(n) < gtol``.

The per-iteration arithmetic of all K rows (two-loop recursion, step cap, trial points, acceptance, history
update) runs in two compiled numba kernels, so one iteration costs two kernel calls plus the energy/gradient
call, whatever K is;
each row keeps its own history ring, so a reset in one row (uphill direction, rejected step) leaves the
others alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..errors import ConfigError
from .database import spectrum_index

__all__ = ["QuenchResult", "escape_saddle", "lbfgs_batch"]

#: halvings of a rejected step before the last (smallest) trial is taken anyway
MAX_HALVINGS = 12


@dataclass
class QuenchResult:
    """Result of a batch of K quenches: x (K, n), energy (K,), rms gradient (K,), converged (K,), nfev (K,)
    (energy/gradient evaluations of each row), iterations (K,)."""

    x: np.ndarray
    energy: np.ndarray
    rms: np.ndarray
    converged: np.ndarray
    nfev: np.ndarray
    iterations: np.ndarray


@numba.njit(cache=True)
def _trials(rows, E, G, X, S, Y, rho, H0, head, nhist, rms, gtol, max_step, D, Xt):  # pragma: no cover
    """Keep the rows still moving (finite energy, RMS gradient >= gtol) and write their trial points
    ``Xt[r] = X[k] + D[k]`` for k = kept[r], with D[k] the L-BFGS direction (two-loop recursion over row k's
    history ring S/Y (K, m, n), newest pair at slot head[k] - 1), or steepest descent ``-H0 g`` with the
    history cleared when that direction is not downhill; the step norm capped at ``max_step``.
    Returns the kept rows."""
    m = S.shape[1]
    n = G.shape[1]
    alpha = np.empty(m)
    kept = np.empty(rows.size, dtype=np.int64)
    M = 0
    for r in range(rows.size):
        k = rows[r]
        if not (np.isfinite(E[k]) and rms[k] >= gtol):
            continue
        d = D[k]
        g = G[k]
        for i in range(n):
            d[i] = g[i]
        for j in range(nhist[k]):
            slot = (head[k] - 1 - j) % m
            a = 0.0
            for i in range(n):
                a += S[k, slot, i] * d[i]
            a *= rho[k, slot]
            alpha[slot] = a
            for i in range(n):
                d[i] -= a * Y[k, slot, i]
        h0 = H0[k]
        for i in range(n):
            d[i] *= h0
        for j in range(nhist[k] - 1, -1, -1):
            slot = (head[k] - 1 - j) % m
            b = 0.0
            for i in range(n):
                b += Y[k, slot, i] * d[i]
            b = alpha[slot] - rho[k, slot] * b
            for i in range(n):
                d[i] += b * S[k, slot, i]
        dg = 0.0
        for i in range(n):
            d[i] = -d[i]
            dg += d[i] * g[i]
        if dg > 0.0:  # bad curvature information: steepest descent, history cleared
            nhist[k] = 0
            for i in range(n):
                d[i] = -h0 * g[i]
        nrm = 0.0
        for i in range(n):
            nrm += d[i] * d[i]
        nrm = np.sqrt(nrm)
        f = max_step / nrm if nrm > max_step else 1.0
        for i in range(n):
            d[i] *= f
            Xt[M, i] = X[k, i] + d[i]
        kept[M] = k
        M += 1
    return kept[:M]


@numba.njit(cache=True)
def _settle(rows, pending, X, E, G, Xt, Et, Gt, D, S, Y, rho, H0, head, nhist, rms, nfev, halved, max_rise,
            max_halvings):  # pragma: no cover - compiled
    """Judge the evaluated trials ``pending`` (indices into rows; Xt, Et, Gt indexed the same way). A trial
    whose energy rose by more than ``max_rise`` (or is nan) is halved, its row's history cleared, and
    returned for evaluation (at most ``max_halvings`` times; then it is taken). A taken trial stores the pair
    (s, y) in its row's ring when ``s.y > 1e-12 |s| |y|`` and sets H0 = s.y / y.y; otherwise (negative
    curvature, e.g. just off a saddle) the trial scale H0 grows four-fold (at most 1e8). Returns the indices
    still to evaluate."""
    m = S.shape[1]
    n = X.shape[1]
    sqrtn = np.sqrt(n)
    again = np.empty(pending.size, dtype=np.int64)
    c = 0
    for p in pending:
        k = rows[p]
        nfev[k] += 1
        if not (Et[p] - E[k] <= max_rise) and halved[p] < max_halvings:
            halved[p] += 1
            nhist[k] = 0
            for i in range(n):
                D[k, i] *= 0.5
                Xt[p, i] = X[k, i] + D[k, i]
            again[c] = p
            c += 1
            continue
        slot = head[k]
        sy = 0.0
        yy = 0.0
        ss = 0.0
        gg = 0.0
        for i in range(n):
            s = Xt[p, i] - X[k, i]
            y = Gt[p, i] - G[k, i]
            S[k, slot, i] = s
            Y[k, slot, i] = y
            sy += s * y
            yy += y * y
            ss += s * s
            gg += Gt[p, i] * Gt[p, i]
            X[k, i] = Xt[p, i]
            G[k, i] = Gt[p, i]
        E[k] = Et[p]
        rms[k] = np.sqrt(gg) / sqrtn
        if sy > 1e-12 * np.sqrt(ss * yy):
            rho[k, slot] = 1.0 / sy
            H0[k] = sy / yy
            head[k] = (slot + 1) % m
            nhist[k] = min(nhist[k] + 1, m)
        else:
            H0[k] = min(4.0 * H0[k], 1e8)
    return again[:c]


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

    Parameters
    ----------
    energy_gradient_batch : callable (M, n) -> ((M,), (M, n))
        Called on the rows still moving only (M <= K), once per iteration (again on the rows whose step
        was rejected).
    X0 : (K, n)
        Starting points.
    gtol : float
        Convergence: RMS gradient below ``gtol``.
    max_iter : int
        Iterations per row at most.
    memory : int
        Pairs (s, y) kept per row.
    max_step : float
        Cap on the Euclidean norm of a step.
    max_rise : float
        A step is accepted when the energy rises by at most this much; otherwise it is halved (at most
        ``MAX_HALVINGS`` times) and the row's history cleared.
    """
    X = np.array(X0, dtype=np.float64, order="C", copy=True)
    if X.ndim != 2:
        raise ConfigError(f"X0 must be (K, n), got shape {X.shape}")
    if gtol <= 0 or max_iter < 1 or memory < 1 or max_step <= 0:
        raise ConfigError("gtol, max_step must be > 0 and max_iter, memory >= 1")
    K, n = X.shape
    E, G = energy_gradient_batch(X)
    E = np.array(E, dtype=np.float64)
    G = np.array(G, dtype=np.float64, order="C")
    nfev = np.ones(K, dtype=np.int64)
    iters = np.zeros(K, dtype=np.int64)
    S = np.zeros((K, memory, n))
    Y = np.zeros((K, memory, n))
    rho = np.zeros((K, memory))
    H0 = np.full(K, 0.1)
    head = np.zeros(K, dtype=np.int64)
    nhist = np.zeros(K, dtype=np.int64)
    D = np.zeros((K, n))
    Xt = np.empty((K, n))
    halved = np.zeros(K, dtype=np.int64)
    every = np.arange(K)
    rms = np.linalg.norm(G, axis=1) / np.sqrt(n)
    rows = every
    for _ in range(max_iter):
        rows = _trials(rows, E, G, X, S, Y, rho, H0, head, nhist, rms, gtol, max_step, D, Xt)
        M = rows.size
        if M == 0:
            break
        xt = Xt[:M]
        Et, Gt = energy_gradient_batch(xt)
        Et = np.array(Et, dtype=np.float64)
        Gt = np.ascontiguousarray(Gt, dtype=np.float64)
        halved[:M] = 0
        pending = _settle(rows, every[:M], X, E, G, xt, Et, Gt, D, S, Y, rho, H0, head, nhist, rms, nfev, halved,
                          max_rise, MAX_HALVINGS)
        while pending.size:  # backtracking: only the rejected rows are evaluated again
            Et[pending], Gt[pending] = energy_gradient_batch(xt[pending])
            pending = _settle(rows, pending, X, E, G, xt, Et, Gt, D, S, Y, rho, H0, head, nhist, rms, nfev, halved,
                              max_rise, MAX_HALVINGS)
        iters[rows] += 1
    return QuenchResult(X, E, rms, rms < gtol, nfev, iters)


#: a quenched point that stays a saddle after this many push-offs is dropped (:func:`escape_saddle`)
MAX_ESCAPES = 3


def escape_saddle(potential, x: np.ndarray, qkw: dict,
                  rel_tol: float = 1e-8) -> tuple[np.ndarray, float, bool, float, int]:
    """Make the quenched point x (n,) a verified minimum.

    A quench stops where the RMS gradient falls below its tolerance, which can be on the flat shoulder of a
    saddle. While the exact Hessian at x (zero modes removed, :meth:`Potential.hessian_eigh`) has a negative
    eigenvalue, x moves by ``potential.default_max_step`` along the eigenvector u of the lowest one, to the
    side the gradient descends (-sign(g . u) u: the side x already leans to), and is quenched again
    (``qkw``: :func:`lbfgs_batch` options), at most :data:`MAX_ESCAPES` times. Eigenvalues below
    ``rel_tol`` max |lambda| in modulus count as zero (:func:`.database.spectrum_index`).

    Returns (x, energy, verified, log product of the positive eigenvalues, number of negative ones) of the
    last point; ``verified`` is False when it is still a saddle or a quench failed.
    """
    x = np.asarray(x, dtype=np.float64)
    e, g = potential.energy_gradient(x)
    for attempt in range(MAX_ESCAPES + 1):
        lam, U = potential.hessian_eigh(x)
        log_prod, n_neg = spectrum_index(lam, rel_tol)
        if n_neg == 0:
            return x, float(e), True, log_prod, 0
        if attempt == MAX_ESCAPES:
            break
        u = U[:, 0] * (-1.0 if float(g @ U[:, 0]) > 0 else 1.0)
        q = lbfgs_batch(potential.energy_gradient_batch, (x + potential.default_max_step * u)[None], **qkw)
        if not (q.converged[0] and np.isfinite(q.energy[0])):
            break
        x = q.x[0]
        e, g = potential.energy_gradient(x)
    return x, float(e), False, log_prod, n_neg
