"""Optimizers that seek wide flat minima, as :class:`torch.optim.Optimizer` subclasses.

* :class:`EntropySGD` — Entropy-SGD (Chaudhari et al., ICLR 2017): SGLD inner loop, local-entropy outer step.
* :class:`ReplicatedSGD` — Replicated-SGD (Baldassi et al. 2016; Pittorino et al. 2021): y replicas
  coupled to the model (the center), in one vmapped pass or over :mod:`torch.distributed`.
* :class:`SAM` — Sharpness-Aware Minimization (Foret et al. 2021), the modern baseline.
* :mod:`flatminima.optim.schedules` — coupling (scoping) schedules shared by the entropic optimizers.
* :mod:`flatminima.optim.registry` — the optimizers by CLI name, with validated options.

All follow the torch ``step(closure)`` convention; with :func:`flatminima.train.fit` the closure draws
a fresh minibatch at each call and counts gradient evaluations.
"""

from . import schedules
from .entropy_sgd import EntropySGD
from .registry import OPTIMIZERS, build_optimizer, grad_evals_per_step
from .replicated import ReplicatedSGD
from .sam import SAM

__all__ = ["EntropySGD", "ReplicatedSGD", "SAM", "schedules", "OPTIMIZERS", "build_optimizer", "grad_evals_per_step"]
