"""Loss / error along lines and planes through parameter space (Li et al., NeurIPS 2018), batched.

* :func:`random_direction`: a Gaussian direction, filter-normalised (each row f of each tensor rescaled
  to the norm of the same row of theta), layer-normalised, or raw; 1-D tensors (biases, norm scales) get
  zero (``ignore_1d=True``, the usual choice) or a copy of theta.
* :func:`eigen_directions`: top Hessian eigenvectors (unit norm).
* :func:`slice_1d`, :func:`slice_2d`: theta + a d1 (+ b d2) on a grid; every grid point is one row of a
  (K, N) batch through ``landscape.batched_loss`` / ``batched_error``.
* :func:`interpolate`: the straight path theta_a -> theta_b and its barrier.
* :func:`plot_1d`, :func:`plot_2d`: matplotlib figures (Agg backend) saved to a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from . import hessian

__all__ = ["Slice1D", "Slice2D", "random_direction", "eigen_directions", "slice_1d", "slice_2d", "interpolate",
           "plot_1d", "plot_2d"]


def _theta(landscape, theta):
    t = landscape.theta if theta is None else torch.as_tensor(theta)
    if t.shape != (landscape.n_params,):
        raise ConfigError(f"theta must have shape ({landscape.n_params},), got {tuple(t.shape)}")
    return t.to(landscape.device, landscape.dtype).detach()


def random_direction(landscape, theta: Tensor | None = None, seed: int = 0, norm: str = "filter",
                     ignore_1d: bool = True) -> Tensor:
    """A random direction (N,). ``norm``: "filter" (row-wise to theta's row norms), "layer" (tensor-wise),
    or "none" (raw N(0, I)). Tensors with one dimension: zero if ``ignore_1d`` else a copy of theta."""
    if norm not in ("filter", "layer", "none"):
        raise ConfigError(f"norm must be 'filter', 'layer' or 'none', got {norm!r}")
    th = _theta(landscape, theta)
    g = torch.Generator()
    g.manual_seed(int(seed))
    d = torch.randn(landscape.n_params, generator=g, dtype=torch.float64).to(landscape.device, landscape.dtype)
    if norm == "none":
        return d
    out = []
    for w, v in zip(landscape.unflatten(th).values(), landscape.unflatten(d).values()):
        if w.dim() <= 1:
            out.append(torch.zeros_like(w) if ignore_1d else w.clone())
            continue
        if norm == "filter":
            wr, vr = w.reshape(w.shape[0], -1), v.reshape(v.shape[0], -1)
            vr = vr * (wr.norm(dim=1, keepdim=True) / (vr.norm(dim=1, keepdim=True) + 1e-10))
            out.append(vr.reshape(w.shape))
        else:
            out.append(v * (w.norm() / (v.norm() + 1e-10)))
    return landscape.flatten(out)


def eigen_directions(landscape, theta: Tensor | None = None, k: int = 2, tol: float = 1e-4) -> Tensor:
    """The k top Hessian eigenvectors (k, N), unit norm (Ritz residuals <= tol |lambda|)."""
    return hessian.top_eigenvalues(landscape, theta, k=k, tol=tol, criterion="residual").vectors


def _eval(landscape, thetas: Tensor, measures: Sequence[str], budget: int | None) -> dict[str, np.ndarray]:
    out = {}
    for m in measures:
        if m == "loss":
            out[m] = landscape.batched_loss(thetas, budget).cpu().double().numpy()
        elif m == "error":
            out[m] = landscape.batched_error(thetas, budget).cpu().double().numpy()
        else:
            raise ConfigError(f"measures must be 'loss' and/or 'error', got {m!r}")
    return out


@dataclass
class Slice1D:
    """Values along theta + alpha d: alphas (A,), values {measure: (A,)}; ``barrier`` for paths."""

    alphas: np.ndarray
    values: dict[str, np.ndarray]
    barrier: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas.tolist(), "values": {k: v.tolist() for k, v in self.values.items()},
                "barrier": self.barrier}


@dataclass
class Slice2D:
    """Values on theta + a d1 + b d2: alphas (A,), betas (B,), values {measure: (A, B)}."""

    alphas: np.ndarray
    betas: np.ndarray
    values: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas.tolist(), "betas": self.betas.tolist(),
                "values": {k: v.tolist() for k, v in self.values.items()}}


def _grid(x, name):
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all():
        raise ConfigError(f"{name} must be a non-empty grid of finite numbers")
    return a


def slice_1d(landscape, theta: Tensor | None, direction: Tensor, alphas: Sequence[float] = np.linspace(-1, 1, 51),
             measures: Sequence[str] = ("loss", "error"), budget: int | None = None) -> Slice1D:
    """f(theta + alpha d) for every alpha (A,), in batched passes."""
    th = _theta(landscape, theta)
    d = _theta(landscape, direction)
    a = _grid(alphas, "alphas")
    at = torch.as_tensor(a, dtype=landscape.dtype, device=landscape.device)
    return Slice1D(a, _eval(landscape, th + at[:, None] * d, measures, budget))


def slice_2d(landscape, theta: Tensor | None, d1: Tensor, d2: Tensor,
             alphas: Sequence[float] = np.linspace(-1, 1, 21), betas: Sequence[float] | None = None,
             measures: Sequence[str] = ("loss", "error"), budget: int | None = None, rows: int = 64) -> Slice2D:
    """f(theta + a d1 + b d2) on the grid alphas x betas; ``rows`` grid points per batch (memory rows*N)."""
    th = _theta(landscape, theta)
    u, v = _theta(landscape, d1), _theta(landscape, d2)
    a = _grid(alphas, "alphas")
    b = a if betas is None else _grid(betas, "betas")
    A, B = np.meshgrid(a, b, indexing="ij")
    coef = torch.as_tensor(np.stack([A.ravel(), B.ravel()], 1), dtype=landscape.dtype, device=landscape.device)
    vals: dict[str, list] = {m: [] for m in measures}
    for i in range(0, coef.shape[0], rows):
        c = coef[i : i + rows]
        part = _eval(landscape, th + c[:, :1] * u + c[:, 1:] * v, measures, budget)
        for m in measures:
            vals[m].append(part[m])
    return Slice2D(a, b, {m: np.concatenate(vals[m]).reshape(A.shape) for m in measures})


def interpolate(landscape, theta_a: Tensor, theta_b: Tensor, alphas: Sequence[float] = np.linspace(0, 1, 41),
                measures: Sequence[str] = ("loss", "error"), budget: int | None = None) -> Slice1D:
    """The linear path (1 - t) theta_a + t theta_b. ``barrier[m]`` = max over t in [0, 1] of
    m(t) - ((1 - t) m(0) + t m(1)): the rise above the straight line between the end values (0 if the
    path is convex-like). The grid should contain 0 and 1."""
    ta, tb = _theta(landscape, theta_a), _theta(landscape, theta_b)
    a = _grid(alphas, "alphas")
    at = torch.as_tensor(a, dtype=landscape.dtype, device=landscape.device)
    vals = _eval(landscape, ta + at[:, None] * (tb - ta), measures, budget)
    ends = _eval(landscape, torch.stack([ta, tb]), measures, budget)
    inside = (a >= 0) & (a <= 1)
    barrier = {m: float(np.max(v[inside] - ((1 - a[inside]) * ends[m][0] + a[inside] * ends[m][1])))
               if inside.any() else float("nan") for m, v in vals.items()}
    return Slice1D(a, vals, barrier)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_1d(curves: dict[str, Slice1D], path: str | Path, measure: str = "loss", xlabel: str = "alpha",
            title: str | None = None) -> Path:
    """One line per labelled slice; saved to ``path``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, s in curves.items():
        ax.plot(s.alphas, s.values[measure], label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(measure)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_2d(s: Slice2D, path: str | Path, measure: str = "loss", title: str | None = None, levels: int = 20) -> Path:
    """Contour plot of a 2-D slice; saved to ``path``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    A, B = np.meshgrid(s.alphas, s.betas, indexing="ij")
    cs = ax.contourf(A, B, s.values[measure], levels=levels, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=measure)
    ax.plot([0], [0], "r+")
    ax.set_xlabel("alpha (d1)")
    ax.set_ylabel("beta (d2)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
