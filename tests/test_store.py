import sqlite3

import pytest

from flatminima.errors import ConfigError, RunNotFoundError
from flatminima.store import Store, atomic_write_text


def test_runs_metrics_results(tmp_path):
    st = Store(tmp_path)
    r = st.create_run("train", {"lr": 0.1, "model": "mlp:8"}, name="x", run_id="abc123")
    assert (r.folder / "config.json").exists()
    assert st.get("abc").id == "abc123"  # unique prefix
    st.log_metrics(r.id, 1, {"loss": 2.0, "err": 0.5})
    st.log_metrics(r.id, 2, {"loss": 1.0})
    st.log_metrics(r.id, 2, {"loss": 0.9})  # a resumed run re-logs a step: overwritten, not duplicated
    assert st.metrics(r.id, "loss") == [(1, "loss", 2.0), (2, "loss", 0.9)]
    st.drop_metrics_after(r.id, 1)
    assert [s for s, _, _ in st.metrics(r.id)] == [1, 1]
    st.put_result(r.id, "spectrum", [1.0, 2.0])
    assert st.results(r.id) == {"spectrum": [1.0, 2.0]}
    st.set_status(r.id, "finished")
    assert [x.status for x in st.runs("train")] == ["finished"]


def test_unknown_and_ambiguous_runs(tmp_path):
    st = Store(tmp_path)
    st.create_run("train", {}, run_id="aa1")
    st.create_run("train", {}, run_id="aa2")
    with pytest.raises(RunNotFoundError):
        st.get("zz")
    with pytest.raises(ConfigError, match="ambiguous"):
        st.get("aa")


def test_study_points_resume(tmp_path):
    st = Store(tmp_path)
    st.put_point("s", "default", "k1", {"seed": 0}, {"err": 0.1}, 1.5)
    assert st.get_point("s", "default", "k1") == {"err": 0.1}
    assert st.get_point("s", "paper", "k1") is None
    assert st.count_points("s", "default", ["k1", "k2"]) == 1
    assert st.points("s", "default") == [({"seed": 0}, {"err": 0.1})]


def test_index_is_plain_sqlite(tmp_path):
    st = Store(tmp_path)
    st.create_run("train", {"a": 1}, run_id="r1")
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("SELECT id, kind FROM runs").fetchall() == [("r1", "train")]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    assert (tmp_path / "a" / "f.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]
