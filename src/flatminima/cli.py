"""The ``flatminima`` command line: mounts the verbs of :mod:`flatminima.commands`.

Bad input never produces a traceback: library errors (:class:`flatminima.errors.FlatminimaError`)
become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from .commands import explore, jamming, measure, perceptron, runs, study, train
from .errors import FlatminimaError

app = typer.Typer(
    name="flatminima",
    help="Wide flat minima of neural-network loss landscapes: train, measure, explore, reproduce.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(train.train)
app.add_typer(runs.app, name="runs")
app.command()(measure.measure)
app.add_typer(jamming.app, name="jamming")
app.add_typer(explore.app, name="explore")
app.add_typer(perceptron.app, name="perceptron")
app.add_typer(study.app, name="study")
app.command()(study.report)


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
