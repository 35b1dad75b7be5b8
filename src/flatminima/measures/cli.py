"""``flatminima measure RUN --hessian --local-energy --local-entropy --slices`` (no logic here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

def measure(
    run: str = typer.Argument(..., help="Run id in the store."),
    hessian: bool = typer.Option(False, "--hessian", help="Top/bottom eigenvalues, trace, spectral density."),
    local_energy: bool = typer.Option(False, "--local-energy", help="delta train error under weight noise."),
    local_entropy: bool = typer.Option(False, "--local-entropy", help="Local free entropy by SGLD (slow)."),
    slices: bool = typer.Option(False, "--slices", help="1-D and 2-D loss surfaces (filter-normalised)."),
    examples: int = typer.Option(2000, help="Training examples the landscape uses (the first ones)."),
    k: int = typer.Option(5, help="Number of top Hessian eigenvalues."),
    samples: int = typer.Option(100, help="Noise draws per sigma for the local energy."),
    beta: float = typer.Option(1000.0, help="Inverse temperature of the local entropy."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    device: Optional[str] = typer.Option(None, help="Device (default: where the model is)."),
    dtype: Optional[str] = typer.Option(None, help="float32 or float64 (default: the model's)."),
    store: Optional[Path] = typer.Option(None, help="Run store root (default: $FLATMINIMA_HOME or ./flatminima-runs)."),
) -> None:
    """Measure how flat the minimum of run RUN is; results go to the store, figures to the run folder."""
    from ..store import Store
    from .runs import measure_run

    res = measure_run(run, hessian_=hessian, local_energy_=local_energy, local_entropy_=local_entropy,
                      slices_=slices, store=Store(store) if store else None, examples=examples, k=k,
                      samples=samples, beta=beta, seed=seed, device=device, dtype=dtype)
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


#: The command as a one-command typer app (the main CLI registers :func:`measure` as ``flatminima measure``).
app = typer.Typer(help="Flatness and curvature measures of a trained run.", no_args_is_help=True)
app.command()(measure)
