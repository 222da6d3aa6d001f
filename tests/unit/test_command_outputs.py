"""`pgolf export` output paths and --json stdout, and `pgolf check`'s messages for a missing run directory and
for a run of the default (lean) exported script (pgolf/commands/export.py, pgolf/commands/check.py)."""

import argparse
import json
from pathlib import Path

import pytest

from pgolf.commands import export as export_command
from pgolf.commands.check import load_run, run_check_command
from pgolf.commands.export import export_output_paths, run_export_command
from pgolf.commands.configuration import fill_default_data
from pgolf.config import Config, apply_config_overrides
from pgolf.errors import PgolfError
from pgolf.export.bundle import ExportedScript
from pgolf.presets import tiny_cpu


def test_a_folder_output_means_train_gpt_py_inside_it(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    assert export_output_paths(str(existing)) == (existing / "train_gpt.py", existing / "train_gpt.readable.py")
    new = tmp_path / "newdir"
    assert export_output_paths(f"{new}/") == (new / "train_gpt.py", new / "train_gpt.readable.py")
    assert export_output_paths(str(tmp_path / "mine.py")) == (tmp_path / "mine.py", tmp_path / "mine.readable.py")


def test_an_existing_output_is_refused_without_blaming_missing_o(tmp_path):
    (tmp_path / "train_gpt.readable.py").write_text("mine")
    with pytest.raises(PgolfError, match=r"train_gpt.readable.py already exists; pgolf export never overwrites. "
                                         r"Move it away, or give -o another file or folder."):
        export_output_paths(str(tmp_path))
    assert (tmp_path / "train_gpt.readable.py").read_text() == "mine"


def test_json_stdout_holds_only_the_json(tmp_path, monkeypatch, capsys):
    def noisy_target_config(target, overrides):
        print("default dataset: reusing /somewhere")  # as fill_default_data does
        return Config(), "tiny_cpu"

    script = ExportedScript(readable="print(1)\n", minified="print(1)", wrapped=b"print(1)\n", modules=(),
                            preset_name="tiny_cpu", code_hash="0123456789abcdef", baked_code_bytes=True)
    monkeypatch.setattr(export_command, "export_target_config", noisy_target_config)
    monkeypatch.setattr(export_command, "build_exported_script", lambda cfg, **_: script)
    args = argparse.Namespace(target="tiny_cpu", overrides=[], output=f"{tmp_path / 'out'}/", json=True)
    assert run_export_command(args) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["output"] == str(tmp_path / "out" / "train_gpt.py")
    assert "default dataset: reusing" in printed.err
    assert (tmp_path / "out" / "train_gpt.py").read_bytes() == b"print(1)\n"


def test_check_names_a_missing_run_directory(tmp_path):
    args = argparse.Namespace(run_dir=str(tmp_path / "nope"), overrides=[], json=False)
    with pytest.raises(PgolfError, match=r"the run directory .*nope does not exist"):
        run_check_command(args)


def test_check_of_a_lean_exported_run_says_to_export_with_full_records(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # what the default exported script writes, without report.json
    with pytest.raises(PgolfError, match=r"report.json not found.*exported with `pgolf export --full-records`"):
        load_run(tmp_path, [])


def test_the_default_dataset_status_goes_to_stderr(tmp_path, capsys):
    """`pgolf seeds --json` / `pgolf sweep --json` printed "default dataset: ..." before their JSON on stdout:
    the line is a status, so it goes to stderr, for every command."""
    cfg = apply_config_overrides(tiny_cpu(), {"PGOLF_CACHE_DIR": str(tmp_path)}, source="test")
    filled = fill_default_data(cfg)
    printed = capsys.readouterr()
    assert printed.out == "" and "default dataset: " in printed.err
    assert Path(filled.data.data_path).is_dir()
