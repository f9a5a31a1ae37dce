"""Tests for robustlab.data: IDX parsing, checksummed downloads, and every loader. Nothing is downloaded."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data import ImageDataset, available_datasets, load_dataset
from robustlab.data import cifar, mnist
from robustlab.data.download import RemoteFile, download, fetch, sha256_file
from robustlab.data.embedded import load_digits, load_mnist5k
from robustlab.data.idx import read_idx
from robustlab.errors import ConfigError, DatasetError


# conftest.py points $ROBUSTLAB_DATA at an empty scratch folder for every test.


# ---------------------------------------------------------------- helpers

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(arr: np.ndarray) -> bytes:
    code = _CODES[arr.dtype]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist_dir(directory: Path, n_train: int = 20, n_test: int = 7, seed: int = 1):
    """The four MNIST gz files, small, with random pixels and labels 0..9."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(directory / name, arr)
    return arrays


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, bytes]]:
    """(label, uint8 pixel bytes) for each example, sorted: compares datasets regardless of order."""
    u8 = (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()
    return sorted((int(label), r.tobytes()) for label, r in zip(y.tolist(), u8))


def cifar_tarball(path: Path, hundred: bool = False, per_batch: int = 3, n_test: int = 4, seed: int = 2) -> dict:
    """A tiny tarball in the real CIFAR python format; returns the raw arrays it holds."""
    rng = np.random.default_rng(seed)
    key, classes = (b"fine_labels", 100) if hundred else (b"labels", 10)
    if hundred:
        members = {"cifar-100-python/train": 2 * per_batch, "cifar-100-python/test": n_test}
    else:
        members = {f"cifar-10-batches-py/data_batch_{i}": per_batch for i in range(1, 6)}
        members["cifar-10-batches-py/test_batch"] = n_test
    raw = {}
    with tarfile.open(path, "w:gz") as tar:
        for name, n in members.items():
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, classes, n)]
            if name.endswith(("data_batch_1", "/train")):
                data[0] = 0
                data[0, :1024] = 255  # pure red: the first 1024 values are the red plane
            blob = pickle.dumps({b"data": data, key: labels, b"batch_label": b"x"}, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            raw[name] = (data, labels)
    return raw


def digest(path: Path, algo: str = "sha256") -> str:
    return hashlib.new(algo, path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    for i, arr in enumerate([rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
                             np.arange(10, dtype=np.uint8),
                             rng.integers(-3000, 3000, (2, 7), dtype=np.int16),
                             rng.standard_normal((3, 2)).astype(np.float32)]):
        back = read_idx(write_idx(tmp_path / f"a{i}", arr, compress))
        assert back.dtype == arr.dtype.newbyteorder("=") and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)


def test_idx_checks_ndim(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match="labels.gz has 1 dimensions, expected 3"):
        read_idx(path, ndim=3)


def test_idx_truncated_payload(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is truncated.*2352 payload bytes, found 2351"):
        read_idx(path)
    path.write_bytes(gzip.compress(good + b"\0"))
    with pytest.raises(DatasetError, match="too long"):
        read_idx(path)


def test_idx_truncated_header_and_gzip(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBB", 0, 8, 3) + struct.pack(">I", 3)))
    with pytest.raises(DatasetError, match=r"short\.gz is truncated: header needs 16 bytes"):
        read_idx(path)
    blob = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8) % 251))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"short\.gz is not a valid gzip stream"):
        read_idx(path)


def test_idx_bad_magic_and_type(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(DatasetError, match=r"bad\.idx has a bad magic number 0x12340801"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(DatasetError, match=r"bad\.idx has an unknown data type code 0x07"):
        read_idx(path)


# ---------------------------------------------------------------- download / fetch


def test_download_file_url_good_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"robustlab" * 1000)
    dest = tmp_path / "out" / "copy.bin"
    assert download(src.as_uri(), dest, sha256_file(src)) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]  # no temp file left
    dest2 = tmp_path / "out" / "md5.bin"
    download(src.as_uri(), dest2, md5=digest(src, "md5"))
    assert dest2.read_bytes() == src.read_bytes()


def test_download_bad_checksum_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not what you expect")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="checksum mismatch downloading file://"):
        download(src.as_uri(), out / "copy.bin", "0" * 64)
    assert list(out.iterdir()) == []
    with pytest.raises(DatasetError, match="failed"):
        download((tmp_path / "nope.bin").as_uri(), out / "nope.bin", "0" * 64)
    assert list(out.iterdir()) == []


def test_fetch_missing_without_download(tmp_path):
    spec = RemoteFile("train-images-idx3-ubyte.gz", "https://example.invalid/x.gz", ("sha256:" + "0" * 64,))
    with pytest.raises(DatasetError) as err:
        fetch([spec], tmp_path / "mnist", download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz is missing" in msg and str(tmp_path / "mnist") in msg
    assert "download=true" in msg and "data.download" in msg


def test_fetch_downloads_and_verifies(tmp_path):
    src = tmp_path / "remote" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(b"payload")
    root = tmp_path / "root"
    spec = RemoteFile("f.bin", src.as_uri(), (f"sha256:{sha256_file(src)}",))
    (path,) = fetch([spec], root, download=True)
    assert path == root / "f.bin" and path.read_bytes() == b"payload"
    assert fetch([spec], root, download=False) == [path]  # present now, verified, no download
    path.write_bytes(b"tampered")
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*f\.bin"):
        fetch([spec], root, download=False)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def test_mnist_loader_on_small_files(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    ds = mnist.load_idx_dir(tmp_path)  # no checksums: local test files
    assert isinstance(ds, ImageDataset)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (7, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.mean == (0.0,) and ds.std == (1.0,) and ds.in_shape == (1, 28, 28)
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    expect = rows(torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]).float() / 255,
                  torch.from_numpy(arrays["train-labels-idx1-ubyte.gz"].astype(np.int64)))
    assert rows(ds.train_x, ds.train_y) == expect
    assert ds.test_y.tolist() != list(range(7)) and sorted(ds.test_y.tolist()) == list(range(7))  # shuffled
    again = mnist.load_idx_dir(tmp_path)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_mnist_loader_verifies_checksums(tmp_path):
    write_mnist_dir(tmp_path)
    names = mnist.FILE_NAMES
    good = tuple(RemoteFile(n, "", (f"sha256:{digest(tmp_path / n)}",)) for n in names)
    assert len(mnist.load_idx_dir(tmp_path, files=good).train_x) == 20
    md5 = tuple(RemoteFile(n, "", (f"md5:{digest(tmp_path / n, 'md5')}",)) for n in names)
    assert len(mnist.load_idx_dir(tmp_path, files=md5).test_x) == 7
    bad = good[:3] + (RemoteFile(names[3], "", ("sha256:" + "f" * 64,)),)
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*t10k-labels-idx1-ubyte\.gz"):
        mnist.load_idx_dir(tmp_path, files=bad)


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    with pytest.raises(DatasetError, match="has 6 labels but .* has 7 images"):
        mnist.load_idx_dir(tmp_path)


def test_load_dataset_mnist_checks_canonical_checksums(tmp_path):
    write_mnist_dir(tmp_path / "mnist")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is missing.*download=true"):
        load_dataset("mnist", root=tmp_path / "empty")


def test_fashion_mnist_root_is_searched_first(tmp_path):
    write_mnist_dir(tmp_path / "fashion_mnist")  # present but not the real files
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*fashion_mnist"):
        load_dataset("fashion_mnist", root=tmp_path)


_FASHION_DIR = mnist.FASHION_MNIST_SYSTEM_DIR


@pytest.fixture(scope="module")
def fashion():
    if not all((_FASHION_DIR / n).is_file() for n in mnist.FILE_NAMES):
        pytest.skip(f"Fashion-MNIST not installed in {_FASHION_DIR} (Debian package dataset-fashion-mnist)")
    return mnist.load_fashion_mnist(root="/nonexistent-robustlab-root")  # falls back to the system copy


def test_fashion_mnist_real_files(fashion):
    ds = fashion
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0 and ds.test_x.max() <= 1.0
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10
    assert ds.train_y[:100].bincount(minlength=10).min() > 0  # shuffled: any prefix is mixed


def test_fashion_mnist_real_checksums(fashion):
    for spec in mnist.FASHION_MNIST_FILES:
        got = sha256_file(_FASHION_DIR / spec.name)
        assert f"sha256:{got}" in spec.checksums, spec.name


# ---------------------------------------------------------------- CIFAR


def test_cifar10_tiny_tarball(tmp_path):
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    raw = cifar_tarball(path)
    ds = cifar.load_cifar10(root=tmp_path, sha256=digest(path))
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    train = [raw[f"cifar-10-batches-py/data_batch_{i}"] for i in range(1, 6)]
    expect = rows(torch.from_numpy(np.concatenate([d for d, _ in train])).float() / 255,
                  torch.tensor(sum((lab for _, lab in train), [])))
    assert rows(ds.train_x, ds.train_y) == expect
    red = [i for i in range(len(ds.train_x)) if ds.train_x[i, 0].min() == 1.0]
    assert len(red) == 1 and ds.train_x[red[0], 1:].max() == 0.0  # planes are R, G, B


def test_cifar100_tiny_tarball(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    raw = cifar_tarball(path, hundred=True)
    ds = cifar.load_cifar_tarball(path, cifar.CIFAR100, sha256=digest(path))
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    data, labels = raw["cifar-100-python/test"]
    assert rows(ds.test_x, ds.test_y) == rows(torch.from_numpy(data).float() / 255, torch.tensor(labels))


def test_cifar_wrong_checksum_unpickles_nothing(tmp_path, monkeypatch):
    calls = []
    real_loads = pickle.loads
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(1) or real_loads(*a, **k))
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    cifar_tarball(path)
    with pytest.raises(DatasetError, match="checksum mismatch.*Refusing to unpickle"):
        load_dataset("cifar10", root=tmp_path)  # canonical sha256 does not match the tiny tarball
    with pytest.raises(DatasetError, match="checksum mismatch"):
        cifar.load_cifar_tarball(path, cifar.CIFAR10, sha256="ab" * 32)
    assert calls == []
    cifar.load_cifar10(root=tmp_path, sha256=digest(path))
    assert len(calls) == 6  # the spy does see unpickling once verified


def test_cifar_missing_member(tmp_path):
    path = tmp_path / "c.tar.gz"
    cifar_tarball(path, hundred=True)
    with pytest.raises(DatasetError, match="has no member cifar-10-batches-py/data_batch_1"):
        cifar.load_cifar_tarball(path, cifar.CIFAR10, sha256=digest(path))


# ---------------------------------------------------------------- embedded datasets and registry


def test_mnist5k():
    ds = load_mnist5k()
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert set(ds.train_y.tolist()) == set(range(10)) and set(ds.test_y.tolist()) == set(range(10))
    assert torch.cat([ds.train_y, ds.test_y]).bincount().tolist() == [500] * 10
    assert ds.train_y[:50].bincount(minlength=10).min() > 0  # shuffled, not sorted by label
    again = load_dataset("mnist5k")
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_digits():
    ds = load_digits()
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0 and ds.num_classes == 10
    assert set(ds.test_y.tolist()) == set(range(10))
    assert torch.equal(load_dataset("digits").test_x, ds.test_x)


def test_registry():
    assert set(available_datasets()) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "mnist5k", "digits"}
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar_10' \(did you mean 'cifar10'\?\).*mnist5k"):
        load_dataset("cifar_10")
    with pytest.raises(ConfigError, match="available: cifar10, cifar100, digits, fashion_mnist, mnist, mnist5k"):
        load_dataset("imagenet")


def test_register_dataset_makes_a_custom_loader_reachable_by_name_and_refuses_a_taken_name():
    from robustlab.data import ImageDataset, available_datasets, load_dataset, register_dataset
    from robustlab.data import registry

    x = torch.rand(6, 1, 4, 4)
    y = torch.arange(6) % 3
    calls = []

    def loader(root, download):
        calls.append((root, download))
        return ImageDataset("tiny_custom", x, y, x[:2], y[:2], 3, (0.5,), (0.25,))

    register_dataset("tiny_custom", loader)
    try:
        data = load_dataset("tiny_custom", root="somewhere", download=True)
        assert calls == [("somewhere", True)] and data.num_classes == 3 and "tiny_custom" in available_datasets()
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("tiny_custom", loader)
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("mnist", loader)
        register_dataset("tiny_custom", loader, replace=True)
    finally:
        registry.DATASETS.remove("tiny_custom")
