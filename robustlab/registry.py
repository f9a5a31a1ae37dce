"""One generic registry: names → objects (attack classes, model builders, datasets, defenses, ...).

Every registry of the package is a :class:`Registry`; implementations register themselves with
``@REGISTRY.register("name")`` when their module is imported, and each package's ``__init__`` imports all of its
implementations, so a registry is complete as soon as its package is imported (no import back from the registry
to the implementations). A lookup of an unknown name raises :class:`~robustlab.errors.ConfigError` with a
did-you-mean and the available names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustlab.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → item table for one ``kind`` of thing ("attack", "model", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` under ``name``; a taken name raises unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (registered twice; pass replace=True to "
                             "override it)")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing happens if it is not registered): a user's registration undone."""
        self._items.pop(name, None)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@ATTACKS.register("pgd") class PGD(...)``."""
        return lambda item: self.add(name, item)

    def get(self, name: str, *, where: str = "") -> T:
        """The item called ``name``; unknown names raise a ConfigError (prefixed by ``where``, e.g. a config key)."""
        if name not in self._items:
            error = unknown_name(self.kind, name, self._items)
            raise type(error)(f"{where}: {error}") if where else error
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def summary(self, name: str, width: int = 100) -> str:
        """One line on the item, for ``robustlab list``: the first paragraph of its docstring, markup dropped, cut
        at ``width``. A (class, options) pair, as defenses register, alone in its module: the module's docstring
        (which names the method and its paper)."""
        item = self.get(name)
        if isinstance(item, tuple):
            module = inspect.getmodule(item[0])
            alone = sum(isinstance(i, tuple) and inspect.getmodule(i[0]) is module for i in self._items.values()) == 1
            item = module if alone and inspect.getdoc(module) else item[0]
        line = " ".join((inspect.getdoc(item) or "").split("\n\n", 1)[0].split()).replace("``", "")
        return line if len(line) <= width else line[:width - 1].rstrip() + "…"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
