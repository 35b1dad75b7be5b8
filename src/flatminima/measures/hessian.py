"""Hessian of a :class:`~flatminima.Landscape`: eigenvalues, trace, spectral density, dense matrix.

The numerics are those of :mod:`flatminima.linalg` applied to the landscape's exact Hessian-vector
products at a fixed point (:meth:`Landscape.hvp_operator`: the gradient graph is built once at theta and
each product is one backward pass through it). This module adds what is specific to a landscape: the
point theta (default ``landscape.theta``), diagonal blocks of named parameter tensors (``block=``) and
the gradient as a Lanczos start vector.

* :func:`top_eigenvalues` / :func:`bottom_eigenvalues`: thick-restarted Lanczos (:func:`linalg.eigsh`).
* :func:`trace`: Hutchinson or Hutch++, with a standard error.
* :func:`density`: stochastic Lanczos quadrature.
* :func:`dense`: the (M, M) matrix for small M.

For a :class:`scipy.sparse.linalg.LinearOperator` view: ``linalg.scipy_operator(operator(landscape))``.

Example
-------
>>> import torch, flatminima
>>> from flatminima.measures import hessian
>>> X, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
>>> land = flatminima.Landscape(model, (X, y))
>>> eig = hessian.top_eigenvalues(land, k=3)
>>> eig.values.shape
torch.Size([3])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import linalg
from ..errors import ConfigError
from ..landscape import HessianOperator
from ..linalg import Eigen, SpectralDensity, TraceEstimate

__all__ = ["Eigen", "TraceEstimate", "SpectralDensity", "block_indices", "operator", "start_vector", "top_eigenvalues",
           "bottom_eigenvalues", "trace", "density", "dense"]


def block_indices(landscape, block: Any) -> Tensor | None:
    """Indices (M,) into theta of a block of parameters, or None for the whole vector.

    ``block``: None (everything), a parameter name (``"0.weight"``), a list of names, a name prefix
    ending with ``"."`` (all tensors of one submodule, e.g. ``"layers.1."``), a ``slice``, or an
    integer index tensor / sequence.
    """
    if block is None:
        return None
    if isinstance(block, slice):
        idx = torch.arange(landscape.n_params)[block]
    elif isinstance(block, (str, list, tuple)) and (isinstance(block, str) or all(isinstance(b, str) for b in block)):
        names = [block] if isinstance(block, str) else list(block)
        offsets = np.concatenate([[0], np.cumsum(landscape.numels)])
        parts = []
        for name in names:
            hit = [i for i, n in enumerate(landscape.names) if n == name or (name.endswith(".") and n.startswith(name))]
            if not hit:
                raise ConfigError(f"no parameter named {name!r}; parameters are {landscape.names}")
            parts += [torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in hit]
        idx = torch.cat(parts)
    else:
        idx = torch.as_tensor(block).reshape(-1).long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= landscape.n_params):
            raise ConfigError(f"block indices must lie in [0, {landscape.n_params})")
    if idx.numel() == 0:
        raise ConfigError("the block is empty")
    return idx.to(landscape.device)


def operator(landscape, theta: Tensor | None = None, block: Any = None) -> HessianOperator:
    """H(theta) (default ``landscape.theta``), or its diagonal block H[idx, idx] (see :func:`block_indices`),
    as a :class:`~flatminima.landscape.HessianOperator` of dimension M (N or the block size)."""
    op = landscape.hvp_operator(landscape.theta if theta is None else theta)
    idx = block_indices(landscape, block)
    return op if idx is None else op.restrict(idx)


def start_vector(op: HessianOperator, start: Any, seed: int) -> Tensor | None:
    """Lanczos start vector for the top of the spectrum: ``"gradient"``/``"auto"`` give g/|g| + r/|r| (r a
    seeded Gaussian vector), ``"random"`` None (eigsh draws its own), a tensor is used as it is.

    Near a trained minimum the gradient lies mostly in the top Hessian eigenspace (Gur-Ari, Roberts & Dyer,
    "Gradient descent happens in a tiny subspace", 2018), so a start along it has a large component on the
    top eigenvectors and Lanczos needs fewer products; the random half keeps a generic component on every
    eigenvector, so no eigenvalue is missed when the gradient happens to be orthogonal to it (the risk is
    that of a plain random start). The gradient is the one the operator's set-up computed (no extra
    cost); where it is not available (chunks recomputed beyond the memory budget) or zero, ``"auto"``
    falls back to a random start.
    """
    if isinstance(start, Tensor):
        return start
    if start not in ("auto", "gradient", "random"):
        raise ConfigError(f"start must be 'auto', 'gradient', 'random' or a tensor, got {start!r}")
    if start == "random":
        return None
    g = op.gradient
    if g is None or not bool(torch.isfinite(g).all()) or float(g.norm()) == 0.0:
        if start == "gradient":
            raise ConfigError("start='gradient' needs the gradient, which the HVP set-up did not compute "
                              "(some data chunks beyond its memory budget); use start='auto'")
        return None
    r = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(int(seed)), dtype=op.dtype).to(op.device)
    return g / g.norm() + r / r.norm()


def top_eigenvalues(landscape, theta: Tensor | None = None, k: int = 1, tol: float = 1e-8,
                    max_matvecs: int = 2000, block: Any = None, ncv: int | None = None, seed: int = 0,
                    return_vectors: bool = True, criterion: str = "eigenvalue", start: Any = "auto") -> Eigen:
    """The k largest Hessian eigenvalues (and eigenvectors) at theta (default ``landscape.theta``).

    Thick-restarted Lanczos on exact HVPs, full reorthogonalisation; see :func:`linalg.eigsh` for ``tol``
    (by default the relative accuracy of the eigenvalues; ``criterion="residual"`` for accurate vectors),
    ``ncv`` and ``max_matvecs``. ``block``: restrict to a diagonal block (see :func:`block_indices`).
    ``start``: the Lanczos start vector: ``"auto"`` (default) the normalised gradient plus a normalised
    random vector where the HVP set-up computed the gradient anyway (see :func:`start_vector`: fewer
    products near a trained minimum), ``"random"`` a random vector (``seed``), ``"gradient"`` as auto but
    an error without a gradient, or a tensor (M,). Returns :class:`~flatminima.linalg.Eigen`, values
    descending.
    """
    op = operator(landscape, theta, block)
    return linalg.eigsh(op, k=k, which="LA", tol=tol, max_matvecs=max_matvecs, ncv=ncv, seed=seed,
                        v0=start_vector(op, start, seed), return_vectors=return_vectors, criterion=criterion)


def bottom_eigenvalues(landscape, theta: Tensor | None = None, k: int = 1, tol: float = 1e-8,
                       max_matvecs: int = 4000, block: Any = None, ncv: int | None = None, seed: int = 0,
                       return_vectors: bool = True, criterion: str = "eigenvalue") -> Eigen:
    """The k smallest (most negative) Hessian eigenvalues: saddles and negative modes. Values ascending.

    The bottom of a Hessian spectrum is usually crowded near zero, so convergence takes more products
    than the top; raise ``ncv`` for clustered spectra. Arguments as in :func:`top_eigenvalues`.
    """
    return linalg.eigsh(operator(landscape, theta, block), k=k, which="SA", tol=tol, max_matvecs=max_matvecs,
                        ncv=ncv, seed=seed, return_vectors=return_vectors, criterion=criterion)


def trace(landscape, theta: Tensor | None = None, matvecs: int = 99, method: str = "hutch++",
          block: Any = None, seed: int = 0, batch: int = 32) -> TraceEstimate:
    """tr H (or of a diagonal block) from ``matvecs`` Hessian-vector products, with a standard error:
    ``method="hutchinson"`` or ``"hutch++"`` (see :func:`linalg.trace`); ``batch`` products per pass."""
    return linalg.trace(operator(landscape, theta, block), matvecs=matvecs, method=method, seed=seed, batch=batch)


def density(landscape, theta: Tensor | None = None, n_probes: int = 4, steps: int = 80, block: Any = None,
            seed: int = 0) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (see :func:`linalg.density`): ``n_probes``
    Rademacher probes, ``steps`` Lanczos steps each; n_probes * steps HVPs in ``steps`` batched passes."""
    return linalg.density(operator(landscape, theta, block), n_probes=n_probes, steps=steps, seed=seed)


def dense(landscape, theta: Tensor | None = None, block: Any = None, batch: int = 256) -> Tensor:
    """The dense Hessian (M, M) (M = N, or the block size), from M HVPs in vmapped batches; symmetrised."""
    return linalg.to_dense(operator(landscape, theta, block), batch=batch)
