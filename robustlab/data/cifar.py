"""CIFAR-10 and CIFAR-100 from the python-pickle tarballs (32x32 RGB, 50k/10k).

The tarball is read into memory and its sha256 verified before any member is unpickled; the
batches are then unpickled from those same verified bytes, so nothing unverified reaches ``pickle``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustlab.data.base import ImageDataset
from robustlab.data.download import RemoteFile, cache_dir, fetch
from robustlab.data.split import shuffle
from robustlab.errors import DatasetError


@dataclass(frozen=True)
class CifarVariant:
    """Where a CIFAR variant's batches and labels live inside its tarball."""

    name: str
    file: RemoteFile
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def sha256(self) -> str:
        return self.file.checksums[0].removeprefix("sha256:")


CIFAR10 = CifarVariant(
    "cifar10",
    RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
               ("sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",)),
    tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    ("cifar-10-batches-py/test_batch",),
    b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

CIFAR100 = CifarVariant(
    "cifar100",
    RemoteFile("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
               ("sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",)),
    ("cifar-100-python/train",),
    ("cifar-100-python/test",),
    b"fine_labels", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path``, only if their sha256 is ``sha256``."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256.lower():
        raise DatasetError(f"checksum mismatch for {path}: sha256 is {got}, expected {sha256}. Refusing to "
                           "unpickle it; delete the file and load again with download=true "
                           "(config key data.download; eval --download) to re-fetch it")
    return blob


def _batch(tar: tarfile.TarFile, member: str, label_key: bytes, num_classes: int,
           path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        f = tar.extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise DatasetError(f"{path} has no member {member}; is it the right CIFAR tarball?")
    d = pickle.loads(f.read(), encoding="bytes")  # the tarball's sha256 was verified by the caller
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DatasetError(f"{path}:{member} lacks b'data' or {label_key!r}")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{path}:{member} has data {data.dtype}{data.shape} and {len(labels)} labels, "
                           "expected uint8 (N, 3072) with N labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}:{member} has labels outside 0..{num_classes - 1}")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels)


def load_cifar_tarball(path: str | os.PathLike, variant: CifarVariant, sha256: str | None = None) -> ImageDataset:
    """A CIFAR dataset from its tarball, after checking its sha256 (``variant``'s unless ``sha256`` is given)."""
    path = Path(path)
    blob = _read_verified(path, sha256 or variant.sha256)
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            splits = []
            for members in (variant.train_members, variant.test_members):
                parts = [_batch(tar, m, variant.label_key, variant.num_classes, path) for m in members]
                x = torch.cat([p[0] for p in parts]).float().div_(255.0)
                y = torch.cat([p[1] for p in parts])
                splits.append(shuffle(x, y))
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise DatasetError(f"{path} is not a readable CIFAR tarball: {e}") from e
    (train_x, train_y), (test_x, test_y) = splits
    return ImageDataset(variant.name, train_x, train_y, test_x, test_y, variant.num_classes,
                        variant.mean, variant.std)


def _load(variant: CifarVariant, root: str | os.PathLike | None, download: bool,
          sha256: str | None) -> ImageDataset:
    directory = Path(root if root is not None else cache_dir()).expanduser() / variant.name
    path = directory / variant.file.name
    if not path.exists():  # a download is verified by fetch; the loader verifies again what it unpickles
        fetch((RemoteFile(path.name, variant.file.url, (f"sha256:{sha256 or variant.sha256}",)),),
              directory, download)
    return load_cifar_tarball(path, variant, sha256)


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False,
                 sha256: str | None = None) -> ImageDataset:
    """CIFAR-10 from ``<root>/cifar10/cifar-10-python.tar.gz`` (default root: :func:`cache_dir`)."""
    return _load(CIFAR10, root, download, sha256)


def load_cifar100(root: str | os.PathLike | None = None, download: bool = False,
                  sha256: str | None = None) -> ImageDataset:
    """CIFAR-100 (fine labels) from ``<root>/cifar100/cifar-100-python.tar.gz``."""
    return _load(CIFAR100, root, download, sha256)
