"""Data-parallel landscapes: two gloo processes, each with a shard of the data, equal one process with all of it.

Launched twice: by ``torch.multiprocessing.spawn`` with a file store, and by ``torchrun --standalone
--nproc_per_node 2`` with the environment rendezvous a user's script gets; each rank streams its shard from a
DataLoader and all-reduces the sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from flatminima import Landscape
from flatminima.measures import hessian, local_energy

WORLD, P = 2, 61
F64 = torch.float64


def _problem(seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(P, 5, generator=g, dtype=F64), torch.randint(0, 3, (P,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    model(X)  # BatchNorm running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    return model, TensorDataset(X, y)


def _measure(land: Landscape) -> dict[str, torch.Tensor]:
    theta = land.theta
    v = torch.randn(land.n_params, generator=torch.Generator().manual_seed(7), dtype=F64)
    f, g = land.loss_and_grad(theta)
    top = hessian.top_eigenvalues(land, k=2, tol=1e-12, criterion="residual", return_vectors=False)
    tr = hessian.trace(land, matvecs=12, method="hutch++", seed=1)
    le = local_energy.local_energy(land, sigmas=[0.2], n_samples=8, measure="loss", method="copies")
    return {"loss": f, "grad": g, "hvp": land.hvp(theta, v), "hvp_op": land.hvp_operator(theta, memory=0)(v),
            "top": top.values, "trace": torch.tensor(tr.value), "local_energy": torch.tensor(le.delta),
            "error": torch.tensor(land.error(theta)), "n": torch.tensor(land.n_examples)}


def _rank_measures(rank: int, out_dir: str) -> None:
    """What one rank of an initialised gloo group of WORLD processes measures on its shard; saved to out_dir."""
    model, ds = _problem()
    if rank == 1:  # a different model on rank 1: rank 0's is broadcast
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
    shard = Subset(ds, range(rank, P, WORLD))  # 31 and 30 examples
    land = Landscape(model, DataLoader(shard, batch_size=8), distributed=True, chunk=5)
    torch.save(_measure(land), os.path.join(out_dir, f"rank{rank}.pt"))


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    try:
        _rank_measures(rank, out_dir)
    finally:
        dist.destroy_process_group()


def _assert_ranks_equal_one_process(out_dir) -> None:
    model, ds = _problem()
    single = _measure(Landscape(model, ds.tensors))
    for rank in range(WORLD):
        got = torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=True)
        assert int(got["n"]) == P
        for key in ("loss", "grad", "hvp", "hvp_op", "top", "trace", "local_energy", "error"):
            torch.testing.assert_close(got[key].double(), single[key].double(), rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    _assert_ranks_equal_one_process(tmp_path)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    """The documented launch: ``torchrun --standalone --nproc_per_node 2 script.py``, rendezvous from the
    environment (``init_process_group("gloo")``)."""
    script = tmp_path / "measure.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import torch
        import torch.distributed as dist
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_distributed_measures import _rank_measures
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        try:
            _rank_measures(dist.get_rank(), sys.argv[1])
        finally:
            dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(WORLD), str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_ranks_equal_one_process(tmp_path)


def test_distributed_needs_a_process_group():
    from flatminima.errors import ConfigError

    model, ds = _problem()
    with pytest.raises(ConfigError, match="init_process_group"):
        Landscape(model, ds.tensors, distributed=True)
