"""ReplicatedSGD over torch.distributed (gloo, 2 CPU processes) gives the single-process trajectory."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from flatminima.optim import ReplicatedSGD
from flatminima.train import MinibatchStream, per_example_loss

Y, T, WORLD = 4, 6, 2
CONFIGS = [
    dict(lr=0.1, momentum=0.9, gamma=0.3, scoping=0.1, init_noise=0.1, seed=5),
    dict(lr=0.1, momentum=0.5, nesterov=True, gamma=0.5, scoping=0.0, center="explicit",
         weight_decay=1e-3, init_noise=0.2, seed=1),
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches() -> list:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=g)
    s = MinibatchStream(X, y, 16, seed=0)
    return [s.next() for _ in range(Y * T)]


class _Closure:
    """Hands out this process's replicas' minibatches in the order the optimizer asks for them."""

    def __init__(self, model, batches):
        self.model, self.batches, self.i = model, batches, 0
        self.loss_fn = per_example_loss("cross_entropy")

    def sample(self):
        self.i += 1
        return self.batches[self.i - 1]

    def count(self, n=1):
        pass

    def __call__(self):  # pragma: no cover - batched mode never calls it
        raise AssertionError("batched mode draws minibatches with sample()")


def _run(cfg: dict, batches: list, rank: int, distributed: bool) -> list[torch.Tensor]:
    model = _model()
    opt = ReplicatedSGD(model.parameters(), replicas=Y, mode="batched", distributed=distributed, **cfg)
    k = opt.local
    mine = [batches[t * Y + rank * k + j] for t in range(T) for j in range(k)]
    c = _Closure(model, mine)
    for _ in range(T):
        opt.step(c)
    out = [p.detach().clone() for p in model.parameters()]
    for a in range(k):
        out += [r.clone() for r in opt.replica_parameters(a)]
    return out + [torch.tensor(opt.diagnostics()["replica_dist"], dtype=torch.float64)]


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        batches = _batches()
        res = [_run(cfg, batches, rank, True) for cfg in CONFIGS]
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_equals_batched_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    batches = _batches()
    n_par = len(list(_model().parameters()))
    for ci, cfg in enumerate(CONFIGS):
        single = _run(cfg, batches, 0, False)
        centers = single[:n_par]
        replicas = [single[n_par + a * n_par : n_par + (a + 1) * n_par] for a in range(Y)]
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[ci]
            for p, q in zip(got[:n_par], centers):  # every rank holds the same center
                torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
            for j in range(Y // WORLD):
                for p, q in zip(got[n_par + j * n_par : n_par + (j + 1) * n_par], replicas[rank * (Y // WORLD) + j]):
                    torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
            torch.testing.assert_close(got[-1], single[-1], atol=1e-6, rtol=0)  # global diagnostics
        assert float(sum((p - q).abs().max() for p, q in zip(centers, [q.detach() for q in _model().parameters()]))) > 1e-3  # it moved
