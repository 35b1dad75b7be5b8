"""Statistics of the stabilities at jamming: log-binned histograms and maximum-likelihood power laws.

At the transition the density of small positive stabilities behaves as P+(Delta) ~ Delta^theta and
the density of small negative ones as P-(Delta) ~ |Delta|^-gamma (Geiger et al. 2019: theta ~ 0.3 and
gamma ~ 0.2 for ReLU networks). Positive stabilities are rescaled by sqrt(L) (force-like variables);
the exponents do not depend on that scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from ..errors import ConfigError

__all__ = ["log_bins", "split_sides", "delta_histograms", "PowerLawFit", "powerlaw_fit", "jamming_exponents"]


def log_bins(lo: float = 1e-9, hi: float = 1e4, n: int = 130) -> np.ndarray:
    """Logarithmically spaced bin edges (n edges from lo to hi), as in the authors' histograms."""
    if not 0 < lo < hi or n < 2:
        raise ConfigError(f"need 0 < lo < hi and n >= 2, got {lo}, {hi}, {n}")
    return np.logspace(math.log10(lo), math.log10(hi), n)


def _as_runs(deltas) -> list[np.ndarray]:
    """One array of stabilities, or a list of arrays (one per run), as a list of flat float arrays."""
    if isinstance(deltas, (list, tuple)) and deltas and np.ndim(deltas[0]) >= 1:
        return [np.asarray(d, dtype=float).reshape(-1) for d in deltas]
    return [np.asarray(deltas, dtype=float).reshape(-1)]


def split_sides(deltas, losses=None) -> tuple[np.ndarray, np.ndarray]:
    """Pool runs into (Delta / sqrt(L) for Delta > 0, -Delta for Delta < 0), each run scaled by its own L.

    ``deltas``: one array or a list of arrays (one per run); ``losses``: their losses (default computed
    from the stabilities, L = sum max(0, Delta)^2 / 2P).
    """
    runs = _as_runs(deltas)
    if not runs or sum(r.size for r in runs) == 0:
        raise ConfigError("no stabilities given")
    if losses is not None and len(losses) != len(runs):
        raise ConfigError(f"got {len(runs)} runs but {len(losses)} losses")
    pos, neg = [], []
    for i, d in enumerate(runs):
        L = 0.5 * float(np.sum(np.maximum(d, 0) ** 2)) / max(d.size, 1) if losses is None else float(losses[i])
        p = d[d > 0]
        pos.append(p / math.sqrt(L) if L > 0 else p)
        neg.append(-d[d < 0])
    return np.concatenate(pos), np.concatenate(neg)


def delta_histograms(deltas, losses=None, bins: np.ndarray | None = None) -> dict[str, list]:
    """Log-binned densities of the two sides of the stability distribution.

    ``deltas``: one array of stabilities or a list of arrays (runs, pooled); ``losses``: the runs' losses
    (default computed). Positive side: x = Delta / sqrt(L) for Delta > 0; negative side: x = -Delta for
    Delta < 0. Bins: ``log_bins()`` (1e-9 to 1e4, 130 edges) unless given. Each side is normalised to unit
    integral (density). Returns lists ``edges``, ``centers`` (geometric), ``pos_density``, ``neg_density``
    and the counts ``n_pos``, ``n_neg``.
    """
    pos, neg = split_sides(deltas, losses)
    edges = log_bins() if bins is None else np.asarray(bins, dtype=float)
    out = {"edges": edges.tolist(), "centers": np.sqrt(edges[1:] * edges[:-1]).tolist(),
           "n_pos": int(pos.size), "n_neg": int(neg.size)}
    for name, x in (("pos_density", pos), ("neg_density", neg)):
        h = np.histogram(x, bins=edges, density=True)[0] if x.size else np.zeros(edges.size - 1)
        out[name] = h.tolist()
    return out


@dataclass
class PowerLawFit:
    """p(x) ~ x^exponent on (0, x_max], fitted by maximum likelihood.

    ``ci``: the exact (1 - alpha) confidence interval (the MLE's sufficient statistic is Gamma
    distributed); ``n``: points used; ``ks``: Kolmogorov-Smirnov distance of the fit on (0, x_max].
    """

    exponent: float
    ci: tuple[float, float]
    stderr: float
    x_max: float
    n: int
    ks: float

    def as_dict(self) -> dict:
        return asdict(self)


def _fit_below(x: np.ndarray, x_max: float, alpha: float) -> PowerLawFit:
    s = x[(x > 0) & (x <= x_max)]
    n = s.size
    T = float(-np.log(s / x_max).sum())  # (a + 1) T ~ Gamma(n, 1)
    if n < 2 or T <= 0:
        raise ConfigError(f"too few points below x_max={x_max:g} for a power-law fit ({n})")
    b = n / T  # MLE of a + 1 (the density is b x^(b-1) / x_max^b)
    lo, hi = sps.gamma.ppf([alpha / 2, 1 - alpha / 2], n) / T
    u = np.sort(s / x_max) ** b  # probability integral transform
    i = np.arange(1, n + 1)
    ks = float(max(np.max(i / n - u), np.max(u - (i - 1) / n)))
    return PowerLawFit(exponent=b - 1, ci=(float(lo - 1), float(hi - 1)), stderr=b / math.sqrt(n),
                       x_max=float(x_max), n=int(n), ks=ks)


def powerlaw_fit(x, x_max: float | None = None, alpha: float = 0.05, min_points: int = 30,
                 fractions: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)) -> PowerLawFit:
    """Maximum-likelihood fit of p(x) ~ x^a at small x (a > -1): the density of x on (0, x_max] is
    (a + 1) x^a / x_max^(a + 1), so a = n / sum log(x_max / x_i) - 1.

    ``x_max``: the upper end of the fit range; by default chosen among the sample quantiles
    ``fractions`` (with at least ``min_points`` points) as the one whose fit has the smallest KS distance
    (Clauset-Shalizi-Newman, for a lower tail). Returns a :class:`PowerLawFit` with an exact confidence
    interval at level 1 - alpha.
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    x = x[np.isfinite(x) & (x > 0)]
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if x_max is not None:
        return _fit_below(x, float(x_max), alpha)
    if x.size < min_points:
        raise ConfigError(f"need at least {min_points} positive values for a power-law fit, got {x.size}")
    xs = np.sort(x)
    best = None
    for q in fractions:
        k = int(q * xs.size)
        if k < min_points:
            continue
        fit = _fit_below(xs, float(xs[k - 1]), alpha)
        if best is None or fit.ks < best.ks:
            best = fit
    if best is None:  # small sample: use the min_points smallest values
        best = _fit_below(xs, float(xs[min_points - 1]), alpha)
    return best


def jamming_exponents(deltas, losses=None, alpha: float = 0.05, **fit_options) -> dict[str, dict]:
    """theta and gamma from stabilities pooled over runs (see :func:`split_sides`).

    theta: exponent of the density of Delta / sqrt(L) > 0 at small values; gamma: minus the exponent of
    the density of -Delta > 0 at small values. Returns ``{"theta": {...}, "gamma": {...}}`` with value,
    ci (level 1 - alpha), stderr, x_max, n, ks; a side with too few points is left out.
    """
    pos, neg = split_sides(deltas, losses)
    out = {}
    for name, x, sign in (("theta", pos, 1), ("gamma", neg, -1)):
        try:
            f = powerlaw_fit(x, alpha=alpha, **fit_options)
        except ConfigError:
            continue
        ci = [f.ci[0], f.ci[1]] if sign > 0 else [-f.ci[1], -f.ci[0]]
        out[name] = {"value": sign * f.exponent, "ci": ci, "stderr": f.stderr, "x_max": f.x_max, "n": f.n, "ks": f.ks}
    return out
