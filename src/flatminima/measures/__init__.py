"""Lenses on one minimum: how flat is it?

* :func:`flatness` (:mod:`~flatminima.measures.summary`): one call for a report of any model and data
  (a DataLoader, a list of batches, tensors): top eigenvalues with error bounds, trace with its standard
  error, spectral density, local energy; :func:`flatness_of` on a :class:`~flatminima.Landscape`.
* :mod:`~flatminima.measures.hessian`: top/bottom eigenvalues (restarted Lanczos), trace (Hutchinson,
  Hutch++), spectral density (stochastic Lanczos quadrature) and the dense Hessian, of the whole Hessian
  or of a diagonal block of parameter tensors (the numerics: :mod:`flatminima.linalg`).
* :mod:`~flatminima.measures.local_energy`: delta E(sigma) under random multiplicative / additive /
  per-filter perturbations, in batched passes.
* :mod:`~flatminima.measures.local_entropy`: local free entropy of a continuous network by SGLD on the
  tilted measure and thermodynamic integration over the coupling gamma.
* :mod:`~flatminima.measures.slices`: 1-D / 2-D loss and error surfaces, linear paths between minima.
"""

from . import hessian, local_energy, local_entropy, slices, summary
from .summary import FlatnessReport, flatness, flatness_of

__all__ = ["hessian", "local_energy", "local_entropy", "slices", "summary", "flatness", "flatness_of",
           "FlatnessReport"]
