"""Figures of the jamming studies (matplotlib, Agg backend): N_Delta / N against N, the phase diagram,
the stability histograms with their power-law fits, and the Hessian spectra at jamming."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_ndelta_curve", "plot_phase_diagram", "plot_histograms", "plot_spectrum"]


def _save(fig, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


_OUTCOME_STYLE = (
    ("sat", "tab:blue", "o", "L = 0 (certified)"),
    ("jammed", "tab:red", "o", "jammed: certified minimum, N_Delta > 0.1 N"),
    ("in_between", "tab:orange", "s", "certified minimum, N_Delta <= 0.1 N"),
    ("kink", "tab:purple", "D", "ReLU kink (weaker certificate)"),
    ("unresolved", "gray", "x", "no certificate (budget)"),
)


def plot_ndelta_curve(runs: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> str:
    """Scatter of N_Delta / N against P / N for run records (keys P, N_actual, n_delta and ``outcome``, or
    ``sat`` for records without one), coloured by outcome."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for outcome, color, marker, label in _OUTCOME_STYLE:
        rs = [r for r in runs if (r["outcome"] if "outcome" in r else "sat" if r["sat"] else "jammed") == outcome]
        if rs:
            ax.scatter([r["P"] / r["N_actual"] for r in rs], [r["n_delta"] / r["N_actual"] for r in rs], s=16,
                       color=color, marker=marker, label=f"{label} ({len(rs)})")
    ax.axhline(0.1, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("P / N")
    ax.set_ylabel("N_Delta / N")
    ax.set_title(title or "unsatisfied constraints at the minimum")
    ax.legend(fontsize=6.5)
    return _save(fig, path)


def plot_phase_diagram(rows: Sequence[dict[str, Any]], path: str | Path, published: float | None = 3.0) -> str:
    """P / N* against depth; rows have keys depth, P, P_over_nstar_mean, P_over_nstar_std."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for P in sorted({r["P"] for r in rows}):
        rs = sorted((r for r in rows if r["P"] == P), key=lambda r: r["depth"])
        ax.errorbar([r["depth"] for r in rs], [r["P_over_nstar_mean"] for r in rs],
                    yerr=[r["P_over_nstar_std"] for r in rs], marker="o", capsize=3, label=f"P = {P}")
    if published is not None:
        ax.axhline(published, color="gray", ls="--", label=f"published (large N): {published:g}")
    ax.set_xlabel("depth L")
    ax.set_ylabel("P / N*")
    ax.set_ylim(bottom=0)
    ax.legend()
    return _save(fig, path)


def plot_histograms(hist: dict[str, Any], path: str | Path, fits: dict[str, dict] | None = None, title: str = "") -> str:
    """Log-log densities of Delta / sqrt(L) (Delta > 0) and -Delta (Delta < 0), with fitted power laws."""
    c = np.asarray(hist["centers"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, color, label in (("pos_density", "tab:red", "Delta/sqrt(L), Delta > 0"), ("neg_density", "tab:blue", "-Delta, Delta < 0")):
        d = np.asarray(hist[key])
        m = d > 0
        ax.loglog(c[m], d[m], ".", color=color, label=label)
    for name, sign, color in (("theta", 1, "tab:red"), ("gamma", -1, "tab:blue")):
        if fits and name in fits:
            f = fits[name]
            key = "pos_density" if name == "theta" else "neg_density"
            d = np.asarray(hist[key])
            sel = (c <= f["x_max"]) & (d > 0)
            if sel.any():
                x = np.logspace(np.log10(c[sel].min()), np.log10(f["x_max"]), 20)
                a = sign * f["value"]
                k = np.exp(np.mean(np.log(d[sel]) - a * np.log(c[sel])))
                ax.loglog(x, k * x**a, "-", color=color, label=f"{name} = {f['value']:.2f}")
    ax.set_xlabel("|Delta| (positive side scaled by sqrt(L))")
    ax.set_ylabel("density")
    ax.set_title(title or "stabilities at jamming")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_spectrum(spec: dict[str, Any], path: str | Path, title: str = "") -> str:
    """Eigenvalue densities of H, H0 and Hp (symlog histogram) and the omega = sqrt(lambda) density of H."""
    from .spectrum import omega_density

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    lam_all = np.concatenate([np.asarray(spec[k]) for k in ("H", "H0", "Hp")])
    top = max(float(np.abs(lam_all).max()), 1e-12)
    edges = np.linspace(-top, top, 80)
    for k, color in (("H", "k"), ("H0", "tab:orange"), ("Hp", "tab:green")):
        axes[0].hist(spec[k], bins=edges, histtype="step", color=color, label=k)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("lambda")
    axes[0].legend()
    om = omega_density(spec["H"])
    m = np.asarray(om["density"]) > 0
    axes[1].loglog(np.asarray(om["centers"])[m], np.asarray(om["density"])[m], "o-", ms=3)
    axes[1].set_xlabel("omega = sqrt(lambda)")
    axes[1].set_ylabel("D(omega)")
    axes[1].set_title(f"zero modes: {om['n_zero']} / {om['n']}")
    fig.suptitle(title or f"Hessian at jamming (N_Delta = {spec.get('n_delta')}, N = {spec.get('N')})")
    return _save(fig, path)
