"""Benchmark of flatminima.measures against the usual baselines, measured in the same process.

1. Time to the top Hessian eigenvalue: restarted Lanczos on forward-over-reverse HVPs
   (``measures.hessian.top_eigenvalues``) vs power iteration on double-backward HVPs, written here the way
   PyHessian does it (one ``autograd.grad(create_graph=True)`` graph kept and reused, one HVP =
   ``autograd.grad(grads, params, grad_outputs=v, retain_graph=True)``, stop when the relative change of
   the Rayleigh quotient is below ``tol``). Both stop at the same tolerance ``tol`` (Lanczos: residual
   |Hv - lambda v| <= tol |lambda|, which bounds the eigenvalue error by about tol^2; power iteration:
   PyHessian's rule); the achieved relative error against a tight reference is printed for both.
2. Local energy with 100 noise samples: one vmapped evaluation (``measures.local_energy``) vs a Python
   loop that perturbs a copy of the model and evaluates it, sample after sample.

Usage: ``python benchmarks/measures.py [--device cuda] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def power_iteration_double_backward(model: nn.Module, X, y, tol: float, top_n: int = 1, max_iter: int = 5000,
                                    seed: int = 0):
    """PyHessian-style top-n eigenvalues: power iteration with deflation (re-orthogonalise against the
    eigenvectors already found at every step), HVPs by double backward through one kept graph, stop when
    |lambda_t - lambda_{t-1}| / (|lambda_{t-1}| + 1e-6) < tol. Returns (eigenvalues, HVPs used)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(seed)
    dot = lambda a, b: sum((x * z).sum() for x, z in zip(a, b))  # noqa: E731
    found, values, hvps = [], [], 0
    for _ in range(top_n):
        v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
        lam = None
        for _it in range(max_iter):
            for u in found:  # deflation
                c = dot(v, u)
                v = [a - c * b for a, b in zip(v, u)]
            norm = torch.sqrt(dot(v, v))
            v = [a / norm for a in v]
            Hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            hvps += 1
            new = float(dot(Hv, v))
            v = [h.detach() for h in Hv]
            if lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol:
                lam = new
                break
            lam = new
        norm = torch.sqrt(dot(v, v))
        found.append([a / norm for a in v])
        values.append(lam)
    return values, hvps


def looped_local_energy(model: nn.Module, X, y, sigma: float, n_samples: int, seed: int = 0, batch: int = 1000):
    """The loop a script would write: copy the model, perturb it in place, evaluate, repeat."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    with torch.no_grad():
        for _ in range(n_samples):
            m = copy.deepcopy(model)
            for p in m.parameters():
                p.mul_(1 + sigma * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
            wrong = sum(int((m(X[i:i + batch]).argmax(-1) != y[i:i + batch]).sum()) for i in range(0, len(X), batch))
            errs.append(wrong / len(X))
    return sum(errs) / n_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import flatminima
    from flatminima import data
    from flatminima.measures import hessian, local_energy

    ds = data.standardize(data.load("fashion-mnist"))
    ds = data.balanced_subset(ds, args.examples, seed=0)
    X = ds.X_train.reshape(args.examples, -1).to(device, torch.float64)
    y = ds.y_train.to(device)
    print(f"device {device}, threads {args.threads}; Fashion-MNIST, {args.examples} training examples; "
          "eigenvalues in float64, local energy in float32")

    # ---------------------------------------------------------------- 1. top eigenvalue
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).to(device, torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):  # a short full-batch training so the point is near a minimum
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    land = flatminima.Landscape(model, (X, y), chunk=args.examples)
    ref = hessian.top_eigenvalues(land, k=5, tol=1e-9, return_vectors=False).values.double()
    print(f"\n[top eigenvalues] MLP 784-64-10 (N={land.n_params}), reference top-5 = "
          + ", ".join(f"{v:.5g}" for v in ref.tolist()))
    print("  all methods stop at the same tol (Lanczos: residual <= tol |lambda|; power: PyHessian's rule)")
    print(f"  {'k':>2} {'tol':>7} {'method':<34} | {'seconds':>8} {'HVPs':>5} {'max rel.err':>11} | speed-up vs power")
    for k, tol in ((1, 1e-3), (1, 1e-6), (1, 1e-9), (5, 1e-3), (5, 1e-6), (5, 1e-9)):
        reps = 1 if tol < 1e-7 else 3
        t_p, (lam_p, hv) = _timed(lambda: power_iteration_double_backward(model, X, y, tol=tol, top_n=k), device, reps)
        err_p = float(((torch.tensor(sorted(lam_p, reverse=True), dtype=torch.float64) - ref[:k]).abs() / ref[:k]).max())
        print(f"  {k:>2} {tol:>7.0e} {'power iteration + double backward':<34} | {t_p:8.3f} {hv:5d} {err_p:11.1e} |")
        for b in (1, 4):
            t_l, eig = _timed(lambda: hessian.top_eigenvalues(land, k=k, tol=tol, return_vectors=False, block_size=b),
                              device, reps)
            err_l = float(((eig.values.double() - ref[:k]).abs() / ref[:k]).max())
            name = "Lanczos + fwd-over-rev HVP" + (f" (block {b})" if b > 1 else "")
            print(f"  {k:>2} {tol:>7.0e} {name:<34} | {t_l:8.3f} {eig.matvecs:5d} {err_l:11.1e} | {t_p / t_l:5.1f}x")
    print("  (goal: >= 3x; at a given tol Lanczos is also far more accurate, compare the error columns)")

    # ---------------------------------------------------------------- 2. local energy, 100 samples
    for label, hidden, n in (("MLP 784-64-10", 64, args.examples), ("MLP 784-8-10, 200 examples", 8, 200)):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)
        lx, ly = X[:n].float(), y[:n]
        land = flatminima.Landscape(m, (lx, ly))
        t_v, le = _timed(lambda: local_energy.local_energy(land, sigmas=[0.1], n_samples=100, batch=100), device)
        t_loop, e_loop = _timed(lambda: looped_local_energy(m, lx, ly, 0.1, 100), device)
        print(f"\n[local energy, 100 samples, one sigma] {label} (N={land.n_params}, P={n})")
        print(f"  vmapped : {t_v:8.3f} s   mean perturbed error {le.base + le.delta[0]:.4f}")
        print(f"  looped  : {t_loop:8.3f} s   mean perturbed error {e_loop:.4f} (other draws)")
        print(f"  speed-up (looped / vmapped): {t_loop / t_v:6.1f}x   (goal >= 5x)")


if __name__ == "__main__":
    main()
