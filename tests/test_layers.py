"""Dependencies point one way (docs/architecture.md, "Layers"): the import graph of the three packages,
read from their source with ``ast`` (imports inside functions count too), has no cycle; nothing below the
command layer imports ``aidi.cli``; and ``aidi`` never imports the operator or the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"aidi": REPO / "aidi", "aidi_operator": REPO / "operator" / "aidi_operator",
         "aidi_trainer": REPO / "jobimage" / "aidi_trainer"}
# The top of the stack: the programs' command layer and the `make demo` driver that runs the programs.
TOP = ("aidi.cli", "aidi.demo")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a name inside one) refers to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for nxt in sorted(graph.get(node, ())):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read() -> None:
    assert "aidi.jobs.podspec" in GRAPH["aidi_operator.trainjobs"]
    assert "aidi.cmdline" in GRAPH["aidi.cli.aidi_main"]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_command_layer_imports_it() -> None:
    below = [m for m in GRAPH if not any(_under(m, top) for top in TOP)]
    upward = {m: sorted(t for t in GRAPH[m] if any(_under(t, top) for top in TOP)) for m in below}
    assert {m: t for m, t in upward.items() if t} == {}, "move what these need below aidi.cli (e.g. aidi.cmdline)"


def test_aidi_never_imports_the_operator_or_the_trainer() -> None:
    wrong = {m: sorted(t for t in targets if not _under(t, "aidi"))
             for m, targets in GRAPH.items() if _under(m, "aidi")}
    assert {m: t for m, t in wrong.items() if t} == {}
