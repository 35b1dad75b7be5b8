"""Basin-hopping (Li & Scheraga 1987; Wales & Doye 1997) with several walkers quenched in one batch, and the
additions the field uses for multi-funnel landscapes such as LJ38.

Each step, every walker proposes a trial point, all trial points are quenched together by the batched L-BFGS
of :mod:`.optimize`, every converged and valid minimum is stored in the :class:`~.database.Database`
(symmetry-aware deduplication; with ``check_index`` a point new to the database is first checked with the
exact Hessian, and one where the quench stalled on a saddle's shoulder is pushed on downhill,
:func:`.optimize.escape_saddle`), and each walker accepts its trial by the Metropolis rule on quenched
energies at its temperature. Moves:

- **random displacement** (``potential.perturb``: uniform in ``[-s, s]`` per coordinate; clusters are
  recentred and confined to a sphere). Symmetric, so the Metropolis rule samples the Boltzmann
  distribution of the quenched landscape at the walker's temperature. Step sizes adapt every
  ``adapt_interval`` steps toward a target acceptance ratio (per walker).
- **surface moves** (with probability ``surface_moves`` per walker and step; ``potential.surface_move``:
  the least-bound atoms of a cluster moved to random sites on its surface, Doye & Wales's remedy for
  trapped surface defects). A search move: it is not symmetric, and a search that uses it samples nothing.
- **parallel tempering** (``max_temperature``; basin-hopping parallel tempering, Strodel, Lin & Wales
  2010): walker k runs at ``T_k = T (T_max / T)^(k / (K - 1))`` and every ``exchange_interval`` steps
  neighbouring temperatures exchange configurations with probability
  ``min(1, exp((1/T_i - 1/T_j)(E_i - E_j)))`` (:func:`exchange_probability`), which keeps the product of
  the walkers' Boltzmann distributions stationary (detailed balance in the joint space). Pairs (0,1),
  (2,3), ... and (1,2), (3,4), ... alternate.
- **restarts** (``reseed_after``): a walker whose lowest energy has not improved for that many steps jumps
  to a new random configuration (GMIN's reseeding), the cure for a walker trapped in the wrong funnel.

Every minimum a search stores carries the step at which the search first found it (0: the walkers' first
quenches; k: step k of every walker; :meth:`~.database.Database.found_steps`), so :func:`saturation` can say
whether the count of minima had stopped growing.

The search state (walker positions, temperatures, step sizes, counters, random generator state) is
committed to the database after a step when ``CHECKPOINT_SECONDS`` have passed since the last commit, and at
the end, so a killed search
resumes from its last checkpoint and continues the very same trajectory (it depends on the walkers' state
only, never on the database).

Strategy for LJ38 (double funnel; the one ``benchmarks/explore.py`` times and ``flatminima explore run``
documents): ``walkers=16, temperature=0.8, max_temperature=1.2, reseed_after=100``: a narrow tempering
ladder (walkers keep accepting in the icosahedral funnel's low region without melting the cluster) and
restarts that keep drawing new random starts, some of which fall into the narrow fcc funnel. It found the
global minimum with each of the 10 seeds we tried (``benchmarks/explore.py`` times five); a wider ladder (``max_temperature=2``) or surface moves
(``surface_moves=0.05`` or ``0.1``) were slower on LJ38 in our runs (5 seeds each).
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from .database import ENERGY_TOL, Database
from .optimize import escape_saddle, lbfgs_batch

__all__ = ["basin_hopping", "exchange_probability", "replica_exchange", "saturation", "temperature_ladder"]

STATE_KEY = "basin_hopping"
#: at most this many seconds between two commits of the search state
CHECKPOINT_SECONDS = 1.0


def temperature_ladder(temperature: float, max_temperature: float | None, walkers: int) -> np.ndarray:
    """Walker temperatures (walkers,): all equal to ``temperature`` without ``max_temperature``, else
    geometric from ``temperature`` to ``max_temperature``."""
    if max_temperature is None or walkers == 1:
        return np.full(walkers, float(temperature))
    return float(temperature) * (float(max_temperature) / float(temperature)) ** (np.arange(walkers) / (walkers - 1))


def exchange_probability(E_i, E_j, T_i, T_j):
    """Probability of exchanging the configurations of replicas at temperatures T_i and T_j holding energies
    E_i and E_j: ``min(1, exp((1/T_i - 1/T_j)(E_i - E_j)))`` (broadcasts)."""
    a = (1.0 / np.asarray(T_i) - 1.0 / np.asarray(T_j)) * (np.asarray(E_i) - np.asarray(E_j))
    return np.exp(np.minimum(a, 0.0))


def replica_exchange(E: np.ndarray, T: np.ndarray, parity: int, u: np.ndarray) -> np.ndarray:
    """One sweep of neighbour exchanges over the ladder: pairs (i, i+1) for i = parity, parity + 2, ...; pair
    i exchanges when ``u[i] < exchange_probability``. E, T, u: (K,). Returns the permutation p (K,): slot k
    takes the configuration that slot p[k] held."""
    perm = np.arange(E.size)
    i = np.arange(parity, E.size - 1, 2)
    swap = i[u[i] < exchange_probability(E[i], E[i + 1], T[i], T[i + 1])]
    perm[swap], perm[swap + 1] = swap + 1, swap
    return perm


def basin_hopping(
    potential,
    x0: np.ndarray | None = None,
    steps: int = 100,
    temperature: float = 1.0,
    seed: int = 0,
    database: Database | None = None,
    walkers: int = 1,
    step_size: float | None = None,
    target_accept: float = 0.5,
    adapt_interval: int = 10,
    adapt_factor: float = 0.9,
    gtol: float = 1e-6,
    max_temperature: float | None = None,
    exchange_interval: int = 1,
    surface_moves: float = 0.0,
    reseed_after: int | None = None,
    target: float | None = None,
    check_index: bool = False,
    progress: bool = False,
) -> Database:
    """Run basin-hopping and return the database of minima found.

    Parameters
    ----------
    potential : Potential
        What to explore (:class:`LennardJones`, :class:`MullerBrown`, :class:`NetworkPotential`, ...).
    x0 : (n,) or (walkers, n) array, optional
        Starting points (default: ``potential.random_coords``).
    steps : int
        Total number of basin-hopping steps per walker (a resumed search runs only the missing ones).
    temperature : float
        Metropolis temperature on quenched energies (the lowest of the ladder with ``max_temperature``).
    seed : int
        Seed of the ``numpy.random.Generator`` (moves, acceptance, exchanges, starting points).
    database : Database, optional
        Where minima go (default: a new in-memory database). A database holding the state of an earlier
        search with this function resumes it.
    walkers : int
        Walkers advanced together; their quenches share one batched energy/gradient pass.
    step_size : float, optional
        Initial step size (default ``potential.default_step``).
    target_accept, adapt_interval, adapt_factor
        Every ``adapt_interval`` steps a walker's step size is divided by ``adapt_factor`` when its
        acceptance ratio exceeds ``target_accept`` and multiplied by it otherwise.
    gtol : float
        Quench convergence (RMS gradient; L-BFGS steps are capped at ``potential.default_max_step``).
    max_temperature : float, optional
        Parallel tempering: the walkers' temperatures form a geometric ladder from ``temperature`` to this.
    exchange_interval : int
        Parallel tempering: steps between two sweeps of neighbour exchanges.
    surface_moves : float
        Probability that a walker's move is ``potential.surface_move`` instead of a random displacement.
    reseed_after : int, optional
        Restart a walker from ``potential.random_coords`` when its lowest energy since its last restart has
        not improved (by more than the database's energy tolerance) for this many steps. With parallel
        tempering the count belongs to the temperature slot, not to the configuration that moves through
        the ladder.
    target : float, optional
        Stop as soon as a minimum at or below this energy (within the database's energy tolerance) is found.
    check_index : bool
        Verify every quenched point that is new to the database with the exact Hessian (zero modes removed,
        :func:`~.database.hessian_summary`): a quench can stop on the flat shoulder of a saddle with its RMS
        gradient below ``gtol``. A point with a negative eigenvalue is pushed off along that eigenvector
        (:func:`~.optimize.escape_saddle`) and quenched again, and is neither stored nor accepted when it stays
        a saddle. Turn it on when the minima are counted or analysed (a landscape survey, a saturation check):
        in the archetypal-landscapes study the late find that broke a cell's saturation was a saddle. It costs
        one dense Hessian per new point and changes the trajectory, so a search for the global minimum runs
        without it (on LJ38 it cut the documented strategy's success within 120 s from 5/5 to 4/5 seeds).
    progress : bool
        Show a tqdm progress bar.
    """
    if steps < 0 or walkers < 1:
        raise ConfigError(f"steps must be >= 0 and walkers >= 1, got steps={steps}, walkers={walkers}")
    if temperature <= 0 or (max_temperature is not None and max_temperature < temperature):
        raise ConfigError(f"need 0 < temperature <= max_temperature, got {temperature}, {max_temperature}")
    if not 0 < target_accept < 1 or not 0 < adapt_factor < 1 or adapt_interval < 1 or exchange_interval < 1:
        raise ConfigError("need 0 < target_accept < 1, 0 < adapt_factor < 1, adapt_interval >= 1 and "
                          "exchange_interval >= 1")
    if not 0 <= surface_moves <= 1 or (surface_moves > 0 and not hasattr(potential, "surface_move")):
        raise ConfigError(f"surface_moves must be a probability and needs a potential with surface_move "
                          f"({potential!r}), got {surface_moves}")
    if reseed_after is not None and reseed_after < 1:
        raise ConfigError(f"reseed_after must be >= 1, got {reseed_after}")
    db = database if database is not None else Database(potential=potential)
    n = potential.ndim
    qkw = dict(gtol=gtol, max_step=potential.default_max_step)
    T = temperature_ladder(temperature, max_temperature, walkers)
    hit = None if target is None else target + ENERGY_TOL * max(1.0, abs(target))

    state = db.get_state(STATE_KEY)
    rng = np.random.default_rng(seed)
    if state is not None and state["walkers"] == walkers and state["n"] == n:
        done = int(state["done"])
        X = np.array(state["x"], dtype=np.float64)
        E = np.array(state["e"], dtype=np.float64)
        steps_w = np.array(state["step"], dtype=np.float64)
        acc = np.array(state["acc"], dtype=np.int64)
        tries = np.array(state["tries"], dtype=np.int64)
        best = np.array(state["best"], dtype=np.float64)
        since = np.array(state["since"], dtype=np.int64)
        rng.bit_generator.state = state["rng"]
    else:
        if state is not None:
            raise ConfigError(f"the database holds a search with {state['walkers']} walkers in {state['n']} "
                              f"dimensions; cannot resume it with {walkers} walkers in {n}")
        X0 = _starts(potential, x0, walkers, rng)
        r = lbfgs_batch(potential.energy_gradient_batch, X0, **qkw)
        X, E = r.x, r.energy
        for k in range(walkers):
            if r.converged[k] and potential.is_valid(X[k]) and (not check_index or _verify(potential, db, r, k, qkw)):
                db.add_minimum(E[k], X[k], found_at=0)
        done = 0
        s0 = float(step_size if step_size is not None else potential.default_step)
        steps_w = np.full(walkers, s0)
        acc = np.zeros(walkers, dtype=np.int64)
        tries = np.zeros(walkers, dtype=np.int64)
        best = E.copy()
        since = np.zeros(walkers, dtype=np.int64)

    def save() -> None:
        db.set_state(STATE_KEY, {"walkers": walkers, "n": n, "done": done, "x": X.tolist(), "e": E.tolist(),
                                 "step": steps_w.tolist(), "acc": acc.tolist(), "tries": tries.tolist(),
                                 "best": best.tolist(), "since": since.tolist(), "rng": rng.bit_generator.state,
                                 "temperatures": T.tolist()})

    def reached() -> bool:
        return hit is not None and db.lowest_energy() <= hit

    save()
    last_save = time.monotonic()
    bar = tqdm(total=steps, initial=done, desc="basin-hopping", disable=not progress, leave=False)
    while done < steps and not reached():
        reseed = np.zeros(walkers, dtype=bool) if reseed_after is None else since >= reseed_after
        surface = rng.uniform(size=walkers) < surface_moves if surface_moves > 0 else np.zeros(walkers, bool)
        trial = np.empty((walkers, n))
        for k in range(walkers):
            if reseed[k]:
                trial[k] = potential.random_coords(rng)
            elif surface[k]:
                trial[k] = potential.surface_move(X[k], rng)
            else:
                trial[k] = potential.perturb(X[k], steps_w[k], rng)
        r = lbfgs_batch(potential.energy_gradient_batch, trial, **qkw)
        u = rng.uniform(size=walkers)
        accepted = np.zeros(walkers, dtype=bool)
        for k in range(walkers):
            ok = bool(r.converged[k]) and np.isfinite(r.energy[k]) and potential.is_valid(r.x[k])
            if ok and check_index:
                ok = _verify(potential, db, r, k, qkw)
            if ok:
                db.add_minimum(r.energy[k], r.x[k], found_at=done + 1)
                dE = r.energy[k] - E[k]
                accepted[k] = reseed[k] or dE <= 0 or u[k] < np.exp(-dE / T[k])
            if accepted[k]:
                X[k], E[k] = r.x[k], r.energy[k]
        improved = E < best - ENERGY_TOL * np.maximum(1.0, np.abs(best))
        best = np.where(reseed, E, np.minimum(best, E))
        since = np.where(improved | reseed, 0, since + 1)
        moved = ~(reseed | surface)  # the step size adapts on displacement moves only
        acc += accepted & moved
        tries += moved
        done += 1
        if max_temperature is not None and walkers > 1 and done % exchange_interval == 0:
            perm = replica_exchange(E, T, (done // exchange_interval) % 2, rng.uniform(size=walkers))
            X, E = X[perm], E[perm]
        if done % adapt_interval == 0:
            rate = acc / np.maximum(tries, 1)
            steps_w = np.where(tries == 0, steps_w,
                               np.where(rate > target_accept, steps_w / adapt_factor, steps_w * adapt_factor))
            acc[:] = 0
            tries[:] = 0
        if time.monotonic() - last_save >= CHECKPOINT_SECONDS:
            save()
            last_save = time.monotonic()
        bar.update(1)
    save()
    bar.close()
    return db


def _verify(potential, db: Database, r, k: int, qkw: dict) -> bool:
    """Row k of the quench result r: True when it is a stored (hence verified) minimum, or when
    :func:`escape_saddle` verifies it (r.x[k] and r.energy[k] are then replaced by the minimum it reached)."""
    if db.find_minimum(float(r.energy[k]), r.x[k]) is not None:
        return True
    x, e, ok, _, _ = escape_saddle(potential, r.x[k], qkw)
    if ok:
        r.x[k], r.energy[k] = x, e
    return ok and potential.is_valid(x)


def saturation(found_steps, steps: int) -> dict[str, float]:
    """How saturated a search of ``steps`` steps per walker is, from the step at which it first found each
    minimum (``found_steps``: a dict minimum id -> step, as :meth:`~.database.Database.found_steps` returns,
    or a sequence of steps).

    Returns ``{"n_found", "n_late", "late_fraction"}``: the minima found, those first found in the second half of
    the run (step > steps / 2, over all walkers together) and their share (0 when none was found). A search
    whose late fraction is small had stopped finding new minima: its count is the number of minima it can
    reach, not a lower bound still growing with the budget.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    found = list(found_steps.values()) if isinstance(found_steps, dict) else list(found_steps)
    if any(s < 0 or s > steps for s in found):
        raise ConfigError(f"discovery steps must lie in [0, {steps}], got {min(found)}..{max(found)}")
    late = sum(1 for s in found if s > steps / 2)
    return {"n_found": len(found), "n_late": late, "late_fraction": late / len(found) if found else 0.0}


def _starts(potential, x0, walkers: int, rng: np.random.Generator) -> np.ndarray:
    n = potential.ndim
    if x0 is None:
        return np.stack([potential.random_coords(rng) for _ in range(walkers)])
    X0 = np.asarray(x0, dtype=np.float64)
    X0 = np.broadcast_to(X0, (walkers, n)).copy() if X0.shape == (n,) else X0
    if X0.shape != (walkers, n):
        raise ConfigError(f"x0 must be (n,) or (walkers, n) = ({walkers}, {n}), got {X0.shape}")
    return X0

