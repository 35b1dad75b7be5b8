"""A quasi-Newton bridge between the first-order dynamics and the certified second-order polish.

After full-batch Adam (:mod:`.fullbatch`) a jammed run sits close to a minimum but with a relative gradient
far above round-off, and the dense Newton polish (:mod:`.newton`) costs N Hessian-vector products per
fresh Hessian. :func:`lbfgs_bridge` runs scipy's L-BFGS-B (no bounds) on the exact loss and gradient in
float64 until it stalls at round-off, which takes such a point to a relative gradient of ~1e-8 in seconds;
the polish then needs a handful of Newton iterations. It certifies nothing itself.

Zero loss is reached in finitely many steps through the margin push of :mod:`.minimize`: the bridge first
minimises at margin kappa (1 + push) and stops as soon as the true-margin loss is exactly zero; when the
pushed problem stalls at L > 0 it continues at the true margin.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .fullbatch import relu_layout, relu_loss_grad
from .problem import HingeProblem

__all__ = ["BridgeResult", "lbfgs_bridge", "HomotopyResult", "softplus_homotopy", "HOMOTOPY_BETAS"]


@dataclass
class BridgeResult:
    """End of :func:`lbfgs_bridge`: ``theta`` (N,) (the problem's dtype and device), loss and N_Delta at the true
    margin, L-BFGS ``iterations`` and loss ``evaluations`` over both phases, ``zero_loss``, CPU seconds."""

    theta: Tensor
    loss: float
    n_delta: int
    iterations: int
    evaluations: int
    zero_loss: bool
    cpu_seconds: float


class _ZeroLoss(Exception):
    def __init__(self, x: np.ndarray) -> None:
        self.x = x


def lbfgs_bridge(problem: HingeProblem, theta: Tensor, push: float = 1e-3, max_iter: int = 20_000,
                 memory: int = 30) -> BridgeResult:
    """L-BFGS on the hinge loss of ``problem`` from ``theta`` (N,): at the pushed margin, then the true one.

    ``push`` >= 0: relative extra margin of the first phase (0: true margin only); ``max_iter``: L-BFGS
    iterations per phase; ``memory``: number of correction pairs. Every evaluation at a pushed margin also
    checks the true margin, and the run ends at the first point where the true loss is exactly zero.
    """
    from scipy.optimize import minimize as sp_minimize

    if push < 0 or not math.isfinite(push) or max_iter < 1 or memory < 1:
        raise ConfigError(f"need push >= 0, max_iter >= 1, memory >= 1; got {push}, {max_iter}, {memory}")
    th0 = torch.as_tensor(theta).detach().to(problem.device, problem.dtype)
    if th0.shape != (problem.N,):
        raise ConfigError(f"theta must have shape ({problem.N},), got {tuple(th0.shape)}")
    layout = relu_layout(problem)
    kappa = problem.kappa
    c0 = time.process_time()
    if layout is not None and problem.device.type == "cpu":
        X, Y = problem.X.cpu().numpy(), problem.Y.cpu().numpy().reshape(-1)

        def loss_grad(x: np.ndarray, k: float) -> tuple[float, np.ndarray, int]:
            return relu_loss_grad(layout, x, X, Y, k)
    else:
        def loss_grad(x: np.ndarray, k: float) -> tuple[float, np.ndarray, int]:
            xt = torch.from_numpy(x).to(problem.device, problem.dtype)
            f, g = problem.loss_and_grad(xt, k)
            return float(f), g.cpu().numpy().astype(np.float64), problem.n_delta(xt, k)

    evals, iters = [0], 0
    x = th0.cpu().numpy().astype(np.float64).copy()
    zero = loss_grad(x, kappa)[2] == 0
    margins = ([kappa * (1 + push)] if push > 0 else []) + [kappa]
    for k in margins:
        if zero:
            break

        def fg(z: np.ndarray, k=k) -> tuple[float, np.ndarray]:
            evals[0] += 1
            f, g, nd = loss_grad(z, k)
            if nd == 0 or (k != kappa and loss_grad(z, kappa)[2] == 0):
                raise _ZeroLoss(z.copy())
            return f, g.copy()

        try:
            res = sp_minimize(fg, x, jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter, "maxcor": memory, "gtol": 0.0, "ftol": 0.0,
                                       "maxfun": 10 * max_iter, "maxls": 50})
            x = np.asarray(res.x, dtype=np.float64)
            iters += int(res.nit)
        except _ZeroLoss as stop:
            x, zero = stop.x, True
    f, _, nd = loss_grad(x, kappa)
    return BridgeResult(theta=torch.from_numpy(x).to(problem.device, problem.dtype), loss=f, n_delta=nd,
                        iterations=iters, evaluations=evals[0], zero_loss=nd == 0,
                        cpu_seconds=time.process_time() - c0)


#: Default sharpness schedule of :func:`softplus_homotopy`: beta from 1e2 to 1e12 (kink width 1/beta).
HOMOTOPY_BETAS = tuple(10.0**k for k in range(2, 13))


@dataclass
class HomotopyResult:
    """End of :func:`softplus_homotopy`: ``theta`` (N,) (the problem's dtype and device), the ReLU loss and
    N_Delta there at the true margin, ``zero_loss``, L-BFGS ``iterations`` over all stages, CPU seconds, and
    ``stages``: per beta, the iterations (-1 for a stage that stopped at exact zero loss, its smoothed loss
    then NaN), the smoothed loss, the ReLU loss and N_Delta at the stage's end."""

    theta: Tensor
    loss: float
    n_delta: int
    iterations: int
    zero_loss: bool
    cpu_seconds: float
    stages: list[dict]


def softplus_homotopy(problem: HingeProblem, theta: Tensor, betas: tuple[float, ...] = HOMOTOPY_BETAS,
                      max_iter: int = 3000, memory: int = 30) -> HomotopyResult:
    """Descend the hinge loss of a ReLU MLP onto a minimum on its activation kinks, by continuation.

    At a jammed minimum of a ReLU network many pre-activations sit exactly on their kink, in several layers
    of one pattern at once (nested kinks), and the region around it is crossed by thousands of kinks: a
    first-order method creeps, and a kink-resolving Newton method takes steps no longer than the distance to
    the next kink. Here every ReLU is replaced by softplus_beta(z) = log(1 + exp(beta z)) / beta, a smooth
    function within 1/beta of the ReLU, and L-BFGS minimises the smoothed loss for each beta of ``betas`` in
    turn (at most ``max_iter`` iterations each, warm-started; a stage ends when float64 no longer resolves a
    decrease). A unit held on its kink at the ReLU minimum sits at z ~ 1/beta with sigmoid(beta z) equal to
    its multiplier's share of the gradient jump, so the iterates track the kink minimum as beta grows; at
    beta = 1e12 the smoothed and the ReLU losses agree to round-off. Stops early when the ReLU loss at the
    true margin is exactly zero. Certifies nothing itself (:func:`.certify.certify` does).

    Raises ConfigError for a network that is not a ReLU MLP with one output, or a bad schedule.
    """
    from scipy.optimize import minimize as sp_minimize

    layout = relu_layout(problem)
    if layout is None:
        raise ConfigError("softplus_homotopy needs a ReLU MLP with one output (a chain of Linear layers and ReLUs)")
    if not betas or any(not (math.isfinite(b) and b > 0) for b in betas) or max_iter < 1 or memory < 1:
        raise ConfigError(f"need finite betas > 0, max_iter >= 1, memory >= 1; got {betas}, {max_iter}, {memory}")
    th0 = torch.as_tensor(theta).detach().to(problem.dtype)
    if th0.shape != (problem.N,):
        raise ConfigError(f"theta must have shape ({problem.N},), got {tuple(th0.shape)}")
    c0 = time.process_time()
    X = problem.X.cpu().to(torch.float64).numpy()
    Y = problem.Y.cpu().to(torch.float64).numpy().reshape(-1)
    kappa = problem.kappa
    x = th0.cpu().numpy().astype(np.float64).copy()
    f, _, nd = relu_loss_grad(layout, x, X, Y, kappa)
    stages: list[dict] = []
    iters = 0
    for beta in betas:
        if nd == 0:
            break

        def fg(z: np.ndarray, beta=beta) -> tuple[float, np.ndarray]:
            fs, gs, _ = relu_loss_grad(layout, z, X, Y, kappa, beta=float(beta))
            if relu_loss_grad(layout, z, X, Y, kappa)[2] == 0:
                raise _ZeroLoss(z.copy())
            return fs, gs

        try:
            res = sp_minimize(fg, x, jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter, "maxcor": memory, "gtol": 0.0, "ftol": 0.0,
                                       "maxfun": 2 * max_iter, "maxls": 50})
            x, nit, fs = np.asarray(res.x, dtype=np.float64), int(res.nit), float(res.fun)
        except _ZeroLoss as stop:
            x, nit, fs = stop.x, -1, math.nan
        iters += max(nit, 0)
        f, _, nd = relu_loss_grad(layout, x, X, Y, kappa)
        stages.append({"beta": float(beta), "iterations": nit, "smoothed_loss": fs, "loss": f, "n_delta": nd})
    return HomotopyResult(theta=torch.from_numpy(x).to(problem.device, problem.dtype), loss=f, n_delta=nd,
                          iterations=iters, zero_loss=nd == 0, cpu_seconds=time.process_time() - c0, stages=stages)
