"""The dependency rules of the package map (docs/design.md §2): egomodel never needs Ray, Optuna or MLflow,
modules import one another without a circle, and an underscore name stays in the module that defines it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("egomodel", "tuning", "benchmarks", "tests")
SEARCH_LIBRARIES = ("ray", "optuna", "mlflow")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py") if "fixtures" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in python_files(*PACKAGES)}


def imports(tree: ast.AST, here: str) -> Iterator[tuple[ast.AST, str, list[str]]]:
    """Every import anywhere in the tree (function bodies included): (node, module, names taken from it)."""
    package = here if here in MODULES and MODULES[here].name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield node, base, [alias.name for alias in node.names]


def string_imports(tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """``importlib.import_module("x")`` and ``__import__("x")`` with a constant name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node, node.args[0].value


def test_every_egomodel_module_imports_with_ray_optuna_and_mlflow_blocked():
    """A fresh interpreter where importing ray, optuna or mlflow fails imports every egomodel module."""
    code = f"""
import importlib, json, pkgutil, sys
for name in {SEARCH_LIBRARIES!r}:
    sys.modules[name] = None  # import ray -> ImportError
import egomodel
done, failed = [], []
for info in pkgutil.walk_packages(egomodel.__path__, "egomodel."):
    try:
        importlib.import_module(info.name)
        done.append(info.name)
    except ImportError as e:
        failed.append(f"{{info.name}}: {{e}}")
print(json.dumps({{"done": done, "failed": failed}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failed"], result["failed"]
    expected = {m for m in MODULES if m.split(".")[0] == "egomodel"}
    assert set(result["done"]) | {"egomodel"} == expected  # every module was tried, none skipped


def test_egomodel_source_never_imports_ray_optuna_or_mlflow():
    """Not at the top and not inside a function either: a lazy import would fail only when it runs."""
    found = []
    for path in python_files("egomodel"):
        tree = ast.parse(path.read_text(), str(path))
        here = module_name(path)
        named = [(n, m) for n, m, _ in imports(tree, here)] + list(string_imports(tree))
        found += [f"{path.relative_to(REPO)}:{n.lineno}: {m}" for n, m in named
                  if m.split(".")[0] in SEARCH_LIBRARIES]
    assert not found, found


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a ``from package import submodule`` names the submodule)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for here, path in MODULES.items():
        for _, module, names in imports(ast.parse(path.read_text(), str(path)), here):
            if module not in MODULES:
                continue
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
            edges[here] |= subs or {module}
            if len(subs) < len(names):  # names defined in the module (or package face) itself
                edges[here].add(module)
        edges[here].discard(here)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    edges = graph()
    assert edges["tuning.search"] and edges["egomodel.training.engine"]  # the graph sees the imports
    assert not circles(edges)


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def private_uses(source: str, here: str) -> list[str]:
    """``from <project module> import _name`` and ``<project module>._name`` (read, or patched with
    ``setattr``) in the source of module ``here``: line and use."""
    tree = ast.parse(source)
    out = []
    bound: dict[str, str] = {}  # local name -> the project module it stands for
    for node, module, _ in imports(tree, here):
        if module.split(".")[0] not in PACKAGES:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                bound[alias.asname or top] = alias.name if alias.asname else top
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                out.append(f"{node.lineno}: from {module} import {alias.name}")
            elif f"{module}.{alias.name}" in MODULES:
                bound[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in bound):
            out.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            target, name = node.args[0], node.args[1]
            if (fn in ("setattr", "getattr", "delattr") and isinstance(target, ast.Name) and target.id in bound
                    and isinstance(name, ast.Constant) and str(name.value).startswith("_")
                    and not str(name.value).startswith("__")):
                out.append(f"{node.lineno}: {target.id}.{name.value} ({fn})")
    return sorted(out, key=lambda use: int(use.split(":")[0]))


def test_no_module_uses_another_modules_private_names():
    """An underscore name belongs to its module; what another module uses is public, and named so."""
    found = [f"{path.relative_to(REPO)}:{use}" for path in python_files(*PACKAGES)
             for use in private_uses(path.read_text(), module_name(path))]
    assert not found, found


def test_the_private_name_check_sees_every_form():
    source = ("from egomodel.data import layout\nfrom tuning.space.fields import _number\nimport egomodel.data.layout\n"
              "layout._open('x', 'L')\nmonkeypatch.setattr(layout, '_open', None)\negomodel._x\n"
              "layout.__doc__\nfrom egomodel.model import __all__\n")
    assert private_uses(source, "tests.sample") == [
        "2: from tuning.space.fields import _number", "4: layout._open", "5: layout._open (setattr)", "6: egomodel._x",
    ]
