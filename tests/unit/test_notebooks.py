"""The cloud notebooks (notebooks/*.ipynb): valid nbformat-4 JSON written by notebooks/make_notebooks.py,
every ``!pgolf`` line parses with pgolf's own parser, and each launch line runs here as ``--dry-run``
(its preset and overrides resolve and validate on this CPU machine)."""

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from pgolf.cli import build_parser, main as cli_main

try:
    import nbformat
except ImportError:  # optional: the structural checks below stand in for its schema
    nbformat = None

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("colab_t4.ipynb", "kaggle_2xt4.ipynb")


def generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pgolf_lines(notebook: dict) -> list[list[str]]:
    lines = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            lines += [shlex.split(line.strip()[1:])[1:] for line in "".join(cell["source"]).splitlines()
                      if line.strip().startswith("!pgolf ")]
    return lines


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_and_generated(name):
    text = (NOTEBOOKS_DIR / name).read_text(encoding="utf-8")
    assert text == generator().notebook_text(name), "run: python notebooks/make_notebooks.py"
    notebook = json.loads(text)
    assert notebook["nbformat"] == 4 and isinstance(notebook["nbformat_minor"], int)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    if nbformat is not None:
        nbformat.validate(nbformat.reads(text, as_version=4))


@pytest.mark.parametrize("name", NAMES)
def test_every_pgolf_command_parses_and_the_launch_resolves(name, monkeypatch, capsys):
    for key in ("PGOLF_PRESET", "RUNS_DIR", "CHECKPOINT_SYNC", "PGOLF_AUTO_RESUME"):
        monkeypatch.delenv(key, raising=False)
    commands = pgolf_lines(json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8")))
    assert [argv[0] for argv in commands] == ["doctor", "launch", "plot"]
    for argv in commands:
        build_parser().parse_args(argv)  # argparse exits (fails the test) on anything it does not accept
    launch = next(argv for argv in commands if argv[0] == "launch")
    assert cli_main([*launch, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "PGOLF_AUTO_RESUME=1" in out and "--preset t4" in out
