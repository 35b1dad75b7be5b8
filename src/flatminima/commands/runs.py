"""``flatminima runs list | show``: the stored runs, their status and results."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..store import Store
from ._common import StoreOpt, make_app

app = make_app("List and inspect stored runs.")


@app.command("list")
def runs_list(
    kind: str | None = typer.Option(None, help="Only runs of this kind (train, ...)."),
    store: Path | None = StoreOpt,
) -> None:
    """List stored runs with their status, headline results and full ids."""
    st = Store(store, create=False)
    runs = st.runs(kind)
    if not runs:
        typer.echo(f"no runs in {st.root}")
        return
    rows = [("id", "kind", "status", "data", "model", "optimizer", "test error", "grad evals")]
    for r in runs:
        res, c = st.results(r.id), r.config
        te = res.get("test_error")
        rows.append((r.id, r.kind, r.status, str(c.get("data", "")), str(c.get("model", "")),
                     str(c.get("optimizer", "")), "" if te is None else f"{te:.4f}", str(res.get("grad_evals", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:  # plain columns, never cut: ids are what the other verbs take
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              store: Path | None = StoreOpt) -> None:
    """Show a run's config, results and last metrics."""
    st = Store(store, create=False)
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
