"""Core modules are flattened into one file for submission, so their top-level names must not collide."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pgolf"
# Tooling modules are never flattened into the submission.
TOOLING = {"cli.py", "__main__.py", "check.py", "data/corpus.py", "data/fineweb.py", "data/tools.py", "quant/tools.py",
           "eval/tools.py", "doctor.py", "profiler.py"}
TOOLING_PACKAGES = ("exp/", "export/")


def top_level_names(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def test_core_top_level_names_are_unique():
    owners = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in TOOLING or relative.startswith(TOOLING_PACKAGES) or path.name == "__init__.py":
            continue
        for name in top_level_names(ast.parse(path.read_text())):
            owners[name].append(relative)
    clashes = {name: files for name, files in owners.items() if len(files) > 1}
    assert not clashes, f"top-level names defined in several core modules: {clashes}"


def test_init_files_hold_no_logic():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert all(isinstance(node, ast.Expr) for node in tree.body), f"{init} must stay empty (docstring only)"
