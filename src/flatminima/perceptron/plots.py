"""Figures of local-entropy curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .models import binary_entropy  # noqa: E402


def plot_local_entropy(curves: dict, path, title: str | None = None, relative: bool = False) -> Path:
    """Plot S(d) of each curve (a :class:`~flatminima.perceptron.bp.LocalEntropyCurve` or a dict with
    'scan_d', 'scan_S', 'scan_converged') against H2(d); ``relative`` plots H2(d) - S(d) instead."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    dmax = 0.0
    for label, c in curves.items():
        get = c.get if isinstance(c, dict) else (lambda k, c=c: getattr(c, k))
        d, S, ok = (np.asarray(get(k)) for k in ("scan_d", "scan_S", "scan_converged"))
        ok = ok.astype(bool) & np.isfinite(S)
        order = np.argsort(d[ok])
        dd, ss = d[ok][order], S[ok][order]
        dmax = max(dmax, float(dd.max()) if dd.size else 0.0)
        ax.plot(dd, binary_entropy(dd) - ss if relative else ss, "o-", ms=3, label=label)
    if not relative:
        grid = np.linspace(1e-4, max(dmax, 0.05), 200)
        ax.plot(grid, binary_entropy(grid), "k--", lw=1, label="H2(d) (all vectors)")
    ax.set_xlabel("normalised Hamming distance d")
    ax.set_ylabel("H2(d) - S(d)" if relative else "local entropy S(d)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
