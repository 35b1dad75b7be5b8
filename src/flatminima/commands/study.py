"""``flatminima study list | run | report`` and ``flatminima report``: the papers' claims, one study each,
and their HTML reports."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from ..store import Store
from ._common import QuietOpt, StoreOpt, parse_options

app = typer.Typer(help="Reproduce the papers' claims: one study per claim.", no_args_is_help=True)


@app.command("list")
def study_list() -> None:
    """List the studies with the claim each one tests and its scales."""
    from ..studies import list_studies

    for st in list_studies():
        typer.echo(f"{st.name:28s} [{', '.join(st.scales)}]  {st.claim}")


@app.command("run")
def study_run(
    name: str = typer.Argument(..., help="Study name (see 'flatminima study list')."),
    scale: str = typer.Option("default", help="default (a 2-core laptop) or paper (the published scale)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value KEY=VALUE (repeatable)."),
    workers: int = typer.Option(1, help="Local worker processes for the grid points."),
    dask: str | None = typer.Option(None, help="Dask scheduler address (tcp://host:port) to run the points on."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Run a study (or finish an interrupted one: finished points are not recomputed), then render its report."""
    from ..report import render_study
    from ..studies import run_study

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    summary, folder = run_study(name, scale, parse_options(set_) or None, store=Store(store), workers=workers,
                                dask=dask, progress=not quiet)
    for tname, table in summary.tables.items():
        typer.echo(f"\n{tname}\n{table}")
    typer.echo(f"\nverdict: {summary.verdict}")
    typer.echo(f"report: {render_study(folder)}")


@app.command("report")
def study_report(name: str = typer.Argument(..., help="Study name."),
                 scale: str = typer.Option("default", help="Which scale's results."),
                 store: Path | None = StoreOpt) -> None:
    """Render the HTML report of a study that has run."""
    from ..report import render_study
    from ..studies import get
    from ..studies.registry import study_folder

    get(name)
    typer.echo(f"report: {render_study(study_folder(Store(store), name, scale))}")


def report(store: Path | None = StoreOpt,
           out: Path | None = typer.Option(None, help="Output folder (default: <store>/report).")) -> None:
    """Render one self-contained HTML page per study that has run, and an index."""
    from ..report import render_all

    typer.echo(f"report: {render_all(Store(store), out)}")
