import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flatminima import data
from flatminima.data.datasets import DEBIAN_FASHION_DIR, FASHION_FILES, read_idx
from flatminima.errors import ConfigError, DataFormatError, DataNotFoundError


def write_idx(path, array, gz=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def fake_fashion(folder, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    write_idx(folder / (FASHION_FILES["train_images"] + ".gz"), rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / (FASHION_FILES["train_labels"] + ".gz"), np.arange(n_train) % 10)
    write_idx(folder / FASHION_FILES["test_images"], rng.integers(0, 256, (n_test, 28, 28)), gz=False)
    write_idx(folder / FASHION_FILES["test_labels"], np.arange(n_test) % 10, gz=False)


def test_read_idx_round_trip(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (3, 4, 5))
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)


def test_truncated_idx_is_a_clear_error(tmp_path):
    a = np.zeros((3, 4), dtype=np.uint8)
    write_idx(tmp_path / "x", a, gz=False)
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(raw[:-3])
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(tmp_path / "x")


def test_fashion_mnist_from_a_named_folder(tmp_path):
    fake_fashion(tmp_path)
    ds = data.load("fashion-mnist", data_dir=tmp_path)
    assert ds.X_train.shape == (12, 1, 28, 28) and ds.X_test.shape == (5, 1, 28, 28)
    assert ds.X_train.dtype == torch.float32 and 0 <= ds.X_train.min() and ds.X_train.max() <= 1
    assert ds.y_train.tolist() == [i % 10 for i in range(12)]


def test_fashion_mnist_from_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "fashion-mnist").mkdir()
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("FLATMINIMA_DATA", str(tmp_path))
    assert data.load("fashion-mnist").X_train.shape[0] == 12


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_shapes_and_balance():
    ds = data.load("fashion-mnist")
    assert ds.X_train.shape == (60000, 1, 28, 28) and ds.X_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


def test_digits_and_mnist5k_splits_are_seeded_and_stratified():
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    assert torch.equal(a.X_train, b.X_train) and a.X_train.shape[0] + a.X_test.shape[0] == 1797
    c = data.load("digits", seed=4)
    assert not torch.equal(a.y_train, c.y_train)
    m = data.load("mnist-5k")
    assert m.X_train.shape == (4000, 1, 28, 28) and m.X_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(m.y_test).tolist() == [100] * 10
    assert set(m.meta) >= {"source", "split_seed"}


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown data set"):
        data.load("cifar-10")


def test_random_patterns():
    X, y = data.random_patterns(200, 7, seed=5)
    X2, y2 = data.random_patterns(200, 7, seed=5)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    assert X.shape == (200, 7) and set(y.tolist()) == {-1.0, 1.0}
    Xb, _ = data.random_patterns(10, 7, seed=5, binary_inputs=True)
    assert set(Xb.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("tree", [False, True])
def test_teacher_student_labels_follow_the_teacher(tree):
    ds = data.teacher_student(50, 9, teacher="committee", K=3, tree=tree, seed=2, P_test=20)
    W = ds.meta["teacher"]
    X = torch.cat([ds.X_train, ds.X_test])
    y = torch.cat([ds.y_train, ds.y_test])
    h = torch.einsum("pkj,kj->pk", X.view(-1, 3, 3), W) if tree else X @ W.T
    assert torch.equal(torch.where(torch.sign(h).sum(-1) >= 0, 1.0, -1.0), y)
    p = data.teacher_student(30, 5, seed=1, binary_weights=True)
    assert set(p.meta["teacher"].unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(torch.where(p.X_train @ p.meta["teacher"] >= 0, 1.0, -1.0), p.y_train)
    with pytest.raises(ConfigError):
        data.teacher_student(10, 9, teacher="committee", K=2)


def test_preprocessing_pipeline_of_the_jamming_studies():
    ds = data.load("digits")
    p = data.rescale_to_sphere(data.center(data.pca(data.binary_labels(ds), 10)))
    assert p.X_train.shape[1] == 10
    assert torch.allclose(p.X_train.norm(dim=1), torch.full((p.X_train.shape[0],), math.sqrt(10)), atol=1e-4)
    assert set(p.y_train.unique().tolist()) == {-1.0, 1.0}
    assert len(p.meta["preprocessing"]) == 4


def test_pca_whitening_gives_unit_covariance_on_train():
    ds = data.load("digits")
    w = data.pca(ds, 8, whiten=True)
    cov = torch.cov(w.X_train.double().T)
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=1e-4)
    u = data.pca(ds, 8, whiten=False)
    var = torch.var(u.X_train.double(), dim=0)
    assert torch.all(var[:-1] >= var[1:] - 1e-6)  # decreasing explained variance
    with pytest.raises(ConfigError):
        data.pca(ds, 0)


def test_binary_labels_and_balanced_subset():
    ds = data.load("digits")
    b = data.binary_labels(ds, positive=[1, 3])
    assert torch.equal(b.y_train == 1, torch.isin(ds.y_train, torch.tensor([1, 3])))
    s = data.balanced_subset(ds, 40, seed=0)
    assert torch.bincount(s.y_train, minlength=10).tolist() == [4] * 10
    s2 = data.balanced_subset(ds, 15, seed=0)
    assert torch.equal(s2.y_train, s.y_train[:15])  # every prefix is balanced: same order
    with pytest.raises(ConfigError):
        data.balanced_subset(ds, 10**6)
    with pytest.raises(ConfigError):
        data.binary_labels(ds, positive=[11])


def test_standardize():
    ds = data.standardize(data.load("digits"))
    assert abs(float(ds.X_train.mean())) < 1e-5 and abs(float(ds.X_train.std()) - 1) < 1e-4


@pytest.mark.skipif(not Path("/usr/share/games/fortunes").exists(), reason="Debian fortunes not installed")
def test_fortunes_text_windows():
    ds = data.load("fortunes", seq_len=32)
    assert ds.X_train.shape[1] == 32 and ds.X_train.dtype == torch.int64
    assert torch.equal(ds.X_train[0, 1:], ds.y_train[0, :-1])  # targets are the next characters
    assert torch.equal(ds.X_train[1, 0], ds.y_train[0, -1])
    assert ds.n_classes == len(ds.meta["vocab"]) and int(ds.X_train.max()) < ds.n_classes


def test_fortunes_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install fortunes"):
        data.load("fortunes", data_dir=tmp_path)


# ------------------------------------------------------------------------------------ malformed files
def idx_bytes(array):
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape) + \
        array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("name, raw, match", [
    ("short-header", b"\0\0\x08\x03\0\0\0\x05", "header is cut short"),
    ("wrong-magic", b"PK\x03\x04" + bytes(40), "bad magic"),
    ("wrong-type", b"\0\0\x0d\x01\0\0\0\x02" + bytes(8), "only unsigned-byte"),
    ("no-dimensions", b"\0\0\x08\0", "no dimensions"),
    ("too-few-values", idx_bytes(np.zeros((4, 3)))[:-5], "truncated: dimensions \\(4, 3\\) need 12 values, found 7"),
    ("too-many-values", idx_bytes(np.zeros((4, 3))) + b"\0", "longer than its header says"),
    ("empty", b"", "bad magic"),
])
def test_malformed_idx_files_are_one_line_errors(tmp_path, name, raw, match):
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(DataFormatError, match=match) as err:
        read_idx(tmp_path / name)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_a_truncated_or_garbled_gzip_is_a_one_line_error(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(600) % 10))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataFormatError, match="truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "garbled.gz").write_bytes(packed[:10] + bytes(range(200)))
    with pytest.raises(DataFormatError, match="cannot read IDX file"):
        read_idx(tmp_path / "garbled.gz")
    (tmp_path / "plain.gz").write_bytes(idx_bytes(np.zeros(3)))  # not gzip at all
    with pytest.raises(DataFormatError, match="cannot read IDX file"):
        read_idx(tmp_path / "plain.gz")


@pytest.mark.parametrize("labels, match", [
    (np.arange(11) % 10, "12 images but 11 labels"),
    (np.full(12, 10), "label 10; Fashion-MNIST labels are 0-9"),
    (np.zeros((12, 2)), "must hold images \\(n, rows, cols\\) and labels \\(n,\\)"),
])
def test_fashion_files_that_do_not_fit_together_are_one_line_errors(tmp_path, labels, match):
    fake_fashion(tmp_path)
    write_idx(tmp_path / (FASHION_FILES["train_labels"] + ".gz"), labels)
    with pytest.raises(DataFormatError, match=match) as err:
        data.load("fashion-mnist", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_fashion_splits_of_different_image_sizes_are_an_error(tmp_path):
    fake_fashion(tmp_path)
    write_idx(tmp_path / FASHION_FILES["test_images"], np.zeros((5, 14, 14)), gz=False)
    with pytest.raises(DataFormatError, match="train images are \\(28, 28\\) pixels but test images \\(14, 14\\)"):
        data.load("fashion-mnist", data_dir=tmp_path)


@pytest.mark.parametrize("options, match", [
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"seed": 1.5}, "seed must be an integer >= 0"),
    ({"test_fraction": 1.0}, "strictly between 0 and 1"),
    ({"test_fraction": float("nan")}, "strictly between 0 and 1"),
])
def test_bad_split_options(options, match):
    with pytest.raises(ConfigError, match=match):
        data.load("digits", **options)


def test_too_little_text_is_a_clear_error(tmp_path):
    (tmp_path / "tiny").write_text("Hi.\n")
    with pytest.raises(DataFormatError, match="too short"):
        data.load("fortunes", data_dir=tmp_path, seq_len=8)
    with pytest.raises(ConfigError, match="seq_len must be an integer"):
        data.load("fortunes", data_dir=tmp_path, seq_len=2.5)
