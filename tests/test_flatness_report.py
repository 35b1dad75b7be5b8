"""flatminima.measures.flatness against exact oracles (a dense Hessian), and ``--build`` user modules."""

from __future__ import annotations

import json
import sys
import textwrap

import matplotlib
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatminima import Landscape
from flatminima.commands.build import load_build
from flatminima.errors import ConfigError
from flatminima.measures import flatness, flatness_of, hessian, local_energy

matplotlib.use("Agg")
F64 = torch.float64


def _problem():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(120, 5, generator=g, dtype=F64), torch.randint(0, 3, (120,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model, X, y


def test_flatness_report_matches_the_dense_hessian():
    model, X, y = _problem()
    report = flatness(model, DataLoader(TensorDataset(X, y), batch_size=32), k=3, tol=1e-6, trace_rtol=0.01,
                      density_probes=3, density_steps=30, sigmas=(0.05, 0.2), n_samples=20, seed=1)
    H = hessian.dense(Landscape(model, (X, y)))
    ev = torch.linalg.eigvalsh(H).flip(0)
    assert torch.allclose(report.top.values, ev[:3], rtol=1e-5, atol=0)
    assert bool((report.top.errors <= 1e-6 * report.top.values.abs()).all())
    exact = float(torch.trace(H))
    assert report.trace.stderr <= 0.01 * abs(report.trace.value)
    assert abs(report.trace.value - exact) < 4 * report.trace.stderr + 1e-9
    # the density's mean eigenvalue is a trace estimate of its own (3 probes)
    mean, se = report.density.moments((1,))[1]
    assert abs(mean * H.shape[0] - exact) < 5 * se * H.shape[0]
    le = local_energy.local_energy(Landscape(model, (X, y)), sigmas=(0.05, 0.2), n_samples=20, measure="loss", seed=1)
    assert report.local_energy.delta == pytest.approx(le.delta, rel=1e-10)
    assert report.n_examples == 120 and report.hvps > report.top.matvecs
    d = json.loads(json.dumps(report.to_dict()))
    assert d["top"]["values"] == pytest.approx(report.top.values.tolist()) and d["settings"]["k"] == 3
    fig = report.plot()
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_flatness_of_a_landscape_and_bad_options():
    model, X, y = _problem()
    land = Landscape(model, (X, y))
    report = flatness_of(land, k=1, n_samples=4, density_steps=5, density_probes=1)
    assert report.top.values.shape == (1,) and report.top.vectors is None
    with pytest.raises(ConfigError):
        flatness_of(land, k=0)
    with pytest.raises(ConfigError):
        flatness_of(land, trace_rtol=0)
    with pytest.raises(ConfigError):
        flatness_of(land, trace_matvecs=1)
    capped = flatness_of(land, k=1, trace_rtol=1e-12, trace_matvecs=6, batch=2, n_samples=4, density_steps=5,
                         density_probes=1)  # a standard error of 1e-12 is out of reach: the cap stops it
    assert capped.trace.matvecs == 6 and capped.trace.stderr > 1e-12 * abs(capped.trace.value)


def _write_module(folder, name, body):
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def test_load_build_imports_a_user_module(tmp_path, monkeypatch):
    _write_module(tmp_path, "user_net_ok", """
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def build():
            X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
            return torch.nn.Linear(4, 2), DataLoader(TensorDataset(X, y), batch_size=16), torch.nn.CrossEntropyLoss()

        def not_a_triple():
            return torch.nn.Linear(4, 2)

        def bad_loader():
            return torch.nn.Linear(4, 2), iter([]), "mse"

        def bad_loss():
            return torch.nn.Linear(4, 2), [], "hinge"

        def boom():
            raise RuntimeError("no checkpoint here")

        NOT_CALLABLE = 3
    """)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_net_ok", raising=False)
    model, loader, loss = load_build("user_net_ok:build")
    report = flatness(model, loader, loss, k=1, n_samples=4, density_steps=5, density_probes=1)
    assert report.n_examples == 40 and report.settings["loss"] == "CrossEntropyLoss"
    for spec, match in [("user_net_ok", "package.module:function"), ("user_net_ok:", "package.module:function"),
                        ("no_such_module_xyz:build", "no module named"), ("user_net_ok:missing", "no function"),
                        ("user_net_ok:NOT_CALLABLE", "not a function"), ("user_net_ok:not_a_triple", "must return"),
                        ("user_net_ok:bad_loader", "one-shot"), ("user_net_ok:bad_loss", "unknown loss"),
                        ("user_net_ok:boom", "RuntimeError: no checkpoint here")]:
        with pytest.raises(ConfigError, match=match):
            load_build(spec)


def test_load_build_reports_a_broken_import(tmp_path, monkeypatch):
    _write_module(tmp_path, "user_net_broken", "import not_installed_package_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="importing 'user_net_broken' failed"):
        load_build("user_net_broken:build")
