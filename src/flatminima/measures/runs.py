"""Measure a stored training run: the library side of ``flatminima measure RUN``.

:func:`measure_run` loads a run (``flatminima.train.load_run``), builds a :class:`~flatminima.Landscape`
on (a prefix of) its training set, runs the requested measures, stores each as a result of the run
(keys ``hessian``, ``local_energy``, ``local_entropy``, ``slices``) and writes figures into the run
folder (``measure_*.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import hessian, local_energy, local_entropy, slices

__all__ = ["measure_run"]


def _figure_spectrum(dens: hessian.SpectralDensity, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, var in zip(axes, ("lambda", "omega")):
        x, d = dens.evaluate(variable=var, counts=True)
        ax.semilogy(x, d + 1e-7 * dens.dim)
        ax.set_xlabel(var)
        ax.set_ylabel("density (counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_local_energy(le: local_energy.LocalEnergy, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(le.sigmas, le.delta, yerr=le.stderr, marker="o", capsize=3)
    ax.set_xlabel("sigma")
    ax.set_ylabel(f"delta {le.measure} ({le.kind})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure_run(run_id: str, hessian_: bool = True, local_energy_: bool = True, local_entropy_: bool = False,
                slices_: bool = False, store: Any = None, examples: int | None = 2000, k: int = 5,
                sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5), samples: int = 100, beta: float = 1000.0,
                seed: int = 0, device: str | None = None, dtype: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Run the requested measures on stored run ``run_id``; returns {measure: JSON-able result}.

    ``examples``: the landscape uses the first ``examples`` training examples (None: all).
    ``dtype``: "float32" / "float64" (default: the model's). Results go to the store, figures to the run folder.
    """
    from ..landscape import Landscape
    from ..store import Store
    from ..train import load_run

    if not any((hessian_, local_energy_, local_entropy_, slices_)):
        raise ConfigError("choose at least one measure: --hessian, --local-energy, --local-entropy, --slices")
    if examples is not None and examples < 1:
        raise ConfigError(f"examples must be positive, got {examples}")
    if dtype not in (None, "float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    store = store or Store()
    run = store.get(run_id)
    model, ds, _cfg = load_run(run_id, store)
    X, y = ds.X_train, ds.y_train
    if examples is not None:
        X, y = X[:examples], y[:examples]
    land = Landscape(model, (X, y), dtype=getattr(torch, dtype) if dtype else None, device=device)
    theta = land.theta
    folder = Path(run.folder)
    out: dict[str, Any] = {}
    steps = [n for n, on in (("hessian", hessian_), ("local_energy", local_energy_),
                             ("local_entropy", local_entropy_), ("slices", slices_)) if on]
    from tqdm.auto import tqdm

    for name in tqdm(steps, desc=f"measure {run_id}", disable=not progress, unit="measure"):
        if name == "hessian":
            top = hessian.top_eigenvalues(land, theta, k=min(k, land.n_params), tol=1e-4, return_vectors=False)
            bottom = hessian.bottom_eigenvalues(land, theta, k=1, tol=1e-3, max_matvecs=3000, return_vectors=False)
            tr = hessian.trace(land, theta, matvecs=99, method="hutch++", seed=seed)
            dens = hessian.density(land, theta, n_probes=4, steps=min(80, land.n_params), seed=seed)
            _figure_spectrum(dens, folder / "measure_spectrum.png")
            res = {"top": top.to_dict(), "bottom": bottom.to_dict(), "trace": tr.to_dict(),
                   "density_moments": {str(p): v for p, v in dens.moments().items()}, "n_params": land.n_params,
                   "examples": land.n_examples, "figure": "measure_spectrum.png"}
        elif name == "local_energy":
            le = local_energy.local_energy(land, theta, sigmas=sigmas, n_samples=samples, seed=seed, progress=progress)
            _figure_local_energy(le, folder / "measure_local_energy.png")
            res = {**le.to_dict(), "figure": "measure_local_energy.png"}
        elif name == "local_entropy":
            ent = local_entropy.local_entropy(land, theta, beta=beta, seed=seed, progress=progress)
            res = ent.to_dict()
        else:
            d1 = slices.random_direction(land, theta, seed=seed)
            d2 = slices.random_direction(land, theta, seed=seed + 1)
            s1 = slices.slice_1d(land, theta, d1, np.linspace(-1, 1, 41))
            s2 = slices.slice_2d(land, theta, d1, d2, np.linspace(-1, 1, 21))
            slices.plot_1d({"filter-normalised random direction": s1}, folder / "measure_slice_1d.png")
            slices.plot_2d(s2, folder / "measure_slice_2d.png")
            res = {"slice_1d": s1.to_dict(), "slice_2d": s2.to_dict(),
                   "figures": ["measure_slice_1d.png", "measure_slice_2d.png"]}
        store.put_result(run_id, name, res)
        out[name] = res
    return out
