"""Disconnectivity graphs (Becker & Karplus 1997; Wales, Miller & Walsh 1998), drawn with matplotlib.

At each energy level, minima below the level joined by transition states below the level form one
superbasin (union-find over the transition states sorted by energy). Each minimum is a vertical line from
its energy to the first level above it; superbasins merge going up. Children are ordered with the lowest
one in the middle, so a single funnel looks like a palm tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .metrics import UnionFind, landscape_tables, minimax_to_gmin

__all__ = ["DGTree", "dg_tree", "disconnectivity_graph"]


@dataclass
class DGTree:
    """The layout of a disconnectivity graph.

    levels: (L,) ascending energies; x: minimum id -> horizontal position; segments: list of
    ((x0, y0), (x1, y1)) line segments; basins: per level, a list of superbasins (sets of minimum ids).
    """

    levels: np.ndarray
    x: dict[int, float]
    segments: list[tuple[tuple[float, float], tuple[float, float]]]
    basins: list[list[frozenset]] = field(default_factory=list)


def dg_tree(db_or_minima, ts=None, n_levels: int = 20) -> DGTree:
    """Compute the disconnectivity graph layout of the minima connected to the global minimum.

    db_or_minima : a Database, or a dict minimum id -> energy (then ``ts``: list of (min1, min2, energy)).
    n_levels : number of energy levels between the global minimum and just above the highest transition
        state.
    """
    if n_levels < 2:
        raise ConfigError(f"n_levels must be >= 2, got {n_levels}")
    energies, edges, _ = landscape_tables(db_or_minima, ts)
    keep = minimax_to_gmin(energies, edges)
    energies = {m: e for m, e in energies.items() if m in keep}
    edges = [(a, b, e) for a, b, e in edges if a in keep and b in keep]
    e_lo = min(energies.values())
    e_hi = max([e for *_, e in edges] + list(energies.values()))
    if e_hi > e_lo:
        top = e_hi + 0.02 * (e_hi - e_lo)
    else:  # a single minimum, or degenerate ones: a visible stub
        top = e_lo + 1e-3 * max(abs(e_lo), 1e-6)
    levels = np.linspace(e_lo, top, n_levels + 1)[1:]
    edges = sorted(edges, key=lambda t: t[2])

    # union-find sweep over ascending levels
    sets = UnionFind()
    order = sorted(energies, key=energies.get)
    mi = ti = 0
    basins: list[list[frozenset]] = []
    first_level: dict[int, int] = {}
    for li, L in enumerate(levels):
        while mi < len(order) and energies[order[mi]] < L:
            sets.add(order[mi])
            first_level[order[mi]] = li
            mi += 1
        while ti < len(edges) and edges[ti][2] < L:
            a, b, _ = edges[ti]
            if a in sets.parent and b in sets.parent:
                sets.union(a, b)
            ti += 1
        groups: dict[int, set] = {}
        for m in sets.parent:
            groups.setdefault(sets.find(m), set()).add(m)
        basins.append([frozenset(g) for g in groups.values()])

    # tree: node = (level, basin); children = basins one level down + minima starting at this level
    def children(li: int, basin: frozenset):
        kids = [("min", m) for m in basin if first_level[m] == li]
        if li > 0:
            kids += [("node", li - 1, b) for b in basins[li - 1] if b <= basin]
        return kids

    def lowest(kid) -> float:
        return energies[kid[1]] if kid[0] == "min" else min(energies[m] for m in kid[2])

    x: dict[int, float] = {}
    segments: list = []
    cursor = [0.0]

    def layout(kid) -> float:
        if kid[0] == "min":
            m = kid[1]
            x[m] = cursor[0]
            cursor[0] += 1.0
            return x[m]
        li, basin = kid[1], kid[2]
        kids = sorted(children(li, basin), key=lowest)
        arranged: list = []
        for i, c in enumerate(kids):  # lowest in the middle
            if i % 2 == 0:
                arranged.append(c)
            else:
                arranged.insert(0, c)
        xs = []
        for c in arranged:
            xc = layout(c)
            xs.append((c, xc))
        xn = float(np.mean([xc for _, xc in xs]))
        for c, xc in xs:
            if c[0] == "node":
                segments.append(((xc, levels[c[1]]), (xn, levels[li])))
            else:  # a minimum that first appears at this level: vertical, then a joint to the basin
                em = energies[c[1]]
                y_low = max(em, levels[li - 1]) if li > 0 else em
                segments.append(((xc, em), (xc, y_low)))
                segments.append(((xc, y_low), (xn, levels[li])))
        return xn

    tops = sorted(basins[-1], key=lambda b: min(energies[m] for m in b))
    for b in tops:
        xt = layout(("node", len(levels) - 1, b))
        segments.append(((xt, levels[-1]), (xt, levels[-1] + 0.5 * (levels[1] - levels[0]))))
        cursor[0] += 1.0
    return DGTree(levels, x, segments, basins)


def disconnectivity_graph(db_or_minima, ts=None, n_levels: int = 20, color_by: dict | None = None, ax=None,
                          title: str | None = None, ylabel: str = "energy", color_label: str = "value"):
    """Draw a disconnectivity graph (see :func:`dg_tree`); returns the matplotlib Figure.

    color_by : optional dict minimum id -> value; minima are then marked with dots coloured by that value
        (e.g. test error), with ``color_label`` on the colour bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    energies, edges, _ = landscape_tables(db_or_minima, ts)
    tree = dg_tree(energies, edges, n_levels=n_levels)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    else:
        fig = ax.figure
    ax.add_collection(LineCollection(tree.segments, colors="k", linewidths=0.8))
    if color_by is not None:
        ids = [m for m in tree.x if color_by.get(m) is not None]
        if ids:
            sc = ax.scatter([tree.x[m] for m in ids], [energies[m] for m in ids], c=[color_by[m] for m in ids],
                            s=14, zorder=3)
            fig.colorbar(sc, ax=ax, label=color_label)
    xs = [p for s in tree.segments for p in (s[0][0], s[1][0])]
    ys = [p for s in tree.segments for p in (s[0][1], s[1][1])]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    span = max(ys) - min(ys)
    pad = 0.03 * span if span > 1e-9 * max(1.0, abs(max(ys))) else 1e-3 * max(abs(max(ys)), 1e-6)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xticks([])
    ax.set_ylabel(ylabel)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return fig
