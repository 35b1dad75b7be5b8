"""The ``flatminima`` command line: mounts the verbs of :mod:`flatminima.commands`.

Bad input never produces a traceback: library errors (:class:`flatminima.errors.FlatminimaError`) and
usage errors (an unknown option, a value of the wrong type, a missing argument) become one line on stderr
and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from .commands import explore, jamming, measure, perceptron, runs, study, train
from .errors import FlatminimaError

app = typer.Typer(
    name="flatminima",
    help="Wide flat minima of neural-network loss landscapes: train, measure, explore, reproduce.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: flags as --x/--no-x, no type labels
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

# the click that typer runs on (recent typer ships its own copy): its exceptions are the usage errors
_click = importlib.import_module(typer.BadParameter.__module__)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI on ``argv`` (default ``sys.argv[1:]``) and exit with its status.

    Library errors and usage errors print ``flatminima: error: ...`` (one line) on stderr and exit with
    code 2; a group called without a verb prints its help; Ctrl-C exits with code 130.
    """
    try:
        status = app(args=argv, prog_name="flatminima", standalone_mode=False)
    except FlatminimaError as exc:
        typer.echo(f"flatminima: error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except _click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        sys.exit(0)
    except _click.ClickException as exc:
        typer.echo(f"flatminima: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except _click.Abort:
        typer.echo("flatminima: interrupted", err=True)
        sys.exit(130)
    if status == 130:  # typer turns Ctrl-C into this exit status
        typer.echo("flatminima: interrupted", err=True)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
