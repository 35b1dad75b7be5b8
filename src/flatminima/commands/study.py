"""``flatminima study list | run | report`` and ``flatminima report``: the papers' claims, one study each,
and their HTML reports."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer

from ..errors import ConfigError
from ..store import Store
from ._common import QuietOpt, StoreOpt, check_int, check_output_folder, make_app

app = make_app("Reproduce the papers' claims: one study per claim.")

# a Dask scheduler address: PROTOCOL://HOST[:PORT] or HOST:PORT
DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss|inproc)://[^\s/]+|[A-Za-z0-9._-]+:\d{1,5})")


def study_overrides(pairs: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs -> {key: text}; the study reads and checks each value (Study.config)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} must look like KEY=VALUE (e.g. --set seeds=2)")
        out[key] = text
    return out


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
    threads: int = typer.Option(1, help="Threads of each point (the same in every worker, so results do not "
                                        "depend on --workers)."),
    dask: str | None = typer.Option(None, help="Dask scheduler address (tcp://host:port) to run the points on."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Run a study (or finish an interrupted one: finished points are not recomputed), then render its report."""
    from ..report import render_study
    from ..studies import get, run_study

    check_int("--workers", workers, 1)
    check_int("--threads", threads, 1)
    if dask is not None and not DASK_ADDRESS.fullmatch(dask):
        raise ConfigError(f"--dask {dask!r} is not a scheduler address; write e.g. tcp://host:8786")
    overrides = study_overrides(set_)
    study = get(name)
    study.config(scale, overrides)  # every value read and checked before anything runs
    if study.criterion is not None:
        typer.echo(f"claim: {study.claim}\npublished: {study.criterion.published}\n"
                   f"pass criterion (fixed before the run): {study.criterion.rule}")
    t0 = time.perf_counter()
    summary, folder = run_study(name, scale, overrides or None, store=Store(store), workers=workers, dask=dask,
                                progress=not quiet, threads=threads)
    wall = time.perf_counter() - t0
    for tname, table in summary.tables.items():
        typer.echo(f"\n{tname}\n{table}")
    decision = summary.decision
    if decision is not None:
        typer.echo(f"\n{summary.verdict}\n\nverdict: {decision.outcome}")
        for part in decision.parts:
            typer.echo(f"  {part.name}: {part.outcome}, {part.reason}")
    else:
        typer.echo(f"\nverdict: {summary.verdict}")
    typer.echo(f"wall time: {wall:.0f} s ({workers} worker{'s' if workers > 1 else ''}, {threads} thread"
               f"{'s' if threads > 1 else ''} each)")
    typer.echo(f"report: {render_study(folder)}")


@app.command("report")
def study_report(name: str = typer.Argument(..., help="Study name."),
                 scale: str = typer.Option("default", help="Which scale's results."),
                 store: Path | None = StoreOpt) -> None:
    """Render the HTML report of a study that has run."""
    from ..report import render_study
    from ..studies import get
    from ..studies.registry import study_folder

    get(name).config(scale)  # an unknown study or scale is an error, not a missing report
    typer.echo(f"report: {render_study(study_folder(Store(store, create=False), name, scale))}")


def report(store: Path | None = StoreOpt,
           out: Path | None = typer.Option(None, help="Output folder (default: <store>/report)."),
           readme: Path | None = typer.Option(None, help="Also record the store's default-scale study summaries in "
                                                         "results/ beside this README and regenerate its claims "
                                                         "table from them.")) -> None:
    """Render one self-contained HTML page per study that has run, and an index; with --readme, the README's
    claims table."""
    from ..report import readme_with_table, render_all, update_readme

    if out is not None:
        check_output_folder("--out", out)
    if readme is not None:
        if not readme.is_file():
            raise ConfigError(f"--readme {readme}: no such file")
        readme_with_table(readme.read_text(), "")  # the markers are there, checked before anything is written
    st = Store(store, create=False)
    typer.echo(f"report: {render_all(st, out)}")
    if readme is not None:
        typer.echo(f"claims table: {update_readme(readme, st)}")
