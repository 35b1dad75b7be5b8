"""The run store: one folder per run, and an embedded SQLite index of runs, metrics and results.

Layout under the store root (``$FLATMINIMA_HOME``, or ``./flatminima-runs`` by default)::

    index.sqlite            runs, configs, metrics, named results, study points
    runs/<run_id>/          config.json, checkpoints, figures, anything a run writes

Writes are transactions (SQLite in WAL mode), so a killed process never leaves a half-written row;
files are written to a temporary name and renamed (:func:`atomic_write_bytes`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, RunNotFoundError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    config TEXT NOT NULL,
    folder TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    key TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, key)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS study_points (
    study TEXT NOT NULL,
    scale TEXT NOT NULL,
    key TEXT NOT NULL,
    point TEXT NOT NULL,
    result TEXT NOT NULL,
    seconds REAL,
    created REAL NOT NULL,
    PRIMARY KEY (study, scale, key)
);
"""


def default_root() -> Path:
    return Path(os.environ.get("FLATMINIMA_HOME", "flatminima-runs"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def to_json(obj: Any) -> str:
    """JSON with numpy/torch scalars and arrays converted to plain Python numbers and lists."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(obj, default=default, sort_keys=True, allow_nan=True)


@dataclass(frozen=True)
class Run:
    """A row of the run index."""

    id: str
    kind: str
    name: str | None
    status: str
    created: float
    updated: float
    config: dict[str, Any]
    folder: Path


class Store:
    """The run store rooted at ``root`` (created on first use)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "runs").mkdir(exist_ok=True)
        self.path = self.root / "index.sqlite"
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            with db:  # commit on success, roll back on error
                yield db
        finally:
            db.close()

    # -------------------------------------------------------------------------------- runs
    def create_run(self, kind: str, config: dict[str, Any], name: str | None = None, run_id: str | None = None) -> Run:
        """Register a new run (status 'running') and create its folder."""
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / "runs" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "config.json", json.dumps(json.loads(to_json(config)), indent=2))
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, kind, name, status, created, updated, config, folder) VALUES (?,?,?,?,?,?,?,?)",
                (run_id, kind, name, "running", now, now, to_json(config), str(folder)),
            )
        return self.get(run_id)

    def get(self, run_id: str) -> Run:
        """The run with this id (a unique prefix of the id is enough)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE id = ? OR id LIKE ?", (run_id, run_id + "%")).fetchall()
        exact = [r for r in rows if r[0] == run_id]
        rows = exact or rows
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r} in {self.root} (see 'flatminima runs list')")
        if len(rows) > 1:
            raise ConfigError(f"run id prefix {run_id!r} is ambiguous: {', '.join(r[0] for r in rows[:5])}")
        r = rows[0]
        return Run(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), Path(r[7]))

    def runs(self, kind: str | None = None) -> list[Run]:
        q, args = "SELECT id FROM runs", ()
        if kind:
            q, args = q + " WHERE kind = ?", (kind,)
        with self._connect() as db:
            ids = [r[0] for r in db.execute(q + " ORDER BY created", args)]
        return [self.get(i) for i in ids]

    def set_status(self, run_id: str, status: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ?, updated = ? WHERE id = ?", (status, time.time(), run_id))

    # -------------------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Record scalar metrics at a step (re-logging a step overwrites it: resumed runs stay consistent)."""
        rows = [(run_id, int(step), k, None if v is None else float(v)) for k, v in values.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?)", rows)
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def metrics(self, run_id: str, key: str | None = None) -> list[tuple[int, str, float]]:
        q, args = "SELECT step, key, value FROM metrics WHERE run_id = ?", [run_id]
        if key:
            q += " AND key = ?"
            args.append(key)
        with self._connect() as db:
            return list(db.execute(q + " ORDER BY step, key", args))

    def drop_metrics_after(self, run_id: str, step: int) -> None:
        """Forget metrics logged after ``step`` (a resumed run re-logs them)."""
        with self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, int(step)))

    # -------------------------------------------------------------------------------- results
    def put_result(self, run_id: str, key: str, value: Any) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?)", (run_id, key, to_json(value)))

    def results(self, run_id: str) -> dict[str, Any]:
        with self._connect() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM results WHERE run_id = ?", (run_id,))}

    # -------------------------------------------------------------------------------- study points
    def get_point(self, study: str, scale: str, key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT result FROM study_points WHERE study = ? AND scale = ? AND key = ?", (study, scale, key)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_point(self, study: str, scale: str, key: str, point: dict, result: dict, seconds: float | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO study_points VALUES (?,?,?,?,?,?,?)",
                (study, scale, key, to_json(point), to_json(result), seconds, time.time()),
            )

    def points(self, study: str, scale: str) -> list[tuple[dict, dict]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT point, result FROM study_points WHERE study = ? AND scale = ? ORDER BY created", (study, scale)
            ).fetchall()
        return [(json.loads(p), json.loads(r)) for p, r in rows]

    def points_seconds(self, study: str, scale: str, keys: Iterable[str] | None = None) -> float:
        """Total compute time of a study's finished points (only those with the given keys, if any)."""
        with self._connect() as db:
            rows = db.execute("SELECT key, seconds FROM study_points WHERE study = ? AND scale = ?", (study, scale))
            wanted = None if keys is None else set(keys)
            return float(sum(sec or 0.0 for k, sec in rows if wanted is None or k in wanted))

    def count_points(self, study: str, scale: str, keys: Iterable[str]) -> int:
        keys = list(keys)
        return sum(self.get_point(study, scale, k) is not None for k in keys)
