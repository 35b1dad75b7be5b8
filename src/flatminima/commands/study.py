"""``flatminima study list | run | report`` and ``flatminima report``: the papers' claims, one study each,
and their HTML reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ..store import Store
from ._common import QuietOpt, StoreOpt, check_int, check_output_folder, make_app

app = make_app("Reproduce the papers' claims: one study per claim.")

# a Dask scheduler address: PROTOCOL://HOST[:PORT] or HOST:PORT
DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss|inproc)://[^\s/]+|[A-Za-z0-9._-]+:\d{1,5})")


def _parse_value(text: str, like: Any) -> Any:
    """``text`` read as a value of the type of the declared value ``like``; None when it is not one."""
    if isinstance(like, bool):
        return {"true": True, "false": False}.get(text.lower())
    if isinstance(like, int):
        return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else None
    if isinstance(like, float):
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    if isinstance(like, str):
        return text
    try:
        value = json.loads(text, parse_constant=lambda c: None)
    except ValueError:
        return None
    return value if _same_shape(value, like) else None


def _same_shape(value: Any, like: Any) -> bool:
    """Whether a JSON value has the structure of a declared list or dict (element types included)."""
    if isinstance(like, list):
        return isinstance(value, list) and (not like or (bool(value) and all(_same_kind(v, like[0]) for v in value)))
    if isinstance(like, dict):
        return isinstance(value, dict) and set(value) <= set(like) and all(_same_kind(value[k], like[k]) for k in value)
    return False


def _same_kind(value: Any, like: Any) -> bool:
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(like, bool) and isinstance(value, bool)
    if isinstance(like, int):
        return isinstance(value, int)
    if isinstance(like, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(like, (list, dict)):
        return _same_shape(value, like)
    return isinstance(value, type(like))


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    return []


def study_overrides(name: str, scale: str, pairs: list[str]) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` overrides of study ``name`` at ``scale``, each read as the type its key has
    in the study's declared scales and kept in their range: a number that is positive (non-negative) at
    every scale must stay so, a list stays a non-empty list of the same kind of elements."""
    from ..studies import get

    study = get(name)
    defaults = study.config(scale)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} must look like KEY=VALUE (e.g. --set seeds=2)")
        if key not in defaults:
            raise ConfigError(f"study {name!r} has no option {key!r}; options: {', '.join(sorted(defaults))}")
        declared = [sc[key] for sc in study.scales.values() if key in sc]
        value = next((v for v in (_parse_value(text, like) for like in declared) if v is not None), None)
        if value is None:
            kinds = " or ".join(sorted({type(like).__name__ for like in declared}))
            raise ConfigError(f"--set {key}: {text!r} is not a valid {kinds} (default {json.dumps(defaults[key])})")
        declared_numbers = [x for like in declared for x in _numbers(like)]
        given = _numbers(value)
        if declared_numbers and all(x > 0 for x in declared_numbers) and any(x <= 0 for x in given):
            raise ConfigError(f"--set {key}: must be positive, got {text!r}")
        if declared_numbers and all(x >= 0 for x in declared_numbers) and any(x < 0 for x in given):
            raise ConfigError(f"--set {key}: must be >= 0, got {text!r}")
        out[key] = value
    return out


@app.command("list")
def study_list() -> None:
    """List the studies with the claim each one tests and its scales."""
    from ..studies import list_studies

    for st in list_studies():
        typer.echo(f"{st.name:28s} [{', '.join(st.scales)}]  {st.claim}")


@app.command("run")
def study_run(
    name: str = typer.Argument(..., help="Study name (see 'flatminima study list')."),
    scale: str = typer.Option("default", help="default (a 2-core laptop) or paper (the published scale)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value KEY=VALUE (repeatable)."),
    workers: int = typer.Option(1, help="Local worker processes for the grid points."),
    threads: int = typer.Option(1, help="Threads of each point (the same in every worker, so results do not "
                                        "depend on --workers)."),
    dask: str | None = typer.Option(None, help="Dask scheduler address (tcp://host:port) to run the points on."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Run a study (or finish an interrupted one: finished points are not recomputed), then render its report."""
    from ..report import render_study
    from ..studies import run_study

    check_int("--workers", workers, 1)
    check_int("--threads", threads, 1)
    if dask is not None and not DASK_ADDRESS.fullmatch(dask):
        raise ConfigError(f"--dask {dask!r} is not a scheduler address; write e.g. tcp://host:8786")
    overrides = study_overrides(name, scale, set_)
    summary, folder = run_study(name, scale, overrides or None, store=Store(store), workers=workers, dask=dask,
                                progress=not quiet, threads=threads)
    for tname, table in summary.tables.items():
        typer.echo(f"\n{tname}\n{table}")
    typer.echo(f"\nverdict: {summary.verdict}")
    typer.echo(f"report: {render_study(folder)}")


@app.command("report")
def study_report(name: str = typer.Argument(..., help="Study name."),
                 scale: str = typer.Option("default", help="Which scale's results."),
                 store: Path | None = StoreOpt) -> None:
    """Render the HTML report of a study that has run."""
    from ..report import render_study
    from ..studies import get
    from ..studies.registry import study_folder

    get(name).config(scale)  # an unknown study or scale is an error, not a missing report
    typer.echo(f"report: {render_study(study_folder(Store(store, create=False), name, scale))}")


def report(store: Path | None = StoreOpt,
           out: Path | None = typer.Option(None, help="Output folder (default: <store>/report).")) -> None:
    """Render one self-contained HTML page per study that has run, and an index."""
    from ..report import render_all

    if out is not None:
        check_output_folder("--out", out)
    typer.echo(f"report: {render_all(Store(store, create=False), out)}")
