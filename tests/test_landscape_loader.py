"""Landscape over an iterable of batches (a DataLoader, a list) equals the same data as one tensor pair."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatminima import Landscape
from flatminima.errors import ConfigError
from flatminima.measures import hessian, local_energy

F64 = torch.float64
P = 53


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, 6, generator=g, dtype=F64), torch.randint(0, 3, (P,), generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)).double()


def _pair():
    X, y = _data()
    model = _model()
    tensors = Landscape(model, (X, y), l2=1e-3)
    # batches of 8 (the last one 5), each split into pieces of at most 5 examples (chunk)
    loader = Landscape(model, DataLoader(TensorDataset(X, y), batch_size=8), chunk=5, l2=1e-3)
    return tensors, loader


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_loader_equals_tensor_pair_in_float64():
    a, b = _pair()
    assert b.n_examples == P and b.example_offset == 0
    theta = a.theta + 0.3 * torch.randn(a.n_params, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert abs(float(a.loss(theta) - b.loss(theta))) <= 1e-12 * abs(float(a.loss(theta)))
    assert rel(b.grad(theta), a.grad(theta)) < 1e-12
    V = torch.randn(3, a.n_params, dtype=F64)
    assert rel(b.hvp(theta, V[0]), a.hvp(theta, V[0])) < 1e-12
    assert rel(b.hvp(theta, V), a.hvp(theta, V)) < 1e-12
    ref = a.hvp_operator(theta)(V)
    for memory in (None, 0, 3000):  # all graphs kept, none (streamed again at every product), some
        op = b.hvp_operator(theta, memory=memory)
        assert rel(op(V), ref) < 1e-12
    assert b.hvp_operator(theta, memory=3000).recomputed_chunks > 0
    thetas = theta + 0.1 * torch.randn(5, a.n_params, dtype=F64)
    assert rel(b.batched_loss(thetas, budget=30), a.batched_loss(thetas)) < 1e-12
    assert torch.equal(b.batched_error(thetas), a.batched_error(thetas)) and b.error(theta) == a.error(theta)
    fa, ga = a.batched_loss_and_grad(thetas)
    fb, gb = b.batched_loss_and_grad(thetas)
    assert rel(fb, fa) < 1e-12 and rel(gb, ga) < 1e-12
    assert torch.allclose(b.per_example_losses(theta), a.per_example_losses(theta), rtol=1e-12, atol=0)


def test_loader_measures_equal_tensor_pair():
    a, b = _pair()
    ea = hessian.top_eigenvalues(a, k=3, tol=1e-12, criterion="residual")
    eb = hessian.top_eigenvalues(b, k=3, tol=1e-12, criterion="residual")
    assert torch.allclose(eb.values, ea.values, rtol=1e-12, atol=0)
    for method in ("hutchinson", "hutch++"):  # the same probes (seed): the same estimate
        ta, tb = hessian.trace(a, matvecs=30, method=method, seed=3), hessian.trace(b, matvecs=30, method=method, seed=3)
        assert tb.value == pytest.approx(ta.value, rel=1e-12) and tb.stderr == pytest.approx(ta.stderr, rel=1e-10)
    da, db = hessian.density(a, n_probes=2, steps=10, seed=1), hessian.density(b, n_probes=2, steps=10, seed=1)
    assert torch.allclose(db.nodes, da.nodes, rtol=1e-10, atol=1e-12)
    for method in ("copies", "lrt"):  # lrt: the per-example draws follow the examples' global index
        la = local_energy.local_energy(a, sigmas=[0.1, 0.3], n_samples=16, measure="loss", method=method)
        lb = local_energy.local_energy(b, sigmas=[0.1, 0.3], n_samples=16, measure="loss", method=method)
        assert lb.delta == pytest.approx(la.delta, rel=1e-10) and lb.base == pytest.approx(la.base, rel=1e-12)


def test_a_list_of_batches_and_a_torch_loss_module():
    X, y = _data()
    batches = [(X[i : i + 10], y[i : i + 10]) for i in range(0, P, 10)]
    a = Landscape(_model(), (X, y))
    b = Landscape(_model(), batches, loss=nn.CrossEntropyLoss())  # reduction="mean" made per-example
    assert b.loss_name == "CrossEntropyLoss"
    assert float(b.loss(b.theta)) == pytest.approx(float(nn.functional.cross_entropy(_model()(X), y).detach()), rel=1e-12)
    assert rel(b.grad(b.theta), a.grad(a.theta)) < 1e-12
    mean_loss = Landscape(_model(), batches, loss=lambda out, t: nn.functional.cross_entropy(out, t))
    with pytest.raises(ConfigError, match="per-example"):
        mean_loss.loss(mean_loss.theta)


def test_batchnorm_and_dropout_follow_eval_mode_whatever_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    model(torch.randn(40, 6, dtype=F64))  # running statistics from train mode
    X, y = _data()
    a = Landscape(model, (X, y))
    b = Landscape(model, DataLoader(TensorDataset(X, y), batch_size=4))
    assert model.training  # the user's model is untouched
    assert float(b.loss(b.theta)) == pytest.approx(float(a.loss(a.theta)), rel=1e-12)
    assert float(b.loss(b.theta)) == pytest.approx(float(a.loss(a.theta)), rel=1e-12)  # dropout off: deterministic


def test_bad_iterables_raise_config_error():
    X, y = _data()
    with pytest.raises(ConfigError, match="re-iterable"):
        Landscape(_model(), ((X[i : i + 8], y[i : i + 8]) for i in range(0, P, 8)))
    with pytest.raises(ConfigError, match="pair"):
        Landscape(_model(), [X[:8]])
    with pytest.raises(ConfigError, match="DataLoader"):
        Landscape(_model(), TensorDataset(X, y))  # single examples, not batches
    with pytest.raises(ConfigError, match="empty"):
        Landscape(_model(), [])
    with pytest.raises(ConfigError):
        Landscape(_model(), 3)

    class Shrinking:  # yields one batch fewer at every pass
        n = 6

        def __iter__(self):
            self.n -= 1
            return iter([(X[i : i + 8], y[i : i + 8]) for i in range(0, 8 * self.n, 8)])

    land = Landscape(_model(), Shrinking())
    with pytest.raises(ConfigError, match="same examples"):
        land.loss(land.theta)
    with pytest.raises(ConfigError, match="holds no X"):
        _ = Landscape(_model(), [(X, y)]).X


def test_streaming_memory_stays_bounded_by_a_batch():
    """A data set of 256 MB generated batch by batch: loss, gradient and HVPs never hold more than a few
    batches of 16 MB (peak resident memory of a fresh process, resource.getrusage)."""
    script = textwrap.dedent("""
        import resource, torch
        from flatminima import Landscape
        torch.set_num_threads(1)
        D, B, NB = 2048, 2048, 16          # 16 batches of 2048 x 2048 float32 = 16 MB each, 256 MB in all

        class Stream:                       # re-iterable; each batch made on the fly from its index
            def __iter__(self):
                for i in range(NB):
                    g = torch.Generator().manual_seed(i)
                    yield torch.randn(B, D, generator=g), torch.randint(0, 2, (B,), generator=g)

        torch.manual_seed(0)
        land = Landscape(torch.nn.Linear(D, 2), Stream())
        land.loss(land.theta)               # warm-up: allocator and libraries
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        land.loss_and_grad(land.theta)
        land.hvp(land.theta, torch.ones(land.n_params))
        land.hvp_operator(land.theta, memory=0)(torch.ones(2, land.n_params))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    """)
    # a fixed mmap threshold: glibc returns every freed large block to the system, so the peak resident
    # size follows the live tensors (a dynamic threshold would keep freed batches in the heap)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    # a few batches (the current one, its pieces, a vmapped pair of products) but never the data set
    assert grown < 128 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MB on a 256 MB data set"
