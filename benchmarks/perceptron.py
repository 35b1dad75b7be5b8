"""Benchmark of BP for the binary perceptron: sweeps per second, vectorised vs a per-pattern loop.

Instance: N = 1001 Gaussian inputs, alpha = 0.5 (P = 500), float64, one CPU thread (unless
--threads). Both implementations compute the same parallel sweep (checked equal to 1e-12 here); the
baseline updates one pattern at a time in a Python loop (each pattern's N messages still vectorised).

    .venv/bin/python benchmarks/perceptron.py [--n 1001] [--alpha 0.5] [--sweeps 20] [--threads 1]

With ``--fbp-seeds K`` it also runs focusing BP on K random instances (N = --n, alpha = --fbp-alpha,
default 0.6) and prints the success rate (zero training errors, verified) with wall and CPU times.
"""

from __future__ import annotations

import argparse
import time

import torch

from flatminima.perceptron import fbp, n_errors, patterns, random_instance
from flatminima.perceptron.bp import run_bp, sweep, sweep_loop


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1001)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--sweeps", type=int, default=20, help="sweeps timed for the vectorised BP")
    ap.add_argument("--loop-sweeps", type=int, default=3, help="sweeps timed for the per-pattern loop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fbp-seeds", type=int, default=0, help="also run focusing BP on this many instances")
    ap.add_argument("--fbp-alpha", type=float, default=0.6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y = random_instance(args.n, args.alpha, seed=0)
    pat = patterns(X, y, device=args.device)
    # messages from a partly converged state, so both timings see realistic values
    warm = run_bp(pat, max_iters=10)
    u, h = warm.u, torch.zeros(1, pat.n, dtype=pat.xi.dtype, device=pat.xi.device)
    diff = float((sweep(pat, u, h) - sweep_loop(pat, u, h)).abs().max())
    sync = torch.cuda.synchronize if pat.xi.device.type == "cuda" else (lambda: None)

    def vec():
        sweep(pat, u, h)
        sync()

    def loop():
        sweep_loop(pat, u, h)
        sync()

    t_vec = _time(vec, args.sweeps)
    t_loop = _time(loop, args.loop_sweeps)
    full = run_bp(pat, tol=1e-7, max_iters=2000)
    print(f"instance: N={args.n}, alpha={args.alpha} (P={pat.P}), float64, device={pat.xi.device}, threads={args.threads}")
    print(f"max |vectorised - loop| over one sweep: {diff:.1e}")
    print(f"vectorised BP      : {1.0 / t_vec:8.2f} sweeps/s  ({t_vec * 1e3:.1f} ms/sweep)")
    print(f"per-pattern loop BP: {1.0 / t_loop:8.2f} sweeps/s  ({t_loop * 1e3:.1f} ms/sweep)")
    print(f"ratio vectorised / loop: {t_loop / t_vec:.1f}x")
    print(f"BP to convergence (tol 1e-7, damping 0.5): {full.iterations} sweeps, {full.seconds:.2f} s, "
          f"converged={full.converged}, entropy per weight {full.log_z / pat.n_weights:.5f}")
    if args.fbp_seeds:
        ok, wall, cpu = 0, [], []
        for seed in range(args.fbp_seeds):
            X, y = random_instance(args.n, args.fbp_alpha, seed=seed)
            c0 = time.process_time()
            r = fbp(X, y, device=args.device)
            cpu.append(time.process_time() - c0)
            wall.append(r.seconds)
            verified = int(n_errors(r.w, patterns(X, y))) == 0
            ok += r.solved and verified
            print(f"  fBP seed {seed}: solved={r.solved and verified}, {r.steps} sweeps, {r.seconds:.1f} s wall, {cpu[-1]:.1f} s CPU")
        print(f"focusing BP, N={args.n}, alpha={args.fbp_alpha}: solved {ok}/{args.fbp_seeds}; "
              f"wall mean {sum(wall) / len(wall):.1f} s (max {max(wall):.1f} s), CPU mean {sum(cpu) / len(cpu):.1f} s")


if __name__ == "__main__":
    main()
