"""The run store: runs, metrics, results, study points; a store that moves, notices damage, shows killed runs."""

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from flatminima.errors import ConfigError, RunNotFoundError, StoreCorruptError, StoreError, StoreNotFoundError
from flatminima.store import Store, atomic_write_text, salvage


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


# ------------------------------------------------------------------------------------ a store that moves
def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_store_resumes_from_anywhere_and_leaves_the_original_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    st = Store("orig")  # a cwd-relative root, as the default ./flatminima-runs is
    r = st.create_run("train", {"lr": 0.1}, run_id="r1")
    atomic_write_text(r.folder / "checkpoint.pt", "weights")
    st.log_metrics("r1", 1, {"loss": 1.0})
    st.set_status("r1", "interrupted")
    before = snapshot(tmp_path / "orig")
    shutil.copytree(tmp_path / "orig", tmp_path / "elsewhere" / "copy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    copy = Store(tmp_path / "elsewhere" / "copy")
    run = copy.get("r1")
    assert run.folder == tmp_path / "elsewhere" / "copy" / "runs" / "r1"
    assert (run.folder / "checkpoint.pt").read_text() == "weights"
    copy.set_status("r1", "running")
    copy.log_metrics("r1", 2, {"loss": 0.5})
    atomic_write_text(run.folder / "checkpoint.pt", "resumed")
    assert snapshot(tmp_path / "orig") == before
    assert Store(tmp_path / "orig").get("r1").status == "interrupted"


V0_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, status TEXT NOT NULL, created REAL NOT NULL,
                   updated REAL NOT NULL, config TEXT NOT NULL, folder TEXT NOT NULL);
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
                      key TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, step, key));
"""


def test_an_old_index_with_absolute_and_relative_folders_is_upgraded_on_open(tmp_path):
    old = tmp_path / "old"
    (old / "runs" / "a").mkdir(parents=True)
    (old / "runs" / "b").mkdir()
    with closing(sqlite3.connect(old / "index.sqlite")) as db, db:
        db.executescript(V0_SCHEMA)
        db.execute("INSERT INTO runs VALUES ('a', 'train', NULL, 'finished', 1, 1, '{}', ?)", (str(old / "runs" / "a"),))
        db.execute("INSERT INTO runs VALUES ('b', 'train', NULL, 'running', 2, 2, '{}', 'flatminima-runs/runs/b')")
        db.execute("INSERT INTO metrics VALUES ('a', 1, 'loss', 0.25)")
    shutil.copytree(old, tmp_path / "moved")
    st = Store(tmp_path / "moved", create=False)
    assert [r.folder for r in st.runs()] == [tmp_path / "moved" / "runs" / x for x in "ab"]
    assert [r.status for r in st.runs()] == ["finished", "running"]  # no owner recorded: cannot tell
    assert st.metrics("a") == [(1, "loss", 0.25)]
    with closing(sqlite3.connect(tmp_path / "moved" / "index.sqlite")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT folder FROM runs ORDER BY id").fetchall() == [("runs/a",), ("runs/b",)]


# ------------------------------------------------------------------------------------ damage and bad locations
def damage(path, how):
    if how == "overwritten":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.seek(size // 2 - 1500)
            fh.write(bytes(range(256)) * 11 + bytes(184))  # 3,000 bytes
    elif how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(100)
    else:
        path.write_text("name,value\nthis is not an index\n")


@pytest.mark.parametrize("how", ["overwritten", "truncated", "not-sqlite"])
def test_a_damaged_index_is_one_line_and_nothing_is_written(tmp_path, how):
    st = Store(tmp_path)
    for i in range(20):
        r = st.create_run("train", {"i": i, "pad": "x" * 200})
        for step in range(30):
            st.log_metrics(r.id, step, {"loss": 1 / (step + 1), "err": 0.5, "lr": 0.1})
    assert (tmp_path / "index.sqlite").stat().st_size > 100_000
    damage(tmp_path / "index.sqlite", how)
    before = snapshot(tmp_path)
    for create in (True, False):
        with pytest.raises(StoreCorruptError) as err:
            Store(tmp_path, create=create)
        msg = str(err.value)
        assert "\n" not in msg and "damaged" in msg and str(tmp_path / "runs") in msg and "salvage" in msg
    assert snapshot(tmp_path) == before


def test_salvage_rebuilds_the_index_from_its_readable_rows(tmp_path):
    st = Store(tmp_path)
    for i in range(20):
        r = st.create_run("train", {"i": i, "pad": "x" * 200}, run_id=f"r{i:02d}")
        for step in range(30):
            st.log_metrics(r.id, step, {"loss": 1 / (step + 1), "err": 0.5, "lr": 0.1})
    damage(tmp_path / "index.sqlite", "overwritten")
    with pytest.raises(StoreCorruptError):
        Store(tmp_path)
    kept = salvage(tmp_path)
    assert 0 < kept["metrics"] < 20 * 30 * 3 and kept["runs"] == 20
    st = Store(tmp_path)
    assert st.get("r07").folder == tmp_path / "runs" / "r07"
    assert len(list(tmp_path.glob("index.damaged-*.sqlite"))) == 1


def test_a_file_as_the_store_location_is_a_one_line_error(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("FLATMINIMA_HOME", str(home))
    with pytest.raises(StoreError, match="is a file, not a folder"):
        Store()
    assert home.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [home]


def test_a_missing_parent_is_not_created(tmp_path):
    with pytest.raises(StoreError, match="is not an existing folder"):
        Store(tmp_path / "no" / "store")
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_location_is_a_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            Store(ro)
        with pytest.raises(StoreError, match="cannot create run store"):
            Store(ro / "store")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_readers_create_nothing(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no run store"):
        Store(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    st = Store(tmp_path / "s")
    st.create_run("train", {"a": 1}, run_id="r1")
    st.log_metrics("r1", 1, {"loss": 1.0})
    before = snapshot(tmp_path / "s")
    reader = Store(tmp_path / "s", create=False)
    reader.get("r1"), reader.runs(), reader.metrics("r1"), reader.results("r1"), reader.points("s", "default")
    assert snapshot(tmp_path / "s") == before


def test_ids_are_plain_new_names_and_not_patterns(tmp_path):
    st = Store(tmp_path)
    st.create_run("train", {"a": 1}, run_id="r1")
    for bad in ("../escape", "a/b", "-", ".hidden", "x" * 200):
        with pytest.raises(ConfigError, match="run id"):
            st.create_run("train", {}, run_id=bad)
    with pytest.raises(ConfigError, match="already exists"):
        st.create_run("train", {"a": 2}, run_id="r1")
    with pytest.raises(ConfigError, match="JSON"):
        st.create_run("train", {"a": object()}, run_id="r2")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["r1"] and st.get("r1").config == {"a": 1}
    for pattern in ("%", "_", "r%"):
        with pytest.raises(RunNotFoundError):
            st.get(pattern)
    with pytest.raises(RunNotFoundError):
        st.set_status("nope", "finished")


# ------------------------------------------------------------------------------------ killed runs
def set_owner(root, run_id, **values):
    with closing(sqlite3.connect(root / "index.sqlite")) as db, db:
        for column, value in values.items():
            db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, run_id))


def test_a_run_whose_process_died_reads_interrupted(tmp_path):
    st = Store(tmp_path)
    for rid in ("mine", "exited", "killed", "reused", "remote", "done"):
        st.create_run("train", {}, run_id=rid)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    set_owner(tmp_path, "exited", owner_pid=exited.pid)
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()  # not waited for: a zombie, dead all the same
    set_owner(tmp_path, "killed", owner_pid=killed.pid)
    set_owner(tmp_path, "reused", owner_start="another process under the same pid")
    set_owner(tmp_path, "remote", owner_host="another-host", owner_pid=exited.pid)
    st.set_status("done", "finished")
    status = {r.id: r.status for r in st.runs()}
    killed.wait()
    assert status == {"mine": "running", "exited": "interrupted", "killed": "interrupted", "reused": "interrupted",
                      "remote": "running", "done": "finished"}
    assert st.get("exited").status == "interrupted"
    st.set_status("exited", "running")  # resumed by this process: its owner now
    assert st.get("exited").status == "running"


def test_running_block_marks_finished_or_interrupted(tmp_path):
    st = Store(tmp_path)
    st.create_run("train", {}, run_id="ok")
    st.create_run("train", {}, run_id="bad")
    st.set_status("ok", "interrupted")
    with st.running("ok") as run:
        assert run.status == "running" and st.get("ok").status == "running"
    assert st.get("ok").status == "finished"
    with pytest.raises(KeyboardInterrupt), st.running("bad"):
        raise KeyboardInterrupt
    assert st.get("bad").status == "interrupted"
