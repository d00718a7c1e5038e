"""Imports point one way: no cycles among nestar's modules or packages, and each layer imports only
the layers below it (docs/design.md, "Code layout"). Function-level imports count too."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nestar

SRC = Path(nestar.__file__).parent
# Lower layers first; a package may import its own layer and the ones below. Packages not listed
# (errors, config, utils) are the foundation every layer may use.
LAYERS = [
    {"nestar.errors", "nestar.config", "nestar.utils"},
    {"nestar.layers"},
    {"nestar.heads"},
    {"nestar.models"},
    {"nestar.tokenizers"},
    {"nestar.data", "nestar.visualize"},
    {"nestar.registry", "nestar.pretrained"},
    {"nestar.serialization", "nestar.model_card"},
    {"nestar.pipeline", "nestar.hub"},
    {"nestar.training", "nestar.evaluation"},
    {"nestar.bench", "nestar.app"},
    {"nestar.cli"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the nestar modules it imports (anywhere in the file, relative imports resolved)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                o = owner(t)
                if o and o != mod:
                    graph[mod].add(o)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a list of nodes, or [] if it is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def top_package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_no_import_cycles_between_modules_or_packages():
    graph = import_graph()
    assert find_cycle(graph) == []
    packages: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        packages.setdefault(top_package(mod), set()).update(top_package(t) for t in targets)
    for p, targets in packages.items():
        targets.discard(p)
    assert find_cycle(packages) == []


def test_each_layer_imports_only_layers_below():
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    graph = import_graph()
    unranked = sorted({top_package(m) for m in graph} - set(rank) - {"nestar"})
    assert not unranked, f"place {unranked} in LAYERS"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if m != "nestar" and rank[top_package(t)] > rank[top_package(m)])
    assert not upward


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_loading_a_pipeline_does_not_load_the_trainer():
    code = ("import sys, nestar.pipeline, nestar.models; "
            "print(sorted(m for m in sys.modules if m.startswith(('nestar.training', 'nestar.bench', 'nestar.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
