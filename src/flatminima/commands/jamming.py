"""``flatminima jamming locate | phase-diagram | stats``: N*, the phase diagram P/N* against depth, and the
statistics of stabilities at jamming.

Every command records a run in the store. Each minimisation of a sweep is committed to the store as it
finishes (a result of the run keyed ``minimisation/depth<D>/seed<S>/N<N>``), so ``--resume RUN_ID``
continues an interrupted sweep without redoing finished minimisations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ..jamming.minimize import METHODS
from ..jamming.transition import DATASETS
from ..models.mlp import ACTIVATIONS
from ..store import Run, Store
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
    resume_run,
)

app = make_app("The jamming transition of fully-connected networks (hinge loss).")

RECORD = "minimisation/"  # prefix of the result keys that hold one minimisation each
MAX_SPECTRUM_N = 20_000  # the dense Hessian of --spectrum holds N x N float64 numbers (3.2 GB at this N)
PolishOpt = typer.Option(2000, help="Second-order polish iterations of each minimisation (0: none).")
PolishTimeOpt = typer.Option(300.0, help="Wall-clock cap of each polish, in seconds.")


def _put_record(store: Store, run: Run, key: str, record: dict[str, Any]) -> None:
    store.put_result(run.id, RECORD + key, {k: v for k, v in record.items() if k not in ("delta", "theta")})


def _records(store: Store, run: Run) -> list[dict[str, Any]]:
    """The minimisations a run has committed so far."""
    return [v for k, v in store.results(run.id).items() if k.startswith(RECORD)]


def _sweep(store: Store, run: Run, cfg: dict[str, Any], depths: list[int], quiet: bool) -> list[dict[str, Any]]:
    """Bisection for N* at every depth, each minimisation committed as it finishes; one summary row per depth."""
    from tqdm.auto import tqdm

    from ..jamming.plots import plot_ndelta_curve
    from ..jamming.transition import locate_nstar

    done_list = _records(store, run)
    rows = []
    with tqdm(desc="jamming runs", unit="run", initial=len(done_list), disable=quiet) as bar:
        for depth in depths:
            done = {(r["seed"], r["N"]): r for r in done_list if r["depth"] == depth}

            def progress(rec: dict[str, Any]) -> None:
                _put_record(store, run, f"depth{rec['depth']}/seed{rec['seed']}/N{rec['N']}", rec)
                bar.update(1)
                bar.set_postfix(depth=rec["depth"], N=rec["N_actual"], n_delta=rec["n_delta"], cert=rec["certificate"])

            res = locate_nstar(
                cfg["P"], depth=depth, seeds=range(cfg["seeds"]), d=cfg["d"], activation=cfg["activation"],
                data=cfg["data"], rtol=cfg["rtol"], method=cfg["method"], max_iter=cfg["max_iter"],
                polish=cfg["polish"], polish_time=cfg["polish_time"], progress=progress, done=done,
            )
            row = {k: v for k, v in res.items() if k not in ("runs", "jammed_runs")}
            rows.append(row)
            store.put_result(run.id, f"depth{depth}", row)
            plot_ndelta_curve(res["runs"], run.folder / f"ndelta_depth{depth}.png",
                              title=f"P = {cfg['P']}, depth {depth}, {cfg['activation']}")
    return rows


def _check(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a jamming config (given on the command line or read back from a stored run)."""
    for key in ("P", "d", "seeds", "max_iter"):
        check_int(f"--{key.replace('_', '-')}", cfg[key], 1)
    for key in ("depth", "N"):
        if key in cfg:
            check_int(f"--{key}", cfg[key], 1)
    for depth in cfg.get("depths", ()):
        check_int("every depth of --depths", depth, 1)
    if "depths" in cfg and not cfg["depths"]:
        raise ConfigError("--depths is empty")
    check_choice("--activation", cfg["activation"], sorted(ACTIVATIONS))
    check_choice("--data", cfg["data"], DATASETS)
    check_choice("--method", cfg["method"], METHODS)
    check_int("--polish", cfg["polish"], 0)
    check_float("--polish-time", cfg["polish_time"], 0, low_open=True)
    if "rtol" in cfg:
        check_float("--rtol", cfg["rtol"], 0, 1, low_open=True, high_open=True)
    if cfg["data"] == "fashion-pca" and cfg["d"] > 784:
        raise ConfigError(f"--d must be <= 784 (the pixels of Fashion-MNIST) with --data fashion-pca, got {cfg['d']}")
    if cfg["P"] * cfg["d"] > MAX_PARAMS:
        raise ConfigError(f"P x d = {cfg['P'] * cfg['d']:.3g} input numbers, more than the {MAX_PARAMS:.0e} allowed")
    if cfg.get("N", 0) > MAX_PARAMS:
        raise ConfigError(f"--N must be <= {MAX_PARAMS:.0e}, got {cfg['N']}")
    if cfg.get("spectrum") and cfg["N"] > MAX_SPECTRUM_N:
        raise ConfigError(f"--spectrum needs the dense N x N Hessian: N must be <= {MAX_SPECTRUM_N}, got {cfg['N']} "
                          "(use --no-spectrum)")
    return cfg


def _sweep_run(store_path: Path | None, kind: str, cfg: dict[str, Any], resume: str | None) -> tuple[Store, Run]:
    """A new run of ``kind`` with config ``cfg``, or the run ``resume`` (with its own config), once the
    config has passed :func:`_check`: nothing is written before."""
    if resume is None:
        _check(cfg)
        store = Store(store_path)
        return store, store.create_run(kind, cfg)
    store = Store(store_path, create=False)
    run = resume_run(store, resume, kind)
    try:
        _check(dict(run.config))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"the stored config of run {run.id} is incomplete or malformed ({exc})") from None
    return store, run


@app.command()
def locate(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    depth: int = typer.Option(3, help="Number of hidden layers."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help=f"{', '.join(sorted(ACTIVATIONS))}."),
    data: str = typer.Option("random", help="random (Gaussian, random labels) or fashion-pca (d PCA components)."),
    seeds: int = typer.Option(3, help="Number of seeds (data and initialisation)."),
    rtol: float = typer.Option(0.05, help="Relative width of the final bracket on N*."),
    method: str = typer.Option("fast", help=f"Minimiser: {', '.join(METHODS)}."),
    max_iter: int = typer.Option(100_000, help="Iteration budget of each minimisation."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    resume: str | None = typer.Option(None, help="Resume the locate run with this id."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find N* (bisection over N, per seed) for P patterns at one depth; plot N_Delta/N against P/N."""
    cfg = {"P": P, "depth": depth, "d": d, "activation": activation, "data": data, "seeds": seeds, "rtol": rtol,
           "method": method, "max_iter": max_iter, "polish": polish, "polish_time": polish_time}
    st, run = _sweep_run(store, "jamming-locate", cfg, resume)
    announce(run)
    with st.running(run.id):
        (r,) = _sweep(st, run, run.config, [run.config["depth"]], quiet)
    typer.echo(f"run {run.id}: N* = {r['nstar_mean']:.1f} +- {r['nstar_std']:.1f} (seeds {r['nstar']}), "
               f"P/N* = {r['P_over_nstar_mean']:.3f} +- {r['P_over_nstar_std']:.3f}; figures in {run.folder}")


@app.command("phase-diagram")
def phase_diagram(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    depths: str = typer.Option("2,3,5", help="Comma-separated depths."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help=f"{', '.join(sorted(ACTIVATIONS))}."),
    data: str = typer.Option("random", help="random or fashion-pca."),
    seeds: int = typer.Option(3, help="Number of seeds."),
    rtol: float = typer.Option(0.05, help="Relative width of the final bracket on N*."),
    method: str = typer.Option("fast", help="Minimiser."),
    max_iter: int = typer.Option(100_000, help="Iteration budget of each minimisation."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    resume: str | None = typer.Option(None, help="Resume the phase-diagram run with this id."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """P/N* against depth (checkpointed sweep; figure phase_diagram.png in the run folder)."""
    from ..jamming.plots import plot_phase_diagram

    cfg = {"P": P, "depths": parse_list(depths, int, "--depths"), "d": d, "activation": activation, "data": data,
           "seeds": seeds, "rtol": rtol, "method": method, "max_iter": max_iter, "polish": polish,
           "polish_time": polish_time}
    st, run = _sweep_run(store, "jamming-phase-diagram", cfg, resume)
    announce(run)
    with st.running(run.id):
        rows = _sweep(st, run, run.config, run.config["depths"], quiet)
        plot_phase_diagram(rows, run.folder / "phase_diagram.png")
        st.put_result(run.id, "phase_diagram", rows)
    typer.echo(f"run {run.id} (figures in {run.folder})")
    for r in rows:
        typer.echo(f"depth {r['depth']}: P/N* = {r['P_over_nstar_mean']:.3f} +- {r['P_over_nstar_std']:.3f}")


@app.command()
def stats(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    N: int = typer.Option(..., "--N", "-N", help="Parameter count (weights), just below N* for jamming."),
    depth: int = typer.Option(3, help="Number of hidden layers."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help=f"{', '.join(sorted(ACTIVATIONS))}."),
    data: str = typer.Option("random", help="random or fashion-pca."),
    seeds: int = typer.Option(3, help="Number of seeds, pooled for the fits."),
    method: str = typer.Option("fast", help="Minimiser."),
    max_iter: int = typer.Option(100_000, help="Iteration budget."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    spectrum: bool = typer.Option(True, "--spectrum/--no-spectrum",
                                  help="Dense Hessian spectrum (H, H0, Hp) of the first seed."),
    store: Path | None = StoreOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Stabilities at a (jammed) minimum: histograms, power-law fits of theta and gamma, Hessian spectrum."""
    import torch
    from tqdm.auto import tqdm

    from ..jamming.plots import plot_histograms, plot_spectrum
    from ..jamming.spectrum import spectrum_at
    from ..jamming.stats import delta_histograms, jamming_exponents
    from ..jamming.transition import RunConfig, jamming_run, make_problem

    cfg = {"P": P, "N": N, "depth": depth, "d": d, "activation": activation, "data": data, "seeds": seeds,
           "method": method, "max_iter": max_iter, "polish": polish, "polish_time": polish_time, "spectrum": spectrum}
    st, run = _sweep_run(store, "jamming-stats", cfg, None)
    announce(run)
    with st.running(run.id):
        recs = []
        for seed in tqdm(range(seeds), desc="minimisations", disable=quiet):
            rc = RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=seed, data=data, method=method,
                           max_iter=max_iter, polish=polish, polish_time=polish_time)
            recs.append(jamming_run(rc, keep_delta=True, keep_theta=spectrum and seed == 0))
            _put_record(st, run, f"seed{seed}", recs[-1])
        deltas = [r["delta"] for r in recs]
        fits = jamming_exponents(deltas)
        plot_histograms(delta_histograms(deltas), run.folder / "delta_histograms.png", fits)
        st.put_result(run.id, "exponents", fits)
        if spectrum:
            problem, _ = make_problem(RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=0, data=data))
            spec = spectrum_at(problem, torch.tensor(recs[0]["theta"], dtype=problem.dtype))
            st.put_result(run.id, "spectrum", spec)
            plot_spectrum(spec, run.folder / "spectrum.png")
    typer.echo(f"run {run.id}: N_Delta/N = {[round(r['n_delta_over_N'], 3) for r in recs]}, certificates "
               f"{[r['certificate'] for r in recs]}")
    for name, f in fits.items():
        typer.echo(f"{name} = {f['value']:.3f}  95% CI [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]  (n = {f['n']})")
    typer.echo(f"figures in {run.folder}")
