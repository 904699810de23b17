"""The package's shape: no import cycle, modules of a readable size, every named query exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgqueue.sqlfiles import queries

PACKAGE = Path(__file__).resolve().parent.parent / "pgqueue"
CLI = Path(__file__).resolve().parent.parent / "cli" / "pgqueue_cli"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every pgqueue module `name` imports, wherever the import stands: at the top, inside a
    function, or under `if TYPE_CHECKING:` (a lower module naming a higher one's type still
    depends on it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from . import pages` depends on pages (the package itself is loaded anyway)
            targets = ([base] if node.module else []) + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # `from . import tracing` names a module; `from .ops import Op` names one inside it
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_counts_function_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "pgqueue" / "low.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .app import PgQueue\n"
                      "def f():\n    from . import worker\n    from .ops import Op\n")
    known = {"pgqueue.low", "pgqueue.app", "pgqueue.worker", "pgqueue.ops", "pgqueue"}
    assert imported("pgqueue.low", source, known) == {"pgqueue.app", "pgqueue.worker", "pgqueue.ops"}


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    # the package's __init__ re-exports the public names: it imports everything and nothing imports it
    graph.pop("pgqueue", None)
    for deps in graph.values():
        deps.discard("pgqueue")
    assert cycles(graph) == [], "modules that import each other in a circle (lower layers must not import higher ones)"


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_readable(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept (at most about {MAX_LINES})"


def named_queries_used() -> list[tuple[str, str]]:
    """(file, query name) for every literal name given to `statement(...)` or `query(...)`
    (both names of `statement("a.x" if cond else "a.y")`)."""
    used = []
    for path in [*PACKAGE.rglob("*.py"), *CLI.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Name | ast.Attribute)):
                continue
            if (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) not in ("statement", "query"):
                continue
            arg = node.args[0]
            for value in (arg.body, arg.orelse) if isinstance(arg, ast.IfExp) else (arg,):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    used.append((path.name, value.value))
    return used


def test_every_named_query_exists() -> None:
    used = named_queries_used()
    assert len(used) > 50  # the scan finds the package's statements
    missing = [(where, name) for where, name in used if name not in queries()]
    assert missing == [], "queries named in code but absent from sql/queries/<group>.sql"


def test_every_query_is_used() -> None:
    used = {name for _, name in named_queries_used()}
    # the dashboard names its queries through a helper that prefixes its group
    dashboard = {f"dashboard.{name}" for name in _dashboard_names()}
    unused = sorted(set(queries()) - used - dashboard)
    assert unused == [], "named queries no code uses: delete them or use them"


def test_no_string_literal_of_a_query_spans_lines() -> None:
    """sqlfiles._compact strips each line's indentation, which would change such a literal."""
    spanning = [(path.name, number, line) for path in sorted((PACKAGE.parent / "sql" / "queries").glob("*.sql"))
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if not line.strip().startswith("--") and line.split("--")[0].count("'") % 2]
    assert spanning == []


def test_compacted_queries_fit_the_drivers_cache() -> None:
    """psycopg parses a query of up to 4 KiB once; a longer one on every call (the hot path's
    statements must stay under it)."""
    for name in ("worker.claim", "worker.complete", "worker.heartbeat", "durable.record_steps", "runs.enqueue_one"):
        assert len(queries()[name]) <= 4096, name


def _dashboard_names() -> set[str]:
    source = (PACKAGE / "dashboard" / "queries.py").read_text()
    return {node.args[0].value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_q"
            and node.args and isinstance(node.args[0], ast.Constant)}


def architecture_layers() -> list[set[str]]:
    """The modules of each layer of ARCHITECTURE.md's table, top layer first."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    names = modules()
    layers = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| Layer", "| ---")):
            continue
        files = line.split("|")[2]
        members: set[str] = set()
        for entry in (part.strip().strip("`") for part in files.split(",")):
            if entry.endswith(".py"):
                members.add(f"pgqueue.{entry.removesuffix('.py')}")
            elif entry.endswith("/") and not entry.startswith("cli/"):
                package = f"pgqueue.{entry.rstrip('/')}"
                members |= {name for name in names if name == package or name.startswith(package + ".")}
        layers.append(members)
    return layers


def test_every_module_imports_only_from_its_layer_or_above() -> None:
    layers = architecture_layers()
    layer_of = {name: i for i, members in enumerate(layers) for name in members}
    graph = import_graph()
    unplaced = sorted(set(graph) - set(layer_of) - {"pgqueue"})
    assert unplaced == [], "modules missing from ARCHITECTURE.md's table of layers: place them"
    upward = sorted((name, dep) for name, deps in graph.items() if name in layer_of
                    for dep in deps if dep in layer_of and layer_of[dep] > layer_of[name])
    assert upward == [], "imports from a lower layer (see ARCHITECTURE.md): move the code, or the module"
