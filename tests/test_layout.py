"""The shape of the house: small modules, no import cycles, kernels that never import upward.

Imports are read from the source, not executed: ``ast`` for ``.py`` files, the module-level
``import``/``from ... import`` lines for ``.pyx`` files (``cimport`` is compile-time and not
counted).  Only imports that run when a module is imported count: those inside functions and
under ``if TYPE_CHECKING:`` do not.  Importing ``a.b.c`` also runs the packages ``a`` and
``a.b``; those implicit edges to parent packages are left out, as Python handles a package
that is still initialising its submodules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparsekit"
MAX_LINES = 500
SOURCE_SUFFIXES = (".py", ".pyx", ".pxd", ".hh", ".cu")
KERNEL_PACKAGES = ("sparsekit._cython", "sparsekit._cuda")
ABOVE_KERNELS = ("sparsekit.backends", "sparsekit.training", "sparsekit.growth")
# The backend class of each kernel package implements the protocol of backends.base (and falls
# back to its generic methods): the one upward import the design has.
PROTOCOL = "sparsekit.backends.base"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every Python and Cython module of the package, by dotted name."""
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyx"))
    return {module_name(p): p for p in files}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt]):
    """Import statements run at import time: module level, inside if/try/with/class bodies."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_nodes(node.body)
            yield from _import_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _import_nodes(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_nodes(node.body)


_PYX_IMPORT = re.compile(r"^(?:from\s+(\S+)\s+import\s+(\([^)]*\)|.*)|import\s+(.*))$",
                         re.MULTILINE)


def _pyx_imports(text: str) -> list[tuple[str | None, int, list[str]]]:
    """``(module, level, names)`` of the unindented import lines of a ``.pyx`` file."""
    found = []
    for m in _PYX_IMPORT.finditer(text):
        if m.group(1) is not None:
            module, names = m.group(1), m.group(2).strip("()")
            if module.startswith("cython") or " cimport " in m.group(0):
                continue
            stripped = module.lstrip(".")
            level = len(module) - len(stripped)
            found.append((stripped or None, level,
                          [n.split(" as ")[0].strip() for n in names.split(",") if n.strip()]))
        else:
            for name in m.group(3).split(","):
                found.append((name.split(" as ")[0].strip(), 0, []))
    return found


def _raw_imports(path: Path) -> list[tuple[str | None, int, list[str]]]:
    text = path.read_text()
    if path.suffix == ".pyx":
        return _pyx_imports(text)
    out = []
    for node in _import_nodes(ast.parse(text, str(path)).body):
        if isinstance(node, ast.Import):
            out += [(alias.name, 0, []) for alias in node.names]
        else:
            out.append((node.module, node.level, [alias.name for alias in node.names]))
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sparsekit modules ``name`` imports when it is imported."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for module, level, names in _raw_imports(path):
        if level:
            base = package.split(".")
            base = base[:len(base) - (level - 1)]
            module = ".".join(base + ([module] if module else []))
        if not module or module.partition(".")[0] != "sparsekit":
            continue
        subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in known}
        # `from pkg import sub` needs the submodule; any other name needs the module's body.
        targets |= subs
        if len(subs) < len(names) or not names:
            targets.add(module)
    return {t for t in targets if t in known and t != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:  # the shortest way from the first module back to itself
        start = min(comp)
        came_from: dict[str, str] = {}
        frontier = [start]
        while start not in came_from:  # breadth first; the component guarantees a way back
            reached = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in came_from:
                        came_from[w] = v
                        reached.append(w)
            frontier = reached
        path = [start]
        while len(path) == 1 or path[-1] != start:
            path.append(came_from[path[-1]])
        cycles.append(path[::-1])
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = sources()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_modules_are_small():
    lines = {p: len(p.read_text().splitlines())
             for p in sorted(PACKAGE.rglob("*")) if p.suffix in SOURCE_SUFFIXES}
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in lines.items() if n > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines (split by topic): " + "; ".join(long)


def test_graph_sees_the_imports(graph):
    # The parser must find edges at all, or the next two tests pass vacuously.
    assert "sparsekit.backends.registry" in graph["sparsekit.backends"]
    assert "sparsekit.nn.csr" in graph["sparsekit.nn.layers"]


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_kernels_do_not_import_upward(graph):
    upward = [
        f"{name} imports {target}"
        for name, targets in sorted(graph.items()) if name.startswith(KERNEL_PACKAGES)
        for target in sorted(targets) if target.startswith(ABOVE_KERNELS)
        and not (name.endswith(".backend") and target == PROTOCOL)
    ]
    assert not upward, "; ".join(upward)
