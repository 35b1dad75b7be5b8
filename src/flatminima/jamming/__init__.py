"""Jamming of fully-connected networks (Geiger, Spigler et al. 2019).

- :mod:`.problem`: the hinge problem (stabilities Delta = kappa - y f, L = sum max(0, Delta)^2 / 2P, the
  multi-class variant, N_Delta, train errors, N_eff), data (random, Fashion-MNIST PCA) and networks of a
  given parameter count.
- :mod:`.minimize`: certified full-batch minimisation: a first-order stage, a second-order polish to
  round-off, a certificate; and the published Adam protocol.
- :mod:`.newton`: the second-order polish (trust-region Newton with the hinge in the model, kink-aware
  steps for ReLU networks, negative-curvature escapes).
- :mod:`.certify`: certificates of a point: zero loss, local minimum (relative gradient at round-off,
  lambda_min >= -eps lambda_max, ReLU activation pattern fixed nearby), minimum on ReLU kinks, saddle.
- :mod:`.kinks`: ReLU kinks of an MLP (pre-activations at zero, their normals, the gradient jumps).
- :mod:`.transition`: runs and their outcomes, bisection for N* on certified outcomes, sweeps.
- :mod:`.stats`: log-binned stability histograms and maximum-likelihood power-law exponents theta, gamma.
- :mod:`.spectrum`: dense Hessian at jamming, H = H0 + Hp, and the omega = sqrt(lambda) density.
"""

from .certify import CERTIFIED_MINIMA, Certificate, certify
from .minimize import CERTIFICATES, METHODS, MinimizeResult, adam_protocol, minimize
from .newton import hinge_newton
from .problem import (
    HingeProblem,
    fashion_pca_data,
    hinge_loss,
    n_params,
    network,
    random_data,
    stabilities_from_outputs,
)
from .spectrum import hessian_split, omega_density, spectrum_at
from .stats import PowerLawFit, delta_histograms, jamming_exponents, log_bins, powerlaw_fit, split_sides
from .transition import (
    OUTCOMES,
    RunConfig,
    Threshold,
    classify,
    find_threshold,
    jamming_run,
    locate_nstar,
    make_problem,
)

__all__ = [
    "HingeProblem", "hinge_loss", "stabilities_from_outputs", "random_data", "fashion_pca_data", "network",
    "n_params", "minimize", "adam_protocol", "MinimizeResult", "METHODS", "CERTIFICATES", "certify",
    "Certificate", "CERTIFIED_MINIMA", "hinge_newton", "RunConfig", "jamming_run", "make_problem", "classify",
    "OUTCOMES", "find_threshold", "Threshold", "locate_nstar", "log_bins", "split_sides", "delta_histograms",
    "powerlaw_fit", "PowerLawFit", "jamming_exponents", "hessian_split", "spectrum_at", "omega_density",
]
