"""``flatminima measure RUN ...`` on a tiny stored run: results in the store, figures in the run folder."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from flatminima.errors import ConfigError, RunNotFoundError
from flatminima.experiment import TrainConfig, train_run
from flatminima.cli import app as cli_app
from flatminima.measures.runs import measure_run
from flatminima.store import Store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    cfg = TrainConfig(data="digits", model="mlp:8", optimizer="sgd", lr=0.1, epochs=2, batch_size=64,
                      scheduler=None, train_subset=300)
    run, _ = train_run(cfg, store=store, progress=False)
    return store, run


def test_measure_command_stores_results_and_figures(stored_run):
    store, run = stored_run
    res = CliRunner().invoke(cli_app, ["measure", run.id, "--hessian", "--local-energy", "--slices", "--examples", "200",
                                    "--samples", "8", "--k", "2", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert "top eigenvalues" in res.output and "local energy" in res.output
    results = store.results(run.id)
    assert len(results["hessian"]["top"]["values"]) == 2
    assert results["hessian"]["top"]["values"][0] >= results["hessian"]["top"]["values"][1]
    assert len(results["local_energy"]["delta"]) == 5
    for f in ("measure_spectrum.png", "measure_local_energy.png", "measure_slice_1d.png", "measure_slice_2d.png"):
        assert (run.folder / f).stat().st_size > 0


def test_measure_run_validates_input(stored_run):
    store, run = stored_run
    with pytest.raises(ConfigError):
        measure_run(run.id, hessian_=False, local_energy_=False, store=store)
    with pytest.raises(ConfigError):
        measure_run(run.id, examples=0, store=store)
    with pytest.raises(RunNotFoundError):
        measure_run("no-such-run", store=store)
