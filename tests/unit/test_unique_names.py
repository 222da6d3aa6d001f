"""Core modules are flattened into one file for submission, so their top-level names must not collide."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pgolf"
# Tooling is never flattened into the submission; it is recognised by where it lives (folders, and the
# two entry files), so a new command module needs no entry here.
TOOLING_FOLDERS = ("commands/", "exp/", "export/")
TOOLING_FILES = ("cli.py", "__main__.py")


def is_tooling(relative: str) -> bool:
    return relative.startswith(TOOLING_FOLDERS) or relative in TOOLING_FILES


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
        if is_tooling(relative) or path.name == "__init__.py":
            continue
        for name in top_level_names(ast.parse(path.read_text())):
            owners[name].append(relative)
    clashes = {name: files for name, files in owners.items() if len(files) > 1}
    assert not clashes, f"top-level names defined in several core modules: {clashes}"


def test_init_files_hold_no_logic():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert all(isinstance(node, ast.Expr) for node in tree.body), f"{init} must stay empty (docstring only)"
