"""The `flatminima explore` commands, end to end on the Mueller-Brown surface."""

import json

import pytest
from typer.testing import CliRunner

from flatminima.commands.explore import app
from flatminima.errors import ConfigError
from flatminima.explore import Database, MullerBrown, basin_hopping
from flatminima.store import Store

runner = CliRunner()


def test_explore_cli_run_connect_graph_metrics_export(tmp_path):
    db = tmp_path / "mb.sqlite"
    r = runner.invoke(app, ["run", "--potential", "muller-brown", "--steps", "20", "--walkers", "3",
                            "--temperature", "40", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "3 minima" in r.output
    # resume: asking for more steps continues the stored search
    r = runner.invoke(app, ["run", "--potential", "muller-brown", "--steps", "25", "--walkers", "3",
                            "--temperature", "40", "--db", str(db)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["connect", "--db", str(db), "--images", "12"])
    assert r.exit_code == 0, r.output
    assert "3 of 3 minima connected" in r.output
    r = runner.invoke(app, ["metrics", "--db", str(db)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads(r.output) == m
    # minima A (-146.7) -TS- C (-80.8) -TS- B (-108.2): B has no lower neighbour, so two monotonic-sequence
    # basins (bottoms A and B)
    assert m["n_minima"] == 3 and m["n_ts"] == 2 and m["n_funnels"] == 2
    r = runner.invoke(app, ["graph", "--db", str(db)])
    assert r.exit_code == 0 and (tmp_path / "disconnectivity.png").stat().st_size > 1000
    r = runner.invoke(app, ["export", "--db", str(db), "--out", str(tmp_path / "ps")])
    assert r.exit_code == 0
    assert len((tmp_path / "ps" / "ts.data").read_text().splitlines()) == 2


def test_explore_run_in_the_store_is_the_library_search_and_ends_finished(tmp_path):
    args = {"steps": 15, "walkers": 2, "temperature": 40.0, "seed": 3}
    r = runner.invoke(app, ["run", "--potential", "muller-brown", "--store", str(tmp_path / "store"),
                            *[x for k, v in args.items() for x in (f"--{k}", str(v))]])
    assert r.exit_code == 0, r.output
    st = Store(tmp_path / "store")
    (run,) = st.runs("explore")
    assert run.status == "finished"
    assert {k: run.config[k] for k in args} == args and run.config["spec"] == {"kind": "muller-brown"}
    with Database(run.folder / "landscape.sqlite") as stored:
        energies = [m.energy for m in stored.minima()]
    ref = basin_hopping(MullerBrown(), steps=15, walkers=2, temperature=40.0, seed=3)
    assert energies == pytest.approx([m.energy for m in ref.minima()], abs=1e-9)


def test_explore_cli_bad_input_raises_config_error(tmp_path):
    r = runner.invoke(app, ["run", "--potential", "argon", "--db", str(tmp_path / "x.sqlite")])
    assert isinstance(r.exception, ConfigError)
    r = runner.invoke(app, ["run", "--potential", "lj7", "--store", str(tmp_path), "--hidden", "4,x"])
    assert isinstance(r.exception, ConfigError) and Store(tmp_path).runs() == []
    r = runner.invoke(app, ["metrics", "--db", str(tmp_path / "missing.sqlite")])
    assert isinstance(r.exception, ConfigError)
    with pytest.raises(ConfigError):
        from flatminima.explore.specs import parse_potential
        parse_potential("ljx")


def test_explore_run_with_the_multi_funnel_strategy_equals_the_library_call(tmp_path):
    # parallel tempering, reseeding and a target from the CLI: the same minima as basin_hopping itself
    from flatminima.explore import LennardJones

    args = {"walkers": 4, "temperature": 0.8, "max_temperature": 1.5, "reseed_after": 5, "target": -44.326801}
    r = runner.invoke(app, ["run", "--potential", "lj13", "--steps", "30", "--walkers", "4", "--temperature", "0.8",
                            "--max-temperature", "1.5", "--reseed-after", "5", "--target", "-44.326801",
                            "--seed", "2", "--db", str(tmp_path / "lj.sqlite"), "-q"])
    assert r.exit_code == 0, r.output
    with Database(tmp_path / "lj.sqlite") as db:
        got = [m.energy for m in db.minima()]
    ref = [m.energy for m in basin_hopping(LennardJones(13), steps=30, seed=2, **args).minima()]
    assert got == ref and got[0] == pytest.approx(-44.326801, abs=1e-6)


def test_explore_run_passes_check_index_to_the_library(tmp_path, monkeypatch):
    import flatminima.explore as explore

    seen = []

    def spy(*args, **kw):
        seen.append(kw["check_index"])
        return basin_hopping(*args, **kw)

    monkeypatch.setattr(explore, "basin_hopping", spy)
    for flag, db in ((["--check-index"], "on.sqlite"), ([], "off.sqlite")):
        r = runner.invoke(app, ["run", "--potential", "lj7", "--steps", "5", "--walkers", "2", "--seed", "1", *flag,
                                "--db", str(tmp_path / db), "-q"])
        assert r.exit_code == 0, r.output
    assert seen == [True, False]
    with Database(tmp_path / "on.sqlite", potential=explore.LennardJones(7)) as db:
        assert all(m.n_neg == 0 for m in db.hessian_summaries())  # what the check stored are minima


@pytest.mark.parametrize("bad", [["--max-temperature", "0.5"], ["--exchange-interval", "0"],
                                 ["--surface-moves", "1.5"], ["--reseed-after", "0"], ["--target", "nan"]])
def test_explore_run_rejects_a_bad_strategy_before_writing(tmp_path, bad):
    r = runner.invoke(app, ["run", "--potential", "lj13", "--temperature", "0.8", "--store", str(tmp_path / "s"), *bad])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)
    assert not (tmp_path / "s").exists()
