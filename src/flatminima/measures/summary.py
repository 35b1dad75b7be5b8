"""One call for a flatness report of any model: curvature and local energy at its parameters.

:func:`flatness` takes a user's network, data (a DataLoader, a list of batches or a tensor pair) and loss
and returns a :class:`FlatnessReport`: the top-k Hessian eigenvalues with error bounds, the Hessian trace
with its standard error, the spectral density and the local-energy curve. :func:`flatness_of` does the
same on a :class:`~flatminima.Landscape` already built (for example one of a stored run).

How the pieces share their work
-------------------------------
* One Hessian operator (:meth:`Landscape.hvp_operator`: the gradient graphs built once at theta, each
  product one backward pass through them) serves the eigenvalues, the trace and the density.
* The top eigenvalues come from thick-restarted Lanczos (:func:`flatminima.linalg.eigsh`), started from
  the gradient plus a random vector, stopped when the estimated error of every one of them is below
  ``tol`` times its value; the reported ``errors`` are those estimates (``min(r, r^2 / gap)``).
* The trace deflates that Lanczos run's Krylov basis (its trace is exact and costs nothing more) and
  estimates the rest with Hutchinson probes, a batch at a time, until its standard error is below
  ``trace_rtol`` times the estimate (:func:`flatminima.linalg.trace` with ``deflate``).
* The density is stochastic Lanczos quadrature with all probes advanced together (one batched product
  per step).
* The local energy perturbs the weights (multiplicatively by default) and measures the rise of the
  loss or error, all perturbed copies in batched passes (:mod:`~flatminima.measures.local_energy`).

This module is a pure library: saving a report to the run store is the job of the command line
(``flatminima measure``), which stores ``report.to_dict()`` and the figure of ``report.plot()``.

Example
-------
>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from flatminima.measures import flatness
>>> X, y = torch.randn(256, 6), torch.randint(0, 3, (256,))
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> report = flatness(model, DataLoader(TensorDataset(X, y), batch_size=64), k=3, n_samples=8)
>>> report.top.values.shape
torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import linalg
from ..errors import ConfigError
from ..landscape import Landscape
from ..linalg import Eigen, SpectralDensity, TraceEstimate
from . import hessian
from .local_energy import LocalEnergy, local_energy

__all__ = ["FlatnessReport", "flatness", "flatness_of"]


@dataclass
class FlatnessReport:
    """How flat a minimum is: curvature and local energy at one parameter vector.

    Attributes
    ----------
    top : Eigen
        The k largest Hessian eigenvalues ``top.values`` (k,), descending, with ``top.errors`` (k,) their
        estimated errors and ``top.residuals`` (k,).
    trace : TraceEstimate
        tr H as ``trace.value`` +- ``trace.stderr``.
    density : SpectralDensity
        The Hessian's spectral density (stochastic Lanczos quadrature): ``density.evaluate()`` for a curve.
    local_energy : LocalEnergy
        delta E(sigma) with standard errors.
    n_params, n_examples : int
        N and P (all processes).
    hvps : int
        Hessian-vector products used by the eigenvalues, the trace and the density together.
    settings : dict
        The arguments that produced the report (tolerances, probes, seed, loss, dtype).
    """

    top: Eigen
    trace: TraceEstimate
    density: SpectralDensity
    local_energy: LocalEnergy
    n_params: int
    n_examples: int
    hvps: int
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values (the density as its quadrature nodes and weights)."""
        return {"top": self.top.to_dict(), "trace": self.trace.to_dict(), "density": self.density.to_dict(),
                "density_moments": {str(p): v for p, v in self.density.moments().items()},
                "local_energy": self.local_energy.to_dict(), "n_params": self.n_params,
                "n_examples": self.n_examples, "hvps": self.hvps, "settings": dict(self.settings)}

    def plot(self):
        """A matplotlib figure: the spectral density (counts, log scale) with the top eigenvalues marked,
        and the local energy delta E(sigma) with its standard errors; the trace in the title."""
        import matplotlib.pyplot as plt

        fig, (ax_d, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
        grid, dens = self.density.evaluate(counts=True)
        ax_d.semilogy(grid, dens + 1e-7 * self.density.dim, label="density (SLQ)")
        for i, v in enumerate(self.top.values.tolist()):
            ax_d.axvline(v, color="C3", lw=0.8, ls="--", label="top eigenvalues" if i == 0 else None)
        ax_d.set_xlabel("Hessian eigenvalue")
        ax_d.set_ylabel("eigenvalues per unit")
        ax_d.legend(fontsize=8)
        le = self.local_energy
        ax_e.errorbar(le.sigmas, le.delta, yerr=le.stderr, marker="o", capsize=3)
        ax_e.set_xlabel("sigma")
        ax_e.set_ylabel(f"delta {le.measure} ({le.kind})")
        fig.suptitle(f"N = {self.n_params}, P = {self.n_examples}: trace {self.trace.value:.4g} "
                     f"+- {self.trace.stderr:.2g}, top eigenvalue {float(self.top.values[0]):.4g}")
        fig.tight_layout()
        return fig


def flatness(model: nn.Module, data: Any, loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy", *,
             dtype: torch.dtype | None = None, device: str | torch.device | None = None, chunk: int | None = None,
             distributed: bool = False, **options: Any) -> FlatnessReport:
    """The flatness report of ``model`` at its parameters on ``data``.

    Parameters
    ----------
    model : nn.Module
        The trained network; it is copied and evaluated in eval mode (BatchNorm with its running
        statistics, no dropout; see :class:`~flatminima.Landscape`), never modified.
    data : DataLoader, list of (x, y) batches, tuple (X, y) or flatminima Dataset
        The examples the loss is averaged over (usually the training set), streamed one batch at a
        time; every pass must yield the same examples.
    loss : ``"cross_entropy"``, ``"mse"``, ``"hinge2"`` or ``fn(outputs (B, ...), targets) -> (B,)``
        per-example losses (the landscape is their mean).
    dtype, device, chunk, distributed
        As for :class:`~flatminima.Landscape` (``distributed=True``: each process passes its shard; see
        there how to launch it with ``torchrun``).
    **options
        Passed to :func:`flatness_of` (``k``, ``tol``, ``trace_rtol``, ``sigmas``, ...).
    """
    land = Landscape(model, data, loss=loss, dtype=dtype, device=device, chunk=chunk, distributed=distributed)
    return flatness_of(land, **options)


def flatness_of(landscape: Landscape, theta: Tensor | None = None, *, k: int = 5, tol: float = 1e-3,
                trace_rtol: float = 0.01, max_matvecs: int = 5000, trace_matvecs: int | None = None,
                density_probes: int = 4,
                density_steps: int = 80, sigmas: Sequence[float] = (0.05, 0.1, 0.2, 0.3), n_samples: int = 100,
                measure: str = "loss", kind: str = "multiplicative", seed: int = 0, batch: int = 32,
                memory: int | None = None) -> FlatnessReport:
    """The flatness report of ``landscape`` at ``theta`` (N,) (default ``landscape.theta``).

    Parameters
    ----------
    k, tol : the k largest eigenvalues, each to relative accuracy ``tol`` (estimated error
        <= tol |lambda|, see :func:`flatminima.linalg.eigsh`).
    trace_rtol : the trace's target relative standard error.
    max_matvecs : budget of Hessian-vector products for the eigenvalues and for the trace, each
        (:class:`~flatminima.errors.ConvergenceError` if the eigenvalues do not converge within it; the
        trace then stops with the standard error it reached).
    trace_matvecs : budget of products for the trace alone (default ``max_matvecs``): a report in bounded
        time. Near a saddle, where the trace is small next to the Hessian's Frobenius norm, reaching
        ``trace_rtol`` can take thousands of products; the report's ``trace.stderr`` says how close it came.
    density_probes, density_steps : stochastic Lanczos quadrature: probes and Lanczos steps per probe
        (density_probes * density_steps products).
    sigmas, n_samples, measure, kind : the local energy: perturbation strengths, draws (shared by all
        sigmas), ``"loss"`` or ``"error"``, ``"multiplicative"``, ``"additive"`` or ``"filter"``.
    seed : seeds the Lanczos start, the trace and density probes and the local-energy draws
        (identical on every process when distributed).
    batch : Hessian-vector products per batched pass (trace probes).
    memory : bytes of gradient graphs the Hessian operator keeps (see :meth:`Landscape.hvp_operator`).
    """
    if not 1 <= k <= landscape.n_params:
        raise ConfigError(f"k must be in [1, {landscape.n_params}], got {k}")
    if tol <= 0 or trace_rtol <= 0:
        raise ConfigError(f"tol and trace_rtol must be positive, got {tol} and {trace_rtol}")
    if trace_matvecs is not None and trace_matvecs < 2:
        raise ConfigError(f"trace_matvecs must be >= 2 (a standard error needs two probes), got {trace_matvecs}")
    if density_probes < 1 or density_steps < 1:
        raise ConfigError(f"density_probes and density_steps must be positive, got {density_probes}, {density_steps}")
    op = hessian.operator(landscape, theta)
    top = linalg.eigsh(op, k=k, which="LA", tol=tol, max_matvecs=max_matvecs, seed=seed,
                       v0=hessian.start_vector(op, "auto", seed))
    tr = linalg.trace(op, matvecs=trace_matvecs or max_matvecs, method="hutchinson", seed=seed, batch=batch, rtol=trace_rtol,
                      deflate=top)
    dens = linalg.density(op, n_probes=density_probes, steps=min(density_steps, landscape.n_params), seed=seed)
    le = local_energy(landscape, theta, sigmas=sigmas, n_samples=n_samples, kind=kind, measure=measure, seed=seed)
    top.vectors, top.krylov = None, None  # the report keeps numbers, not (k, N) / (m, N) bases
    settings = {"k": k, "tol": tol, "trace_rtol": trace_rtol, "trace_matvecs": trace_matvecs or max_matvecs,
                "density_probes": density_probes,
                "density_steps": density_steps, "seed": seed, "loss": landscape.loss_name,
                "dtype": str(landscape.dtype).replace("torch.", ""), "bn": "eval (running statistics)"}
    return FlatnessReport(top=top, trace=tr, density=dens, local_energy=le, n_params=landscape.n_params,
                          n_examples=landscape.n_examples, hvps=op.n_products, settings=settings)
