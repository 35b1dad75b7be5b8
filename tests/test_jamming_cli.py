"""The jamming CLI: commands run, commit every minimisation to the store, and sweeps resume from it."""

import torch
from typer.testing import CliRunner

from flatminima.commands.jamming import app
from flatminima.errors import ConfigError
from flatminima.jamming import locate_nstar, transition
from flatminima.store import Store

torch.set_num_threads(1)  # tiny problems: threads only add overhead
runner = CliRunner()
SMALL = ["--P", "20", "--d", "4", "--seeds", "1", "--rtol", "0.5", "--max-iter", "400", "--polish", "100",
         "--polish-time", "5", "--quiet"]
SMALL_KW = dict(depth=1, seeds=range(1), d=4, activation="relu", data="random", rtol=0.5, method="fast",
                max_iter=400, polish=100, polish_time=5.0)


class Killed(Exception):
    """Stands for a kill in the middle of a sweep."""


def minimisations(store, run):
    return {k: v for k, v in store.results(run.id).items() if k.startswith("minimisation/")}


def test_locate_stores_the_library_result_and_resumes_an_interrupted_sweep(tmp_path, monkeypatch):
    expected = locate_nstar(20, **SMALL_KW)
    real, calls = transition.jamming_run, []

    def interrupted_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise Killed
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(transition, "jamming_run", interrupted_after_two)
    res = runner.invoke(app, ["locate", "--depth", "1", *SMALL, "--store", str(tmp_path)])
    assert isinstance(res.exception, Killed)
    store = Store(tmp_path)
    (run,) = store.runs("jamming-locate")
    assert run.status == "interrupted" and len(minimisations(store, run)) == 2

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(transition, "jamming_run", counted)
    res = runner.invoke(app, ["locate", "--resume", run.id, "--quiet", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert len(calls) == len(expected["runs"])  # the two committed minimisations are not redone
    done = minimisations(store, run)
    assert len(done) == len(expected["runs"])
    assert sorted(r["N_actual"] for r in done.values()) == sorted(r["N_actual"] for r in expected["runs"])
    row = store.results(run.id)["depth1"]
    assert row["nstar"] == expected["nstar"] and row["bracket"] == expected["bracket"]
    assert f"N* = {expected['nstar_mean']:.1f}" in res.output
    assert store.get(run.id).status == "finished" and (run.folder / "ndelta_depth1.png").exists()
    assert not (run.folder / "runs.jsonl").exists()


def test_phase_diagram_and_stats(tmp_path):
    res = runner.invoke(app, ["phase-diagram", "--depths", "1,2", *SMALL, "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    store = Store(tmp_path)
    (run,) = store.runs("jamming-phase-diagram")
    assert run.status == "finished" and run.config["depths"] == [1, 2]
    rows = store.results(run.id)["phase_diagram"]
    assert [r["depth"] for r in rows] == [1, 2]
    assert rows[0]["nstar"] == locate_nstar(20, **SMALL_KW)["nstar"]
    assert (run.folder / "phase_diagram.png").exists()

    res = runner.invoke(app, ["stats", "--P", "40", "--N", "25", "--d", "5", "--depth", "1", "--seeds", "1",
                              "--activation", "tanh", "--max-iter", "400", "--polish", "100", "--quiet", "--store",
                              str(tmp_path)])
    assert res.exit_code == 0, res.output
    (run,) = store.runs("jamming-stats")
    assert run.status == "finished"
    results = store.results(run.id)
    rec = results["minimisation/seed0"]
    assert (rec["P"], rec["N"]) == (40, 25) and "delta" not in rec and "theta" not in rec
    assert f"N_Delta/N = {[round(rec['n_delta_over_N'], 3)]}" in res.output
    assert set(results["exponents"]) <= {"theta", "gamma"} and "spectrum" in results
    assert (run.folder / "delta_histograms.png").exists() and (run.folder / "spectrum.png").exists()


def test_bad_input_is_a_config_error_and_leaves_no_run(tmp_path):
    for args in (["phase-diagram", "--depths", "2,x"], ["locate", "--seeds", "0"], ["stats", "--N", "10", "--polish", "-1"]):
        res = runner.invoke(app, [*args, "--store", str(tmp_path)])
        assert isinstance(res.exception, ConfigError), args
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty store
    locate_run = Store(tmp_path).create_run("explore", {})
    res = runner.invoke(app, ["locate", "--resume", locate_run.id, "--store", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    assert Store(tmp_path).get(locate_run.id).status == "running"  # its own status, untouched
