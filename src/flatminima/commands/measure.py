"""``flatminima measure RUN``: flatness measures of a stored training run.

:func:`measure_run` loads the run (:func:`.train.load_run`), builds a :class:`~flatminima.Landscape` on (a
prefix of) its training set, runs the requested measures of :mod:`flatminima.measures`, stores each as a
result of the run (keys ``hessian``, ``local_energy``, ``local_entropy``, ``slices``) and writes figures into
the run folder (``measure_*.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from ..errors import ConfigError
from ..store import Run, Store
from ._common import StoreOpt, announce, check_choice, check_device, check_float, check_int

__all__ = ["MEASURES", "measure", "measure_run"]

MEASURES = ("hessian", "local_energy", "local_entropy", "slices")


def _plot_density(dens, path: Path) -> None:
    """The SLQ spectral density of the Hessian, in lambda and in omega = sqrt(lambda)."""
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


def _plot_local_energy(le, path: Path) -> None:
    """delta E(sigma) with its standard errors."""
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


def measure_run(store: Store, run_id: str, measures: Sequence[str] = ("hessian", "local_energy"), *,
                examples: int | None = 2000, k: int = 5, sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
                samples: int = 100, beta: float = 1000.0, seed: int = 0, device: str | None = None,
                dtype: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``measures`` (names of :data:`MEASURES`) on stored run ``run_id``; returns {measure: JSON-able result}.

    ``examples``: the landscape uses the first ``examples`` training examples (None: all).
    ``dtype``: "float32" / "float64" (default: the model's). Results go to the store, figures to the run folder.
    """
    from tqdm.auto import tqdm

    from ..landscape import Landscape
    from ..measures import hessian, local_energy, local_entropy, slices
    from .train import load_run

    if not measures or not set(measures) <= set(MEASURES):
        raise ConfigError(f"choose at least one measure of {', '.join(MEASURES)} (--hessian, --local-energy, "
                          f"--local-entropy, --slices); got {list(measures)}")
    if examples is not None:
        check_int("examples", examples, 1)
    check_int("k", k, 1)
    check_int("samples", samples, 1)
    check_int("seed", seed, 0, 2**63 - 1)
    check_float("beta", beta, 0, low_open=True)
    if not sigmas:
        raise ConfigError("sigmas is empty")
    for s in sigmas:
        check_float("every sigma", s, 0, low_open=True)
    if dtype is not None:
        check_choice("dtype", dtype, ("float32", "float64"))
    check_device(device)
    run = store.get(run_id)
    model, ds, _ = load_run(store, run.id)
    X, y = ds.X_train[:examples], ds.y_train[:examples]
    land = Landscape(model, (X, y), dtype=getattr(torch, dtype) if dtype else None, device=device)
    theta = land.theta
    folder = Path(run.folder)
    out: dict[str, Any] = {}
    for name in tqdm([m for m in MEASURES if m in measures], desc=f"measure {run.id}", disable=not progress,
                     unit="measure"):
        if name == "hessian":
            top = hessian.top_eigenvalues(land, theta, k=min(k, land.n_params), tol=1e-4, return_vectors=False)
            bottom = hessian.bottom_eigenvalues(land, theta, k=1, tol=1e-3, max_matvecs=3000, return_vectors=False)
            tr = hessian.trace(land, theta, matvecs=99, method="hutch++", seed=seed)
            dens = hessian.density(land, theta, n_probes=4, steps=min(80, land.n_params), seed=seed)
            _plot_density(dens, folder / "measure_spectrum.png")
            res = {"top": top.to_dict(), "bottom": bottom.to_dict(), "trace": tr.to_dict(),
                   "density_moments": {str(p): v for p, v in dens.moments().items()}, "n_params": land.n_params,
                   "examples": land.n_examples, "figure": "measure_spectrum.png"}
        elif name == "local_energy":
            le = local_energy.local_energy(land, theta, sigmas=sigmas, n_samples=samples, seed=seed, progress=progress)
            _plot_local_energy(le, folder / "measure_local_energy.png")
            res = {**le.to_dict(), "figure": "measure_local_energy.png"}
        elif name == "local_entropy":
            res = local_entropy.local_entropy(land, theta, beta=beta, seed=seed, progress=progress).to_dict()
        else:
            d1 = slices.random_direction(land, theta, seed=seed)
            d2 = slices.random_direction(land, theta, seed=seed + 1)
            s1 = slices.slice_1d(land, theta, d1, np.linspace(-1, 1, 41))
            s2 = slices.slice_2d(land, theta, d1, d2, np.linspace(-1, 1, 21))
            slices.plot_1d({"filter-normalised random direction": s1}, folder / "measure_slice_1d.png")
            slices.plot_2d(s2, folder / "measure_slice_2d.png")
            res = {"slice_1d": s1.to_dict(), "slice_2d": s2.to_dict(),
                   "figures": ["measure_slice_1d.png", "measure_slice_2d.png"]}
        store.put_result(run.id, name, res)
        out[name] = res
    return out


def measure_build(store_path: Path | None, spec: str, *, k: int = 5, sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
                  samples: int = 100, seed: int = 0, device: str | None = None, dtype: str | None = None,
                  ) -> tuple[Run, dict[str, Any]]:
    """The flatness report (:func:`flatminima.measures.flatness`) of a model defined outside flatminima:
    ``spec`` is ``package.module:function``, the function returns ``(model, loader, loss)``. The report is
    stored as result ``"flatness"`` of a new ``measure`` run in the store at ``store_path``, its figure as
    ``flatness.png`` in the run folder; the store is opened only once the report is computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..measures import flatness
    from .build import load_build

    check_int("k", k, 1)
    check_int("samples", samples, 1)
    check_int("seed", seed, 0, 2**63 - 1)
    for s in sigmas:
        check_float("every sigma", s, 0, low_open=True)
    if dtype is not None:
        check_choice("dtype", dtype, ("float32", "float64"))
    check_device(device)
    model, loader, loss = load_build(spec)
    report = flatness(model, loader, loss, k=k, sigmas=tuple(sigmas), n_samples=samples, seed=seed, device=device,
                      dtype=getattr(torch, dtype) if dtype else None)
    result = report.to_dict()
    store = Store(store_path)
    run = store.create_run("measure", {"build": spec, "k": k, "sigmas": list(sigmas), "samples": samples,
                                       "seed": seed, "device": device, "dtype": dtype}, name=spec)
    announce(run)
    with store.running(run.id):
        store.put_result(run.id, "flatness", result)
        fig = report.plot()
        fig.savefig(Path(run.folder) / "flatness.png", dpi=110)
        plt.close(fig)
    return run, result


def measure(
    run: str | None = typer.Argument(None, help="Run id in the store (or --build)."),
    build: str | None = typer.Option(None, "--build", metavar="PACKAGE.MODULE:FUNCTION",
                                     help="Measure a model defined outside flatminima: FUNCTION() returns "
                                          "(model, loader, loss); the flatness report goes to a new run."),
    hessian: bool = typer.Option(False, "--hessian/--no-hessian", help="Top/bottom eigenvalues, trace, spectral density."),
    local_energy: bool = typer.Option(False, "--local-energy/--no-local-energy",
                                      help="delta train error under weight noise."),
    local_entropy: bool = typer.Option(False, "--local-entropy/--no-local-entropy",
                                       help="Local free entropy by SGLD (slow)."),
    slices: bool = typer.Option(False, "--slices/--no-slices", help="1-D and 2-D loss surfaces (filter-normalised)."),
    examples: int = typer.Option(2000, help="Training examples the landscape uses (the first ones)."),
    k: int = typer.Option(5, help="Number of top Hessian eigenvalues."),
    samples: int = typer.Option(100, help="Noise draws per sigma for the local energy."),
    beta: float = typer.Option(1000.0, help="Inverse temperature of the local entropy."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    device: str | None = typer.Option(None, help="Device (default: where the model is)."),
    dtype: str | None = typer.Option(None, help="float32 or float64 (default: the model's)."),
    store: Path | None = StoreOpt,
) -> None:
    """Measure how flat the minimum of stored run RUN is (Hessian, local energy, local entropy, slices), or,
    with --build, the flatness report of a model defined outside flatminima.

    Results go to the store, figures to the run folder.
    """
    if (run is None) == (build is None):
        raise ConfigError("give either a stored RUN id or --build PACKAGE.MODULE:FUNCTION")
    if build is not None:
        sigmas = (0.05, 0.1, 0.2, 0.3, 0.5)
        new, rep = measure_build(store, build, k=k, sigmas=sigmas, samples=samples, seed=seed,
                                 device=device, dtype=dtype)
        top = rep["top"]
        typer.echo(f"top eigenvalues: {', '.join(f'{v:.5g}' for v in top['values'])}")
        typer.echo(f"trace: {rep['trace']['value']:.5g} +- {rep['trace']['stderr']:.2g}")
        le = rep["local_energy"]
        typer.echo("local energy: " + ", ".join(f"sigma={s:g}: {d:.4g}+-{e:.1g}"
                                                for s, d, e in zip(le["sigmas"], le["delta"], le["stderr"])))
        typer.echo(f"stored in run {new.id} ({new.folder})")
        return
    chosen = [m for m, on in zip(MEASURES, (hessian, local_energy, local_entropy, slices)) if on]
    res = measure_run(Store(store, create=False), run, chosen, examples=examples, k=k, samples=samples, beta=beta, seed=seed,
                      device=device, dtype=dtype)
    if "hessian" in res:
        h = res["hessian"]
        typer.echo(f"top eigenvalues: {', '.join(f'{v:.5g}' for v in h['top']['values'])}")
        typer.echo(f"bottom eigenvalue: {h['bottom']['values'][0]:.5g}")
        typer.echo(f"trace: {h['trace']['value']:.5g} +- {h['trace']['stderr']:.2g}")
    if "local_energy" in res:
        le = res["local_energy"]
        typer.echo("local energy: " + ", ".join(f"sigma={s:g}: {d:.4g}+-{e:.1g}"
                                                for s, d, e in zip(le["sigmas"], le["delta"], le["stderr"])))
    if "local_entropy" in res:
        le = res["local_entropy"]
        typer.echo("local entropy F/N: " + ", ".join(f"gamma={g:.3g}: {f:.4g}"
                                                      for g, f in zip(le["gammas"], le["per_param"])))
    if "slices" in res:
        typer.echo("slices: " + ", ".join(res["slices"]["figures"]))

