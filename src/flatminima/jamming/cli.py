"""``flatminima jamming ...``: locate N*, statistics at jamming, and the phase diagram P/N* against depth.

Every command records a run in the store (``$FLATMINIMA_HOME`` or ``./flatminima-runs``). Sweeps are
checkpointed run by run in ``runs.jsonl`` of the run folder: ``--resume RUN_ID`` continues an interrupted
sweep without redoing finished minimisations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import ConfigError

app = typer.Typer(help="The jamming transition of fully-connected networks (hinge loss).", no_args_is_help=True)

StoreOpt = typer.Option(None, "--store", help="Run store folder (default: $FLATMINIMA_HOME or ./flatminima-runs).")


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what} is empty")
    return out


def _open_run(store_path: Optional[Path], kind: str, config: dict[str, Any], resume: Optional[str]):
    from ..store import Store

    store = Store(store_path)
    if resume:
        run = store.get(resume)
        if run.kind != kind:
            raise ConfigError(f"run {resume} is a {run.kind!r} run, not {kind!r}")
        return store, run, dict(run.config)
    return store, store.create_run(kind, config), config


def _load_done(folder: Path) -> list[dict[str, Any]]:
    """Finished run records of a checkpointed sweep (a truncated last line, from a kill, is ignored)."""
    path = folder / "runs.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _append(folder: Path, record: dict[str, Any]) -> None:
    from ..store import to_json

    path = folder / "runs.jsonl"
    # a killed writer can leave a partial last line: start on a fresh line so the record stays readable
    sep = ""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            sep = "" if fh.read(1) == b"\n" else "\n"
    with open(path, "a") as fh:
        fh.write(sep + to_json(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _sweep(store, run, cfg: dict[str, Any], depths: list[int], quiet: bool) -> list[dict[str, Any]]:
    """Bisection for N* at every depth (checkpointed); returns one summary row per depth."""
    from tqdm.auto import tqdm

    from .plots import plot_ndelta_curve
    from .transition import locate_nstar

    done_list = _load_done(run.folder)
    rows = []
    bar = tqdm(desc="jamming runs", unit="run", initial=len(done_list), disable=quiet)
    try:
        for depth in depths:
            done = {(r["seed"], r["N"]): r for r in done_list if r["depth"] == depth and r["P"] == cfg["P"]}

            def progress(rec: dict[str, Any]) -> None:
                _append(run.folder, rec)
                bar.update(1)
                bar.set_postfix(depth=rec["depth"], N=rec["N_actual"], n_delta=rec["n_delta"], cert=rec["certificate"])

            res = locate_nstar(
                cfg["P"], depth=depth, seeds=range(cfg["seeds"]), d=cfg["d"], activation=cfg["activation"],
                data=cfg["data"], rtol=cfg["rtol"], method=cfg["method"], max_iter=cfg["max_iter"],
                polish=cfg.get("polish", 2000), polish_time=cfg.get("polish_time", 300.0),
                progress=progress, done=done,
            )
            row = {k: v for k, v in res.items() if k not in ("runs", "jammed_runs")}
            rows.append(row)
            store.put_result(run.id, f"depth{depth}", row)
            plot_ndelta_curve(res["runs"], run.folder / f"ndelta_depth{depth}.png",
                              title=f"P = {cfg['P']}, depth {depth}, {cfg['activation']}")
    finally:
        bar.close()
    return rows


def _common_config(P, d, activation, data, seeds, rtol, method, max_iter, polish, polish_time) -> dict[str, Any]:
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if polish < 0 or (polish_time is not None and polish_time <= 0):
        raise ConfigError(f"--polish must be >= 0 and --polish-time > 0, got {polish}, {polish_time}")
    return {"P": P, "d": d, "activation": activation, "data": data, "seeds": seeds, "rtol": rtol,
            "method": method, "max_iter": max_iter, "polish": polish, "polish_time": polish_time}


PolishOpt = typer.Option(2000, help="Second-order polish iterations of each minimisation (0: none).")
PolishTimeOpt = typer.Option(300.0, help="Wall-clock cap of each polish, in seconds.")


@app.command()
def locate(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    depth: int = typer.Option(3, help="Number of hidden layers."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help="relu, softplus, tanh, erf."),
    data: str = typer.Option("random", help="random (Gaussian, random labels) or fashion-pca (d PCA components)."),
    seeds: int = typer.Option(3, help="Number of seeds (data and initialisation)."),
    rtol: float = typer.Option(0.05, help="Relative width of the final bracket on N*."),
    method: str = typer.Option("fast", help="Minimiser: fast, lbfgs, lm, fire, newton-cg, adam."),
    max_iter: int = typer.Option(100_000, help="Iteration budget of each minimisation."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    resume: Optional[str] = typer.Option(None, help="Resume the locate run with this id."),
    store: Optional[Path] = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Find N* (bisection over N, per seed) for P patterns at one depth; plot N_Delta/N against P/N."""
    cfg = {**_common_config(P, d, activation, data, seeds, rtol, method, max_iter, polish, polish_time),
           "depth": depth}
    st, run, cfg = _open_run(store, "jamming-locate", cfg, resume)
    rows = _sweep(st, run, cfg, [cfg["depth"]], quiet)
    st.set_status(run.id, "done")
    r = rows[0]
    typer.echo(f"run {run.id}: N* = {r['nstar_mean']:.1f} +- {r['nstar_std']:.1f} (seeds {r['nstar']}), "
               f"P/N* = {r['P_over_nstar_mean']:.3f} +- {r['P_over_nstar_std']:.3f}; figures in {run.folder}")


@app.command("phase-diagram")
def phase_diagram(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    depths: str = typer.Option("2,3,5", help="Comma-separated depths."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help="relu, softplus, tanh, erf."),
    data: str = typer.Option("random", help="random or fashion-pca."),
    seeds: int = typer.Option(3, help="Number of seeds."),
    rtol: float = typer.Option(0.05, help="Relative width of the final bracket on N*."),
    method: str = typer.Option("fast", help="Minimiser."),
    max_iter: int = typer.Option(100_000, help="Iteration budget of each minimisation."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    resume: Optional[str] = typer.Option(None, help="Resume the phase-diagram run with this id."),
    store: Optional[Path] = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """P/N* against depth (checkpointed sweep; figure phase_diagram.png in the run folder)."""
    from .plots import plot_phase_diagram

    cfg = {**_common_config(P, d, activation, data, seeds, rtol, method, max_iter, polish, polish_time),
           "depths": _ints(depths, "--depths")}
    st, run, cfg = _open_run(store, "jamming-phase-diagram", cfg, resume)
    rows = _sweep(st, run, cfg, cfg["depths"], quiet)
    plot_phase_diagram(rows, run.folder / "phase_diagram.png")
    st.put_result(run.id, "phase_diagram", rows)
    st.set_status(run.id, "done")
    typer.echo(f"run {run.id} (figures in {run.folder})")
    for r in rows:
        typer.echo(f"depth {r['depth']}: P/N* = {r['P_over_nstar_mean']:.3f} +- {r['P_over_nstar_std']:.3f}")


@app.command()
def stats(
    P: int = typer.Option(300, "--P", "-P", help="Number of patterns."),
    N: int = typer.Option(..., "--N", "-N", help="Parameter count (weights), just below N* for jamming."),
    depth: int = typer.Option(3, help="Number of hidden layers."),
    d: int = typer.Option(30, help="Input dimension."),
    activation: str = typer.Option("relu", help="relu, softplus, tanh, erf."),
    data: str = typer.Option("random", help="random or fashion-pca."),
    seeds: int = typer.Option(3, help="Number of seeds, pooled for the fits."),
    method: str = typer.Option("fast", help="Minimiser."),
    max_iter: int = typer.Option(100_000, help="Iteration budget."),
    polish: int = PolishOpt,
    polish_time: float = PolishTimeOpt,
    spectrum: bool = typer.Option(True, help="Dense Hessian spectrum (H, H0, Hp) of the first seed."),
    store: Optional[Path] = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stabilities at a (jammed) minimum: histograms, power-law fits of theta and gamma, Hessian spectrum."""
    from tqdm.auto import tqdm

    from ..store import Store
    from .plots import plot_histograms, plot_spectrum
    from .stats import delta_histograms, jamming_exponents
    from .transition import RunConfig, jamming_run, make_problem

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    st = Store(store)
    cfg = {"P": P, "N": N, "depth": depth, "d": d, "activation": activation, "data": data, "seeds": seeds,
           "method": method, "max_iter": max_iter, "polish": polish, "polish_time": polish_time}
    run = st.create_run("jamming-stats", cfg)
    recs = []
    for seed in tqdm(range(seeds), desc="minimisations", disable=quiet):
        rc = RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=seed, data=data, method=method,
                       max_iter=max_iter, polish=polish, polish_time=polish_time)
        rec = jamming_run(rc, keep_delta=True, keep_theta=spectrum and seed == 0)
        recs.append(rec)
        _append(run.folder, {k: v for k, v in rec.items() if k != "theta"})
    deltas = [r["delta"] for r in recs]
    fits = jamming_exponents(deltas)
    hist = delta_histograms(deltas)
    plot_histograms(hist, run.folder / "delta_histograms.png", fits)
    st.put_result(run.id, "exponents", fits)
    st.put_result(run.id, "runs", [{k: v for k, v in r.items() if k not in ("delta", "theta")} for r in recs])
    typer.echo(f"run {run.id}: N_Delta/N = {[round(r['n_delta_over_N'], 3) for r in recs]}, certificates "
               f"{[r['certificate'] for r in recs]}")
    for name, f in fits.items():
        typer.echo(f"{name} = {f['value']:.3f}  95% CI [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]  (n = {f['n']})")
    if spectrum:
        import torch

        from .spectrum import spectrum_at

        problem, _ = make_problem(RunConfig(P=P, N=N, depth=depth, d=d, activation=activation, seed=0, data=data))
        spec = spectrum_at(problem, torch.tensor(recs[0]["theta"], dtype=problem.dtype))
        st.put_result(run.id, "spectrum", spec)
        plot_spectrum(spec, run.folder / "spectrum.png")
    st.set_status(run.id, "done")
    typer.echo(f"figures in {run.folder}")
