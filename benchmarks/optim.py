"""Benchmark of flatminima.optim: the cost of the entropic optimizers against SGD, as ratios measured in one run.

Prints
1. Entropy-SGD time per gradient evaluation / SGD time per step (MLP 784-256-256-10, batch 128, L = 20,
   Langevin noise from torch's generator). Goal <= 1.10: an inner step adds the pull to x, the SGD
   step, one normal draw per parameter and the running mean to its forward/backward pass. The same
   with ``noise=0`` separates the cost of the draw.
2. ReplicatedSGD with y = 4 replicas in one batched pass / 4 SGD models stepped one after the other (each
   replica or model on its own minibatch), for small MLPs (784-32-10 and 64-32-10, batch 32; goal <= 0.5)
   and 784-256-256-10 at batch 128.
3. SAM time per step / SGD time per step (two passes: about 2).

Each ratio compares times taken in alternation in the same process after a warm-up, best of several
repeats: CPU time (``time.process_time``: the machine may be shared) on the CPU, wall time with
synchronisation on a GPU (used when one is available).

Run: ``OMP_NUM_THREADS=1 python benchmarks/optim.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from flatminima.optim import SAM, EntropySGD, ReplicatedSGD
from flatminima.train import MinibatchClosure, MinibatchStream, per_example_loss

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).to(DEVICE)


def closure_for(model: nn.Module, d: int, batch: int, seed: int = 0) -> MinibatchClosure:
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(8192, d, generator=g).to(DEVICE), torch.randint(0, 10, (8192,), generator=g).to(DEVICE)
    return MinibatchClosure(model, MinibatchStream(X, y, batch, seed=seed), per_example_loss("cross_entropy"))


def seconds_per_call(fn: Callable[[], object], n: int) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def paired(fa: Callable[[], object], na: int, fb: Callable[[], object], nb: int, repeats: int = 7) -> tuple[float, float]:
    """Seconds per call of ``fa`` and ``fb`` after a warm-up, measured in alternation (load from other
    processes hits both alike); the best of ``repeats`` for each."""
    for _ in range(2):
        fa(), fb()
    ta = tb = float("inf")
    for _ in range(repeats):
        ta = min(ta, seconds_per_call(fa, na))
        tb = min(tb, seconds_per_call(fb, nb))
    return ta, tb


def bench_entropy_sgd(L: int = 20, noise: float = 1e-4) -> tuple[float, float, float]:
    """(Entropy-SGD seconds per gradient evaluation / SGD seconds per step, the two times)."""
    m_sgd, m_esgd = mlp([784, 256, 256, 10]), mlp([784, 256, 256, 10])
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=0.01, momentum=0.9)
    esgd = EntropySGD(m_esgd.parameters(), lr=1.0, momentum=0.9, inner_steps=L, inner_lr=0.01, noise=noise, seed=0)
    c_sgd, c_esgd = closure_for(m_sgd, 784, 128), closure_for(m_esgd, 784, 128)
    t_sgd, t_esgd = paired(lambda: sgd.step(c_sgd), 2 * L, lambda: esgd.step(c_esgd), 2)
    return t_esgd / L / t_sgd, t_esgd / L, t_sgd


def bench_replicated(widths: tuple[int, ...], batch: int, y: int = 4) -> tuple[float, float, float]:
    """(ReplicatedSGD batched seconds per step / y SGD models' seconds per step, the two times)."""
    models = [mlp(list(widths), seed=a) for a in range(y)]
    sgds = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    closures = [closure_for(m, widths[0], batch, seed=a) for a, m in enumerate(models)]

    def y_sgd_steps() -> None:
        for o, c in zip(sgds, closures):
            o.step(c)

    model = mlp(list(widths))
    opt = ReplicatedSGD(model.parameters(), lr=0.01, replicas=y, momentum=0.9, gamma=0.01, mode="batched", seed=0)
    c = closure_for(model, widths[0], batch)
    t_sgd, t_rep = paired(y_sgd_steps, 30, lambda: opt.step(c), 30)
    return t_rep / t_sgd, t_rep, t_sgd


def bench_sam() -> float:
    m1, m2 = mlp([784, 256, 256, 10]), mlp([784, 256, 256, 10])
    sgd = torch.optim.SGD(m1.parameters(), lr=0.01, momentum=0.9)
    sam = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)
    c1, c2 = closure_for(m1, 784, 128), closure_for(m2, 784, 128)
    t_sgd, t_sam = paired(lambda: sgd.step(c1), 20, lambda: sam.step(c2), 20)
    return t_sam / t_sgd


if __name__ == "__main__":
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {where}")
    for noise, label in ((1e-4, "noise 1e-4 from torch's generator; goal <= 1.10"), (0.0, "noise=0, no draw")):
        ratio, t_e, t_s = bench_entropy_sgd(noise=noise)
        print(f"Entropy-SGD (L=20) time per gradient evaluation / SGD time per step, MLP 784-256-256-10, batch 128: "
              f"{ratio:.3f}  ({t_e * 1e3:.3f} ms vs {t_s * 1e3:.3f} ms; {label})")
    for widths, batch in (((784, 32, 10), 32), ((64, 32, 10), 32), ((784, 256, 256, 10), 128)):
        ratio, t_r, t_s = bench_replicated(widths, batch)
        print(f"ReplicatedSGD y=4, one batched pass / 4 SGD models, MLP {'-'.join(map(str, widths))}, batch {batch}: "
              f"{ratio:.3f}  ({t_r * 1e3:.3f} ms vs {t_s * 1e3:.3f} ms; goal <= 0.5 on a small MLP)")
    print(f"SAM time per step / SGD time per step (2 passes: about 2): {bench_sam():.3f}")
