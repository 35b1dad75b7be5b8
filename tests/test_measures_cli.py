"""``flatminima measure RUN ...`` on a tiny stored run: the stored numbers are the library's on that run."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from typer.testing import CliRunner

from flatminima import Landscape
from flatminima.cli import app as cli_app
from flatminima.commands.measure import measure_run
from flatminima.commands.train import load_run, train_run
from flatminima.errors import ConfigError, RunNotFoundError
from flatminima.measures import hessian, local_energy
from flatminima.store import Store
from flatminima.train import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    cfg = TrainConfig(data="digits", model="mlp:8", optimizer="sgd", lr=0.1, epochs=2, batch_size=64,
                      scheduler=None, train_subset=300)
    run, _ = train_run(store, cfg, progress=False)
    return store, run


def test_measure_command_stores_the_library_numbers_and_figures(stored_run):
    store, run = stored_run
    res = CliRunner().invoke(cli_app, ["measure", run.id, "--hessian", "--local-energy", "--slices", "--examples",
                                       "200", "--samples", "8", "--k", "2", "--seed", "1", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    results = store.results(run.id)
    model, ds, _ = load_run(store, run.id)
    land = Landscape(model, (ds.X_train[:200], ds.y_train[:200]))
    top = hessian.top_eigenvalues(land, land.theta, k=2, tol=1e-4, return_vectors=False)
    assert results["hessian"]["top"]["values"] == pytest.approx(top.values.tolist(), rel=1e-6)
    assert results["hessian"]["examples"] == 200 and results["hessian"]["n_params"] == land.n_params
    tr = hessian.trace(land, land.theta, matvecs=99, method="hutch++", seed=1)
    assert results["hessian"]["trace"]["value"] == pytest.approx(tr.value, rel=1e-6)
    le = local_energy.local_energy(land, land.theta, sigmas=(0.05, 0.1, 0.2, 0.3, 0.5), n_samples=8, seed=1)
    assert results["local_energy"]["delta"] == pytest.approx(le.delta.tolist(), abs=1e-9)
    assert f"top eigenvalues: {', '.join(f'{v:.5g}' for v in top.values.tolist())}" in res.output
    assert len(results["slices"]["slice_1d"]["alphas"]) == 41
    for f in ("measure_spectrum.png", "measure_local_energy.png", "measure_slice_1d.png", "measure_slice_2d.png"):
        assert (run.folder / f).stat().st_size > 0


def test_measure_run_validates_input(stored_run):
    store, run = stored_run
    with pytest.raises(ConfigError):
        measure_run(store, run.id, [])
    with pytest.raises(ConfigError):
        measure_run(store, run.id, ["curvature"])
    with pytest.raises(ConfigError):
        measure_run(store, run.id, examples=0)
    with pytest.raises(RunNotFoundError):
        measure_run(store, "no-such-run")
    for bad in ({"k": 0}, {"samples": -1}, {"beta": float("nan")}, {"sigmas": ()}, {"sigmas": (0.1, -0.1)},
                {"dtype": "float16"}, {"device": "tpu"}, {"seed": -1}):
        with pytest.raises(ConfigError):
            measure_run(store, run.id, ["hessian"], **bad)
    res = CliRunner().invoke(cli_app, ["measure", run.id, "--store", str(store.root)])
    assert isinstance(res.exception, ConfigError)


def test_a_copied_store_is_measured_from_anywhere_and_the_original_is_untouched(stored_run, tmp_path, monkeypatch):
    store, run = stored_run
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)

    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    before = digest(store.root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(cli_app, ["measure", run.id, "--local-energy", "--examples", "100", "--samples", "4",
                                       "--store", str(copy)])
    assert res.exit_code == 0, res.output
    assert "local_energy" in Store(copy, create=False).results(run.id)
    assert (copy / "runs" / run.id / "measure_local_energy.png").is_file()
    assert digest(store.root) == before and not list(elsewhere.iterdir())


USER_MODULE = '''
import torch
from torch.utils.data import DataLoader, TensorDataset


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    X = torch.randn(96, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (96,))
    return model, DataLoader(TensorDataset(X, y), batch_size=32), "cross_entropy"
'''


def test_measure_build_reports_a_model_defined_outside_the_package(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "store"
    r = CliRunner().invoke(cli_app, ["measure", "--build", "usernet:build", "--k", "2", "--samples", "16",
                                     "--store", str(home)])
    assert r.exit_code == 0, r.output
    store = Store(home, create=False)
    (run,) = store.runs()
    assert run.status == "finished" and run.config["build"] == "usernet:build"
    stored = store.results(run.id)["flatness"]
    assert (run.folder / "flatness.png").stat().st_size > 1000
    # the stored top eigenvalues are the dense Hessian's of the same model and data
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        model, loader, _ = importlib.import_module("usernet").build()
    finally:
        sys.path.remove(str(tmp_path))
    X = torch.cat([x for x, _ in loader])
    y = torch.cat([t for _, t in loader])
    land = Landscape(model, (X, y))
    dense = torch.linalg.eigvalsh(land.dense_hessian(land.theta)).flip(0)[:2]
    assert stored["top"]["values"] == pytest.approx(dense.tolist(), rel=1e-3)


@pytest.mark.parametrize("argv", [["measure"], ["measure", "some-run", "--build", "usernet:build"],
                                  ["measure", "--build", "nomodule_here:build"], ["measure", "--build", "no-colon"]])
def test_measure_needs_exactly_one_model_source(tmp_path, argv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli_app, [*argv, "--store", str(tmp_path / "s")])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)
    assert not (tmp_path / "s").exists()
