"""Benchmark of flatminima.optim: overheads of the entropic optimizers against SGD, measured in one run.

Prints
1. Entropy-SGD time per gradient evaluation / SGD time per step (MLP 784-256-256-10, batch 128, L = 20),
   with the default fresh Langevin noise: the counter-based C kernel (flatminima._fastrand) runs each
   whole SGLD inner step (pull to the anchor, step, noise, running mean) in one fused pass over the
   parameters. Goal <= 1.10: the inner loop adds only that pass to each forward/backward pass. Also
   printed: the same with the multi-tensor inner step (torch._foreach_* ops, the noise still from the
   kernel; the fallback path), with torch's generator for the noise (noise_source="torch", ~1 ms per 270k
   normals on one core), with the opt-in noise table, and without noise (fused step, no draw); then the
   inner step alone on the MLP's 270k parameters: the fused kernel vs the multi-tensor sequence with the
   kernel's noise, and the noise alone (kernel vs torch's normal_ + add). Those are per call with the
   arrays warm in cache; inside the loop the parameters come out of a backward pass and cost more.
2. ReplicatedSGD with y = 4 replicas in one batched pass / 4 SGD models stepped one after the other
   (each replica/model on its own minibatch), for small MLPs (784-32-10 and 64-32-10, batch 32; goal
   <= 0.5) and a larger one (784-256-256-10, batch 128, where arithmetic dominates and batching cannot
   save much on one core); also the sequential fallback.
3. SAM time per step / SGD time per step (two passes: about 2).
Each ratio compares CPU times (time.process_time: the machine may be shared) taken in alternation in the same
process, best of several repeats.

Run: ``OMP_NUM_THREADS=1 python benchmarks/optim.py`` (single-threaded CPU, best of 5 repeats).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from flatminima.optim import SAM, EntropySGD, ReplicatedSGD
from flatminima.optim._noise import NoiseSource, fast_available, fast_preferred, sgld_plan, sgld_step_
from flatminima.train import MinibatchClosure, MinibatchStream, per_example_loss


def mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def data(n: int = 8192, d: int = 784, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def closure_for(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> MinibatchClosure:
    return MinibatchClosure(model, MinibatchStream(X, y, batch, seed=seed), per_example_loss("cross_entropy"))


def timed(fn, n: int, repeats: int = 5, warmup: int = 2) -> float:
    """Best (minimum over repeats) seconds per call of ``fn`` (``n`` calls per repeat, after ``warmup``)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best


def paired(fa, na: int, fb, nb: int, repeats: int = 7) -> tuple[float, float]:
    """Seconds per call of ``fa`` and ``fb``, measured in alternation (so that load from other processes
    on a shared machine hits both alike); the best of ``repeats`` for each."""
    ta, tb = float("inf"), float("inf")
    fa(), fb()
    for _ in range(repeats):
        ta = min(ta, timed(fa, na, repeats=1, warmup=0))
        tb = min(tb, timed(fb, nb, repeats=1, warmup=0))
    return ta, tb


def bench_entropy_sgd(L: int = 20, fused: bool = True, **kw) -> tuple[float, float, float]:
    X, y = data()
    m_sgd, m_esgd = mlp([784, 256, 256, 10]), mlp([784, 256, 256, 10])
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=0.01, momentum=0.9)
    esgd = EntropySGD(m_esgd.parameters(), lr=1.0, momentum=0.9, inner_steps=L, inner_lr=0.01,
                      **{"noise": 1e-4, "gamma": 0.03, "scoping": 1e-3, **kw})
    esgd._fused = fused  # False: the multi-tensor inner step (the fallback path)
    c_sgd, c_esgd = closure_for(m_sgd, X, y, 128), closure_for(m_esgd, X, y, 128)
    t_sgd, t_esgd = paired(lambda: sgd.step(c_sgd), 2 * L, lambda: esgd.step(c_esgd), 2)
    t_esgd /= L
    return t_esgd / t_sgd, t_esgd, t_sgd


def bench_inner_step() -> dict[str, float]:
    """Seconds per call on the parameters of MLP 784-256-256-10 (float32): Entropy-SGD's inner step fused in
    the kernel (as EntropySGD calls it) vs its multi-tensor sequence with the kernel's noise; and the noise
    alone, the kernel vs torch's normal_ into a buffer plus a multi-tensor add. Tiny step sizes keep the
    values bounded over the repeats."""
    params = [p.detach() for p in mlp([784, 256, 256, 10]).parameters()]
    n = sum(p.numel() for p in params)
    grads = [torch.randn_like(p) for p in params]
    anchors, means = [p.clone() for p in params], [p.clone() for p in params]
    lr, gam, w, scale = 1e-6, 0.03, 0.75, 1e-6
    src = NoiseSource(0, backend="fast")
    plan = sgld_plan(params, anchors, means)

    def fused() -> None:
        sgld_step_(plan, params, grads, means, lr=lr, weight_decay=0.0, gamma=gam, weight=w, scale=scale, source=src)

    def multi_tensor() -> None:  # EntropySGD's fallback, grads consumed (here: a scratch copy)
        d = torch._foreach_add(grads, params, alpha=gam)
        torch._foreach_add_(d, anchors, alpha=-gam)
        torch._foreach_add_(params, d, alpha=-lr)
        src.add_(params, scale)
        torch._foreach_lerp_(means, params, w)

    buf = torch.empty(n)
    views = [v.view_as(p) for v, p in zip(buf.split([p.numel() for p in params]), params)]
    gen = torch.Generator().manual_seed(0)

    def torch_noise() -> None:
        buf.normal_(generator=gen)
        torch._foreach_add_(params, views, alpha=scale)

    out = {"n": n}
    out["fused"], out["multi-tensor"] = paired(fused, 200, multi_tensor, 100) if plan else (float("nan"),) * 2
    out["noise kernel"], out["noise torch"] = paired(lambda: src.add_(params, scale), 200, torch_noise, 50)
    return out


def bench_replicated(y_rep: int = 4, widths=(784, 32, 10), batch: int = 32) -> dict[str, float]:
    X, y = data(d=widths[0])
    models = [mlp(list(widths), seed=a) for a in range(y_rep)]
    sgds = [torch.optim.SGD(mm.parameters(), lr=0.01, momentum=0.9) for mm in models]
    cls = [closure_for(mm, X, y, batch, seed=a) for a, mm in enumerate(models)]

    def four_sgd() -> None:
        for o, c in zip(sgds, cls):
            o.step(c)

    out: dict[str, float] = {}
    for mode in ("batched", "sequential"):
        model = mlp(list(widths))
        opt = ReplicatedSGD(model.parameters(), lr=0.01, replicas=y_rep, momentum=0.9, gamma=0.01, mode=mode)
        c = closure_for(model, X, y, batch)
        out[f"sgd x{y_rep} ({mode} run)"], out[mode] = paired(four_sgd, 30, lambda: opt.step(c), 30)
    return out


def bench_sam() -> float:
    X, y = data()
    m1, m2 = mlp([784, 256, 256, 10]), mlp([784, 256, 256, 10])
    sgd = torch.optim.SGD(m1.parameters(), lr=0.01, momentum=0.9)
    sam = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)
    c1, c2 = closure_for(m1, X, y, 128), closure_for(m2, X, y, 128)
    t_sgd, t_sam = paired(lambda: sgd.step(c1), 20, lambda: sam.step(c2), 20)
    return t_sam / t_sgd


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    ratio, t_e, t_s = bench_entropy_sgd()
    kernel = ("fused SGLD step + fresh noise in the C kernel" if fast_preferred() else
              "multi-tensor step, fresh noise from torch: C kernel "
              + ("not used on this CPU" if fast_available() else "not built"))
    print(f"Entropy-SGD (L=20) time per gradient evaluation / SGD time per step, MLP 784-256-256-10, batch 128: "
          f"{ratio:.3f}  ({t_e * 1e3:.2f} ms vs {t_s * 1e3:.2f} ms; {kernel}; goal <= 1.10)")
    variants = [("noise_source='torch' (torch's generator, multi-tensor step)", {"noise_source": "torch"}),
                ("noise_table=2**22 (precomputed Gaussian table, not exact; multi-tensor step)",
                 {"noise_table": 1 << 22}),
                ("noise=0 (no Langevin noise" + ("; fused step)" if fast_preferred() else ")"), {"noise": 0.0})]
    if fast_preferred():
        variants.insert(0, ("the multi-tensor inner step (kernel noise, not fused)", {"fused": False}))
    for label, kw in variants:
        ratio, t_e, t_s = bench_entropy_sgd(**kw)
        print(f"  same with {label}: {ratio:.3f}  ({t_e * 1e3:.2f} ms vs {t_s * 1e3:.2f} ms)")
    if fast_available():
        r = bench_inner_step()
        k = f"{round(r['n'], -4) / 1e3:.0f}k"
        if fast_preferred():
            print(f"  inner step on {k} float32 parameters: fused kernel {r['fused'] * 1e3:.3f} ms vs multi-tensor "
                  f"sequence + kernel noise {r['multi-tensor'] * 1e3:.3f} ms")
        print(f"  {k} N(0,1) added in place: fast kernel {r['noise kernel'] * 1e3:.3f} ms vs torch normal_ "
              f"{r['noise torch'] * 1e3:.3f} ms ({r['noise torch'] / r['noise kernel']:.1f}x)")
    for widths, batch in (((784, 32, 10), 32), ((64, 32, 10), 32), ((784, 256, 256, 10), 128)):
        r = bench_replicated(widths=widths, batch=batch)
        name = "-".join(map(str, widths))
        print(f"ReplicatedSGD y=4, one batched pass / 4 sequential SGD models, MLP {name}, batch {batch}: "
              f"{r['batched'] / r['sgd x4 (batched run)']:.3f}  ({r['batched'] * 1e3:.2f} ms vs "
              f"{r['sgd x4 (batched run)'] * 1e3:.2f} ms; goal <= 0.5 on a small MLP); sequential fallback: "
              f"{r['sequential'] / r['sgd x4 (sequential run)']:.3f}")
    print(f"SAM time per step / SGD time per step (2 passes expected ~2): {bench_sam():.3f}")
