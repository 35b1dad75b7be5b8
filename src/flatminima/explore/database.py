"""An embedded SQLite database of minima, transition states and their connections.

Crash safety: the file uses SQLite's write-ahead log and every insertion is its own transaction, so a search
killed at any moment (even with SIGKILL) leaves a database that opens and holds everything committed before
the kill. (``synchronous=NORMAL``: a commit does not wait for the disk; a power cut, unlike a killed
process, may lose the last commits.) Searches store their state (walker positions, step sizes, random
generator state) in the same file, so they resume where they stopped.

Duplicate detection is symmetry-aware: two minima are the same when their energies agree within
``ENERGY_TOL`` (relative, floored at 1 in absolute value) and the potential's ``same_minimum`` (distance
minimised over its symmetries) holds within its ``dist_tol``.

PATHSAMPLE interchange (:func:`export_pathsample` / :func:`import_pathsample`): ``min.data`` lines are
``E  ln(prod of positive Hessian eigenvalues)  point-group-order  Ix Iy Iz``, ``ts.data`` lines
``E  lnprod  order  min1  min2  Ix Iy Iz`` (1-based minimum indices), and ``points.min`` / ``points.ts`` hold
the coordinates as raw little-endian float64 records of n values each, in the same order.

Discovery steps: a search that passes ``found_at`` to :meth:`Database.add_minimum` (basin-hopping does: 0 for
the first quench, k for its k-th step) records the step at which it first found each minimum, in the same
transaction as the minimum; :meth:`Database.found_steps` returns them, and a search's saturation (the share of
its minima first found late) is measured from them.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_text

__all__ = ["Minimum", "TransitionState", "Database", "export_pathsample", "import_pathsample", "hessian_summary", "spectrum_index"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS minima (
    id INTEGER PRIMARY KEY, energy REAL NOT NULL, coords BLOB NOT NULL, log_prod REAL,
    n_neg INTEGER, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS minima_energy ON minima(energy);
CREATE TABLE IF NOT EXISTS ts (
    id INTEGER PRIMARY KEY, energy REAL NOT NULL, coords BLOB NOT NULL, min1 INTEGER NOT NULL,
    min2 INTEGER NOT NULL, eigenvalue REAL, log_prod REAL, props TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
    FOREIGN KEY (min1) REFERENCES minima(id), FOREIGN KEY (min2) REFERENCES minima(id));
CREATE TABLE IF NOT EXISTS tried (min1 INTEGER NOT NULL, min2 INTEGER NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (min1, min2));
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS found (id INTEGER PRIMARY KEY, step INTEGER NOT NULL, FOREIGN KEY (id) REFERENCES minima(id));
"""


ENERGY_TOL = 1e-6
#: largest dimension for which the Hessian of every new minimum is diagonalised (log product, index)
DENSE_HESSIAN_MAX = 2000


@dataclass
class Minimum:
    """A stored minimum: id, energy, coords (n,), log product of its positive Hessian eigenvalues and number
    of negative ones (None when not computed)."""

    id: int
    energy: float
    coords: np.ndarray
    log_prod: float | None = None
    n_neg: int | None = None

    def __repr__(self) -> str:
        return f"Minimum(id={self.id}, energy={self.energy:.8g})"


@dataclass
class TransitionState:
    """A stored transition state joining minima ``min1`` and ``min2`` (ids); eigenvalue: the negative one."""

    id: int
    energy: float
    coords: np.ndarray
    min1: int
    min2: int
    eigenvalue: float | None = None
    log_prod: float | None = None
    props: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TransitionState(id={self.id}, energy={self.energy:.8g}, {self.min1}<->{self.min2})"


def _blob(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f8").tobytes()


def _unblob(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f8").copy()


def hessian_summary(potential, x: np.ndarray, rel_tol: float = 1e-8) -> tuple[float, int, np.ndarray]:
    """(log product of the positive eigenvalues, number of negative ones, eigenvalues) of the exact Hessian
    at x, with the potential's zero modes removed; eigenvalues below ``rel_tol * max|lambda|`` in modulus
    count as zero (scale-aware threshold)."""
    lam = potential.hessian_eigh(x)[0]
    return (*spectrum_index(lam, rel_tol), lam)


def spectrum_index(lam: np.ndarray, rel_tol: float = 1e-8) -> tuple[float, int]:
    """(log product of the positive eigenvalues, number of negative ones) of the spectrum ``lam`` (m,);
    eigenvalues below ``rel_tol * max|lambda|`` in modulus count as zero."""
    tol = rel_tol * max(float(np.abs(lam).max()), 1e-300) if lam.size else 0.0
    return float(np.sum(np.log(lam[lam > tol]))), int(np.sum(lam < -tol))


class Database:
    """Minima, transition states and search state in one SQLite file (or in memory with ``path=None``).

    Parameters
    ----------
    path : str or Path, optional
        The database file (created if missing). ``None``: in memory.
    potential : Potential, optional
        Used for symmetry-aware duplicate detection (``same_minimum`` within its ``dist_tol``; without a
        potential: Euclidean distance below 1e-3).

    Notes
    -----
    Minima are stored without their Hessian summary (a search stores thousands); the summary (``log_prod``,
    ``n_neg``) is recorded when a caller computed it, e.g. for the end points of every verified transition
    state (:func:`~flatminima.explore.saddles.connect_ts`), or on demand by :meth:`hessian_summaries`.
    """

    def __init__(self, path: str | os.PathLike | None = None, potential=None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.potential = potential
        self.dist_tol = float(getattr(potential, "dist_tol", 1e-3))
        try:
            self.db = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not a landscape database: {exc}") from None
        self._cache: list[tuple[float, int, np.ndarray]] = []  # (energy, id, coords), sorted by energy
        for mid, e, c in self.db.execute("SELECT id, energy, coords FROM minima ORDER BY energy"):
            self._cache.append((e, mid, _unblob(c)))
        self._found = {m for (m,) in self.db.execute("SELECT id FROM found")}  # minima with a discovery step
        if potential is not None:
            stored = self.get_meta("ndim")
            if stored is not None and int(stored) != potential.ndim:
                raise ConfigError(f"database {path} holds {stored}-dimensional points, potential has {potential.ndim}")
            if stored is None:
                self.set_meta("ndim", potential.ndim)
                self.set_meta("potential", repr(potential))

    # ------------------------------------------------------------------ context / meta
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-able search state (committed at once)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ minima
    def _same(self, a: np.ndarray, b: np.ndarray) -> bool:
        if self.potential is not None:
            return self.potential.same_minimum(a, b, self.dist_tol)
        return float(np.linalg.norm(a - b)) < self.dist_tol

    def find_minimum(self, energy: float, coords: np.ndarray) -> int | None:
        """Id of a stored minimum equal to (energy, coords) up to symmetry, or None."""
        tol = ENERGY_TOL * max(1.0, abs(energy))
        lo = bisect.bisect_left(self._cache, energy - tol, key=lambda t: t[0])
        for e, mid, c in self._cache[lo:]:
            if e > energy + tol:
                break
            if self._same(coords, c):
                return mid
        return None

    def add_minimum(self, energy: float, coords: np.ndarray, log_prod: float | None = None,
                    n_neg: int | None = None, found_at: int | None = None) -> tuple[Minimum, bool]:
        """Insert a minimum unless a symmetric copy is stored. Returns (the stored minimum, whether new).

        ``log_prod`` / ``n_neg`` (Hessian summary, :func:`hessian_summary`) are stored with a new minimum, and
        added to a stored one that has none. ``found_at``: the step of a search at which it found this
        minimum; recorded when the minimum has no discovery step yet (so the first one stays)."""
        coords = np.array(coords, dtype=np.float64).ravel()  # a copy: callers may reuse their array
        energy = float(energy)
        if not math.isfinite(energy):
            raise ConfigError("cannot store a minimum with a non-finite energy")
        if found_at is not None and (isinstance(found_at, bool) or not isinstance(found_at, (int, np.integer))
                                     or found_at < 0):
            raise ConfigError(f"found_at must be a step number >= 0, got {found_at!r}")
        mid = self.find_minimum(energy, coords)
        if mid is not None:
            record = found_at is not None and mid not in self._found
            if log_prod is not None or record:
                with self.db:
                    if log_prod is not None:
                        self.db.execute("UPDATE minima SET log_prod=?, n_neg=? WHERE id=? AND log_prod IS NULL",
                                        (float(log_prod), n_neg, mid))
                    if record:
                        self.db.execute("INSERT OR IGNORE INTO found VALUES (?, ?)", (mid, int(found_at)))
                if record:
                    self._found.add(mid)
            return self.minimum(mid), False
        with self.db:
            cur = self.db.execute(
                "INSERT INTO minima (energy, coords, log_prod, n_neg, created) VALUES (?,?,?,?,?)",
                (energy, _blob(coords), log_prod, n_neg, time.time()))
            if found_at is not None:
                self.db.execute("INSERT INTO found VALUES (?, ?)", (cur.lastrowid, int(found_at)))
        if found_at is not None:
            self._found.add(cur.lastrowid)
        bisect.insort(self._cache, (energy, cur.lastrowid, coords), key=lambda t: t[0])
        return Minimum(cur.lastrowid, energy, coords, log_prod, n_neg), True

    def found_steps(self) -> dict[int, int]:
        """Minimum id -> the search step at which it was first found (minima stored with ``found_at``)."""
        return {int(m): int(s) for m, s in self.db.execute("SELECT id, step FROM found ORDER BY id")}

    def hessian_summaries(self, ids=None) -> list[Minimum]:
        """Compute and store the Hessian summary of the minima ``ids`` (default: all) that have none (needs the
        potential, at most ``DENSE_HESSIAN_MAX`` dimensions). Returns those minima, updated."""
        if self.potential is None or self.potential.ndim > DENSE_HESSIAN_MAX:
            raise ConfigError(f"Hessian summaries need a potential of at most {DENSE_HESSIAN_MAX} dimensions")
        mins = self.minima() if ids is None else [self.minimum(i) for i in ids]
        for m in mins:
            if m.log_prod is None:
                m.log_prod, m.n_neg, _ = hessian_summary(self.potential, m.coords)
                with self.db:
                    self.db.execute("UPDATE minima SET log_prod=?, n_neg=? WHERE id=?", (m.log_prod, m.n_neg, m.id))
        return mins

    def _select(self, table: str, where: str = "", args: tuple = ()) -> list:
        """Rows of ``minima`` or ``ts`` as :class:`Minimum` / :class:`TransitionState` objects."""
        if table == "minima":
            rows = self.db.execute(f"SELECT id, energy, coords, log_prod, n_neg FROM minima {where}", args)
            return [Minimum(r[0], r[1], _unblob(r[2]), r[3], r[4]) for r in rows]
        rows = self.db.execute(f"SELECT id, energy, coords, min1, min2, eigenvalue, log_prod, props FROM ts {where}",
                               args)
        return [TransitionState(r[0], r[1], _unblob(r[2]), r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]

    def _by_id(self, table: str, row_id: int):
        found = self._select(table, "WHERE id=?", (int(row_id),))
        if not found:
            raise ConfigError(f"no {'minimum' if table == 'minima' else 'transition state'} with id {row_id}")
        return found[0]

    def minimum(self, min_id: int) -> Minimum:
        return self._by_id("minima", min_id)

    def minima(self) -> list[Minimum]:
        """All minima, sorted by energy (lowest first)."""
        return self._select("minima", "ORDER BY energy, id")

    def n_minima(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM minima").fetchone()[0]

    def lowest_energy(self) -> float:
        """Energy of the global minimum (inf when the database holds no minima)."""
        return self._cache[0][0] if self._cache else math.inf

    def global_minimum(self) -> Minimum:
        ms = self.db.execute("SELECT id FROM minima ORDER BY energy, id LIMIT 1").fetchone()
        if ms is None:
            raise ConfigError("the database holds no minima")
        return self.minimum(ms[0])

    # ------------------------------------------------------------------ transition states
    def add_ts(self, energy: float, coords: np.ndarray, min1: int, min2: int, eigenvalue: float | None = None,
               log_prod: float | None = None, props: dict | None = None) -> tuple[TransitionState, bool]:
        """Insert a transition state between two stored minima unless an equal one (same pair, same energy
        within tolerance) is stored. Returns (the stored TS, whether new)."""
        energy = float(energy)
        tol = ENERGY_TOL * max(1.0, abs(energy))
        a, b = sorted((int(min1), int(min2)))
        for r in self.db.execute("SELECT id, energy FROM ts WHERE min1=? AND min2=? AND energy BETWEEN ? AND ?",
                                 (a, b, energy - tol, energy + tol)):
            return self.ts(r[0]), False
        with self.db:
            cur = self.db.execute(
                "INSERT INTO ts (energy, coords, min1, min2, eigenvalue, log_prod, props, created) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (energy, _blob(coords), a, b, eigenvalue, log_prod, json.dumps(props or {}), time.time()))
        return TransitionState(cur.lastrowid, energy, np.array(coords, float), a, b, eigenvalue, log_prod,
                               props or {}), True

    def ts(self, ts_id: int) -> TransitionState:
        return self._by_id("ts", ts_id)

    def transition_states(self) -> list[TransitionState]:
        """All transition states, sorted by energy."""
        return self._select("ts", "ORDER BY energy, id")

    def n_ts(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM ts").fetchone()[0]

    def edges(self) -> list[tuple[int, int, float]]:
        """(min1, min2, TS energy) of every transition state (cheap: no coordinates)."""
        return list(self.db.execute("SELECT min1, min2, energy FROM ts ORDER BY energy"))

    def mark_tried(self, min1: int, min2: int) -> int:
        """Count one more local connection attempt between two minima; returns the new count."""
        a, b = sorted((int(min1), int(min2)))
        with self.db:
            self.db.execute("INSERT INTO tried VALUES (?,?,1) ON CONFLICT(min1,min2) DO UPDATE SET attempts=attempts+1",
                            (a, b))
        return self.tried(a, b)

    def tried(self, min1: int, min2: int) -> int:
        a, b = sorted((int(min1), int(min2)))
        r = self.db.execute("SELECT attempts FROM tried WHERE min1=? AND min2=?", (a, b)).fetchone()
        return 0 if r is None else int(r[0])

    def __repr__(self) -> str:
        return f"Database({str(self.path) if self.path else ':memory:'}, minima={self.n_minima()}, ts={self.n_ts()})"


# ====================================================================== PATHSAMPLE interchange
def _inertia(coords: np.ndarray) -> tuple[float, float, float]:
    if coords.size % 3:
        return (1.0, 1.0, 1.0)
    R = coords.reshape(-1, 3)
    R = R - R.mean(0)
    I = np.eye(3) * np.sum(R * R) - R.T @ R
    return tuple(float(v) for v in np.linalg.eigvalsh(I))


def export_pathsample(db: Database, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``min.data``, ``ts.data``, ``points.min``, ``points.ts`` into ``folder`` (atomically).

    Minimum indices in ``ts.data`` refer to the line numbers (1-based) of ``min.data``, which lists minima by
    energy. Point-group orders are written as 1 (not computed); missing log products as 0.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mins = db.minima()
    index = {m.id: i + 1 for i, m in enumerate(mins)}
    lines = []
    for m in mins:
        ix, iy, iz = _inertia(m.coords)
        lines.append(f"{m.energy:.12f} {m.log_prod or 0.0:.10f} 1 {ix:.10f} {iy:.10f} {iz:.10f}")
    atomic_write_text(folder / "min.data", "\n".join(lines) + ("\n" if lines else ""))
    tss = db.transition_states()
    lines = []
    for t in tss:
        ix, iy, iz = _inertia(t.coords)
        lines.append(f"{t.energy:.12f} {t.log_prod or 0.0:.10f} 1 {index[t.min1]} {index[t.min2]} "
                     f"{ix:.10f} {iy:.10f} {iz:.10f}")
    atomic_write_text(folder / "ts.data", "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_bytes(folder / "points.min", b"".join(_blob(m.coords) for m in mins))
    atomic_write_bytes(folder / "points.ts", b"".join(_blob(t.coords) for t in tss))
    return {k: folder / k for k in ("min.data", "ts.data", "points.min", "points.ts")}


def import_pathsample(folder: str | os.PathLike, db: Database, ndim: int) -> tuple[int, int]:
    """Read a PATHSAMPLE database (``min.data``, ``ts.data``, ``points.min``, ``points.ts`` in ``folder``) into
    ``db``. ``ndim``: coordinates per point. Returns (new minima, new transition states)."""
    folder = Path(folder)
    try:
        mrows = [ln.split() for ln in (folder / "min.data").read_text().splitlines() if ln.strip()]
        trows = [ln.split() for ln in (folder / "ts.data").read_text().splitlines() if ln.strip()] \
            if (folder / "ts.data").exists() else []
        pm = np.frombuffer((folder / "points.min").read_bytes(), dtype="<f8")
        pt = np.frombuffer((folder / "points.ts").read_bytes(), dtype="<f8") \
            if (folder / "points.ts").exists() else np.zeros(0)
    except FileNotFoundError as exc:
        raise ConfigError(f"not a PATHSAMPLE database folder: {exc}") from None
    if pm.size != len(mrows) * ndim or pt.size != len(trows) * ndim:
        raise ConfigError(f"points files do not hold {ndim} coordinates per stationary point")
    ids, new_min, new_ts = [], 0, 0
    for i, r in enumerate(mrows):
        m, new = db.add_minimum(float(r[0]), pm[i * ndim:(i + 1) * ndim], log_prod=float(r[1]))
        ids.append(m.id)
        new_min += new
    for i, r in enumerate(trows):
        a, b = int(r[3]) - 1, int(r[4]) - 1
        if not (0 <= a < len(ids) and 0 <= b < len(ids)):
            raise ConfigError(f"ts.data line {i + 1} refers to a minimum that min.data does not hold")
        _, new = db.add_ts(float(r[0]), pt[i * ndim:(i + 1) * ndim], ids[a], ids[b], log_prod=float(r[1]))
        new_ts += new
    return new_min, new_ts
