"""``flatminima runs list | show``: the stored runs, their status and results."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..store import Store
from ._common import StoreOpt

app = typer.Typer(help="List and inspect stored runs.", no_args_is_help=True)


@app.command("list")
def runs_list(
    kind: str | None = typer.Option(None, help="Only runs of this kind (train, ...)."),
    store: Path | None = StoreOpt,
) -> None:
    """List stored runs with their status and headline results."""
    from rich.console import Console
    from rich.table import Table

    st = Store(store)
    runs = st.runs(kind)
    if not runs:
        typer.echo(f"no runs in {st.root}")
        return
    table = Table("id", "kind", "status", "data", "model", "optimizer", "test error", "grad evals")
    for r in runs:
        res = st.results(r.id)
        c = r.config
        te = res.get("test_error")
        table.add_row(r.id, r.kind, r.status, str(c.get("data", "")), str(c.get("model", "")),
                      str(c.get("optimizer", "")), "" if te is None else f"{te:.4f}", str(res.get("grad_evals", "")))
    Console().print(table)


@app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              store: Path | None = StoreOpt) -> None:
    """Show a run's config, results and last metrics."""
    st = Store(store)
    run = st.get(run_id)
    typer.echo(f"run {run.id} ({run.kind}, {run.status}) in {run.folder}")
    typer.echo("config: " + json.dumps(run.config, sort_keys=True))
    for k, v in sorted(st.results(run.id).items()):
        typer.echo(f"  {k}: {v}")
    rows = st.metrics(run.id)
    if rows:
        last = max(s for s, _, _ in rows)
        typer.echo(f"last metrics (step {last}): "
                   + ", ".join(f"{k}={v:.4g}" for s, k, v in rows if s == last and v is not None))
