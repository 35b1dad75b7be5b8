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
from ._common import (
    StoreOpt,
    announce,
    check_choice,
    check_float,
    check_int,
    check_output_file,
    check_output_folder,
    make_app,
    parse_list,
)

app = make_app("Explore landscapes: minima, transition states, disconnectivity graphs.")

DbOpt = typer.Option(..., help="landscape database")
COLOR_BY = ("log_prod", "n_neg")  # the properties a stored minimum has besides its energy
MAX_ATOMS = 10_000  # Lennard-Jones clusters: pair energies are computed densely, N^2 pairs


def _stored_spec(db_path: Path) -> dict | None:
    from ..explore import Database

    with Database(db_path) as probe:
        return probe.get_meta("spec")


def _open(db_path: Path):
    """The potential recorded in the database at ``db_path``, and the database opened on it."""
    from ..explore import Database, make_potential

    if not db_path.is_file():
        raise ConfigError(f"no landscape database at {db_path}")
    spec = _stored_spec(db_path)
    if spec is None:
        raise ConfigError(f"{db_path} records no potential spec (was it written by `flatminima explore run`?)")
    pot = make_potential(spec)
    return pot, Database(db_path, potential=pot)


def _check_network(dataset: str | None, classes: list[int] | None, pca_dim: int | None, size: int | None,
                   hidden: list[int] | None, l2: float | None) -> None:
    """Check the options of the ``network`` potential (each None: its default)."""
    from ..data import DATASETS

    if dataset is not None:
        check_choice("--dataset", dataset, sorted(DATASETS))
    for c in classes or ():
        check_int("every class of --classes", c, 0)
    if pca_dim is not None:
        check_int("--pca-dim", pca_dim, 1)
    if size is not None:
        check_int("--size", size, 1)
    for w in hidden or ():
        check_int("every width of --hidden", w, 1, 10_000)
    if l2 is not None:
        check_float("--l2", l2, 0)


@app.command()
def run(
    potential: str = typer.Option("lj13", help="lj<N>, muller-brown or network"),
    steps: int = typer.Option(100, help="basin-hopping steps per walker (total, also when resuming)"),
    walkers: int = typer.Option(4, help="walkers quenched together"),
    temperature: float = typer.Option(0.8, help="Metropolis temperature"),
    step_size: float | None = typer.Option(None, help="initial step size (default: the potential's)"),
    seed: int = typer.Option(0, help="seed of the steps, the acceptances and the starting points"),
    max_temperature: float | None = typer.Option(
        None, help="parallel tempering: the walkers' temperatures form a geometric ladder from --temperature to this"),
    exchange_interval: int = typer.Option(1, help="parallel tempering: steps between two sweeps of neighbour exchanges"),
    surface_moves: float = typer.Option(
        0.0, help="probability that a walker's move is a surface move (clusters: the least-bound atom moves)"),
    reseed_after: int | None = typer.Option(
        None, help="restart a walker from a random configuration after this many steps without a lower minimum"),
    target: float | None = typer.Option(None, help="stop once a minimum at or below this energy is found"),
    check_index: bool = typer.Option(
        False, "--check-index", help="verify every new minimum with the exact Hessian, pushing quenches that "
        "stalled on a saddle's shoulder on downhill (for a survey that counts minima; slower)"),
    db: Path | None = typer.Option(None, help="database file (default: landscape.sqlite in a new run folder)"),
    dataset: str | None = typer.Option(None, help="network: data set name"),
    classes: str | None = typer.Option(None, help="network: classes to keep, e.g. 3,5,8"),
    pca_dim: int | None = typer.Option(None, help="network: PCA dimension"),
    size: int | None = typer.Option(None, help="network: training-set size"),
    hidden: str | None = typer.Option(None, help="network: hidden widths, e.g. 4,4"),
    l2: float | None = typer.Option(None, help="network: l2 coefficient"),
    store: Path | None = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Basin-hopping into a landscape database: a new run in the store, or --db (resumes a search stored there).

    LJ38's global minimum: --potential lj38 --walkers 16 --temperature 0.8 --max-temperature 1.2
    --reseed-after 100 --steps 5000 --target -173.928427.
    """
    from ..explore import Database, basin_hopping, make_potential, parse_potential

    check_int("--steps", steps, 1)
    check_int("--walkers", walkers, 1, 100_000)
    check_float("--temperature", temperature, 0, low_open=True)
    if step_size is not None:
        check_float("--step-size", step_size, 0, low_open=True)
    check_int("--seed", seed, 0, 2**63 - 1)
    if max_temperature is not None:
        check_float("--max-temperature", max_temperature, temperature)
    check_int("--exchange-interval", exchange_interval, 1)
    check_float("--surface-moves", surface_moves, 0, 1)
    if reseed_after is not None:
        check_int("--reseed-after", reseed_after, 1)
    if target is not None:
        check_float("--target", target)
    class_list = parse_list(classes, int, "--classes") if classes is not None else None
    hidden_list = parse_list(hidden, int, "--hidden") if hidden is not None else None
    _check_network(dataset, class_list, pca_dim, size, hidden_list, l2)
    spec = parse_potential(potential, dataset=dataset, pca_dim=pca_dim, size=size, l2=l2, classes=class_list,
                           hidden=hidden_list)
    if spec["kind"] == "lennard-jones":
        check_int("the number of atoms", spec["n_atoms"], 2, MAX_ATOMS)
    pot = make_potential(spec)
    strategy = {"max_temperature": max_temperature, "exchange_interval": exchange_interval,
                "surface_moves": surface_moves, "reseed_after": reseed_after, "target": target,
                "check_index": check_index}
    if db is not None:
        check_output_file("--db", db)
        other = _stored_spec(db) if db.exists() else None
        if other is not None and other != json.loads(json.dumps(spec)):
            raise ConfigError(f"{db} holds a search of another potential: {other}")
        status = nullcontext()
    else:
        st = Store(store)
        record = st.create_run("explore", {"spec": spec, "steps": steps, "walkers": walkers,
                                           "temperature": temperature, "seed": seed, **strategy}, name=potential)
        db = record.folder / "landscape.sqlite"
        announce(record)
        status = st.running(record.id)
    with status, Database(db, potential=pot) as database:
        database.set_meta("spec", spec)
        basin_hopping(pot, steps=steps, temperature=temperature, seed=seed, database=database, walkers=walkers,
                      step_size=step_size, progress=not quiet, **strategy)
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
    check_int("--cycles", cycles, 1)
    check_int("--images", images, 1)
    if max_minima is not None:
        check_int("--max-minima", max_minima, 1)
    pot, database = _open(db)
    with database:
        if a is not None:
            ids = {m.id for m in database.minima()}
            for name, i in (("--a", a), ("--b", b)):
                if i not in ids:
                    raise ConfigError(f"{name} {i} is not a minimum of {db} (ids {min(ids, default=0)}.."
                                      f"{max(ids, default=0)})")
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
    color_by: str | None = typer.Option(None, help=f"colour the minima by a stored property: {', '.join(COLOR_BY)}"),
) -> None:
    """Draw the disconnectivity graph."""
    from ..explore import disconnectivity_graph

    check_int("--levels", levels, 1)
    if color_by is not None:
        check_choice("--color-by", color_by, COLOR_BY)
    _, database = _open(db)
    with database:
        out = check_output_file("--out", out or db.parent / "disconnectivity.png")
        values = None if color_by is None else {m.id: getattr(m, color_by) for m in database.minima()}
        fig = disconnectivity_graph(database, n_levels=levels, color_by=values, color_label=color_by or "value")
    fig.savefig(out, dpi=120)
    typer.echo(str(out))


@app.command()
def metrics(
    db: Path = DbOpt,
    temperature: float | None = typer.Option(None, help="frustration-index temperature"),
) -> None:
    """Print landscape metrics as JSON (also written to metrics.json beside the db)."""
    from ..explore import landscape_metrics

    if temperature is not None:
        check_float("--temperature", temperature, 0, low_open=True)
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
        files = export_pathsample(database, check_output_folder("--out", out or db.parent / "pathsample"))
    typer.echo(" ".join(str(p) for p in files.values()))
