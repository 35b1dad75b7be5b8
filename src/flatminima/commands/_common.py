"""What the commands share: their Typer apps, the ``--store`` and ``--quiet`` options, the checks of
argument values, argument parsing, opening the store, and the announcement of a run that starts.

Every verb checks all of its arguments (and every value it reads back from a stored config) with these
helpers *before* it opens the store for writing, so bad input exits with one line and writes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ..store import Run, Store

StoreOpt = typer.Option(None, "--store", help="Run store folder (default: $FLATMINIMA_HOME or ./flatminima-runs).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def make_app(help: str) -> typer.Typer:
    """A Typer group of verbs, with click's plain help (flags listed as ``--x/--no-x``, no type labels)."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                       pretty_exceptions_enable=False)


# ------------------------------------------------------------------------------------------ value checks
def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) within ``[minimum, maximum]``; else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` if it is a finite number within the interval from ``low`` to ``high`` (each end closed
    unless ``*_open``); else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; else a ConfigError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_device(device: str | None) -> str | None:
    """A torch device name that this build of torch can use (``cuda`` needs a CUDA build and a GPU)."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available: this torch has no CUDA support or sees no GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return device


def check_output_file(name: str, path: Path) -> Path:
    """A file to write: not a folder, in a folder that exists."""
    if path.is_dir():
        raise ConfigError(f"{name} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{name} {path}: the folder {path.parent} does not exist")
    return path


def check_output_folder(name: str, path: Path) -> Path:
    """A folder to write into (created if missing): not an existing file, under a parent that exists."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {path} is a file, not a folder")
    if not path.exists() and not path.parent.is_dir():
        raise ConfigError(f"{name} {path}: the folder {path.parent} does not exist")
    return path


# ------------------------------------------------------------------------------------------ parsing
def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; values parsed as JSON when possible (numbers, true/false), else strings.
    Dashes in keys become underscores; NaN and infinities are refused."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} must look like KEY=VALUE (e.g. -o inner_steps=5)")
        try:
            out[key.replace("-", "_")] = json.loads(value, parse_constant=_no_constant)
        except ValueError as exc:
            if "finite" in str(exc):
                raise ConfigError(f"option {key}: {exc}") from None
            out[key.replace("-", "_")] = value
    return out


def parse_list(text: str, kind: Callable[[str], Any], what: str) -> list:
    """A comma-separated list of numbers (``kind``: int or float, finite); empty or unparsable is a ConfigError."""
    try:
        out = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what} is empty")
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{what} must hold finite numbers, got {text!r}")
    return out


# ------------------------------------------------------------------------------------------ the store
def resume_run(store: Store, run_id: str, kind: str) -> Run:
    """The stored run ``run_id``, which must be of ``kind`` (a command resumes only its own runs) and not
    running in another process."""
    run = store.get(run_id)
    if run.kind != kind:
        raise ConfigError(f"run {run.id} is a {run.kind!r} run, not {kind!r}")
    if run.status == "running":
        raise ConfigError(f"run {run.id} is running in another process; resume it once that process has ended")
    return run


def announce(run: Run) -> None:
    """Say on stderr which run has started (so the id is on screen even if the run is interrupted)."""
    typer.echo(f"run {run.id} started in {run.folder}", err=True)
