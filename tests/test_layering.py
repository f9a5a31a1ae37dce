"""The package's layer order (DESIGN.md): each module imports only from its own layer or the layers below, and the
import graph has no cycle — every import counted, at module level, inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "robustlab"

# Lowest first. A module belongs to the first entry whose name is the module or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "registry", "rng", "passes", "distributed", "modes", "config", "predictions",
                    "strict_json")),
    ("components", ("data", "models", "attacks", "schedule", "retrieval")),
    ("runs", ("checkpoint", "run_lock", "runs", "user_model", "scalars")),
    ("defenses", ("defenses",)),
    # The evaluation package sits beside the engine: the per-epoch robust accuracy calls its runner.
    ("training and evaluation", ("experiment", "evaluation", "engine")),
    ("analysis", ("detection", "metric_analysis", "paired", "demo")),
    ("interface", ("cli", "", "recipes")),  # "" is the package itself (robustlab/__init__.py)
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules that module ``name`` (of text ``source``) imports anywhere (``robustlab.`` dropped)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
                module = f"robustlab.{module}" if module else "robustlab"
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names
                          if f"{module}.{alias.name}".removeprefix("robustlab.") in modules]
            # `from package import submodule` imports the submodules; `from module import name` the module.
            targets = submodules if len(submodules) == len(node.names) else [module, *submodules]
        else:
            continue
        for target in targets:
            if target == "robustlab" or target.startswith("robustlab."):
                found.add(target.removeprefix("robustlab").removeprefix("."))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(paths))
            for name, path in paths.items()}


def layer_of(module: str) -> int:
    for index, (_label, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member and module.startswith(member + ".")):
                return index
    raise AssertionError(f"module robustlab.{module} is in no layer of tests/test_layering.py: place it")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_goes_down_the_layer_order():
    graph = import_graph()
    wrong = [f"robustlab.{m} ({LAYERS[layer_of(m)][0]}) imports robustlab.{t} ({LAYERS[layer_of(t)][0]})"
             for m, targets in sorted(graph.items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(c) for c in found)


@pytest.mark.parametrize("source, expected", [
    ("from robustlab.attacks import pgd", {"attacks.pgd"}),
    ("from robustlab.attacks import PGD", {"attacks"}),
    ("def f():\n    import robustlab.engine", {"engine"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from robustlab.engine import Trainer", {"engine"}),
    ("from . import pgd", {"attacks.pgd"}),
    ("from ..errors import ConfigError", {"errors"}),
])
def test_the_import_finder_counts_every_kind_of_import(source, expected):
    modules = {"attacks", "attacks.pgd", "attacks.apgd", "engine", "errors"}
    assert imported_modules(source, "attacks.apgd", False, modules) == expected


def test_a_cycle_and_an_upward_import_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("engine") > layer_of("defenses.base") > layer_of("attacks.pgd") > layer_of("config")

