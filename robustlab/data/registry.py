"""Dataset names -> loaders: ``load_dataset(name, root, download)``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from robustlab.data.base import ImageDataset
from robustlab.data.cifar import load_cifar10, load_cifar100
from robustlab.data.embedded import load_digits, load_mnist5k
from robustlab.data.mnist import load_fashion_mnist, load_mnist
from robustlab.registry import Registry

Loader = Callable[[str | os.PathLike | None, bool], ImageDataset]



def _shipped(load: Callable[[], ImageDataset]) -> Loader:
    """A loader of data shipped with a package (no location, no download), with ``load``'s docstring."""
    @functools.wraps(load)
    def loader(root, download):
        return load()
    return loader


DATASETS: Registry[Loader] = Registry("dataset")
for _name, _loader in {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10,
                       "cifar100": load_cifar100, "mnist5k": _shipped(load_mnist5k),
                       "digits": _shipped(load_digits)}.items():
    DATASETS.add(_name, _loader)


def register_dataset(name: str, loader: Loader, *, replace: bool = False) -> None:
    """Make ``load_dataset(name, root, download)`` (and so configs and the CLI) call ``loader(root, download)``.

    For datasets of your own (or synthetic data in benchmarks); the loader returns an :class:`ImageDataset`.
    Registering a taken name raises unless ``replace`` is true.
    """
    if not name or not callable(loader):
        raise ValueError("register_dataset needs a non-empty name and a callable loader(root, download)")
    DATASETS.add(name, loader, replace=replace)


def available_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts."""
    return DATASETS.names()


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """Load dataset ``name`` with checksums verified.

    File-based datasets live in ``<root>/<name>/`` (default root: ``$ROBUSTLAB_DATA`` or
    ``~/.cache/robustlab``); missing files are downloaded only when ``download`` is true.
    ``mnist5k`` and ``digits`` come with installed packages and ignore ``root``/``download``.
    """
    return DATASETS.get(name)(root, download)
