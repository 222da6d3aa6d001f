"""The package's import graph is a layered DAG: no cycles, no core package importing tooling or the
pipeline, and every pgolf import at module top (a function-level import hides a cycle or an upward
dependency, and costs the one-file export a second look)."""

import ast
from pathlib import Path

import pgolf

PACKAGE_DIR = Path(pgolf.__file__).parent
CORE_PACKAGES = ("data", "model", "optim", "train", "quant", "artifact", "eval")
# Tooling sits on top: it may import anything; nothing below may import it.
TOOLING = ("pgolf.commands", "pgolf.exp", "pgolf.export", "pgolf.cli", "pgolf.__main__")
PIPELINE = ("pgolf.run", "pgolf.report")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def imported_pgolf_modules(node: ast.AST, known: set[str]) -> list[str]:
    """The pgolf modules one import statement names (``from pgolf.x import y`` names ``pgolf.x.y``
    when that is a module, else ``pgolf.x``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "pgolf"]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "pgolf":
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        return [name if name in known else node.module for name in names]
    return []


def import_edges() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the pgolf modules it imports at module level, function-level pgolf imports)."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    nested: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(statement) for statement in tree.body}
        for node in ast.walk(tree):
            targets = [target for target in imported_pgolf_modules(node, known) if target != name]
            if not targets:
                continue
            if id(node) in top_level:
                graph[name].update(target for target in targets if target in known)
            else:
                nested += [f"{name} -> {target} (line {node.lineno})" for target in targets]
    return graph, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(target) == 1:
                return path[path.index(target):] + [target]
            elif not state.get(target):
                state[target] = 1
                path.append(target)
                stack.append(iter(sorted(graph.get(target, ()))))
    return None


def is_within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_there_is_no_import_cycle():
    graph, _ = import_edges()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_core_packages_import_neither_tooling_nor_the_pipeline():
    graph, _ = import_edges()
    core = tuple(f"pgolf.{package}" for package in CORE_PACKAGES)
    upward = [f"{module} -> {target}" for module, targets in graph.items() if is_within(module, core)
              for target in targets if is_within(target, TOOLING + PIPELINE)]
    assert not upward, "core modules importing tooling or the pipeline:\n" + "\n".join(upward)


def test_the_pipeline_imports_no_tooling():
    graph, _ = import_edges()
    upward = [f"{module} -> {target}" for module in PIPELINE for target in graph[module] if is_within(target, TOOLING)]
    assert not upward, "\n".join(upward)


def test_pgolf_imports_are_at_module_top():
    _, nested = import_edges()
    assert not nested, "function-level pgolf imports (move them to the module top):\n" + "\n".join(nested)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
