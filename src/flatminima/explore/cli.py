"""``flatminima explore``: basin-hopping, connections, disconnectivity graphs, metrics and PATHSAMPLE export.

Every command works on one landscape database (SQLite). ``run`` creates it in a new run folder of the run
store (or uses ``--db``) and records the potential's spec in it, so the other commands rebuild the
potential from the database alone. A killed ``run`` resumes when started again on the same database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..store import Store, atomic_write_text

app = typer.Typer(help="Explore landscapes: minima, transition states, disconnectivity graphs.", no_args_is_help=True)


def _open(db_path: Path):
    from .database import Database
    from .specs import make_potential

    if not db_path.exists():
        raise ConfigError(f"no landscape database at {db_path}")
    probe = Database(db_path)
    spec = probe.get_meta("spec")
    probe.close()
    if spec is None:
        raise ConfigError(f"{db_path} records no potential spec (was it written by `flatminima explore run`?)")
    pot = make_potential(spec)
    return pot, Database(db_path, potential=pot)


def _ints(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


@app.command()
def run(
    potential: str = typer.Option("lj13", help="lj<N>, muller-brown or network"),
    steps: int = typer.Option(100, help="basin-hopping steps per walker (total, also when resuming)"),
    walkers: int = typer.Option(4, help="walkers quenched together"),
    temperature: float = typer.Option(0.8, help="Metropolis temperature"),
    step_size: Optional[float] = typer.Option(None, help="initial step size (default: the potential's)"),
    seed: int = typer.Option(0),
    db: Optional[Path] = typer.Option(None, help="database file (default: landscape.sqlite in a new run folder)"),
    dataset: Optional[str] = typer.Option(None, help="network: data set name"),
    classes: Optional[str] = typer.Option(None, help="network: classes to keep, e.g. 3,5,8"),
    pca_dim: Optional[int] = typer.Option(None, help="network: PCA dimension"),
    size: Optional[int] = typer.Option(None, help="network: training-set size"),
    hidden: Optional[str] = typer.Option(None, help="network: hidden widths, e.g. 4,4"),
    l2: Optional[float] = typer.Option(None, help="network: l2 coefficient"),
) -> None:
    """Basin-hopping into a landscape database (resumes a search stored in --db)."""
    from .basinhopping import basin_hopping
    from .database import Database
    from .specs import make_potential, parse_potential

    spec = parse_potential(potential, dataset=dataset, classes=_ints(classes), pca_dim=pca_dim, size=size,
                           hidden=_ints(hidden), l2=l2)
    if db is None:
        r = Store().create_run("explore", {"spec": spec, "steps": steps, "walkers": walkers,
                                           "temperature": temperature, "seed": seed}, name=potential)
        db = r.folder / "landscape.sqlite"
        typer.echo(f"run {r.id}: {db}")
    elif db.exists():
        probe = Database(db)
        stored = probe.get_meta("spec")
        probe.close()
        if stored is not None and stored != json.loads(json.dumps(spec)):
            raise ConfigError(f"{db} holds a search of another potential: {stored}")
    pot = make_potential(spec)
    database = Database(db, potential=pot)
    database.set_meta("spec", spec)
    basin_hopping(pot, steps=steps, temperature=temperature, seed=seed, database=database, walkers=walkers,
                  step_size=step_size, progress=True)
    ms = database.minima()
    typer.echo(f"{len(ms)} minima; lowest: " + ", ".join(f"{m.energy:.6f}" for m in ms[:5]))
    database.close()


@app.command()
def connect(
    db: Path = typer.Option(..., help="landscape database"),
    a: Optional[int] = typer.Option(None, help="first minimum id (with --b: one double-ended search)"),
    b: Optional[int] = typer.Option(None, help="second minimum id"),
    cycles: int = typer.Option(5, help="Dijkstra cycles per double-ended search"),
    max_minima: Optional[int] = typer.Option(None, help="connect-all: only the lowest N minima"),
    images: int = typer.Option(10, help="DNEB images"),
) -> None:
    """Find transition states: between --a and --b, or from every minimum to the global minimum."""
    from .connect import connect_all, double_ended_connect

    pot, database = _open(db)
    if (a is None) != (b is None):
        raise ConfigError("give both --a and --b, or neither (connect everything to the global minimum)")
    if a is not None:
        ok = double_ended_connect(pot, database, a, b, max_cycles=cycles, progress=True, n_images=images)
        typer.echo(f"{a} and {b} {'connected' if ok else 'not connected'}; {database.n_ts()} transition states")
    else:
        n = connect_all(pot, database, max_cycles=cycles, max_minima=max_minima, progress=True, n_images=images)
        typer.echo(f"{n} of {database.n_minima()} minima connected to the global minimum; "
                   f"{database.n_ts()} transition states")
    database.close()


@app.command()
def graph(
    db: Path = typer.Option(..., help="landscape database"),
    out: Optional[Path] = typer.Option(None, help="figure file (default: disconnectivity.png beside the db)"),
    levels: int = typer.Option(20, help="energy levels"),
    color_by: Optional[str] = typer.Option(None, help="stored minimum property to colour by"),
) -> None:
    """Draw the disconnectivity graph."""
    from .graph import disconnectivity_graph

    _, database = _open(db)
    fig = disconnectivity_graph(database, n_levels=levels, color_by=color_by)
    out = out or db.parent / "disconnectivity.png"
    fig.savefig(out, dpi=120)
    typer.echo(str(out))
    database.close()


@app.command()
def metrics(
    db: Path = typer.Option(..., help="landscape database"),
    temperature: Optional[float] = typer.Option(None, help="frustration-index temperature"),
) -> None:
    """Print landscape metrics as JSON (also written to metrics.json beside the db)."""
    from .metrics import landscape_metrics

    _, database = _open(db)
    m = landscape_metrics(database, temperature=temperature)
    text = json.dumps(m, indent=2)
    atomic_write_text(db.parent / "metrics.json", text)
    typer.echo(text)
    database.close()


@app.command()
def export(
    db: Path = typer.Option(..., help="landscape database"),
    out: Optional[Path] = typer.Option(None, help="folder (default: pathsample/ beside the db)"),
) -> None:
    """Write PATHSAMPLE min.data, ts.data, points.min and points.ts."""
    from .database import export_pathsample

    _, database = _open(db)
    files = export_pathsample(database, out or db.parent / "pathsample")
    typer.echo(" ".join(str(p) for p in files.values()))
    database.close()
