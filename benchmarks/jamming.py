"""Benchmark: time to a certified minimum of the hinge loss, our minimiser against the published protocol.

Same instance for both (random data, P patterns in d = 10, depth-3 ReLU network, float64, one thread). The baseline is the published Adam protocol (full batch, lr 1e-4, /10 every 250k steps, no
push, checked every 1000 steps), measured in the same process. Instances:

  over-parametrised : N ~ 1.5 P weights, both should certify zero loss;
  near-jamming      : N ~ 0.9 P (close to N* at this size); certified zero loss or a certified minimum.

Ours (flatminima.jamming.minimize, method "fast") runs its first-order stage, then the second-order polish
and the certificate; the published protocol gets no polish (its endpoint is certified as it is). Prints
seconds, iterations (first order + polish) and certificate of each and the ratio (published Adam / ours);
goal >= 20x. A baseline that runs out of its time cap or ends without a certificate is reported as a
lower bound (">=").

Then the time per point of the ``jamming`` study at its own geometry (square ReLU networks d = h, the default
scale's P and dynamics: 1e5 full-batch Adam steps, L-BFGS bridge, softplus homotopy, certified polish): CPU
seconds of each stage and the outcome, for the narrowest and the widest network of depth 3 (one on each side
of N*; ``--quick``: 1e4 Adam steps).
"""

from __future__ import annotations

import sys

import torch

from flatminima.jamming import HingeProblem, adam_protocol, minimize, network, random_data

CAP = 180.0  # seconds allowed to the published protocol per instance


def instance(P: int, N: int, seed: int = 0) -> HingeProblem:
    X, y = random_data(P, 10, seed=seed)
    return HingeProblem(network(N, 10, 3, "relu", seed=seed), X, y)


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    P = 200 if quick else 300
    cases = [("over-parametrised", int(1.5 * P))] + ([] if quick else [("near-jamming", int(0.9 * P))])
    for name, N in cases:
        pr = instance(P, N)
        print(f"== {name}: P = {P}, N = {pr.N} parameters (d = 10, depth 3, ReLU)")
        # warm-up (first-call overheads, incl. the one-time import torch.func's vmap/jacrev triggers)
        minimize(pr, max_iter=50, polish=5), adam_protocol(pr, max_steps=50)
        ours = minimize(pr, max_iter=200_000, time_limit=60)
        print(f"  {'fast':10s} {ours.seconds:8.2f} s  {ours.iterations:7d}+{ours.polish_iterations:<4d} it  "
              f"{ours.certificate:12s} L = {ours.loss:.3e}  N_Delta = {ours.n_delta}")
        base = adam_protocol(pr, max_steps=2_000_000, time_limit=CAP)
        print(f"  {'adam (pub)':10s} {base.seconds:8.2f} s  {base.iterations:7d}+0    it  {base.certificate:12s} "
              f"L = {base.loss:.3e}  N_Delta = {base.n_delta}")
        bound = "" if base.certified else ">= "
        print(f"  ratio time(published Adam) / time(ours, fast): {bound}{base.seconds / ours.seconds:.1f}x "
              f"(both certified: {ours.certified and base.certified}; ours: {ours.certificate}, "
              f"published: {base.certificate})")


def study_points(quick: bool = False) -> None:
    """CPU seconds per point of the jamming study at its default geometry (one thread)."""
    from flatminima.studies import get
    from flatminima.studies.jamming import points, run_point

    cfg = get("jamming").config("default")
    if quick:
        cfg = {**cfg, "adam_steps": 10_000, "decay_every": 2_500}
    hs = cfg["widths"]["3"]
    chosen = [p for p in points(cfg) if p["depth"] == 3 and p["seed"] == 0 and p["h"] in (min(hs), max(hs))]
    print(f"== study points (P = {cfg['P']}, square ReLU networks, depth 3, {cfg['adam_steps']} Adam steps)")
    for p in chosen:
        r = run_point(p)
        print(f"  h = {p['h']:2d} N = {r['N']:4d} P/N = {p['P'] / r['N']:.2f}: {r['outcome']:10s} ({r['certificate']}) "
              f"CPU s: Adam {r['cpu_adam']:.1f} + bridge {r['cpu_bridge']:.1f} + homotopy {r['cpu_homotopy']:.1f} "
              f"+ polish {r['cpu_polish']:.1f} "
              f"= {r['cpu_seconds']:.1f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
    study_points(quick="--quick" in sys.argv)
