"""Landscape metrics from a database of minima and transition states (or plain energy tables).

- counts: minima, transition states, their ratio, the size of the global minimum's connected component;
- barrier distributions: downhill ``E_ts - max(E_1, E_2)`` and uphill ``E_ts - min(E_1, E_2)`` barriers;
- minimax barrier to the global minimum: ``E_dagger(a) - E(a)`` where ``E_dagger(a)`` is the lowest possible
  highest transition state on a path from ``a`` to the global minimum (the disconnectivity-graph merge
  energy, from a union-find sweep over transition states sorted by energy);
- monotonic-sequence basins: from each minimum, step to the lowest connected neighbour that is lower in
  energy until none is; the end points ("bottoms") count the funnels (one bottom: a single funnel);
- frustration index (de Souza et al., J. Chem. Phys. 146, 124103 (2017); the exact form used here is the
  one given in the project reference, marked unverified there):
  ``f(T) = sum_{a != gm} p_a(T) (E_dagger(a) - E_gm) / (E_a - E_gm)`` with equilibrium occupations of the
  harmonic superposition approximation, ``p_a ~ exp(-E_a / T - log_prod_a / 2)`` normalised over the
  connected minima (``log_prod``: log product of positive Hessian eigenvalues; ignored when unknown).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["minimax_to_gmin", "monotonic_sequence_basins", "frustration_index", "landscape_metrics"]


class UnionFind:
    """Disjoint sets of minimum ids (path halving); ``union`` returns whether two sets were merged."""

    def __init__(self, nodes=()) -> None:
        self.parent = {m: m for m in nodes}

    def add(self, m) -> None:
        self.parent.setdefault(m, m)

    def find(self, u):
        parent = self.parent
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    def union(self, a, b) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
        return ra != rb


def landscape_tables(db_or_minima, ts=None):
    """(energies {id: E}, edges [(min1, min2, E_ts)], log products {id: lnprod}) of a Database, or of a dict
    minimum id -> energy with ``ts`` a list of (min1, min2, energy) (then no log products)."""
    if hasattr(db_or_minima, "minima") and callable(db_or_minima.minima):
        mins = db_or_minima.minima()
        energies = {m.id: m.energy for m in mins}
        lp = {m.id: m.log_prod for m in mins if m.log_prod is not None}
        edges = db_or_minima.edges()
    else:
        energies = {int(k): float(v) for k, v in dict(db_or_minima).items()}
        lp = {}
        edges = [(int(a), int(b), float(e)) for a, b, e in (ts or [])]
    if not energies:
        raise ConfigError("the landscape holds no minima")
    return energies, edges, lp


def minimax_to_gmin(db_or_minima, ts=None) -> dict[int, float]:
    """Minimum id -> E_dagger, the energy of the highest transition state on the minimax path to the
    global minimum (the global minimum maps to its own energy; unconnected minima are left out)."""
    energies, edges, _ = landscape_tables(db_or_minima, ts)
    gmin = min(energies, key=energies.get)
    sets = UnionFind(energies)
    members = {m: [m] for m in energies}
    out = {gmin: energies[gmin]}
    for a, b, e in sorted(edges, key=lambda t: t[2]):
        ra, rb, g = sets.find(a), sets.find(b), sets.find(gmin)
        if ra == rb:
            continue
        if g in (ra, rb):  # the other component joins the global minimum's at energy e
            for m in members[rb if ra == g else ra]:
                out[m] = max(e, energies[m])
        sets.union(ra, rb)
        members[rb] += members.pop(ra)
    return out


def monotonic_sequence_basins(db_or_minima, ts=None) -> dict[int, int]:
    """Minimum id -> the bottom of its monotonic sequence (steepest: always to the lowest lower neighbour)."""
    energies, edges, _ = landscape_tables(db_or_minima, ts)
    best: dict[int, int] = {}
    for a, b, _ in edges:
        for u, v in ((a, b), (b, a)):
            if energies[v] < energies[u] and (u not in best or energies[v] < energies[best[u]]):
                best[u] = v
    out = {}
    for m in energies:
        u = m
        while u in best:
            u = best[u]
        out[m] = u
    return out


def frustration_index(db_or_minima, ts=None, temperature: float = 1.0) -> float:
    """Occupation-weighted frustration index at ``temperature`` (see module docstring); only minima
    connected to the global minimum count."""
    return _frustration(*landscape_tables(db_or_minima, ts), temperature)


def _frustration(energies: dict, edges: list, lp: dict, temperature: float) -> float:
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    edag = minimax_to_gmin(energies, edges)
    gmin = min(energies, key=energies.get)
    ids = list(edag)
    E = np.array([energies[m] for m in ids])
    L = np.array([lp.get(m, 0.0) for m in ids]) if len(lp) == len(energies) else np.zeros(len(ids))
    logw = -(E - E.min()) / temperature - 0.5 * (L - L.min())
    p = np.exp(logw - logw.max())
    p /= p.sum()
    total = 0.0
    for pi, m in zip(p, ids):
        if m == gmin:
            continue
        de = energies[m] - energies[gmin]
        if de <= 0:
            continue  # degenerate with the global minimum
        total += pi * (edag[m] - energies[gmin]) / de
    return float(total)


def _stats(v: list[float]) -> dict[str, float]:
    if not v:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "max": float("nan")}
    a = np.asarray(v)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}


def landscape_metrics(db_or_minima, ts=None, temperature: float | None = None) -> dict:
    """A dict of landscape metrics (JSON-able; see the module docstring).

    temperature : for the frustration index (default: the median downhill barrier, so that the index is
        scale-free; NaN when there is no transition state).
    """
    energies, edges, lp = landscape_tables(db_or_minima, ts)
    gmin = min(energies, key=energies.get)
    down = [e - max(energies[a], energies[b]) for a, b, e in edges]
    up = [e - min(energies[a], energies[b]) for a, b, e in edges]
    edag = minimax_to_gmin(energies, edges)
    to_gmin = [edag[m] - energies[m] for m in edag if m != gmin]
    msb = monotonic_sequence_basins(energies, edges)
    conn = set(edag)
    bottoms = {msb[m] for m in conn}
    in_gmin_msb = sum(1 for m in conn if msb[m] == gmin)
    T = temperature if temperature is not None else (float(np.median(down)) if down else float("nan"))
    frus = _frustration(energies, edges, lp, T) if edges and np.isfinite(T) and T > 0 else float("nan")
    e_conn = [energies[m] for m in conn]
    return {
        "n_minima": len(energies),
        "n_ts": len(edges),
        "ts_per_minimum": len(edges) / len(energies),
        "n_connected": len(conn),
        "gmin_energy": energies[gmin],
        "energy_spread": float(max(e_conn) - min(e_conn)),
        "barrier_down": _stats(down),
        "barrier_up": _stats(up),
        "barrier_to_gmin": _stats(to_gmin),
        "n_funnels": len(bottoms),
        "fraction_in_gmin_funnel": in_gmin_msb / len(conn),
        "frustration_temperature": T,
        "frustration_index": frus,
    }
