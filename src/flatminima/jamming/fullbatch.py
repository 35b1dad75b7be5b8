"""The published first-order dynamics of the jamming papers: full-batch Adam in float64 with a step-decaying rate.

Geiger et al. (2019) minimise the quadratic hinge loss with full-batch Adam (PyTorch's defaults: betas
(0.9, 0.999), eps 1e-8), lr 1e-4 divided by 10 every 250k of 2M steps, in float64 (optimizer ``adam0`` of
their code). :func:`adam_fullbatch` runs that dynamics for a *fixed* number of steps (no stall rule: the
outcome near N* must not depend on when a rule hands over), ending early only at exact zero loss
(N_Delta = 0 at the true margin, as the authors' runs do).

For a ReLU MLP (a chain of Linear layers with ReLUs, :func:`flatminima.jamming.kinks.relu_chain`) the loss
and its gradient are computed by a hand-written forward and backward pass (:func:`relu_loss_grad`) on plain
arrays, numpy on the CPU (small matrices: a few microseconds per operation instead of the tens of an
autograd graph) and torch on other devices; both are tested against autograd. Other networks use the
problem's own autograd pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .kinks import relu_chain
from .problem import HingeProblem

__all__ = ["ReluLayout", "relu_layout", "relu_loss_grad", "AdamSchedule", "adam_fullbatch", "FullBatchResult"]


@dataclass(frozen=True)
class ReluLayout:
    """Where the weights (out, in) and biases (out,) of each Linear layer of a ReLU MLP sit in the flat theta (N,).

    ``layers``: one ``(w_offset, out, in, b_offset or None)`` per Linear layer, input to output.
    """

    layers: tuple[tuple[int, int, int, int | None], ...]
    n: int

    def views(self, theta):
        """[(W (out, in), b (out,) or None), ...] views into ``theta`` (numpy array or tensor, (N,))."""
        out = []
        for w0, o, i, b0 in self.layers:
            W = theta[w0 : w0 + o * i].reshape(o, i)
            out.append((W, None if b0 is None else theta[b0 : b0 + o]))
        return out


def relu_layout(problem: HingeProblem) -> ReluLayout | None:
    """The :class:`ReluLayout` of the problem's network, or None when it is not a ReLU MLP with one output."""
    chain = relu_chain(problem)
    if chain is None or problem.d_out != 1:
        return None
    land = problem.landscape
    index = land.unflatten(torch.arange(land.n_params, dtype=torch.float64))
    layers = []
    for step in chain[::2]:
        w = index[step.weight]
        b0 = None if step.bias is None else int(index[step.bias].reshape(-1)[0])
        w_first = int(w.reshape(-1)[0])
        if not bool((w.reshape(-1) == torch.arange(w_first, w_first + w.numel(), dtype=w.dtype)).all()):
            return None  # not a contiguous row-major block
        layers.append((w_first, int(w.shape[0]), int(w.shape[1]), b0))
    return ReluLayout(tuple(layers), land.n_params)


def relu_loss_grad(layout: ReluLayout, theta, X, Y, kappa: float, grad_out=None, beta: float | None = None):
    """Hinge loss L = (1/2P) sum max(0, kappa - y f)^2 of a ReLU MLP and its gradient, by hand.

    ``theta`` (N,), ``X`` (P, d), ``Y`` (P,) +-1: numpy arrays or torch tensors (all of one kind).
    ``grad_out`` (N,), optional: filled with the gradient (allocated when None). Returns
    ``(L as a float, grad (N,), N_Delta)``; ReLU'(0) = 0, as PyTorch. With ``beta`` > 0 every ReLU is
    replaced by the softplus log(1 + exp(beta z)) / beta (derivative sigmoid(beta z)), which tends to the ReLU
    as beta grows (:func:`flatminima.jamming.bfgs.softplus_homotopy`); N_Delta is then that of the smoothed
    network.
    """
    P = X.shape[0]
    layers = layout.views(theta)
    acts, masks = [X], []
    a = X
    numpy = isinstance(X, np.ndarray)
    for k, (W, b) in enumerate(layers):
        z = a @ W.T
        if b is not None:
            z += b
        if k < len(layers) - 1:
            if beta is None:
                m = z > 0
                a = z * m
            elif numpy:
                m = 0.5 * (1.0 + np.tanh(0.5 * beta * z))
                a = np.logaddexp(0.0, beta * z) / beta
            else:
                m = torch.sigmoid(beta * z)
                a = torch.nn.functional.softplus(z, beta=beta, threshold=20.0)
            masks.append(m)
            acts.append(a)
    r = kappa - Y * z[:, 0]
    r = r * (r > 0)
    n_delta = int((r > 0).sum())
    loss = 0.5 * float((r * r).sum()) / P
    g = (grad_out if grad_out is not None else theta * 0.0)
    gz = (-(Y * r) / P)[:, None]
    for k in range(len(layers) - 1, -1, -1):
        W, b = layers[k]
        w0, o, i, b0 = layout.layers[k]
        g[w0 : w0 + o * i] = (gz.T @ acts[k]).reshape(-1)
        if b0 is not None:
            g[b0 : b0 + o] = gz.sum(0)
        if k > 0:
            gz = (gz @ W) * masks[k - 1]
    return loss, g, n_delta


@dataclass(frozen=True)
class AdamSchedule:
    """Full-batch Adam with a step-decaying rate: lr(t) = max(lr decay^(t // decay_every), lr_min).

    The published protocol (``adam0``): lr 1e-4, decay 0.1 every 250 000 of 2 000 000 steps, betas
    (0.9, 0.999), eps 1e-8 (PyTorch's Adam).
    """

    steps: int = 2_000_000
    lr: float = 1e-4
    decay_every: int = 250_000
    decay: float = 0.1
    lr_min: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        b1, b2 = self.betas
        if (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0
                or not (math.isfinite(self.lr) and self.lr > 0) or not 0 < self.decay <= 1
                or not isinstance(self.decay_every, int) or self.decay_every < 1 or self.lr_min < 0
                or not (0 <= b1 < 1 and 0 <= b2 < 1) or not self.eps > 0):
            raise ConfigError(f"bad Adam schedule: need steps >= 0, lr > 0, 0 < decay <= 1, decay_every >= 1, "
                              f"lr_min >= 0, betas in [0, 1), eps > 0; got {self}")

    def rate(self, t: int) -> float:
        """The learning rate of step t (0-based)."""
        return max(self.lr * self.decay ** (t // self.decay_every), self.lr_min)


@dataclass
class FullBatchResult:
    """End of :func:`adam_fullbatch`: ``theta`` (N,) as a tensor of the problem's dtype and device, the loss and
    N_Delta there (true margin), the ``steps`` taken, ``zero_loss`` (ended at N_Delta = 0), CPU and wall
    ``seconds`` and a thinned ``history`` (step, loss, N_Delta)."""

    theta: Tensor
    loss: float
    n_delta: int
    steps: int
    zero_loss: bool
    cpu_seconds: float
    seconds: float
    history: dict[str, list] = field(default_factory=dict)


def adam_fullbatch(
    problem: HingeProblem,
    schedule: AdamSchedule,
    theta0: Tensor | None = None,
    record_every: int = 1000,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> FullBatchResult:
    """Run ``schedule.steps`` steps of full-batch Adam on the hinge loss of ``problem`` (float64 recommended).

    Stops early only when N_Delta = 0 at the true margin (checked at every step, from the same pass as the
    gradient): the loss is then exactly zero. The Adam update is PyTorch's (bias-corrected moments,
    ``lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``). ``theta0`` (N,) defaults to the model's
    parameters. ``callback`` gets ``{"step", "loss", "n_delta", "lr"}`` every ``record_every`` steps.
    """
    if record_every < 1:
        raise ConfigError(f"record_every must be >= 1, got {record_every}")
    th0 = (problem.landscape.theta if theta0 is None else torch.as_tensor(theta0)).detach()
    th0 = th0.to(problem.device, problem.dtype)
    if th0.shape != (problem.N,):
        raise ConfigError(f"theta0 must have shape ({problem.N},), got {tuple(th0.shape)}")
    layout = relu_layout(problem)
    kappa = problem.kappa
    numpy_path = layout is not None and problem.device.type == "cpu"
    if numpy_path:
        theta = th0.cpu().numpy().copy()
        X = problem.X.cpu().numpy()
        Y = problem.Y.cpu().numpy().reshape(-1)
        sqrt = np.sqrt
    else:
        theta = th0.clone()
        X, Y = problem.X, problem.Y.reshape(-1)
        sqrt = torch.sqrt

    grad = theta * 0.0

    def loss_grad(th):
        if layout is not None:
            return relu_loss_grad(layout, th, X, Y, kappa, grad)
        f, g = problem.loss_and_grad(th, kappa)
        grad[:] = g
        return float(f), grad, problem.n_delta(th, kappa)

    m, v = theta * 0.0, theta * 0.0
    b1, b2 = schedule.betas
    hist: dict[str, list] = {"step": [], "loss": [], "n_delta": []}
    t0, c0 = time.perf_counter(), time.process_time()
    step, zero = 0, False
    loss, nd = math.nan, -1
    while True:
        loss, g, nd = loss_grad(theta)
        if step % record_every == 0 or nd == 0 or step == schedule.steps:
            hist["step"].append(step), hist["loss"].append(loss), hist["n_delta"].append(nd)
            if callback is not None:
                callback({"step": step, "loss": loss, "n_delta": nd, "lr": schedule.rate(step)})
        if nd == 0:
            zero = True
            break
        if step >= schedule.steps or not math.isfinite(loss):
            break
        t = step + 1
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        lr = schedule.rate(step)
        theta -= (lr / (1 - b1**t)) * m / (sqrt(v / (1 - b2**t)) + schedule.eps)
        step = t
    out = torch.as_tensor(theta).to(problem.device, problem.dtype) if numpy_path else theta
    return FullBatchResult(theta=out, loss=loss, n_delta=nd, steps=step, zero_loss=zero,
                           cpu_seconds=time.process_time() - c0, seconds=time.perf_counter() - t0, history=hist)
