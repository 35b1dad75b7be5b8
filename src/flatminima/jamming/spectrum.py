"""The Hessian at a jammed minimum: H = H0 + Hp and the density of omega = sqrt(lambda).

For L = (1/2P) sum_mu max(0, Delta_mu)^2,

    H0 = (1/P) sum_{Delta_mu > 0} grad Delta_mu grad Delta_mu^T      (PSD, rank <= N_Delta)
    Hp = (1/P) sum_{Delta_mu > 0} Delta_mu Hess Delta_mu             (= H - H0)

The split is computed by :func:`flatminima.linalg.gauss_newton_split` (H0 from the
Jacobian of the active stabilities, Hp as the Hessian of sum_mu Delta_mu Delta_mu(theta) / P with the
coefficients held fixed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..linalg import gauss_newton_split
from .problem import HingeProblem, stabilities_from_outputs
from .stats import log_bins

__all__ = ["hessian_split", "spectrum_at", "omega_density"]


def hessian_split(problem: HingeProblem, theta: Tensor) -> dict[str, Tensor]:
    """Dense ``{"H", "H0", "Hp"}``, each (N, N), at theta (N,) (N up to :data:`flatminima.linalg.DENSE_MAX`).

    Uses :func:`flatminima.linalg.gauss_newton_split` with the stabilities as residuals and
    g = max(0, Delta)^2 / 2 (g' = relu, g'' = step); with C outputs the P*C residuals are summed per
    pattern, so the split is rescaled by C (that function averages over residuals).
    """
    theta = torch.as_tensor(theta).to(problem.device, problem.dtype)

    def residuals(t: Tensor) -> Tensor:
        out = problem.landscape.forward(t, problem.X)
        return stabilities_from_outputs(out, problem.Y, problem.kappa).reshape(-1)

    H0, Hp = gauss_newton_split(residuals, theta, torch.relu, lambda D: (D > 0).to(D.dtype))
    H0, Hp = H0 * problem.d_out, Hp * problem.d_out
    return {"H": H0 + Hp, "H0": H0, "Hp": Hp}


def spectrum_at(problem: HingeProblem, theta: Tensor) -> dict[str, list[float]]:
    """Eigenvalues (ascending lists) of H, H0 and Hp at theta, plus N_Delta and N."""
    mats = hessian_split(problem, theta)
    out = {k: torch.linalg.eigvalsh(v).tolist() for k, v in mats.items()}
    out["n_delta"] = problem.n_delta(theta)
    out["N"] = problem.N
    return out


def omega_density(eigenvalues, bins: np.ndarray | None = None, zero_tol: float | None = None) -> dict:
    """Density of omega = sqrt(lambda) over log bins, and the number of (near-)zero and negative modes.

    ``zero_tol``: eigenvalues with |lambda| <= zero_tol count as zero modes (default
    1e-10 * max |lambda|). Returns ``centers``, ``density`` (per unit omega, normalised over all modes),
    ``n_zero``, ``n_negative``, ``n``.
    """
    lam = np.asarray(eigenvalues, dtype=float)
    if lam.size == 0:
        raise ConfigError("no eigenvalues given")
    tol = 1e-10 * float(np.abs(lam).max()) if zero_tol is None else float(zero_tol)
    pos = lam[lam > tol]
    edges = log_bins(1e-6, 1e2, 65) if bins is None else np.asarray(bins, dtype=float)
    counts = np.histogram(np.sqrt(pos), bins=edges)[0]
    dens = counts / (lam.size * np.diff(edges))
    return {"centers": np.sqrt(edges[1:] * edges[:-1]).tolist(), "density": dens.tolist(),
            "n_zero": int((np.abs(lam) <= tol).sum()), "n_negative": int((lam < -tol).sum()), "n": int(lam.size)}
