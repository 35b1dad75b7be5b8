"""Benchmark of flatminima.explore, printing ratios measured in the same run.

1. Basin-hopping quenches per second: ours (batched L-BFGS, several walkers per energy/gradient pass, and
   one walker) against ``scipy.optimize.basinhopping`` (L-BFGS-B quenches) on LJ13 and on a tanh-network
   potential (digits, PCA 5, 3 classes, 200 examples, one hidden layer of 4 units, l2 = 1e-3).
2. Time per DNEB (fixed number of band iterations) with all images in one batched pass against the images
   evaluated one by one.

Run: ``OMP_NUM_THREADS=1 python benchmarks/explore.py``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import basinhopping

from flatminima.explore import LennardJones, basin_hopping, tanh_network_potential
from flatminima.explore.saddles import dneb


def network_potential():
    from flatminima.data import load
    from flatminima.data.preprocess import balanced_subset, pca, select_classes

    ds = balanced_subset(pca(select_classes(load("digits"), [3, 5, 8]), 5), 200, seed=0)
    X = ds.X_train.reshape(len(ds.y_train), -1).double()
    return tanh_network_potential(X, ds.y_train, hidden=[4], l2=1e-3, n_classes=3)


def ours(pot, walkers, steps, T, step, seed=0):
    t = time.perf_counter()
    db = basin_hopping(pot, steps=steps, temperature=T, seed=seed, walkers=walkers, step_size=step)
    dt = time.perf_counter() - t
    return walkers * (steps + 1) / dt, db.minima()[0].energy, db.n_minima()


def scipy_bh(pot, niter, T, step, seed=0):
    rng = np.random.default_rng(seed)
    x0 = pot.random_coords(rng)
    count = [0]

    def cb(x, f, accept):
        count[0] += 1

    t = time.perf_counter()
    res = basinhopping(pot.energy_gradient, x0, niter=niter, T=T, stepsize=step, seed=seed, callback=cb,
                       minimizer_kwargs={"method": "L-BFGS-B", "jac": True, "options": {"gtol": 1e-6}})
    dt = time.perf_counter() - t
    return (count[0] + 1) / dt, float(res.fun)


def bench_bh(name, pot, T, step, walkers, steps, niter):
    ours(pot, 2, 2, T, step, seed=99)  # warm-up: lazy imports and first-call costs are not measured
    scipy_bh(pot, 2, T, step, seed=99)
    q_multi, e_multi, n_multi = ours(pot, walkers, steps, T, step)
    q_one, e_one, _ = ours(pot, 1, niter, T, step)
    q_scipy, e_scipy = scipy_bh(pot, niter, T, step)
    print(f"{name}: quenches/s  ours {walkers} walkers {q_multi:8.1f} (best {e_multi:.6f}, {n_multi} minima) | "
          f"ours 1 walker {q_one:8.1f} (best {e_one:.6f}) | scipy.basinhopping {q_scipy:8.1f} (best {e_scipy:.6f})")
    print(f"{name}: speed-up over scipy: {q_multi / q_scipy:.2f}x ({walkers} walkers), "
          f"{q_one / q_scipy:.2f}x (1 walker)")


def bench_dneb(name, pot, a, b, n_images=16, iters=200, repeats=3):
    for batched in (True, False):  # warm-up
        dneb(pot, a, b, n_images=n_images, max_iter=5, gtol=1e-300, climb=False, batched=batched)
    times = {}
    for batched in (True, False):
        t = time.perf_counter()
        for _ in range(repeats):
            dneb(pot, a, b, n_images=n_images, max_iter=iters, gtol=1e-300, climb=False, batched=batched)
        times[batched] = (time.perf_counter() - t) / repeats
    print(f"{name}: time per DNEB ({n_images} images, {iters} iterations): batched {times[True] * 1e3:.1f} ms, "
          f"one by one {times[False] * 1e3:.1f} ms, ratio {times[False] / times[True]:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    lj = LennardJones(13)
    net = network_potential()
    print(f"network potential: {net.ndim} parameters, {net.landscape.n_examples} examples")
    bench_bh("LJ13", lj, T=0.8, step=0.4, walkers=16, steps=20, niter=200)
    bench_bh("network", net, T=0.05, step=0.6, walkers=16, steps=20, niter=200)
    dbl = basin_hopping(lj, steps=10, temperature=0.8, seed=0, walkers=4).minima()
    bench_dneb("LJ13", lj, dbl[0].coords, dbl[1].coords)
    dbn = basin_hopping(net, steps=10, temperature=0.05, seed=0, walkers=4, step_size=0.6).minima()
    bench_dneb("network", net, dbn[0].coords, dbn[1].coords)
