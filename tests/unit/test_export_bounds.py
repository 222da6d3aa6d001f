"""The rewrites bench/export_bounds.py measures: checks removed, only the program's own names shortened."""

import ast
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # export_bounds imports its sibling export_size
SPEC = importlib.util.spec_from_file_location("export_bounds", BENCH / "export_bounds.py")
bounds = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bounds)

PROGRAM = """
import torch
class Scaler:
    def __init__(self, factor):
        if factor <= 0:
            raise ValueError(1)
        self.factor = factor
    def scaled(self, values):
        assert values.ndim == 1, 2
        return torch.zeros_like(values) + values * self.factor
def checked(x):
    if x is None:
        raise TypeError(3)
    else:
        return x
RESULT = Scaler(2).scaled(torch.ones(3)).tolist()
"""


def test_no_checks_removes_raises_guards_and_asserts_only():
    text = bounds.without_checks(PROGRAM)
    # the guard with an else branch is not a bare check: it stays (its raise alone goes)
    assert "ValueError" not in text and "assert" not in text and "if x is None" in text
    namespace: dict = {}
    exec(text, namespace)
    assert namespace["RESULT"] == [2.0, 2.0, 2.0]


def test_short_names_renames_the_programs_names_and_keeps_foreign_ones():
    text = bounds.with_short_names(PROGRAM)
    names = {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
    attributes = {n.attr for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)}
    assert "Scaler" not in names and "factor" not in attributes and "scaled" not in attributes
    assert {"zeros_like", "ones", "tolist", "ndim"} <= attributes and "torch" in names
    namespace: dict = {}
    exec(text, namespace)
    assert [v for k, v in namespace.items() if isinstance(v, list)] == [[2.0, 2.0, 2.0]]
