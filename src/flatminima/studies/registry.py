"""Registry of studies: one per reproduced claim.

A study is a grid of independent *points* (configs, e.g. one seed of one optimizer), a pure function
that computes a point, and a summary that turns all results into tables, figures and a verdict.
Results of finished points are committed to the run store's SQLite index as soon as each point ends,
so an interrupted study re-run computes only the missing points.

Writing a study::

    from flatminima.studies.registry import Study, register

    def points(cfg):                      # cfg: the scale's config dict (validated)
        return [{"seed": s, "lr": cfg["lr"]} for s in range(cfg["seeds"])]

    def run_point(point):                 # module-level (picklable); returns a JSON-able dict
        ...
        return {"test_error": 0.12}

    def summarize(cfg, results, out):    # results: list of (point, result); out: a folder
        ...                               # write figures into out, return a Summary
        return Summary(tables={"main": markdown}, figures=["fig.png"], verdict="...", measured={...})

    register(Study(name="my-study", paper="...", claim="...", scales={"default": {...}, "paper": {...}},
                   points=points, run_point=run_point, summarize=summarize))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write_text, to_json
from ..store import Store
from .claims import Criterion, Verdict


@dataclass
class Summary:
    """What a study's summary returns.

    tables: name -> markdown table; figures: file names written in the output folder;
    verdict: one or two sentences on the claim, as measured; measured: key numbers (JSON-able);
    published: the paper's values for the same quantities, where known.
    decision: set by :func:`run_study`, the verdict of the study's criterion on ``measured`` (a study's
    ``summarize`` leaves it None).
    """

    tables: dict[str, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    verdict: str = ""
    measured: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    decision: Verdict | None = None


@dataclass
class Study:
    name: str
    paper: str
    claim: str
    scales: dict[str, dict[str, Any]]
    points: Callable[[dict[str, Any]], list[dict[str, Any]]]
    run_point: Callable[[dict[str, Any]], dict[str, Any]]
    summarize: Callable[[dict[str, Any], list[tuple[dict, dict]], Path], Summary]
    description: str = ""
    #: options whose value 0 turns a part of the study off (else a number positive at every scale stays so)
    zero_turns_off: frozenset[str] = frozenset()
    #: the claim as code: published value, pass rule, and the function of ``Summary.measured`` that decides
    criterion: Criterion | None = None

    def decide(self, measured: dict[str, Any]) -> Verdict | None:
        """The verdict of the study's criterion on measured numbers (None for a study without one)."""
        return None if self.criterion is None else self.criterion.decide(measured)

    def config(self, scale: str = "default", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config of a scale with ``overrides`` applied, every value checked.

        An override must name a known option and have the type that option has in the study's declared
        scales (text, as from the command line, is read as that type: ``"3"`` for an int, ``"[1, 2]"`` for a
        list); a number that is positive (non-negative) at every scale must stay so, except that an option of
        ``zero_turns_off`` may be 0. Raises ConfigError.
        """
        if scale not in self.scales:
            raise ConfigError(f"study {self.name!r} has no scale {scale!r}; choose one of {sorted(self.scales)}")
        cfg = dict(self.scales[scale])
        for key, given in (overrides or {}).items():
            if key not in cfg:
                raise ConfigError(f"study {self.name!r} has no option {key!r}; options: {', '.join(sorted(cfg))}")
            declared = [sc[key] for sc in self.scales.values() if key in sc]
            value = next((v for v in (_coerce(given, like) for like in declared) if v is not None), None)
            if value is None:
                kinds = " or ".join(sorted({type(like).__name__ for like in declared}))
                raise ConfigError(f"option {key!r}: {given!r} is not a valid {kinds} (default {json.dumps(cfg[key])})")
            numbers = [x for like in declared for x in _numbers(like)]
            low_ok = key in self.zero_turns_off
            if numbers and all(x > 0 for x in numbers) and any(x < 0 or (x == 0 and not low_ok) for x in _numbers(value)):
                raise ConfigError(f"option {key!r} must be positive, got {given!r}")
            if numbers and all(x >= 0 for x in numbers) and any(x < 0 for x in _numbers(value)):
                raise ConfigError(f"option {key!r} must be >= 0, got {given!r}")
            cfg[key] = value
        return cfg


def _coerce(value: Any, like: Any) -> Any:
    """``value`` as a value of the kind of the declared ``like`` (text is parsed); None when it is not one."""
    if isinstance(value, str) and not isinstance(like, str):
        return _parse_value(value, like)
    return value if _same_kind(value, like) else None


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


_REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    _REGISTRY[study.name] = study
    return study


def get(name: str) -> Study:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown study {name!r}; choose one of {sorted(_REGISTRY)}") from None


def list_studies() -> list[Study]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtin() -> None:
    """Import every module of ``flatminima.studies`` so that their ``register(...)`` calls run, and the
    modules named in ``$FLATMINIMA_STUDY_MODULES`` (comma-separated): a user's own studies."""
    import importlib
    import pkgutil

    from .. import studies as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "registry":
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    for mod in filter(None, (m.strip() for m in os.environ.get("FLATMINIMA_STUDY_MODULES", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ConfigError(f"cannot import study module {mod!r} named in FLATMINIMA_STUDY_MODULES: {exc}") from None


def software_versions() -> dict[str, str]:
    """Versions of the software a study ran with (recorded in every study summary)."""
    import platform

    import numpy
    import scipy
    import torch

    from .. import __version__

    return {"flatminima": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "platform": platform.platform()}


def point_key(point: dict[str, Any]) -> str:
    """Stable identifier of a grid point (hash of its canonical JSON)."""
    return hashlib.sha1(to_json(point).encode()).hexdigest()[:16]


def _call_point(fn: Callable, point: dict[str, Any], threads: int) -> tuple[dict, float]:
    """Compute one point with ``threads`` threads for torch and for the BLAS/OpenMP pools; returns
    ``(result, seconds)``. The thread counts are restored afterwards (the serial path runs in the caller).
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            t0 = time.perf_counter()
            res = fn(point)
            return res, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def _exit_with_parent(parent: int, period: float = 0.5) -> None:
    """Initializer of pool workers: a daemon thread ends the worker once ``parent`` is gone.

    A process whose parent dies is adopted by another one, so its parent pid changes; the watch sees it
    within ``period`` seconds, even while the worker computes (torch releases the GIL in its kernels).
    A killed sweep thus leaves no worker behind, and the multiprocessing resource tracker, which exits
    when the last process holding its pipe does, follows. POSIX only (on Windows the parent pid of a
    process does not change when its parent dies).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="flatminima-parent-watch", daemon=True).start()


def study_folder(store: Store, name: str, scale: str) -> Path:
    return store.root / "studies" / name / scale


def run_study(
    name: str,
    scale: str = "default",
    overrides: dict[str, Any] | None = None,
    store: Store | None = None,
    workers: int = 1,
    dask: str | Any | None = None,
    progress: bool = True,
    threads: int = 1,
) -> tuple[Summary, Path]:
    """Run (or resume) a study and write its summary; returns ``(summary, folder)``.

    Points already in the store are not recomputed. ``workers > 1`` runs points on a local process
    pool; ``dask`` (an address like ``tcp://host:8786`` or a ``distributed.Client``; needs the
    ``flatminima[dask]`` extra) runs them on a Dask cluster. Either way each finished point is committed
    to the store as soon as it arrives.

    Every point runs with ``threads`` threads (torch's and the BLAS/OpenMP pools'), in this process or
    in a worker alike, so a point's numbers do not depend on ``workers`` or on the executor (parallel
    reductions split their sums by thread count, so the thread count changes the last bits of a result).
    The default of one thread suits a sweep of many small points; give a serial sweep of a few large
    points more.
    """
    for arg, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg} must be an integer >= 1, got {value!r}")
    t_start = time.perf_counter()
    study = get(name)
    cfg = study.config(scale, overrides)
    store = store or Store()
    scale_key = scale if not overrides else scale + "+" + point_key(overrides)
    pts = study.points(cfg)
    keys = [point_key(p) for p in pts]
    todo = [(k, p) for k, p in zip(keys, pts) if store.get_point(name, scale_key, k) is None]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pts), initial=len(pts) - len(todo), desc=f"study {name}", disable=not progress, unit="pt")
    try:
        with closing(_execute(study.run_point, todo, workers, dask, threads)) as finished:
            for key, point, (res, secs) in finished:
                store.put_point(name, scale_key, key, point, res, secs)
                bar.update(1)
    finally:
        bar.close()
    results = [(p, store.get_point(name, scale_key, k)) for k, p in zip(keys, pts)]
    out = study_folder(store, name, scale_key)
    out.mkdir(parents=True, exist_ok=True)
    summary = study.summarize(cfg, results, out)
    decision = summary.decision = study.decide(summary.measured)
    record = {
        "study": name, "scale": scale, "overrides": overrides or {}, "config": cfg, "paper": study.paper,
        "claim": study.claim, "tables": summary.tables, "figures": summary.figures, "verdict": summary.verdict,
        "decision": decision.to_dict() if decision else None,
        "criterion": ({"published": study.criterion.published, "rule": study.criterion.rule}
                      if study.criterion else None),
        "measured": summary.measured, "published": summary.published, "notes": summary.notes,
        "n_points": len(pts), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "software": software_versions(),
        "compute_seconds": store.points_seconds(name, scale_key, keys), "threads_per_point": threads,
        "wall_seconds": time.perf_counter() - t_start, "workers": workers, "points_reused": len(pts) - len(todo),
    }
    atomic_write_text(out / "summary.json", json.dumps(json.loads(to_json(record)), indent=2))
    md = [f"# {name} ({scale})", "", f"**Paper:** {study.paper}", "", f"**Claim:** {study.claim}", ""]
    if study.criterion:
        md += [f"**Published:** {study.criterion.published}", "", f"**Pass criterion (fixed before the run):** "
               f"{study.criterion.rule}", ""]
    for tname, table in summary.tables.items():
        md += [f"## {tname}", "", table, ""]
    md += ["## Verdict", ""] + ([decision.markdown(), ""] if decision else []) + [summary.verdict, ""]
    if summary.notes:
        md += ["## Notes", "", summary.notes, ""]
    atomic_write_text(out / "summary.md", "\n".join(md))
    return summary, out


def _execute(fn: Callable, todo: list[tuple[str, dict]], workers: int, dask: Any,
             threads: int) -> Iterator[tuple[str, dict, tuple[dict, float]]]:
    """Yield ``(key, point, (result, seconds))`` as points finish.

    Closing the generator early (an error while storing a result, Ctrl-C) cancels the points that have
    not started; the pool waits only for those in flight.
    """
    if not todo:
        return
    if dask is not None:
        yield from _execute_dask(fn, todo, dask, threads)
        return
    if workers == 1:
        for k, p in todo:
            yield k, p, _call_point(fn, p, threads)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import as_completed as cf_completed

    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=mp.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        futs = {pool.submit(_call_point, fn, p, threads): (k, p) for k, p in todo}
        for fut in cf_completed(futs):
            k, p = futs[fut]
            yield k, p, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_dask(fn: Callable, todo: list[tuple[str, dict]], dask: Any,
                  threads: int) -> Iterator[tuple[str, dict, tuple[dict, float]]]:
    """The Dask path of :func:`_execute`: ``dask`` is a scheduler address or a ``distributed.Client``."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("sweeps on a Dask cluster need dask.distributed: install flatminima[dask]") from None
    if isinstance(dask, Client):
        client, own = dask, False
    elif isinstance(dask, str):
        try:
            client, own = Client(dask), True
        except (OSError, ValueError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler {dask!r}: {exc}") from None
    else:
        raise ConfigError(f"dask must be a scheduler address or a distributed.Client, got {type(dask).__name__}")
    try:
        futs = {client.submit(_call_point, fn, p, threads, pure=False): (k, p) for k, p in todo}
        for fut in as_completed(futs):
            k, p = futs[fut]
            yield k, p, fut.result()
    finally:
        if own:
            client.close()
