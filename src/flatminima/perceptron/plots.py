"""Figures of local-entropy curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .bp import LocalEntropyCurve  # noqa: E402
from .models import binary_entropy  # noqa: E402


def plot_local_entropy(curves: dict[str, LocalEntropyCurve], path) -> Path:
    """Plot the converged points of the gamma scan, S(d), of each curve against H2(d); returns ``path``."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    dmax = 0.0
    for label, c in curves.items():
        ok = c.scan_converged & np.isfinite(c.scan_S)
        order = np.argsort(c.scan_d[ok])
        dd, ss = c.scan_d[ok][order], c.scan_S[ok][order]
        dmax = max(dmax, float(dd.max()) if dd.size else 0.0)
        ax.plot(dd, ss, "o-", ms=3, label=label)
    grid = np.linspace(1e-4, max(dmax, 0.05), 200)
    ax.plot(grid, binary_entropy(grid), "k--", lw=1, label="H2(d) (all vectors)")
    ax.set_xlabel("normalised Hamming distance d")
    ax.set_ylabel("local entropy S(d)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
