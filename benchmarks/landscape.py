"""Benchmark: Landscape.batched_loss and batched_loss_and_grad over K parameter vectors (one batched pass,
flatminima.forward.BatchedForward) against loops.

Baselines, measured in the same process on the same data:
  loop-models : a Python loop over K nn.Module copies, each loaded with one vector and run forward
                (what a user without flatminima writes);
  loop-landscape : a loop of Landscape.loss over the K vectors (functional_call, no batching);
  loop-grad : a loop of Landscape.loss_and_grad over the K vectors.
Prints times and the ratios (goal: batched at least 4x faster than the loop over models).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from flatminima import Landscape


def best_of(fn, repeat=5):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(K: int = 64, P: int = 1024, d: int = 64, width: int = 32) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    X, y = torch.randn(P, d), torch.randint(0, 10, (P,))
    land = Landscape(model, (X, y))
    thetas = land.theta + 0.01 * torch.randn(K, land.n_params)
    models = [copy.deepcopy(model) for _ in range(K)]

    def loop_models():
        out = []
        with torch.no_grad():
            for m, t in zip(models, thetas):
                torch.nn.utils.vector_to_parameters(t, m.parameters())
                out.append(land._loss_fn(m(X), y).mean())  # the same loss function: only batching differs
        return torch.stack(out)

    def loop_landscape():
        return torch.stack([land.loss(t) for t in thetas])

    def batched():
        return land.batched_loss(thetas)

    def loop_grad():
        return torch.stack([land.loss_and_grad(t)[1] for t in thetas])

    def batched_grad():
        return land.batched_loss_and_grad(thetas)[1]

    assert torch.allclose(batched(), loop_models(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(batched_grad(), loop_grad(), rtol=1e-4, atol=1e-6)
    t_models, t_land, t_batch = best_of(loop_models), best_of(loop_landscape), best_of(batched)
    t_lg, t_bg = best_of(loop_grad), best_of(batched_grad)
    print(f"MLP {d}-{width}-{width}-10 (N={land.n_params}), P={P} examples, K={K} vectors: "
          f"loop over models {t_models * 1e3:7.2f} ms, loop of Landscape.loss {t_land * 1e3:7.2f} ms, "
          f"batched_loss {t_batch * 1e3:7.2f} ms -> ratio loop-over-models / batched = {t_models / t_batch:.1f}x; "
          f"gradients: loop / batched_loss_and_grad = {t_lg / t_bg:.1f}x")
    return t_models / t_batch


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"batched_loss over K=64 parameter vectors vs a loop over 64 models ({torch.get_num_threads()} threads, CPU)")
    ratios = {}
    for P in (64, 256, 1024):
        for d, w in ((10, 16), (64, 32)):
            ratios[(P, d)] = main(K=64, P=P, d=d, width=w)
    print(f"headline (small MLP 10-16-16-10, a minibatch of P=64): {ratios[(64, 10)]:.1f}x (goal >= 4x)")
    print("note: with P >= 256 examples per pass the elementwise work (tanh, logsumexp) dominates and is the same "
          "in both; the gain of one batched pass is the per-call overhead it removes")
