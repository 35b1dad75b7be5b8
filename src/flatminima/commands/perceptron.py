"""``flatminima perceptron solve | entropy | local-entropy``: binary perceptrons and committee machines.

Instances are random (``--alpha``, ``--seed``; random labels, or teacher labels with ``--teacher``) or
read from an ``.npz`` file with arrays ``X`` (P, N) and ``y`` (P,) (``--data``). Every command stores a
run (config, results, weights / curves as JSON, figures) in the run store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from ..errors import ConfigError, DataNotFoundError
from ..fileio import atomic_write_text, to_json
from ..store import Store
from ._common import QuietOpt, StoreOpt, parse_list, running

app = typer.Typer(help="Binary perceptrons and committee machines: BP entropy, local entropy, solvers.",
                  no_args_is_help=True)

_N = typer.Option(1001, "--n", help="Number of inputs N (weights of a perceptron or tree committee).")
_ALPHA = typer.Option(0.5, help="Load alpha = P / (number of weights).")
_SEED = typer.Option(0, help="Seed of the instance (and of the solver).")
_K = typer.Option(1, "--k", help="Hidden units K (odd; 1 = perceptron).")
_FC = typer.Option(False, "--fully-connected", help="Fully connected committee (default: tree).")
_TEACHER = typer.Option(False, help="Labels from a random binary teacher (always satisfiable).")
_DATA = typer.Option(None, "--data", help=".npz file with arrays X (P, N) and y (P,) instead of a random instance.")


def _instance(n: int, alpha: float, seed: int, k: int, fc: bool, teacher: bool, data: Path | None):
    """Patterns X (P, N), labels y (P,) and the teacher's weights (None unless ``teacher``)."""
    from ..perceptron import random_instance, teacher_instance

    if data is not None:
        if not data.exists():
            raise DataNotFoundError(f"no such file: {data}")
        try:
            with np.load(data) as z:
                return z["X"], z["y"], None
        except (KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"{data} must be an .npz file with arrays 'X' and 'y' ({exc})") from None
    if teacher:
        return teacher_instance(n, alpha, seed=seed, K=k, tree=not fc)
    X, y = random_instance(n, alpha, seed=seed, K=k, tree=not fc)
    return X, y, None


@app.command()
def solve(
    solver: str = typer.Option("fbp", help="fbp, rsgd, sa, ce-mc, le-mc (all but fbp: perceptron only)."),
    n: int = _N, alpha: float = _ALPHA, seed: int = _SEED, k: int = _K, fully_connected: bool = _FC,
    teacher: bool = _TEACHER, data: Path | None = _DATA, store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find a +-1 weight vector that classifies every pattern; store the weights and the outcome."""
    from ..perceptron import solve as run_solver

    X, y, _ = _instance(n, alpha, seed, k, fully_connected, teacher, data)
    res = run_solver(X, y, solver, K=k, tree=not fully_connected, seed=seed, progress=not quiet)
    st = Store(store)
    run = st.create_run("perceptron-solve", {"solver": solver, "n": n, "alpha": alpha, "seed": seed, "k": k,
                                             "fully_connected": fully_connected, "teacher": teacher,
                                             "data": str(data) if data else None})
    with running(st, run):
        atomic_write_text(run.folder / "weights.json", to_json(res.w))
        for key, val in {"solved": res.solved, "errors": res.errors, "steps": res.steps, "seconds": res.seconds}.items():
            st.put_result(run.id, key, val)
    typer.echo(f"run {run.id}: solver {solver} {'solved' if res.solved else 'did not solve'} the instance "
               f"(errors {res.errors}, {res.steps} steps, {res.seconds:.2f} s); weights in {run.folder / 'weights.json'}")


@app.command()
def entropy(
    method: str = typer.Option("bp", help="bp (belief propagation) or exact (enumeration, N*K <= 30)."),
    n: int = _N, alpha: float = _ALPHA, seed: int = _SEED, k: int = _K, fully_connected: bool = _FC,
    teacher: bool = _TEACHER, data: Path | None = _DATA, store: Path | None = StoreOpt,
    damping: float = typer.Option(0.5, help="BP damping in [0, 1)."),
) -> None:
    """Log of the number of weight vectors that classify every pattern (total and per weight)."""
    from ..perceptron import entropy as compute_entropy
    from ..perceptron import patterns

    X, y, _ = _instance(n, alpha, seed, k, fully_connected, teacher, data)
    n_w = patterns(X, y, K=k, tree=not fully_connected).n_weights
    s = compute_entropy(X, y, method=method, K=k, tree=not fully_connected, damping=damping)
    st = Store(store)
    run = st.create_run("perceptron-entropy", {"method": method, "n": n, "alpha": alpha, "seed": seed, "k": k,
                                               "fully_connected": fully_connected, "teacher": teacher,
                                               "data": str(data) if data else None})
    with running(st, run):
        st.put_result(run.id, "log_count", s)
        st.put_result(run.id, "entropy_per_weight", s / n_w)
    typer.echo(f"run {run.id}: log #solutions = {s:.6g} ({s / n_w:.6g} per weight, {n_w} weights, method {method})")


@app.command("local-entropy")
def local_entropy_cmd(
    reference: str = typer.Option("fbp", help="Reference: a solver (fbp, rsgd, sa, ce-mc, le-mc), 'teacher', "
                                              "or a weights.json file from `solve`."),
    distances: str = typer.Option("0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2",
                                  help="Comma-separated normalised Hamming distances d in (0, 0.5]."),
    method: str = typer.Option("bp", help="bp or exact (enumeration, small N)."),
    n_gamma: int = typer.Option(24, help="Points of the gamma scan."),
    n: int = _N, alpha: float = _ALPHA, seed: int = _SEED, k: int = _K, fully_connected: bool = _FC,
    teacher: bool = _TEACHER, data: Path | None = _DATA, store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Franz-Parisi local entropy S(d) around a reference solution; table, JSON and figure in the run."""
    from ..perceptron import binary_entropy, local_entropy
    from ..perceptron import solve as run_solver
    from ..perceptron.plots import plot_local_entropy

    dist = parse_list(distances, float, "--distances")
    X, y, w_t = _instance(n, alpha, seed, k, fully_connected, teacher or reference == "teacher", data)
    if reference == "teacher":
        if w_t is None:
            raise ConfigError("reference 'teacher' needs a teacher instance (not --data)")
        w = w_t
    elif reference.endswith(".json"):
        p = Path(reference)
        if not p.exists():
            raise DataNotFoundError(f"no such file: {p}")
        w = np.array(json.loads(p.read_text()), dtype=float)
    else:
        res = run_solver(X, y, reference, K=k, tree=not fully_connected, seed=seed, progress=not quiet)
        if not res.solved:
            raise ConfigError(f"solver {reference} found no solution ({res.errors} errors); the local entropy "
                              "of a solution needs a solution")
        w = res.w
    curve = local_entropy(X, y, w, dist, method=method, K=k, tree=not fully_connected, n_gamma=n_gamma,
                          progress=not quiet)
    st = Store(store)
    run = st.create_run("perceptron-local-entropy", {"reference": reference, "distances": dist, "method": method,
                                                     "n": n, "alpha": alpha, "seed": seed, "k": k,
                                                     "fully_connected": fully_connected, "teacher": teacher})
    with running(st, run):
        atomic_write_text(run.folder / "curve.json", to_json(curve.to_dict()))
        plot_local_entropy({reference: curve}, run.folder / "local_entropy.png")
        st.put_result(run.id, "all_converged", curve.all_converged)
        st.put_result(run.id, "entropy", curve.entropy.tolist())
    typer.echo("d        S(d)       H2(d)")
    for d, s_, h in zip(curve.distances, curve.entropy, binary_entropy(curve.distances)):
        typer.echo(f"{d:<8.4f} {s_:<10.5f} {h:.5f}")
    typer.echo(f"run {run.id}: BP scan converged at {int(curve.scan_converged.sum())}/{len(curve.scan_converged)} "
               f"gammas; figure {run.folder / 'local_entropy.png'}")
