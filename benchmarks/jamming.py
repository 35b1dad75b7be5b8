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


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
