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
from ..train import MAX_PARAMS
from ._common import (
    QuietOpt,
    StoreOpt,
    announce,
    check_choice,
    check_float,
    check_int,
    make_app,
    parse_list,
)

app = make_app("Binary perceptrons and committee machines: BP entropy, local entropy, solvers.")
METHODS = ("bp", "exact")
EXACT_MAX_WEIGHTS = 30  # method "exact" enumerates 2^weights vectors

_N = typer.Option(1001, "--n", help="Number of inputs N (weights of a perceptron or tree committee).")
_ALPHA = typer.Option(0.5, help="Load alpha = P / (number of weights).")
_SEED = typer.Option(0, help="Seed of the instance (and of the solver).")
_K = typer.Option(1, "--k", help="Hidden units K (odd; 1 = perceptron).")
_FC = typer.Option(False, "--fully-connected/--tree", help="Fully connected committee, or a tree committee.")
_TEACHER = typer.Option(False, "--teacher/--random-labels",
                        help="Labels from a random binary teacher (always satisfiable), or random labels.")
_DATA = typer.Option(None, "--data", help=".npz file with arrays X (P, N) and y (P,) instead of a random instance.")


def _instance(n: int, alpha: float, seed: int, k: int, fc: bool, teacher: bool, data: Path | None):
    """Patterns X (P, N), labels y (P,) and the teacher's weights (None unless ``teacher``), after checking
    the arguments (sizes included: at most ``MAX_PARAMS`` pattern entries)."""
    from ..perceptron import patterns, random_instance, teacher_instance

    check_int("--k", k, 1)
    if k % 2 == 0:
        raise ConfigError(f"--k must be odd (a committee votes), got {k}")
    check_int("--seed", seed, 0, 2**63 - 1)
    if data is not None:
        if not data.is_file():
            raise DataNotFoundError(f"no such file: {data}")
        try:
            with np.load(data, allow_pickle=False) as z:
                X, y = np.asarray(z["X"], dtype=float), np.asarray(z["y"], dtype=float)
        except (KeyError, ValueError, OSError, TypeError) as exc:
            raise ConfigError(f"{data} must be an .npz file with numeric arrays 'X' and 'y' ({exc})") from None
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ConfigError(f"{data}: X and y must hold finite numbers")
        patterns(X, y, K=k, tree=not fc)  # checks the shapes against the machine
        return X, y, None
    check_int("--n", n, 1)
    check_float("--alpha", alpha, 0, low_open=True)
    n_weights = n if (k == 1 or not fc) else k * n
    if alpha * n_weights * n > MAX_PARAMS:
        raise ConfigError(f"the instance would hold P x N = {alpha * n_weights * n:.3g} numbers, more than the "
                          f"{MAX_PARAMS:.0e} allowed; lower --n or --alpha")
    if k > 1 and not fc and n % k:
        raise ConfigError(f"a tree committee needs --n divisible by --k, got n={n}, k={k}")
    if teacher:
        return teacher_instance(n, alpha, seed=seed, K=k, tree=not fc)
    X, y = random_instance(n, alpha, seed=seed, K=k, tree=not fc)
    return X, y, None


def _read_weights(path: Path, n_weights: int) -> np.ndarray:
    """A reference solution written by ``solve``: a JSON array of ``n_weights`` values +-1 (nested for a
    committee)."""
    if not path.is_file():
        raise DataNotFoundError(f"no such file: {path}")
    try:
        w = np.array(json.loads(path.read_text()), dtype=float)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} must be a JSON list of +-1 weights ({type(exc).__name__})") from None
    if w.size != n_weights or not np.isin(w, (-1.0, 1.0)).all():
        raise ConfigError(f"{path} must hold {n_weights} weights +-1 for this machine, got {w.size} values "
                          f"(or values other than +-1)")
    return w


@app.command()
def solve(
    solver: str = typer.Option("fbp", help="fbp, rsgd, sa, ce-mc, le-mc (all but fbp: perceptron only)."),
    n: int = _N, alpha: float = _ALPHA, seed: int = _SEED, k: int = _K, fully_connected: bool = _FC,
    teacher: bool = _TEACHER, data: Path | None = _DATA, store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find a +-1 weight vector that classifies every pattern; store the weights and the outcome."""
    from ..perceptron import SOLVERS
    from ..perceptron import solve as run_solver

    check_choice("--solver", solver, SOLVERS)
    if solver != "fbp" and k != 1:
        raise ConfigError(f"solver {solver} is for the perceptron (--k 1); committees need fbp")
    X, y, _ = _instance(n, alpha, seed, k, fully_connected, teacher, data)
    st = Store(store)
    run = st.create_run("perceptron-solve", {"solver": solver, "n": n, "alpha": alpha, "seed": seed, "k": k,
                                             "fully_connected": fully_connected, "teacher": teacher,
                                             "data": str(data) if data else None})
    announce(run)
    with st.running(run.id):
        res = run_solver(X, y, solver, K=k, tree=not fully_connected, seed=seed, progress=not quiet)
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

    check_choice("--method", method, METHODS)
    check_float("--damping", damping, 0, 1, high_open=True)
    X, y, _ = _instance(n, alpha, seed, k, fully_connected, teacher, data)
    n_w = patterns(X, y, K=k, tree=not fully_connected).n_weights
    if method == "exact" and n_w > EXACT_MAX_WEIGHTS:
        raise ConfigError(f"--method exact enumerates 2^{n_w} weight vectors; it needs at most {EXACT_MAX_WEIGHTS} "
                          "weights (use --method bp)")
    st = Store(store)
    run = st.create_run("perceptron-entropy", {"method": method, "n": n, "alpha": alpha, "seed": seed, "k": k,
                                               "fully_connected": fully_connected, "teacher": teacher,
                                               "data": str(data) if data else None, "damping": damping})
    announce(run)
    with st.running(run.id):
        s = compute_entropy(X, y, method=method, K=k, tree=not fully_connected, damping=damping)
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
    from ..perceptron import SOLVERS, binary_entropy, local_entropy, patterns
    from ..perceptron import solve as run_solver
    from ..perceptron.plots import plot_local_entropy

    dist = parse_list(distances, float, "--distances")
    for d in dist:
        check_float("every distance of --distances", d, 0, 0.5, low_open=True)
    check_choice("--method", method, METHODS)
    check_int("--n-gamma", n_gamma, 1)
    if not (reference in SOLVERS or reference == "teacher" or reference.endswith(".json")):
        raise ConfigError(f"--reference must be a solver ({', '.join(SOLVERS)}), 'teacher' or a weights .json file, "
                          f"got {reference!r}")
    if reference in SOLVERS and reference != "fbp" and k != 1:
        raise ConfigError(f"solver {reference} is for the perceptron (--k 1); committees need fbp")
    X, y, w_t = _instance(n, alpha, seed, k, fully_connected, teacher or reference == "teacher", data)
    n_w = patterns(X, y, K=k, tree=not fully_connected).n_weights
    if method == "exact" and n_w > EXACT_MAX_WEIGHTS:
        raise ConfigError(f"--method exact enumerates 2^{n_w} weight vectors; it needs at most {EXACT_MAX_WEIGHTS} "
                          "weights (use --method bp)")
    w = None
    if reference == "teacher":
        if w_t is None:
            raise ConfigError("reference 'teacher' needs a teacher instance (not --data)")
        w = w_t
    elif reference.endswith(".json"):
        w = _read_weights(Path(reference), n_w)
    st = Store(store)
    run = st.create_run("perceptron-local-entropy", {"reference": reference, "distances": dist, "method": method,
                                                     "n": n, "alpha": alpha, "seed": seed, "k": k, "n_gamma": n_gamma,
                                                     "fully_connected": fully_connected, "teacher": teacher})
    announce(run)
    with st.running(run.id):
        if w is None:
            res = run_solver(X, y, reference, K=k, tree=not fully_connected, seed=seed, progress=not quiet)
            if not res.solved:
                raise ConfigError(f"solver {reference} found no solution ({res.errors} errors); the local entropy "
                                  "of a solution needs a solution")
            w = res.w
        curve = local_entropy(X, y, w, dist, method=method, K=k, tree=not fully_connected, n_gamma=n_gamma,
                              progress=not quiet)
        atomic_write_text(run.folder / "curve.json", to_json(curve.to_dict()))
        plot_local_entropy({reference: curve}, run.folder / "local_entropy.png")
        st.put_result(run.id, "all_converged", curve.all_converged)
        st.put_result(run.id, "entropy", curve.entropy.tolist())
    typer.echo("d        S(d)       H2(d)")
    for d, s_, h in zip(curve.distances, curve.entropy, binary_entropy(curve.distances)):
        typer.echo(f"{d:<8.4f} {s_:<10.5f} {h:.5f}")
    typer.echo(f"run {run.id}: BP scan converged at {int(curve.scan_converged.sum())}/{len(curve.scan_converged)} "
               f"gammas; figure {run.folder / 'local_entropy.png'}")
