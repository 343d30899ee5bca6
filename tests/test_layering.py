"""The project's layering (DESIGN §2), checked on the source text.

What is enforced, and why:

* **No import cycles between project modules.**  DESIGN §2 asks for "no import cycles" inside
  ``inferad/``; a cycle means two roles know each other, so neither can be built or tested alone.
  Imports inside functions count too: a lazy import hides a cycle from the interpreter, not from the
  design.  Imports under ``if TYPE_CHECKING:`` do not count (they never run).
* **Only the composition root imports ``inferad.node``.**  The daemon (``inferad/node.py``) is the
  only place that wires the parts together; a module under ``inferad/``, ``p2p/``, ``scheduler/``,
  ``proofs/`` or ``chain/`` that imports it depends on the whole node instead of the collaborators it
  uses.  ``cli.py`` and the tests may import it.
* **Nothing below the daemon imports the daemon.**  ``p2p/``, ``scheduler/``, ``proofs/`` and
  ``chain/`` import neither ``inferad`` nor ``cli``.
* **The pure layers do no I/O.**  ``scheduler/`` and ``proofs/`` are sans-I/O and ``p2p/wire.py``
  imports no libp2p; ``p2p/schema.py``, which ``wire`` builds on, is held to the same rule.  These
  modules import nothing from :data:`IO_MODULES` (event loops, sockets, processes, threads, the file
  system, clocks, logging, HTTP, libp2p, LevelDB, web3, llama.cpp, terminal UI), call none of the
  builtins :data:`IO_BUILTINS`, and import no project module outside the pure set.  Clocks are on the
  list because the pure layers take ``now`` as an argument, so tests drive time by hand.

The whole check is ``ast`` over the files: no project module is imported, so it runs in well under a
second and cannot be fooled (or broken) by import-time side effects.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("inferad", "p2p", "scheduler", "proofs", "chain")
TOP_LEVEL_MODULES = ("cli",)

COMPOSITION_ROOT = "inferad.node"
DAEMON_PACKAGES = ("inferad", "cli")
LOWER_PACKAGES = ("p2p", "scheduler", "proofs", "chain")
PURE_PACKAGES = ("scheduler", "proofs")
PURE_MODULES = ("p2p.wire", "p2p.schema")

# Top-level names a pure module must not import (DESIGN §2: "sans-I/O: plain functions and
# dataclasses, no trio, no libp2p, no sockets"; "p2p/wire.py imports no libp2p").
IO_MODULES = frozenset(
    {
        # concurrency and event loops
        "trio", "anyio", "asyncio", "threading", "_thread", "multiprocessing", "concurrent", "signal",
        # network
        "socket", "socketserver", "ssl", "select", "selectors", "http", "urllib", "httpx", "requests",
        "aiohttp", "starlette", "hypercorn", "uvicorn", "libp2p", "multiaddr",
        # processes, environment, files
        "os", "sys", "subprocess", "pathlib", "shutil", "tempfile", "glob", "fileinput", "mmap",
        # clocks (pure layers take `now` as an argument)
        "time",
        # storage
        "plyvel", "sqlite3", "dbm", "shelve",
        # logging (handlers write to files and streams)
        "logging",
        # chain, engine, hardware
        "web3", "eth_account", "eth_tester", "llama_cpp", "pynvml", "psutil", "ctypes",
        # terminal
        "click", "rich",
    }
)  # fmt: skip
IO_BUILTINS = frozenset({"open", "print", "input"})


# --- the import graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a dotted name (a project module when it names one)."""

    name: str
    line: int


@dataclass
class Module:
    name: str
    path: str  # relative to ROOT, for messages
    is_package: bool
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)  # every import, project or not
    edges: dict[str, list[int]] = field(default_factory=dict)  # project module -> lines


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterable[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, ast.If) and _is_type_checking(current.test):
            stack.extend(reversed(current.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(current))))


def _resolve(name: str, known: set[str]) -> str | None:
    """The project module ``name`` refers to: the longest dotted prefix that is one, else None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _imports_of(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> list[Import]:
    """Dotted targets of every runtime import in ``tree``; ``from X import Y`` names ``X.Y`` when
    that is a project module (a submodule), else ``X``."""
    found: list[Import] = []
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.append(Import(submodule if submodule in known else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"})
            )
        ):
            found.append(Import(node.args[0].value, node.lineno))
    return found


def build_graph(sources: Mapping[str, tuple[str, bool, str]]) -> dict[str, Module]:
    """Parse ``{module name: (source, is_package, path)}`` into modules with their import edges.

    Only edges between modules in ``sources`` are kept in :attr:`Module.edges`; a module never has an
    edge to itself through its own name (``from . import x`` inside a package's ``__init__``)."""
    known = set(sources)
    modules: dict[str, Module] = {}
    for name, (source, is_package, path) in sources.items():
        tree = ast.parse(source, filename=path)
        module = Module(name, path, is_package, tree, _imports_of(name, is_package, tree, known))
        for imp in module.imports:
            target = _resolve(imp.name, known)
            if target is not None and target != name:
                lines = module.edges.setdefault(target, [])
                if imp.line not in lines:
                    lines.append(imp.line)
        modules[name] = module
    return modules


@functools.cache
def project() -> dict[str, Module]:
    """The import graph of every project module, read from the working tree."""
    sources: dict[str, tuple[str, bool, str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            sources[".".join(parts)] = (path.read_text(encoding="utf-8"), is_package, str(rel))
    for name in TOP_LEVEL_MODULES:
        path = ROOT / f"{name}.py"
        sources[name] = (path.read_text(encoding="utf-8"), False, path.name)
    return build_graph(sources)


def strongly_connected_components(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in no particular order, members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle_through(start: str, graph: Mapping[str, Iterable[str]], within: set[str]) -> list[str]:
    previous: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child in within and child not in seen:
                seen.add(child)
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Import cycles, each as a path ``[a, b, ..., a]``.

    For every strongly connected component with more than one module (or a module importing itself),
    the shortest cycle through each of its members, rotations removed: every module that is on some
    cycle appears in at least one reported cycle."""
    cycles: list[list[str]] = []
    for component in sorted(strongly_connected_components(graph)):
        members = set(component)
        if len(component) == 1 and component[0] not in set(graph.get(component[0], ())):
            continue
        seen: set[frozenset[tuple[str, str]]] = set()
        for start in component:
            cycle = _shortest_cycle_through(start, graph, members)
            key = frozenset(zip(cycle, cycle[1:], strict=False))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _edges(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    return {name: set(module.edges) for name, module in modules.items()}


def _where(modules: Mapping[str, Module], source: str, target: str) -> str:
    lines = ", ".join(str(line) for line in modules[source].edges[target])
    return f"{modules[source].path}:{lines}"


def _in_package(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _pure(name: str) -> bool:
    return _in_package(name, PURE_PACKAGES) or name in PURE_MODULES


# --- the checker checks itself ------------------------------------------------------------------


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "d": {"c"}}) == []


def test_the_cycle_finder_reports_every_module_of_a_tangle():
    # two cycles sharing b: a <-> b and b <-> c
    cycles = find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})
    assert cycles == [["a", "b", "a"], ["c", "b", "c"]]


def test_the_graph_counts_lazy_and_submodule_imports_and_skips_type_checking():
    sources = {
        "pkg": ("", True, "pkg/__init__.py"),
        "pkg.a": ("from pkg import b\n", False, "pkg/a.py"),
        "pkg.b": ("def later():\n    from . import c\n", False, "pkg/b.py"),
        "pkg.c": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nelse:\n    import os\n",
            False,
            "pkg/c.py",
        ),
        "pkg.d": ("import pkg.a.x\nfrom .b import later\nfrom pkg import version\n", False, "pkg/d.py"),
    }
    graph = build_graph(sources)
    assert _edges(graph) == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": set(),
        "pkg.d": {"pkg.a", "pkg.b", "pkg"},
    }
    assert Import("os", 5) in graph["pkg.c"].imports
    sources["pkg.c"] = ("def later():\n    import pkg.a\n", False, "pkg/c.py")
    assert find_cycles(_edges(build_graph(sources))) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_the_project_graph_is_the_real_tree():
    modules = project()
    for top in (*PACKAGES, *TOP_LEVEL_MODULES):
        assert top in modules, f"{top} was not found under {ROOT}: the layering checks would check nothing"
    assert sum(len(m.edges) for m in modules.values()) > len(modules), "suspiciously few project imports"
    assert "p2p.wire" in modules["p2p.streams"].edges, "`from p2p import wire` must resolve to p2p.wire"


# --- the rules ----------------------------------------------------------------------------------


def test_no_module_imports_another_in_a_cycle():
    modules = project()
    cycles = find_cycles(_edges(modules))
    report = []
    for cycle in cycles:
        steps = "\n".join(
            f"      {a} -> {b}  ({_where(modules, a, b)})" for a, b in zip(cycle, cycle[1:], strict=False)
        )
        report.append(f"  {' -> '.join(cycle)}\n{steps}")
    assert not cycles, (
        f"{len(cycles)} import cycle(s) between project modules (lazy imports inside functions count):\n"
        + "\n".join(report)
        + "\nBreak each cycle: move what both sides need into a module that imports neither, or pass the "
        "collaborator in from inferad/node.py (the composition root) instead of importing it."
    )


def test_nothing_below_the_node_imports_inferad_node():
    modules = project()
    offenders = [
        _where(modules, name, COMPOSITION_ROOT) + f" ({name})"
        for name, module in sorted(modules.items())
        if _in_package(name, PACKAGES) and name != COMPOSITION_ROOT and COMPOSITION_ROOT in module.edges
    ]
    assert not offenders, (
        "only cli.py and the tests may import inferad.node, the composition root (DESIGN §2); imported by:\n  "
        + "\n  ".join(offenders)
        + "\nTake the collaborator you need as a constructor argument and let node.py pass it in."
    )


def test_lower_packages_do_not_import_the_daemon():
    modules = project()
    offenders = [
        f"{name} imports {target} ({_where(modules, name, target)})"
        for name, module in sorted(modules.items())
        if _in_package(name, LOWER_PACKAGES)
        for target in sorted(module.edges)
        if _in_package(target, DAEMON_PACKAGES)
    ]
    assert not offenders, (
        "p2p/, scheduler/, proofs/ and chain/ sit below the daemon and import neither inferad nor cli "
        "(DESIGN §2):\n  " + "\n  ".join(offenders) + "\nMove the shared piece down into the lower package, "
        "or have inferad/ pass it in."
    )


def test_pure_layers_do_no_io():
    modules = project()
    pure = sorted(name for name in modules if _pure(name))
    assert {"scheduler", "proofs", "p2p.wire"} <= set(pure)
    offenders = []
    for name in pure:
        module = modules[name]
        for imp in module.imports:
            top = imp.name.split(".")[0]
            if top in IO_MODULES:
                offenders.append(f"{module.path}:{imp.line} imports {imp.name}")
        for target in sorted(module.edges):
            if not _pure(target):
                offenders.append(f"{_where(modules, name, target)} imports {target}, which is not a pure module")
        for node in _walk_runtime(module.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS:
                offenders.append(f"{module.path}:{node.lineno} calls {node.func.id}()")
    assert not offenders, (
        "scheduler/, proofs/, p2p/wire.py and p2p/schema.py are sans-I/O (DESIGN §2):\n  "
        + "\n  ".join(offenders)
        + "\nTake the value (time, bytes, a random source, a callback) as an argument and do the I/O in "
        "inferad/ or p2p/host.py; return what to log instead of logging it."
    )
