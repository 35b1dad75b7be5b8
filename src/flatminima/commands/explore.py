"""``flatminima explore run | connect | graph | metrics | export``: landscapes of minima and transition states.

Every command works on one landscape database (SQLite, :class:`~flatminima.explore.Database`, which also
keeps the state of an unfinished search). ``run`` creates it in a new run folder of the run store (or uses
``--db``) and records the potential's spec in it, so the other commands rebuild the potential from the
database alone. A killed ``run`` resumes when started again on the same database.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import typer

from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..store import Store
from ._common import parse_list, running

app = typer.Typer(help="Explore landscapes: minima, transition states, disconnectivity graphs.", no_args_is_help=True)

DbOpt = typer.Option(..., help="landscape database")


def _stored_spec(db_path: Path) -> dict | None:
    from ..explore import Database

    with Database(db_path) as probe:
        return probe.get_meta("spec")


def _open(db_path: Path):
    """The potential recorded in the database at ``db_path``, and the database opened on it."""
    from ..explore import Database, make_potential

    if not db_path.exists():
        raise ConfigError(f"no landscape database at {db_path}")
    spec = _stored_spec(db_path)
    if spec is None:
        raise ConfigError(f"{db_path} records no potential spec (was it written by `flatminima explore run`?)")
    pot = make_potential(spec)
    return pot, Database(db_path, potential=pot)


@app.command()
def run(
    potential: str = typer.Option("lj13", help="lj<N>, muller-brown or network"),
    steps: int = typer.Option(100, help="basin-hopping steps per walker (total, also when resuming)"),
    walkers: int = typer.Option(4, help="walkers quenched together"),
    temperature: float = typer.Option(0.8, help="Metropolis temperature"),
    step_size: float | None = typer.Option(None, help="initial step size (default: the potential's)"),
    seed: int = typer.Option(0),
    db: Path | None = typer.Option(None, help="database file (default: landscape.sqlite in a new run folder)"),
    dataset: str | None = typer.Option(None, help="network: data set name"),
    classes: str | None = typer.Option(None, help="network: classes to keep, e.g. 3,5,8"),
    pca_dim: int | None = typer.Option(None, help="network: PCA dimension"),
    size: int | None = typer.Option(None, help="network: training-set size"),
    hidden: str | None = typer.Option(None, help="network: hidden widths, e.g. 4,4"),
    l2: float | None = typer.Option(None, help="network: l2 coefficient"),
    store: Path | None = typer.Option(None, "--store", help="Run store folder for the new run when no --db "
                                         "is given (default: $FLATMINIMA_HOME or ./flatminima-runs)."),
) -> None:
    """Basin-hopping into a landscape database (resumes a search stored in --db)."""
    from ..explore import Database, basin_hopping, make_potential, parse_potential

    spec = parse_potential(potential, dataset=dataset, pca_dim=pca_dim, size=size, l2=l2,
                           classes=parse_list(classes, int, "--classes") if classes is not None else None,
                           hidden=parse_list(hidden, int, "--hidden") if hidden is not None else None)
    pot = make_potential(spec)
    if db is None:
        st = Store(store)
        record = st.create_run("explore", {"spec": spec, "steps": steps, "walkers": walkers,
                                           "temperature": temperature, "seed": seed}, name=potential)
        db = record.folder / "landscape.sqlite"
        typer.echo(f"run {record.id}: {db}")
        status = running(st, record)
    else:
        other = _stored_spec(db) if db.exists() else None
        if other is not None and other != json.loads(json.dumps(spec)):
            raise ConfigError(f"{db} holds a search of another potential: {other}")
        status = nullcontext()
    with status, Database(db, potential=pot) as database:
        database.set_meta("spec", spec)
        basin_hopping(pot, steps=steps, temperature=temperature, seed=seed, database=database, walkers=walkers,
                      step_size=step_size, progress=True)
        ms = database.minima()
    typer.echo(f"{len(ms)} minima; lowest: " + ", ".join(f"{m.energy:.6f}" for m in ms[:5]))


@app.command()
def connect(
    db: Path = DbOpt,
    a: int | None = typer.Option(None, help="first minimum id (with --b: one double-ended search)"),
    b: int | None = typer.Option(None, help="second minimum id"),
    cycles: int = typer.Option(5, help="Dijkstra cycles per double-ended search"),
    max_minima: int | None = typer.Option(None, help="connect-all: only the lowest N minima"),
    images: int = typer.Option(10, help="DNEB images"),
) -> None:
    """Find transition states: between --a and --b, or from every minimum to the global minimum."""
    from ..explore import connect_all, double_ended_connect

    if (a is None) != (b is None):
        raise ConfigError("give both --a and --b, or neither (connect everything to the global minimum)")
    pot, database = _open(db)
    with database:
        if a is not None:
            ok = double_ended_connect(pot, database, a, b, max_cycles=cycles, progress=True, n_images=images)
            typer.echo(f"{a} and {b} {'connected' if ok else 'not connected'}; {database.n_ts()} transition states")
        else:
            n = connect_all(pot, database, max_cycles=cycles, max_minima=max_minima, progress=True, n_images=images)
            typer.echo(f"{n} of {database.n_minima()} minima connected to the global minimum; "
                       f"{database.n_ts()} transition states")


@app.command()
def graph(
    db: Path = DbOpt,
    out: Path | None = typer.Option(None, help="figure file (default: disconnectivity.png beside the db)"),
    levels: int = typer.Option(20, help="energy levels"),
    color_by: str | None = typer.Option(None, help="stored minimum property to colour by"),
) -> None:
    """Draw the disconnectivity graph."""
    from ..explore import disconnectivity_graph

    _, database = _open(db)
    with database:
        fig = disconnectivity_graph(database, n_levels=levels, color_by=color_by)
    out = out or db.parent / "disconnectivity.png"
    fig.savefig(out, dpi=120)
    typer.echo(str(out))


@app.command()
def metrics(
    db: Path = DbOpt,
    temperature: float | None = typer.Option(None, help="frustration-index temperature"),
) -> None:
    """Print landscape metrics as JSON (also written to metrics.json beside the db)."""
    from ..explore import landscape_metrics

    _, database = _open(db)
    with database:
        text = json.dumps(landscape_metrics(database, temperature=temperature), indent=2)
    atomic_write_text(db.parent / "metrics.json", text)
    typer.echo(text)


@app.command()
def export(
    db: Path = DbOpt,
    out: Path | None = typer.Option(None, help="folder (default: pathsample/ beside the db)"),
) -> None:
    """Write PATHSAMPLE min.data, ts.data, points.min and points.ts."""
    from ..explore import export_pathsample

    _, database = _open(db)
    with database:
        files = export_pathsample(database, out or db.parent / "pathsample")
    typer.echo(" ".join(str(p) for p in files.values()))
