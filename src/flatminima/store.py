"""The run store: one folder per run, and an embedded SQLite index of runs, metrics and results.

Layout under the store root (``$FLATMINIMA_HOME``, or ``./flatminima-runs`` by default)::

    index.sqlite            runs, configs, metrics, named results, study points
    runs/<run_id>/          config.json, checkpoints, figures, anything a run writes

The index names each run's folder relative to the root, so a store can be moved or copied as a whole
(an index written by an older flatminima, with absolute folders, is upgraded on open in one transaction).
Opening a store runs SQLite's ``quick_check``: a damaged index is reported, with how to recover, instead
of being read. Writes are transactions (SQLite in WAL mode), so a killed process never leaves a
half-written row; files are written to a temporary name and renamed (:func:`flatminima.fileio.atomic_write_bytes`).

A run is ``running`` while the process that owns it lives: the index records the owner (host, pid and,
on Linux, the boot id and the process start time), and a run whose owner died without saying so is
reported as ``interrupted``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, RunNotFoundError, StoreCorruptError, StoreError, StoreNotFoundError
from .fileio import atomic_write_text, to_json

SCHEMA_VERSION = 1  # PRAGMA user_version; 0: folders as given by the caller, no run owners

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    config TEXT NOT NULL,
    folder TEXT NOT NULL,
    owner_host TEXT,
    owner_pid INTEGER,
    owner_start TEXT
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
OWNER_COLUMNS = (("owner_host", "TEXT"), ("owner_pid", "INTEGER"), ("owner_start", "TEXT"))
RUN_COLUMNS = "id, kind, name, status, created, updated, config, folder, owner_host, owner_pid, owner_start"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_root() -> Path:
    """``$FLATMINIMA_HOME``, or ``./flatminima-runs`` when it is unset or empty."""
    return Path(os.environ.get("FLATMINIMA_HOME") or "flatminima-runs")


def process_start(pid: int) -> str | None:
    """An identity of the live process ``pid`` that changes when the pid is reused; None if none runs.

    Linux: the boot id and the process start time (clock ticks after boot) from ``/proc``; a zombie
    counts as dead. Other POSIX systems: ``""`` for any live process (a reused pid is not detected).
    Elsewhere ``""``: no cheap check, every process counts as alive.
    """
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces
        if fields[0] in ("Z", "X"):
            return None
        return f"{boot}:{fields[19]}"  # field 22 of proc(5), counted from the state (field 3)
    if os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by another user
            pass
    return ""


def salvage(root: str | os.PathLike) -> dict[str, int]:
    """Rebuild a damaged index from the rows that can still be read; returns the rows kept per table.

    Each table is read in rowid order up to the first unreadable page, then backwards from its end to
    the last one (as the ``sqlite3`` shell's ``.dump`` does), so only the rows on damaged pages are lost.
    The damaged file is kept next to the new index as ``index.damaged-<time>.sqlite``.
    """
    root = Path(root).absolute()
    path = root / "index.sqlite"
    if not path.is_file():
        raise StoreNotFoundError(f"no run index at {path}")
    rebuilt = root / ".index.salvage.sqlite"
    rebuilt.unlink(missing_ok=True)
    kept = {}
    with closing(sqlite3.connect(path)) as old, closing(sqlite3.connect(rebuilt, isolation_level=None)) as new:
        new.executescript(SCHEMA)
        new.execute("BEGIN")
        for table in ("runs", "metrics", "results", "study_points"):
            rows: dict[int, tuple] = {}
            columns: list[str] = []
            for order in ("ASC", "DESC"):
                try:
                    cur = old.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid {order}")
                    columns = [d[0] for d in cur.description[1:]]
                    for row in cur:
                        rows.setdefault(row[0], row[1:])
                except sqlite3.DatabaseError:
                    continue
            if rows:
                names = ", ".join(columns)
                marks = ", ".join("?" * len(columns))
                new.executemany(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", rows.values())
            kept[table] = len(rows)
        new.execute("PRAGMA user_version = 0")  # the next open upgrades it (run folders relative to the root)
        new.execute("COMMIT")
    os.replace(path, root / time.strftime("index.damaged-%Y%m%d-%H%M%S.sqlite"))
    os.replace(rebuilt, path)
    return kept


@dataclass(frozen=True)
class Run:
    """A row of the run index.

    ``folder`` is absolute (the store root joined with the folder the index names); ``status`` is the
    stored one, except that a ``running`` run whose owner process is known to be dead reads ``interrupted``.
    """

    id: str
    kind: str
    name: str | None
    status: str
    created: float
    updated: float
    config: dict[str, Any]
    folder: Path


class Store:
    """The run store rooted at ``root`` (default :func:`default_root`).

    ``create=True`` (writers) creates the store on first use: the root folder itself, never a missing
    parent. ``create=False`` (readers) creates nothing and raises
    :class:`~flatminima.errors.StoreNotFoundError` when there is no store at ``root``. Either way the
    index is checked on open (:class:`~flatminima.errors.StoreCorruptError` when damaged) and an index of
    an older format is upgraded in place. Every problem with the location or the index is a
    :class:`~flatminima.errors.StoreError` whose message is one line.
    """

    def __init__(self, root: str | os.PathLike | None = None, create: bool = True) -> None:
        self.root = (Path(root) if root is not None else default_root()).absolute()
        self.path = self.root / "index.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"run store {self.root} is a file, not a folder: point --store or FLATMINIMA_HOME at a folder")
        existed = self.path.is_file()
        if not existed and not create:
            raise StoreNotFoundError(f"no run store at {self.root} (nothing has been stored there yet)")
        if create:
            self._make_root()
        if existed:
            self._quick_check()
        if create:
            try:
                (self.root / "runs").mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {self.root / 'runs'}: {exc.strerror}") from None
        self._upgrade()

    # -------------------------------------------------------------------------------- opening
    def _make_root(self) -> None:
        """Create the root folder (not its parents) and check that it is writable."""
        if not self.root.is_dir():
            if not self.root.parent.is_dir():
                raise StoreError(f"cannot create run store {self.root}: {self.root.parent} is not an existing folder")
            try:
                self.root.mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create run store {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"run store {self.root} is not writable")

    def _damaged(self, detail: str) -> StoreCorruptError:
        detail = " ".join(detail.split())[:160]
        return StoreCorruptError(
            f"the run index {self.path} is damaged ({detail}); the run folders under {self.root / 'runs'} are "
            f"intact and readable. Rebuild the index from its readable rows with flatminima.store.salvage("
            f"'{self.root}'), or move index.sqlite aside to start an empty one")

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """Turn SQLite's errors about the file (damage, locks, permissions, a full disk) into StoreErrors."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreError(f"run store {self.root}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # integrity and programming errors are bugs: keep them
                raise
            raise self._damaged(str(exc)) from exc

    def _quick_check(self) -> None:
        with self._sqlite_errors(), closing(sqlite3.connect(self.path, timeout=60)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise self._damaged(rows[0][0])

    def _upgrade(self) -> None:
        """Create the schema, or upgrade an older index to it, in one transaction.

        Version 0 stored each run's folder as the path it was created under (absolute, or relative to
        the working directory of the time): every folder becomes ``runs/<id>``, relative to the root.
        """
        with self._sqlite_errors(), closing(sqlite3.connect(self.path, timeout=60, isolation_level=None)) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise StoreError(f"the run index {self.path} was written by a newer flatminima (format {version})")
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # not upgraded meanwhile
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        db.execute(statement)
                    have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
                    for column, decl in OWNER_COLUMNS:
                        if column not in have:
                            db.execute(f"ALTER TABLE runs ADD COLUMN {column} {decl}")
                    db.execute("UPDATE runs SET folder = 'runs/' || id")
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._sqlite_errors():
            db = sqlite3.connect(self.path, timeout=60)
            try:
                db.execute("PRAGMA foreign_keys=ON")
                with db:  # commit on success, roll back on error
                    yield db
            finally:
                db.close()

    # -------------------------------------------------------------------------------- runs
    def create_run(self, kind: str, config: dict[str, Any], name: str | None = None, run_id: str | None = None) -> Run:
        """Register a new run (status 'running', owned by this process) and create its folder.

        ``run_id`` (default: a time stamp and a random suffix) must be new and a plain name: letters,
        digits, ``.``, ``_`` and ``-``. Nothing is left behind when registering fails.
        """
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        if not RUN_ID.fullmatch(run_id):
            raise ConfigError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 128, not "
                              "starting with '.', '_' or '-')")
        try:
            record = to_json(config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the config of a run must be JSON data: {exc}") from None
        folder = self.root / "runs" / run_id
        made = not folder.exists()
        now = time.time()
        try:
            with self._connect() as db:
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    raise ConfigError(f"a run {run_id!r} already exists in {self.root}")
                db.execute(
                    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, kind, name, "running", now, now, record, f"runs/{run_id}", *self._owner()),
                )
                try:
                    folder.mkdir(exist_ok=True)
                    atomic_write_text(folder / "config.json", json.dumps(json.loads(record), indent=2))
                except OSError as exc:
                    raise StoreError(f"cannot write the run folder {folder}: {exc.strerror}") from None
        except BaseException:
            if made:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.get(run_id)

    @staticmethod
    def _owner() -> tuple[str, int, str | None]:
        pid = os.getpid()
        return socket.gethostname(), pid, process_start(pid)

    def _run(self, row: tuple) -> Run:
        run_id, kind, name, status, created, updated, config, folder, host, pid, start = row
        if status == "running" and pid is not None and host == socket.gethostname() and process_start(pid) != start:
            status = "interrupted"  # its process died (or its pid now belongs to another process)
        return Run(run_id, kind, name, status, created, updated, json.loads(config), self.root / folder)

    def get(self, run_id: str) -> Run:
        """The run with this id (a unique prefix of the id is enough)."""
        if not run_id:
            raise RunNotFoundError(f"no run with an empty id in {self.root}")
        with self._connect() as db:
            rows = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created",
                              (len(run_id), run_id)).fetchall()
        exact = [r for r in rows if r[0] == run_id]
        rows = exact or rows
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r} in {self.root} (see 'flatminima runs list')")
        if len(rows) > 1:
            raise ConfigError(f"run id prefix {run_id!r} is ambiguous: {', '.join(r[0] for r in rows[:5])}")
        return self._run(rows[0])

    def runs(self, kind: str | None = None) -> list[Run]:
        """Every run (of one ``kind``, if given), oldest first."""
        q, args = f"SELECT {RUN_COLUMNS} FROM runs", ()
        if kind:
            q, args = q + " WHERE kind = ?", (kind,)
        with self._connect() as db:
            rows = db.execute(q + " ORDER BY created", args).fetchall()
        return [self._run(r) for r in rows]

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status; ``"running"`` also makes this process its owner."""
        with self._connect() as db:
            if status == "running":
                cur = db.execute("UPDATE runs SET status = ?, updated = ?, owner_host = ?, owner_pid = ?, "
                                 "owner_start = ? WHERE id = ?", (status, time.time(), *self._owner(), run_id))
            else:
                cur = db.execute("UPDATE runs SET status = ?, updated = ? WHERE id = ?", (status, time.time(), run_id))
        if cur.rowcount == 0:
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}")

    @contextmanager
    def running(self, run_id: str) -> Iterator[Run]:
        """Own a run for the duration of a block: ``running`` inside, then ``finished``, or ``interrupted``
        if the block raises (Ctrl-C included; the exception propagates).

        Enter it only once everything that can fail on bad input has passed (for a resumed run: its
        checkpoint loaded), so that a run that never started keeps the status it had.
        """
        self.set_status(run_id, "running")
        try:
            yield self.get(run_id)
        except BaseException:
            self.set_status(run_id, "interrupted")
            raise
        self.set_status(run_id, "finished")

    # -------------------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Record scalar metrics at a step (re-logging a step overwrites it: resumed runs stay consistent)."""
        rows = [(run_id, int(step), k, None if v is None else float(v)) for k, v in values.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?)", rows)
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def metrics(self, run_id: str, key: str | None = None) -> list[tuple[int, str, float]]:
        """A run's metrics as ``(step, key, value)`` rows ordered by step (only ``key``, if given)."""
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
        """Store a named result of a run (any JSON-able value; numpy and torch values are converted)."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?)", (run_id, key, to_json(value)))

    def results(self, run_id: str) -> dict[str, Any]:
        """A run's named results."""
        with self._connect() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM results WHERE run_id = ?", (run_id,))}

    # -------------------------------------------------------------------------------- study points
    def get_point(self, study: str, scale: str, key: str) -> dict[str, Any] | None:
        """The result of a finished study point, or None if it has not been computed."""
        with self._connect() as db:
            row = db.execute(
                "SELECT result FROM study_points WHERE study = ? AND scale = ? AND key = ?", (study, scale, key)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_point(self, study: str, scale: str, key: str, point: dict, result: dict, seconds: float | None = None) -> None:
        """Commit a finished study point (its config, its result and the compute seconds it took)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO study_points VALUES (?,?,?,?,?,?,?)",
                (study, scale, key, to_json(point), to_json(result), seconds, time.time()),
            )

    def points(self, study: str, scale: str) -> list[tuple[dict, dict]]:
        """Every finished point of a study at a scale as ``(point, result)``, in the order they finished."""
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
        """How many of the points with these keys are finished."""
        keys = list(keys)
        return sum(self.get_point(study, scale, k) is not None for k in keys)
