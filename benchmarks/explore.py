"""Benchmark of flatminima.explore against scipy.optimize.basinhopping and pele, all in this process.

Goals (issue 15), each printed with its ratio:

1. LJ13 basin-hopping quenches per second: one flatminima walker >= scipy.optimize.basinhopping (L-BFGS-B on
   the same energy/gradient function), batched walkers >= pele's basin hopping.
2. LJ38 (global minimum -173.928427, fcc truncated octahedron; the icosahedral funnel's lowest is
   -173.252378): time to the global minimum over 5 seeds with the documented strategy, median against
   pele's median in the same run.
3. Network potential of the archetypal-landscapes study (digits, classes 3/5/8, PCA 5, 200 examples, tanh
   MLP with 4 hidden units, l2 = 1e-3): quenches per second, one walker >= 3x scipy (scipy on the potential's
   energy/gradient, i.e. the same closed-form kernel; also against scipy on the landscape's autograd pass,
   the network potential's energy before the kernel).
4. Connections: time per successful double-ended connection (DNEB with climbing image, eigenvector-following,
   pushoffs) on LJ13 minima, against pele's double-ended connect; batched against one-by-one DNEB images.

All quenches stop at an RMS gradient of 1e-5 (the RMS gradient measured at the minima pele stores);
scipy's L-BFGS-B gets ``gtol=1e-5`` on its largest gradient component. Rates are medians over repeats after a
warm-up (numba compilation, lazy imports), with their range. pele (GPL) is a benchmark peer only, installed by
the ``bench`` extra; without it its columns are skipped.

Run: ``OMP_NUM_THREADS=1 python benchmarks/explore.py`` (``--quick``: a smoke run of every section).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import torch
from scipy.optimize import basinhopping

from flatminima.explore import Database, LennardJones, basin_hopping, connect_all, connected
from flatminima.explore.saddles import dneb
from flatminima.explore.specs import make_potential, parse_potential

LJ38_GMIN = -173.928427
GTOL = 1e-5
#: the LJ38 strategy documented in flatminima.explore.basinhopping
LJ38_STRATEGY = dict(walkers=16, temperature=0.8, max_temperature=1.2, reseed_after=100)

try:
    with contextlib.redirect_stdout(io.StringIO()):
        from pele.systems import LJCluster
except ImportError:
    LJCluster = None


def med(values):
    v = np.asarray(values, dtype=float)
    return f"{np.median(v):9.1f} [{v.min():.1f}-{v.max():.1f}]"


def quiet(fn, *args, **kw):
    """pele prints progress lines."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kw)


# ------------------------------------------------------------------------------------------- rates
def ours_rate(pot, walkers, steps, T, step, seed, check_index=False):
    """Quenches per second of our basin-hopping; ``check_index``: the Hessian check of new minima (off, as in
    scipy and pele, which store every converged quench, unless asked)."""
    t = time.perf_counter()
    basin_hopping(pot, steps=steps, temperature=T, seed=seed, walkers=walkers, step_size=step, gtol=GTOL,
                  check_index=check_index)
    return walkers * (steps + 1) / (time.perf_counter() - t)


def scipy_rate(pot, niter, T, step, seed, energy_gradient=None):
    x0 = pot.random_coords(np.random.default_rng(seed))
    count = [0]

    def cb(x, f, accept):
        count[0] += 1

    t = time.perf_counter()
    basinhopping(energy_gradient or pot.energy_gradient, x0, niter=niter, T=T, stepsize=step, seed=seed, callback=cb,
                 minimizer_kwargs={"method": "L-BFGS-B", "jac": True, "options": {"gtol": GTOL}})
    return (count[0] + 1) / (time.perf_counter() - t)


def pele_rate(n_atoms, steps, seed):
    np.random.seed(seed)
    system = quiet(LJCluster, n_atoms)
    bh = quiet(system.get_basinhopping, database=system.create_database(), outstream=None)
    t = time.perf_counter()
    quiet(bh.run, steps)
    return steps / (time.perf_counter() - t)


def bench_lj13(quick):
    lj = LennardJones(13)
    reps = 1 if quick else 3
    steps1, stepsK, K = (30, 4, 64) if quick else (400, 12, 64)
    ours_rate(lj, 2, 2, 0.8, 0.4, 99)  # warm-up
    scipy_rate(lj, 2, 0.8, 0.4, 99)
    one = [ours_rate(lj, 1, steps1, 0.8, 0.4, s) for s in range(reps)]
    many = [ours_rate(lj, K, stepsK, 0.8, 0.4, s) for s in range(reps)]
    checked = [ours_rate(lj, K, stepsK, 0.8, 0.4, s, check_index=True) for s in range(reps)]
    sp = [scipy_rate(lj, steps1, 0.8, 0.4, s) for s in range(reps)]
    print("LJ13 quenches/s, median [range] of", reps)
    print(f"  flatminima 1 walker        {med(one)}")
    print(f"  flatminima {K} walkers      {med(many)}")
    print(f"  flatminima {K} walkers, new minima verified by the Hessian (check_index=True) "
          f"{med(checked)}: {np.median(checked) / np.median(many):.2f}x of the unchecked rate")
    print(f"  scipy.basinhopping         {med(sp)}")
    print(f"  goal 1a: 1 walker / scipy  = {np.median(one) / np.median(sp):.2f}x (goal >= 1)")
    if LJCluster is not None:
        pele_rate(13, 5, 99)
        pl = [pele_rate(13, steps1, s) for s in range(reps)]
        print(f"  pele                       {med(pl)}")
        print(f"  goal 1b: {K} walkers / pele = {np.median(many) / np.median(pl):.2f}x (goal >= 1); "
              f"1 walker / pele = {np.median(one) / np.median(pl):.2f}x")


# ------------------------------------------------------------------------------------------- LJ38
def ours_lj38(seed, limit):
    lj = LennardJones(38)
    db = Database(potential=lj)
    t = time.perf_counter()
    steps = 0
    while time.perf_counter() - t < limit and db.lowest_energy() > LJ38_GMIN + 1e-4:
        steps += 10  # resumes the stored search: the same trajectory as one long call
        basin_hopping(lj, steps=steps, seed=seed, database=db, target=LJ38_GMIN, gtol=GTOL, **LJ38_STRATEGY)
    dt = time.perf_counter() - t
    return dt, db.lowest_energy() <= LJ38_GMIN + 1e-4, db.lowest_energy()


def pele_lj38(seed, limit):
    np.random.seed(seed)
    system = quiet(LJCluster, 38)
    db = system.create_database()
    bh = quiet(system.get_basinhopping, database=db, outstream=None)
    t = time.perf_counter()
    while time.perf_counter() - t < limit:
        quiet(bh.run, 10)
        if db.minima()[0].energy <= LJ38_GMIN + 1e-4:
            break
    dt = time.perf_counter() - t
    e = db.minima()[0].energy
    return dt, e <= LJ38_GMIN + 1e-4, e


def bench_lj38(quick):
    seeds = range(2 if quick else 5)
    limit = 20.0 if quick else 120.0
    basin_hopping(LennardJones(38), steps=1, walkers=2, seed=99, gtol=GTOL)  # warm-up
    print(f"LJ38: time to the global minimum {LJ38_GMIN} (limit {limit:.0f} s per seed); flatminima strategy "
          f"{LJ38_STRATEGY}")
    ours = [ours_lj38(s, limit) for s in seeds]
    for s, (dt, ok, e) in zip(seeds, ours):
        print(f"  flatminima seed {s}: {'found' if ok else 'NOT found'} in {dt:6.1f} s (lowest {e:.6f})")
    found = sum(ok for _, ok, _ in ours)
    t_ours = np.median([dt if ok else np.inf for dt, ok, _ in ours])
    print(f"  flatminima: {found}/{len(ours)} seeds, median time {t_ours:.1f} s")
    if LJCluster is not None:
        pl = [pele_lj38(s, limit) for s in seeds]
        for s, (dt, ok, e) in zip(seeds, pl):
            print(f"  pele       seed {s}: {'found' if ok else 'NOT found'} in {dt:6.1f} s (lowest {e:.6f})")
        t_pele = np.median([dt if ok else np.inf for dt, ok, _ in pl])
        print(f"  pele: {sum(ok for _, ok, _ in pl)}/{len(pl)} seeds, median time {t_pele:.1f} s")
        ratio = f"{t_ours / t_pele:.2f}x" if np.isfinite(t_pele) else "n/a (pele's median run did not finish)"
        print(f"  goal 2: flatminima median / pele median = {ratio} (goal <= 2), found {found}/{len(ours)} "
              f"(goal 5/5)")


# ------------------------------------------------------------------------------------------- network
def bench_network(quick):
    pot = make_potential(parse_potential("network"))
    print(f"network potential: {pot.ndim} parameters, {pot.landscape.n_examples} examples")
    reps = 1 if quick else 3
    steps1 = 10 if quick else 100
    ours_rate(pot, 2, 2, 0.05, 0.6, 99)
    scipy_rate(pot, 2, 0.05, 0.6, 99)
    one = [ours_rate(pot, 1, steps1, 0.05, 0.6, s) for s in range(reps)]
    many = [ours_rate(pot, 16, max(2, steps1 // 8), 0.05, 0.6, s) for s in range(reps)]
    sp = [scipy_rate(pot, steps1, 0.05, 0.6, s) for s in range(reps)]
    print("network quenches/s, median [range] of", reps)
    print(f"  flatminima 1 walker        {med(one)}")
    print(f"  flatminima 16 walkers      {med(many)}")
    print(f"  scipy.basinhopping         {med(sp)}")
    print(f"  goal 3: 1 walker / scipy   = {np.median(one) / np.median(sp):.2f}x (goal >= 3)")

    def autograd(x):  # the landscape's generic path: what the network potential evaluated before the kernel
        f, g = pot.landscape.loss_and_grad(torch.as_tensor(x))
        return float(f), g.numpy()

    sa = [scipy_rate(pot, steps1, 0.05, 0.6, s, autograd) for s in range(reps)]
    print(f"  scipy.basinhopping on the autograd energy {med(sa)}; 1 walker / that = "
          f"{np.median(one) / np.median(sa):.2f}x")
    # the energy/gradient call itself: closed-form kernel against the landscape's autograd pass
    X = np.random.default_rng(0).normal(size=(16, pot.ndim))
    for K in (1, 16):
        t_k = _time(lambda: pot.kernel(X[:K]))
        t_a = _time(lambda: pot.landscape.batched_loss_and_grad(torch.as_tensor(X[:K])))
        print(f"  energy+gradient of {K:2d} points: kernel {t_k * 1e6:7.1f} us, autograd {t_a * 1e6:7.1f} us, "
              f"ratio {t_a / t_k:.1f}x")


def _time(fn, reps=50):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


# ------------------------------------------------------------------------------------------- connections
def bench_connect(quick):
    lj = LennardJones(13)
    pairs = 2 if quick else 6
    db = basin_hopping(lj, steps=30, temperature=0.8, seed=0, walkers=8, gtol=GTOL)
    ms = db.minima()
    gmin = ms[0].id
    t = time.perf_counter()
    connect_all(lj, db, max_cycles=5, max_minima=pairs + 1, n_images=10)  # what `explore connect` runs
    dt = time.perf_counter() - t
    ok = sum(connected(db, gmin, m.id) for m in ms[1 : pairs + 1])
    print(f"LJ13 connections of the {pairs} lowest minima to the global minimum: {ok}/{pairs} successful, "
          f"{dt / max(ok, 1):.2f} s per successful connection ({db.n_ts()} transition states, "
          f"{db.n_minima()} minima)")
    if LJCluster is not None:
        system = quiet(LJCluster, 13)
        pdb = system.create_database()
        for m in ms[: pairs + 1]:
            pdb.addMinimum(m.energy, m.coords)
        pm = pdb.minima()
        t = time.perf_counter()
        pok = 0
        for m in pm[1 : pairs + 1]:
            c = quiet(system.get_double_ended_connect, pm[0], m, pdb)
            quiet(c.connect)
            pok += bool(c.success())
        pdt = time.perf_counter() - t
        print(f"  pele: {pok}/{pairs} successful, {pdt / max(pok, 1):.2f} s per successful connection; "
              f"flatminima / pele time per connection = {(dt / max(ok, 1)) / (pdt / max(pok, 1)):.2f}x")
    a, b = ms[0].coords, ms[1].coords
    times = {}
    for batched in (True, False):
        dneb(lj, a, b, n_images=16, max_iter=5, gtol=1e-300, climb=False, batched=batched)
        t = time.perf_counter()
        dneb(lj, a, b, n_images=16, max_iter=50 if quick else 200, gtol=1e-300, climb=False, batched=batched)
        times[batched] = time.perf_counter() - t
    print(f"  DNEB, 16 images: batched {times[True] * 1e3:.1f} ms, one by one {times[False] * 1e3:.1f} ms, "
          f"ratio {times[False] / times[True]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: every section, few repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"pele: {'installed' if LJCluster is not None else 'not installed (its columns are skipped)'}")
    t0 = time.perf_counter()
    bench_lj13(args.quick)
    bench_network(args.quick)
    bench_connect(args.quick)
    bench_lj38(args.quick)
    print(f"total {time.perf_counter() - t0:.0f} s")
