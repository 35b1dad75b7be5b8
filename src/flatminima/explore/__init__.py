"""Landscape explorer: minima, transition states, connections, disconnectivity graphs and metrics.

Potentials (:class:`LennardJones`, :class:`MullerBrown`, :class:`NetworkPotential` on a
:class:`~flatminima.Landscape`) -> :func:`basin_hopping` into a :class:`Database` (SQLite, crash-safe,
resumable, symmetry-aware deduplication, the step that first found each minimum for :func:`saturation`) ->
:func:`dneb` + :func:`refine_ts` / :func:`refine_ts_hybrid` ->
:func:`double_ended_connect` / :func:`connect_all` -> :func:`disconnectivity_graph` and
:func:`landscape_metrics`; PATHSAMPLE interchange with :func:`export_pathsample` / :func:`import_pathsample`.
"""

from .basinhopping import basin_hopping, saturation
from .connect import components, connect_all, connected, double_ended_connect
from .database import Database, Minimum, TransitionState, export_pathsample, hessian_summary, import_pathsample
from .graph import dg_tree, disconnectivity_graph
from .metrics import frustration_index, landscape_metrics, minimax_to_gmin, monotonic_sequence_basins
from .optimize import lbfgs_batch
from .potentials import LennardJones, MullerBrown, NetworkPotential, Potential, tanh_network_potential
from .saddles import connect_ts, dneb, local_connect, lowest_mode, refine_ts, refine_ts_hybrid
from .specs import make_potential, parse_potential

__all__ = [
    "Potential", "LennardJones", "MullerBrown", "NetworkPotential", "tanh_network_potential",
    "make_potential", "parse_potential",
    "lbfgs_batch", "basin_hopping", "saturation",
    "Database", "Minimum", "TransitionState", "export_pathsample", "import_pathsample", "hessian_summary",
    "dneb", "refine_ts", "refine_ts_hybrid", "lowest_mode", "connect_ts", "local_connect",
    "components", "connected", "double_ended_connect", "connect_all",
    "dg_tree", "disconnectivity_graph",
    "landscape_metrics", "frustration_index", "minimax_to_gmin", "monotonic_sequence_basins",
]
