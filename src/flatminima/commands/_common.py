"""What the commands share: the ``--store`` and ``--quiet`` options, argument parsing, and the status of
a stored run while a command works on it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from ..errors import ConfigError
from ..store import Run, Store

StoreOpt = typer.Option(None, "--store", help="Run store folder (default: $FLATMINIMA_HOME or ./flatminima-runs).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; values parsed as JSON when possible (numbers, true/false), else strings.
    Dashes in keys become underscores."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} must look like KEY=VALUE (e.g. -o inner_steps=5)")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def parse_list(text: str, kind: Callable[[str], Any], what: str) -> list:
    """A comma-separated list of numbers (``kind``: int or float); empty or unparsable is a ConfigError."""
    try:
        out = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what} is empty")
    return out


def resume_run(store: Store, run_id: str, kind: str) -> Run:
    """The stored run ``run_id``, which must be of ``kind`` (a command resumes only its own runs)."""
    run = store.get(run_id)
    if run.kind != kind:
        raise ConfigError(f"run {run.id} is a {run.kind!r} run, not {kind!r}")
    return run


@contextmanager
def running(store: Store, run: Run) -> Iterator[Run]:
    """Mark ``run`` running while the block works on it, then finished (interrupted if the block raises)."""
    store.set_status(run.id, "running")
    try:
        yield run
    except BaseException:
        store.set_status(run.id, "interrupted")
        raise
    store.set_status(run.id, "finished")
