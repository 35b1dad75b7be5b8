"""Double-ended connection by the Dijkstra missing-connection strategy (Carr, Trygubenko & Wales 2005), and
a strategy that connects every stored minimum to the global minimum.

The known landscape is a graph of minima joined by stored transition states. To join A and B, Dijkstra's
algorithm runs on the complete graph of stored minima with edge weight 0 for pairs already joined by a
transition state, ``D(u, v)^power`` (symmetry-aligned distance) for pairs not yet tried, and no edge for
pairs whose local connection was already attempted ``max_tries`` times. Every missing link on the shortest
path gets a local connection attempt (DNEB + refinement + pushoffs, :func:`.saddles.local_connect`);
whatever minima and transition states they find join the graph; the loop repeats until A and B are
connected or the cycle budget is spent.
"""

from __future__ import annotations

import heapq

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from .database import Database
from .metrics import UnionFind
from .saddles import local_connect

__all__ = ["components", "connected", "double_ended_connect", "connect_all"]


def components(db: Database) -> dict[int, int]:
    """Union-find over stored transition states: minimum id -> representative id of its component."""
    sets = UnionFind(m for (m,) in db.db.execute("SELECT id FROM minima"))
    for a, b, _ in db.edges():
        sets.union(a, b)
    return {m: sets.find(m) for m in sets.parent}


def connected(db: Database, id_a: int, id_b: int) -> bool:
    """Whether two minima are joined by a path of stored transition states."""
    comp = components(db)
    return comp[id_a] == comp[id_b]


class _DistanceCache:
    def __init__(self, potential):
        self.potential = potential
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, db: Database, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self.cache:
            self.cache[key] = self.potential.distance(db.minimum(a).coords, db.minimum(b).coords)
        return self.cache[key]


def _dijkstra(nodes: list[int], weight, src: int, dst: int) -> list[int] | None:
    dist = {src: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, src)]
    done = set()
    while heap:
        d, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == dst:
            break
        for v in nodes:
            if v in done:
                continue
            w = weight(u, v)
            if w is None:
                continue
            nd = d + w
            if nd < dist.get(v, np.inf):
                dist[v] = nd
                prev[v] = u
                heapq.heappush(heap, (nd, v))
    if dst not in done:
        return None
    path = [dst]
    while path[-1] != src:
        path.append(prev[path[-1]])
    return path[::-1]


def double_ended_connect(
    potential,
    db: Database,
    id_a: int,
    id_b: int,
    max_cycles: int = 10,
    max_tries: int = 2,
    power: float = 2.0,
    progress: bool = False,
    _dist: _DistanceCache | None = None,
    **local_kw,
) -> bool:
    """Try to join minima ``id_a`` and ``id_b`` through stored transition states. Returns whether they are
    connected at the end. A pair is attempted at most ``max_tries`` times, each retry with twice as many
    band images. ``local_kw`` go to :func:`.saddles.local_connect` (n_images, k, nrefine, method, ...)."""
    if id_a == id_b:
        return True
    db.minimum(id_a), db.minimum(id_b)  # validate ids
    if max_cycles < 1 or max_tries < 1:
        raise ConfigError("max_cycles and max_tries must be >= 1")
    dist = _dist or _DistanceCache(potential)
    bar = tqdm(total=max_cycles, desc=f"connect {id_a}-{id_b}", disable=not progress, leave=False)
    for _ in range(max_cycles):
        if connected(db, id_a, id_b):
            break
        nodes = [m for (m,) in db.db.execute("SELECT id FROM minima")]
        direct = {(min(a, b), max(a, b)) for a, b, _ in db.edges()}

        def weight(u, v):
            key = (min(u, v), max(u, v))
            if key in direct:
                return 0.0
            if db.tried(u, v) >= max_tries:
                return None
            return dist(db, u, v) ** power

        path = _dijkstra(nodes, weight, id_a, id_b)
        if path is None:
            break
        missing = [(u, v) for u, v in zip(path[:-1], path[1:]) if (min(u, v), max(u, v)) not in direct]
        for u, v in missing:
            attempt = db.mark_tried(u, v)
            kw = dict(local_kw)
            kw["n_images"] = int(kw.get("n_images", 10)) * 2 ** (attempt - 1)  # retries: denser bands
            local_connect(potential, db, u, v, **kw)
        bar.update(1)
    bar.close()
    return connected(db, id_a, id_b)


def connect_all(potential, db: Database, max_cycles: int = 5, max_tries: int = 2, progress: bool = False,
                max_minima: int | None = None, passes: int = 1, **local_kw) -> int:
    """Connect every stored minimum (lowest first, at most ``max_minima`` of them) to the global minimum by
    double-ended searches (pele's 'gmin' strategy). Returns the number of minima in the global minimum's
    component at the end.

    ``passes``: repeat the sweep over the minima not yet connected (the minima the searches found included)
    up to this many times; it stops as soon as every minimum (of the ``max_minima`` lowest) is connected to
    the global minimum or a pass stored no new transition state (a pass that adds nothing would be repeated
    identically: the pairs it tried keep their counts of attempts, see ``max_tries``)."""
    if db.n_minima() == 0:
        raise ConfigError("the database holds no minima")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ConfigError(f"passes must be an integer >= 1, got {passes!r}")
    dist = _DistanceCache(potential)
    for _ in range(passes):
        gmin = db.global_minimum().id
        comp = components(db)
        targets = [m.id for m in db.minima()][: max_minima]
        todo = [m for m in targets if comp[m] != comp[gmin]]
        if not todo:
            break
        n_ts = db.n_ts()
        for mid in tqdm(todo, desc="connect-all", disable=not progress, leave=False):
            if connected(db, gmin, mid):
                continue
            double_ended_connect(potential, db, gmin, mid, max_cycles=max_cycles, max_tries=max_tries, _dist=dist,
                                 **local_kw)
        if db.n_ts() == n_ts:
            break
    gmin = db.global_minimum().id
    comp = components(db)
    return sum(1 for m in comp if comp[m] == comp[gmin])
