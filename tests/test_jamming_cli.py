"""The jamming CLI: commands run, write results and figures to the store, and sweeps resume."""

import json

import torch
from typer.testing import CliRunner

from flatminima.errors import ConfigError
from flatminima.jamming.cli import app
from flatminima.store import Store

torch.set_num_threads(1)  # tiny problems: threads only add overhead
runner = CliRunner()
SMALL = ["--P", "20", "--d", "4", "--seeds", "1", "--rtol", "0.5", "--max-iter", "400", "--polish", "100",
         "--polish-time", "5", "--quiet"]


def test_locate_writes_results_and_resumes(tmp_path):
    res = runner.invoke(app, ["locate", "--depth", "1", *SMALL, "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "P/N* =" in res.output
    store = Store(tmp_path)
    (run,) = store.runs("jamming-locate")
    lines = (run.folder / "runs.jsonl").read_text().splitlines()
    assert len(lines) >= 2
    assert (run.folder / "ndelta_depth1.png").exists()
    row = store.results(run.id)["depth1"]
    assert row["P"] == 20 and len(row["nstar"]) == 1
    # simulate an interruption after the first two runs: resume redoes only the missing ones
    (run.folder / "runs.jsonl").write_text(lines[0] + "\n{\"truncated")
    res = runner.invoke(app, ["locate", "--resume", run.id, "--quiet", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (run.folder / "runs.jsonl").read_text().splitlines() if x.startswith("{\"")
            and x.endswith("}")]
    assert len(recs) == len(lines)  # the one kept + the ones recomputed, nothing twice
    assert store.results(run.id)["depth1"]["nstar"] == row["nstar"]


def test_phase_diagram_and_stats(tmp_path):
    res = runner.invoke(app, ["phase-diagram", "--depths", "1,2", *SMALL, "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (run,) = Store(tmp_path).runs("jamming-phase-diagram")
    assert (run.folder / "phase_diagram.png").exists()
    res = runner.invoke(app, ["stats", "--P", "40", "--N", "25", "--d", "5", "--depth", "1", "--seeds", "1",
                              "--activation", "tanh", "--max-iter", "400", "--polish", "100", "--quiet", "--store",
                              str(tmp_path)])
    assert res.exit_code == 0, res.output
    (run,) = Store(tmp_path).runs("jamming-stats")
    assert (run.folder / "delta_histograms.png").exists() and (run.folder / "spectrum.png").exists()
    assert "spectrum" in Store(tmp_path).results(run.id)


def test_bad_input_is_a_config_error(tmp_path):
    res = runner.invoke(app, ["phase-diagram", "--depths", "2,x", "--store", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
