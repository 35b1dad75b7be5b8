"""Shallow networks on random patterns: solution-space entropy, local entropy, entropic solvers.

Models (:mod:`.models`): binary perceptron and binary committee machines (tree or fully connected,
K odd hidden units) on random or teacher-generated patterns; continuous perceptron (for SGD).

Belief propagation (:mod:`.bp`): :func:`entropy` — log of the number of +-1 weight vectors that
classify every pattern; :func:`local_entropy` — Franz-Parisi local entropy S(d) around a reference
solution, by an external field gamma w~ and the Legendre transform S(d) = phi(gamma) - gamma q.
Exact oracle (:mod:`.exact`): enumeration of all 2^N vectors (N <= 30).

Solvers: :func:`fbp` (focusing BP, reinforcement protocol), :func:`replicated_sgd`, :func:`anneal`
(simulated annealing on the error count, on a cross-entropy, or on the local energy: the entropy-driven
Monte Carlo), :func:`sgd_cross_entropy` (continuous weights, free or scheduled norm). Flatness:
:func:`local_energy_binary`, :func:`local_energy_continuous`.
"""

from .bp import BPResult, LocalEntropyCurve, entropy, legendre, local_entropy, log_H, run_bp
from .exact import Enumeration, enumerate_solutions
from .fbp import SolverResult, fbp
from .models import (
    Patterns,
    binary_entropy,
    hidden_fields,
    n_errors,
    outputs,
    patterns,
    random_instance,
    teacher_instance,
)
from .solvers import (
    SOLVERS,
    anneal,
    local_energy_binary,
    local_energy_continuous,
    replicated_sgd,
    sgd_cross_entropy,
    solve,
)

__all__ = [
    "BPResult",
    "Enumeration",
    "LocalEntropyCurve",
    "Patterns",
    "SolverResult",
    "anneal",
    "binary_entropy",
    "entropy",
    "enumerate_solutions",
    "fbp",
    "hidden_fields",
    "legendre",
    "local_energy_binary",
    "local_energy_continuous",
    "local_entropy",
    "log_H",
    "n_errors",
    "outputs",
    "patterns",
    "random_instance",
    "replicated_sgd",
    "run_bp",
    "solve",
    "SOLVERS",
    "sgd_cross_entropy",
    "teacher_instance",
]
