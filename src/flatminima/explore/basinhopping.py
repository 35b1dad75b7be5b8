"""Basin-hopping (Li & Scheraga 1987; Wales & Doye 1997) with several walkers quenched in one batch.

Each step, every walker takes a random step (the potential's ``perturb``: uniform displacement, recentred
and confined for clusters), all trial points are quenched together by the batched L-BFGS of
:mod:`.optimize`, every converged and valid minimum is stored in the :class:`~.database.Database`
(symmetry-aware deduplication), and each walker accepts its trial by the Metropolis rule on quenched
energies at temperature ``T``. Step sizes adapt every ``adapt_interval`` steps toward a target acceptance
ratio. After every step the search state (walker positions, step sizes, counters, random generator state)
is committed to the database, so a killed search resumes where it stopped.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from .database import Database
from .optimize import lbfgs_batch

__all__ = ["basin_hopping"]

STATE_KEY = "basin_hopping"


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
        Metropolis temperature on quenched energies.
    seed : int
        Seed of the ``numpy.random.Generator`` (steps, acceptance, starting points).
    database : Database, optional
        Where minima go (default: a new in-memory database). A database holding the state of an earlier
        search with this function resumes it.
    walkers : int
        Independent walkers advanced together; their quenches share one batched energy/gradient pass.
    step_size : float, optional
        Initial step size (default ``potential.default_step``).
    target_accept, adapt_interval, adapt_factor
        Every ``adapt_interval`` steps a walker's step size is divided by ``adapt_factor`` when its
        acceptance ratio exceeds ``target_accept`` and multiplied by it otherwise.
    gtol : float
        Quench convergence (RMS gradient; L-BFGS steps are capped at ``potential.default_max_step``).
    progress : bool
        Show a tqdm progress bar.
    """
    if steps < 0 or walkers < 1:
        raise ConfigError(f"steps must be >= 0 and walkers >= 1, got steps={steps}, walkers={walkers}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0 < target_accept < 1 or not 0 < adapt_factor < 1 or adapt_interval < 1:
        raise ConfigError("need 0 < target_accept < 1, 0 < adapt_factor < 1 and adapt_interval >= 1")
    db = database if database is not None else Database(potential=potential)
    n = potential.ndim
    qkw = dict(gtol=gtol, max_step=potential.default_max_step)

    state = db.get_state(STATE_KEY)
    rng = np.random.default_rng(seed)
    if state is not None and state["walkers"] == walkers and state["n"] == n:
        done = int(state["done"])
        X = np.array(state["x"], dtype=np.float64)
        E = np.array(state["e"], dtype=np.float64)
        steps_w = np.array(state["step"], dtype=np.float64)
        acc = np.array(state["acc"], dtype=np.int64)
        tries = np.array(state["tries"], dtype=np.int64)
        rng.bit_generator.state = state["rng"]
    else:
        if state is not None:
            raise ConfigError(f"the database holds a search with {state['walkers']} walkers in {state['n']} "
                              f"dimensions; cannot resume it with {walkers} walkers in {n}")
        if x0 is None:
            X0 = np.stack([potential.random_coords(rng) for _ in range(walkers)])
        else:
            X0 = np.asarray(x0, dtype=np.float64)
            X0 = np.broadcast_to(X0, (walkers, n)).copy() if X0.shape == (n,) else X0
            if X0.shape != (walkers, n):
                raise ConfigError(f"x0 must be (n,) or (walkers, n) = ({walkers}, {n}), got {X0.shape}")
        r = lbfgs_batch(potential.energy_gradient_batch, X0, **qkw)
        X, E = r.x, r.energy
        for k in range(walkers):
            if r.converged[k] and potential.is_valid(X[k]):
                db.add_minimum(E[k], X[k])
        done = 0
        s0 = float(step_size if step_size is not None else potential.default_step)
        steps_w = np.full(walkers, s0)
        acc = np.zeros(walkers, dtype=np.int64)
        tries = np.zeros(walkers, dtype=np.int64)

    def save() -> None:
        db.set_state(STATE_KEY, {"walkers": walkers, "n": n, "done": done, "x": X.tolist(), "e": E.tolist(),
                                 "step": steps_w.tolist(), "acc": acc.tolist(), "tries": tries.tolist(),
                                 "rng": rng.bit_generator.state, "temperature": temperature})

    save()
    bar = tqdm(total=steps, initial=done, desc="basin-hopping", disable=not progress, leave=False)
    while done < steps:
        trial = np.stack([potential.perturb(X[k], steps_w[k], rng) for k in range(walkers)])
        r = lbfgs_batch(potential.energy_gradient_batch, trial, **qkw)
        u = rng.uniform(size=walkers)
        accepted = np.zeros(walkers, dtype=bool)
        for k in range(walkers):
            ok = bool(r.converged[k]) and np.isfinite(r.energy[k]) and potential.is_valid(r.x[k])
            if ok:
                db.add_minimum(r.energy[k], r.x[k])
                dE = r.energy[k] - E[k]
                accepted[k] = dE <= 0 or u[k] < np.exp(-dE / temperature)
            if accepted[k]:
                X[k], E[k] = r.x[k], r.energy[k]
        acc += accepted
        tries += 1
        done += 1
        if done % adapt_interval == 0:
            rate = acc / np.maximum(tries, 1)
            steps_w = np.where(rate > target_accept, steps_w / adapt_factor, steps_w * adapt_factor)
            acc[:] = 0
            tries[:] = 0
        save()
        bar.update(1)
    bar.close()
    return db
