"""MNIST and Fashion-MNIST from their four IDX ``.gz`` files (28x28 grey, 10 classes, 60k/10k)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from robustlab.data.base import ImageDataset
from robustlab.data.download import RemoteFile, cache_dir, fetch
from robustlab.data.idx import read_idx
from robustlab.data.split import shuffle
from robustlab.errors import DatasetError

FILE_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's bucket

# sha256 of the canonical gz files (sizes 9912422, 28881, 1648877, 4542 bytes). Cross-checked
# against several independent published lists (TFDS, torchvision-style loaders); torchvision itself
# publishes only the md5 sums, kept here as the alternative checksum.
MNIST_FILES = tuple(RemoteFile(n, MNIST_URL + n, (f"sha256:{s}", f"md5:{m}")) for n, s, m in zip(FILE_NAMES, (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
), (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c",
)))

# Fashion-MNIST: first the sha256 of Zalando's gz files (sizes 26421880, 29515, 4422102, 5148 bytes;
# their md5 sums are the ones in Zalando's README), then the sha256 of the copies shipped by the Debian
# package dataset-fashion-mnist, which carry a rewritten gzip header (no stored file name, new mtime;
# 24/23 bytes shorter). Their deflate streams are byte-identical to Zalando's: restoring the original
# header reproduces exactly the canonical sha256 values above.
FASHION_MNIST_FILES = tuple(RemoteFile(n, FASHION_MNIST_URL + n, (f"sha256:{s}", f"sha256:{d}"))
                            for n, s, d in zip(FILE_NAMES, (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
), (
    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
)))

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist

MEAN, STD = (0.0,), (1.0,)  # no normalisation: MNIST models in the literature take raw [0,1] pixels
NUM_CLASSES = 10


def _images(path: Path) -> torch.Tensor:
    arr = read_idx(path, ndim=3)
    if arr.dtype != np.uint8:
        raise DatasetError(f"IDX file {path} holds {arr.dtype} pixels, expected unsigned bytes")
    return torch.from_numpy(arr).unsqueeze(1).float().div_(255.0)


def _labels(path: Path, n: int, images: Path) -> torch.Tensor:
    arr = read_idx(path, ndim=1)
    if len(arr) != n:
        raise DatasetError(f"{path} has {len(arr)} labels but {images} has {n} images")
    if len(arr) and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise DatasetError(f"{path} has labels outside 0..{NUM_CLASSES - 1}")
    return torch.from_numpy(arr.astype(np.int64))


def load_idx_dir(directory: str | os.PathLike, name: str = "mnist",
                 files: tuple[RemoteFile, ...] | None = None, download: bool = False) -> ImageDataset:
    """An MNIST-like dataset from the four IDX gz files in ``directory`` (names as in ``FILE_NAMES``).

    ``files`` gives the expected checksums (and download URLs); ``None`` reads the files unverified,
    which is meant for local test files. Each split is shuffled with a fixed seed.
    """
    specs = files if files is not None else tuple(RemoteFile(n) for n in FILE_NAMES)
    tr_img, tr_lab, te_img, te_lab = fetch(specs, directory, download)
    train_x, test_x = _images(tr_img), _images(te_img)
    train_y, test_y = _labels(tr_lab, len(train_x), tr_img), _labels(te_lab, len(test_x), te_img)
    if train_x.shape[2:] != test_x.shape[2:]:
        raise DatasetError(f"train images {tuple(train_x.shape[2:])} and test images {tuple(test_x.shape[2:])} "
                           f"in {directory} differ in size")
    train_x, train_y = shuffle(train_x, train_y)
    test_x, test_y = shuffle(test_x, test_y)
    return ImageDataset(name, train_x, train_y, test_x, test_y, NUM_CLASSES, MEAN, STD)


def _has_all(directory: Path) -> bool:
    return all((directory / n).is_file() for n in FILE_NAMES)


def load_mnist(root: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """MNIST from ``<root>/mnist/`` (default root: :func:`cache_dir`), checksums verified."""
    directory = Path(root if root is not None else cache_dir()).expanduser() / "mnist"
    return load_idx_dir(directory, "mnist", MNIST_FILES, download)


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST, checksums verified, from the first of: ``<root>/fashion_mnist/``,
    ``/usr/share/datasets/fashion-mnist/`` (Debian package), ``<cache_dir>/fashion_mnist/``;
    if none has all four files, they are looked for (and with ``download`` fetched) in the first."""
    candidates = [Path(root).expanduser() / "fashion_mnist"] if root is not None else []
    candidates += [FASHION_MNIST_SYSTEM_DIR, cache_dir() / "fashion_mnist"]
    directory = next((d for d in candidates if _has_all(d)), None)
    if directory is None:
        directory = candidates[0] if root is not None else candidates[-1]
    return load_idx_dir(directory, "fashion_mnist", FASHION_MNIST_FILES, download)
