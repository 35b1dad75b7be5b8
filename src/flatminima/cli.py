"""The ``flatminima`` command line: a thin shell over the library.

Bad input never produces a traceback: library errors (:class:`flatminima.errors.FlatminimaError`)
become one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import ConfigError, FlatminimaError

app = typer.Typer(
    name="flatminima",
    help="Wide flat minima of neural-network loss landscapes: train, measure, explore, reproduce.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List and inspect stored runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

StoreOpt = typer.Option(None, "--store", help="Run store folder (default: $FLATMINIMA_HOME or ./flatminima-runs).")


def _store(path: Optional[Path]):
    from .store import Store

    return Store(path)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; values parsed as JSON when possible (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"optimizer option {pair!r} must look like KEY=VALUE (e.g. -o inner_steps=5)")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


@app.command()
def train(
    data: str = typer.Option("fashion-mnist", help="Data set: fashion-mnist, digits, mnist-5k."),
    model: str = typer.Option("mlp:256,256", help="Model spec: mlp:W1,W2[:act], lenet[:bn], allcnn[:w], resnet:D[xW]."),
    optimizer: str = typer.Option("sgd", help="sgd, adam, adamw, entropy-sgd, replicated-sgd, sam."),
    lr: float = typer.Option(0.05, help="Learning rate (outer learning rate for Entropy-SGD)."),
    momentum: float = typer.Option(0.9, help="Momentum."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    option: list[str] = typer.Option([], "--option", "-o", help="Optimizer option KEY=VALUE (repeatable)."),
    epochs: Optional[float] = typer.Option(None, help="Budget in epochs (default 5 if no budget is given)."),
    steps: Optional[int] = typer.Option(None, help="Budget in optimizer steps."),
    grad_evals: Optional[int] = typer.Option(None, help="Budget in minibatch gradient evaluations."),
    batch_size: int = typer.Option(128, help="Minibatch size."),
    scheduler: str = typer.Option("cosine", help="LR schedule: none, cosine, step:EPOCHS:FACTOR."),
    seed: int = typer.Option(0, help="Seed (initialisation, minibatch order, noise)."),
    train_subset: Optional[int] = typer.Option(None, help="Use a class-balanced subset of P training examples."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the data files (Fashion-MNIST IDX)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every K steps (enables resume)."),
    resume: Optional[str] = typer.Option(None, help="Resume the run with this id from its last checkpoint."),
    name: Optional[str] = typer.Option(None, help="A name for the run."),
    store: Optional[Path] = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model and store the run (config, metrics, checkpoints, final weights)."""
    from .experiment import TrainConfig, train_run

    st = _store(store)
    if resume:
        run, result = train_run(TrainConfig(), st, run_id=resume, resume=True, progress=not quiet)
    else:
        if epochs is None and steps is None and grad_evals is None:
            epochs = 5.0
        cfg = TrainConfig(
            data=data, model=model, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
            options=_parse_options(option), epochs=epochs, steps=steps, grad_evals=grad_evals,
            batch_size=batch_size, scheduler=None if scheduler == "none" else scheduler, seed=seed,
            train_subset=train_subset, data_dir=str(data_dir) if data_dir else None,
            checkpoint_every=checkpoint_every,
        )
        run, result = train_run(cfg, st, progress=not quiet, name=name)
    f = result.final
    typer.echo(
        f"run {run.id}: test error {f['test_error']:.4f}, test loss {f['test_loss']:.4f}, "
        f"train loss {f['train_loss']:.4f} after {f['effective_epochs']:.2f} effective epochs "
        f"({result.grad_evals} gradient evaluations, {result.seconds:.1f} s)"
    )
    typer.echo(f"stored in {run.folder}")


@runs_app.command("list")
def runs_list(
    kind: Optional[str] = typer.Option(None, help="Only runs of this kind (train, ...)."),
    store: Optional[Path] = StoreOpt,
) -> None:
    """List stored runs with their status and headline results."""
    st = _store(store)
    runs = st.runs(kind)
    if not runs:
        typer.echo(f"no runs in {st.root}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "status", "data", "model", "optimizer", "test error", "grad evals")
    for r in runs:
        res = st.results(r.id)
        c = r.config
        te = res.get("test_error")
        table.add_row(r.id, r.kind, r.status, str(c.get("data", "")), str(c.get("model", "")),
                      str(c.get("optimizer", "")), "" if te is None else f"{te:.4f}", str(res.get("grad_evals", "")))
    Console().print(table)


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              store: Optional[Path] = StoreOpt) -> None:
    """Show a run's config, results and last metrics."""
    st = _store(store)
    run = st.get(run_id)
    typer.echo(f"run {run.id} ({run.kind}, {run.status}) in {run.folder}")
    typer.echo("config: " + json.dumps(run.config, sort_keys=True))
    for k, v in sorted(st.results(run.id).items()):
        typer.echo(f"  {k}: {v}")
    rows = st.metrics(run.id)
    if rows:
        last = max(s for s, _, _ in rows)
        typer.echo(f"last metrics (step {last}): " + ", ".join(f"{k}={v:.4g}" for s, k, v in rows if s == last and v is not None))


# ---------------------------------------------------------------------------------- studies and reports
study_app = typer.Typer(help="Reproduce the papers' claims: one study per claim.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("list")
def study_list() -> None:
    """List the studies with the claim each one tests and its scales."""
    from .studies import list_studies

    for st in list_studies():
        typer.echo(f"{st.name:28s} [{', '.join(st.scales)}]  {st.claim}")


@study_app.command("run")
def study_run(
    name: str = typer.Argument(..., help="Study name (see 'flatminima study list')."),
    scale: str = typer.Option("default", help="default (a 2-core laptop) or paper (the published scale)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value KEY=VALUE (repeatable)."),
    workers: int = typer.Option(1, help="Local worker processes for the grid points."),
    dask: Optional[str] = typer.Option(None, help="Dask scheduler address (tcp://host:port) to run the points on."),
    store: Optional[Path] = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a study (or finish an interrupted one: finished points are not recomputed), then render its report."""
    from .report import render_study
    from .studies import run_study

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    overrides = _parse_options(set_) if set_ else None
    summary, folder = run_study(name, scale, overrides, store=_store(store), workers=workers, dask=dask,
                                progress=not quiet)
    for tname, table in summary.tables.items():
        typer.echo(f"\n{tname}\n{table}")
    typer.echo(f"\nverdict: {summary.verdict}")
    page = render_study(folder)
    typer.echo(f"report: {page}")


@study_app.command("report")
def study_report(name: str = typer.Argument(..., help="Study name."),
                 scale: str = typer.Option("default", help="Which scale's results."),
                 store: Optional[Path] = StoreOpt) -> None:
    """Render the HTML report of a study that has run."""
    from .report import render_study
    from .studies import get
    from .studies.registry import study_folder

    get(name)
    typer.echo(f"report: {render_study(study_folder(_store(store), name, scale))}")


@app.command("report")
def report(store: Optional[Path] = StoreOpt,
           out: Optional[Path] = typer.Option(None, help="Output folder (default: <store>/report).")) -> None:
    """Render one self-contained HTML page per study that has run, and an index."""
    from .report import render_all

    typer.echo(f"report: {render_all(_store(store), out)}")


# ---------------------------------------------------------------------------------- sub-commands of parts
def _mount_parts() -> None:
    """``flatminima measure RUN`` and ``flatminima jamming | explore | perceptron``: each part's own CLI."""
    from .explore.cli import app as explore_app
    from .jamming.cli import app as jamming_app
    from .measures.cli import measure
    from .perceptron.cli import app as perceptron_app

    app.command("measure", help="Measure how flat the minimum of a stored run is (Hessian, local energy, "
                "local entropy, slices).")(measure)
    app.add_typer(jamming_app, name="jamming")
    app.add_typer(explore_app, name="explore")
    app.add_typer(perceptron_app, name="perceptron")


_mount_parts()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning library errors into one line and exit code 2.

    Usage errors (unknown option, bad value) are reported by click itself, also with exit code 2.
    """
    try:
        app(args=argv, standalone_mode=True)
    except FlatminimaError as exc:
        typer.echo(f"flatminima: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("flatminima: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
