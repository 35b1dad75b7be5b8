"""Local (free) entropy of a continuous network around theta, by SGLD and thermodynamic integration.

The tilted measure of Entropy-SGD (Chaudhari et al. 2017; Baldassi et al. PNAS 2020) around a
reference configuration theta is

    p_gamma(theta') ∝ exp(-beta f(theta') - gamma/2 |theta' - theta|^2),

and the local free entropy is Phi(gamma) = log ∫ dtheta' exp(-beta f(theta') - gamma/2 |theta' - theta|^2).
We report it relative to the free Gaussian of the same width,

    F(gamma) = Phi(gamma) - (N/2) log(2 pi / gamma),

so that F(gamma) -> -beta f(theta) as gamma -> infinity and a flatter neighbourhood gives a larger
F at finite gamma (F = -beta f(theta) - (1/2) sum_i log(1 + beta lambda_i / gamma) on a quadratic
minimum with Hessian eigenvalues lambda_i).

Estimator (thermodynamic integration over gamma)
------------------------------------------------
dF/dgamma = N/(2 gamma) - <|theta' - theta|^2>_gamma / 2 =: h(gamma), hence

    F(gamma) = -beta f(theta) - ∫_gamma^gamma_max h(g) dg - T,      T = ∫_gamma_max^inf h(g) dg.

The averages <|theta' - theta|^2>_gamma are measured by unadjusted Langevin dynamics (SGLD with full
gradients of the landscape's loss, K chains in one vmapped pass; the Gaussian coupling is integrated
exactly, as an Ornstein-Uhlenbeck step, and only the force beta grad f is discretised:
theta' <- theta + a (theta' - theta) - (1 - a)/gamma beta grad f(theta') + sqrt((1 - a^2)/gamma) xi,
a = exp(-eta gamma), so the free Gaussian part carries no step-size bias) at each gamma of a descending ladder,
each gamma warm-started from the chains of the previous one (the chains start at theta, which is exact at
gamma = infinity). The integral is the trapezoid rule in log gamma; the tail T uses h(g) ≈ c/g^2 beyond
gamma_max, T ≈ gamma_max h(gamma_max). Step size at each gamma: eta = lr / (beta lambda_max + gamma),
with lambda_max the top Hessian eigenvalue at theta (Lanczos), so the discretisation bias (of order
eta beta lambda in a mode of curvature lambda) stays below about lr/2. Standard errors of <d^2> come from the spread
of the per-chain time averages; the standard error of F propagates them through the (linear) quadrature,
treating the gammas as independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from . import hessian

__all__ = ["LocalEntropy", "local_entropy", "quadratic_free_entropy"]


@dataclass
class LocalEntropy:
    """Result of :func:`local_entropy`, one entry per gamma (descending order).

    gammas (G,); mean_sq_dist (G,) = <|theta' - theta|^2>; mean_sq_dist_stderr (G,);
    mean_loss (G,) = <f(theta')>; free_entropy (G,) = F(gamma) (see module docstring) and its stderr;
    per_param (G,) = F / N; beta; base_loss f(theta); lambda_max; n_params; settings.
    """

    gammas: np.ndarray
    mean_sq_dist: np.ndarray
    mean_sq_dist_stderr: np.ndarray
    mean_loss: np.ndarray
    free_entropy: np.ndarray
    free_entropy_stderr: np.ndarray
    per_param: np.ndarray
    beta: float
    base_loss: float
    lambda_max: float
    n_params: int
    settings: dict

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


def quadratic_free_entropy(A: Tensor, theta0: Tensor, c: float, theta: Tensor, beta: float,
                           gamma: float) -> tuple[float, float]:
    """Closed form on f(x) = 1/2 (x - theta0)^T A (x - theta0) + c: (F(gamma), <|theta' - theta|^2>_gamma)."""
    N = A.shape[0]
    I = torch.eye(N, dtype=A.dtype, device=A.device)
    Pm = beta * A + gamma * I
    d = theta - theta0
    M = gamma * beta * A @ torch.linalg.solve(Pm, I)
    F = -beta * c - 0.5 * torch.logdet(beta * A / gamma + I) - 0.5 * d @ M @ d
    shift = torch.linalg.solve(Pm, beta * A @ (theta0 - theta))
    msd = torch.trace(torch.linalg.inv(Pm)) + shift @ shift
    return float(F), float(msd)


def local_entropy(landscape, theta: Tensor | None = None, gammas: Sequence[float] | None = None, beta: float = 1e3,
                  n_chains: int = 8, steps: int = 200, burn_in: int = 100, lr: float = 0.05,
                  lambda_max: float | None = None, seed: int = 0, progress: bool = False) -> LocalEntropy:
    """Local free entropy F(gamma) around theta on a ladder of couplings gamma (see the module docstring).

    Parameters
    ----------
    gammas : couplings > 0 (sorted descending internally). Default: 12 log-spaced values from
        100 beta lambda_max down to beta lambda_max / 100.
    beta : inverse temperature multiplying the (mean) loss.
    n_chains : independent Langevin chains (one vmapped pass per step).
    steps, burn_in : Langevin steps per gamma; the first ``burn_in`` of them are discarded.
    lr : dimensionless step size; eta = lr / (beta lambda_max + gamma).
    lambda_max : top Hessian eigenvalue at theta (computed by Lanczos if None; clamped below at 0).

    Notes
    -----
    Cost: len(gammas) * (steps + burn_in) batched gradient passes of ``n_chains`` copies.
    """
    if beta <= 0 or n_chains < 2 or steps < 1 or burn_in < 0 or lr <= 0:
        raise ConfigError("need beta > 0, n_chains >= 2, steps >= 1, burn_in >= 0, lr > 0")
    th = landscape.theta if theta is None else torch.as_tensor(theta)
    if th.shape != (landscape.n_params,):
        raise ConfigError(f"theta must have shape ({landscape.n_params},), got {tuple(th.shape)}")
    th = th.to(landscape.device, landscape.dtype).detach()
    N = landscape.n_params
    if lambda_max is None:
        lambda_max = float(hessian.top_eigenvalues(landscape, th, k=1, tol=1e-3, return_vectors=False).values[0])
    lam = max(float(lambda_max), 0.0)
    scale = beta * max(lam, 1e-12)
    if gammas is None:
        gammas = np.geomspace(100 * scale, scale / 100, 12)
    g_arr = np.sort(np.asarray(gammas, dtype=float))[::-1].copy()
    if g_arr.size < 1 or (g_arr <= 0).any() or not np.isfinite(g_arr).all():
        raise ConfigError("gammas must be finite and > 0")
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    base_loss = float(landscape.loss(th))
    X = th.expand(n_chains, N).clone()
    msd, msd_se, mloss = [], [], []
    it = range(len(g_arr))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="local entropy", unit="gamma")
    for gi in it:
        gamma = float(g_arr[gi])
        eta = lr / (beta * lam + gamma)
        a = math.exp(-eta * gamma)
        drift = -math.expm1(-eta * gamma) / gamma  # (1 - a) / gamma
        noise = math.sqrt(-math.expm1(-2 * eta * gamma) / gamma)  # sqrt((1 - a^2) / gamma)
        acc_d = torch.zeros(n_chains, dtype=torch.float64)
        acc_f = torch.zeros(n_chains, dtype=torch.float64)
        for t in range(burn_in + steps):
            f, g = landscape.batched_loss_and_grad(X)
            if t >= burn_in:
                acc_d += ((X - th) ** 2).sum(-1).detach().cpu().double()
                acc_f += f.detach().cpu().double()
            xi = torch.randn(n_chains, N, generator=gen, dtype=torch.float64).to(landscape.device, landscape.dtype)
            X = (th + a * (X - th) - drift * beta * g + noise * xi).detach()
            if not bool(torch.isfinite(X).all()):
                raise ConfigError(f"Langevin dynamics diverged at gamma={gamma:.3g}; lower lr or give lambda_max")
        per_chain = acc_d / steps
        msd.append(float(per_chain.mean()))
        msd_se.append(float(per_chain.std() / math.sqrt(n_chains)))
        mloss.append(float((acc_f / steps).mean()))
    msd_a, se_a = np.array(msd), np.array(msd_se)
    h = N / (2 * g_arr) - msd_a / 2  # dF/dgamma
    # F(g_i) = -beta f - int_{g_i}^{g_0} h dg - T; trapezoid in log gamma: int h dg = int (h g) dlog g
    hg = h * g_arr
    lg = np.log(g_arr)
    seg = 0.5 * (hg[1:] + hg[:-1]) * (lg[:-1] - lg[1:])  # positive log-steps (descending gammas)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    tail = g_arr[0] * h[0]
    F = -beta * base_loss - cum - tail
    # error propagation: weight of each msd_j in F_i (linear), independent gammas
    w = np.zeros((len(g_arr), len(g_arr)))
    for i in range(len(g_arr)):
        w[i, 0] += g_arr[0]  # tail
        for j in range(i):
            dl = lg[j] - lg[j + 1]
            w[i, j] += 0.5 * g_arr[j] * dl
            w[i, j + 1] += 0.5 * g_arr[j + 1] * dl
    F_se = np.sqrt(((0.5 * w * se_a[None, :]) ** 2).sum(1))
    return LocalEntropy(gammas=g_arr, mean_sq_dist=msd_a, mean_sq_dist_stderr=se_a, mean_loss=np.array(mloss),
                        free_entropy=F, free_entropy_stderr=F_se, per_param=F / N, beta=float(beta),
                        base_loss=base_loss, lambda_max=float(lambda_max), n_params=N,
                        settings={"n_chains": n_chains, "steps": steps, "burn_in": burn_in, "lr": lr, "seed": seed,
                                  "estimator": "SGLD + thermodynamic integration in log gamma"})
