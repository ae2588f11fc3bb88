"""The package structure stays as DESIGN.md ("Layout") draws it: imports point down only
(service -> adapters -> ingest -> core), core imports nothing of ours, no module imports itself
in a circle (lazy imports inside functions count: they are still a cycle), no shipped module imports
tests/, bench/ or examples/, and no test module imports another test module (helpers live in
tests/helpers/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first: a package may import its own modules and those of the layers below it.
LAYERS = ["core", "ingest", "adapters", "service"]
RANK = {name: i for i, name in enumerate(LAYERS)}
OURS = set(LAYERS) | {"tests", "bench", "examples", "deploy"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of ours that `path` imports, wherever in the file the import stands.
    `from a import b` names the module `a.b` when that is a module, else `a`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in OURS)
    return out


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(path, known) for name, path in modules.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in edges.items():
        src = source.split(".")[0]
        for target in sorted(targets):
            dst = target.split(".")[0]
            if dst not in RANK:
                bad.append(f"{source} imports {target} (not a package of the product)")
            elif RANK[dst] > RANK[src]:
                bad.append(f"{source} ({src}) imports {target} ({dst}), a layer above it")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_only():
    assert upward_imports(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_core_imports_nothing_of_ours_but_core():
    edges = graph()
    assert {t for s, ts in edges.items() if s.startswith("core") for t in ts
            if not t.startswith("core")} == set()


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers (and conftest fixtures), not in test modules."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                    bad.append(f"{module_name(path)} imports {name}")
    assert bad == []


# The checks themselves: each must fail on the shape it forbids (the old layout had all three).
@pytest.mark.parametrize(
    ("edges", "expect_upward", "expect_cycle"),
    [
        ({"core.settings": {"ingest.vector_store"}, "ingest.vector_store": set()}, True, False),
        ({"ingest.worker": {"service.documents"}, "service.documents": set()}, True, False),
        ({"ingest.a": {"ingest.b"}, "ingest.b": {"ingest.a"}}, False, True),
        ({"ingest.a": {"ingest.a"}}, False, True),
        ({"service.app": {"ingest.stores"}, "ingest.stores": {"core.settings"},
          "core.settings": set()}, False, False),
        ({"ingest.x": {"bench._common"}}, True, False),
    ],
)
def test_the_checks_catch_what_they_forbid(edges, expect_upward, expect_cycle):
    assert bool(upward_imports(edges)) is expect_upward
    assert bool(cycles(edges)) is expect_cycle


def test_relative_and_module_imports_are_resolved(tmp_path):
    edges = graph()
    # `from ingest.stores import open_chunk_store` inside a function still counts
    assert "ingest.store_edge" in edges["ingest.stores"]
    assert "core.settings" in edges["ingest.stores"]
