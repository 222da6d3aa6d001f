"""`pgolf eval RUN_DIR [KEY=value ...]` on a real tiny run: the phases the config enables, timed, saved
under RUN_DIR/evals/ without overwriting, and a clear error for keys the artifact fixes."""

import json
import os
import shutil
from pathlib import Path

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main
from testkit import tiny_run_overrides


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    data = ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)
    runs = tmp_path_factory.mktemp("runs")
    overrides = tiny_run_overrides(data, runs, "evaluated", iterations=3)
    report = run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    return runs / "evaluated", report


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


def eval_json(capsys, run_dir, *items) -> dict:
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), *items, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plain_rescoring_equals_the_run_and_results_are_never_overwritten(finished_run, capsys):
    run_dir, report = finished_run
    first = eval_json(capsys, run_dir)
    assert first["val_bpb"] == pytest.approx(report["val_bpb"], rel=1e-12)
    assert [p["label"] for p in first["phases"]] == ["quantized"] and first["val_bpb_final_label"] == "quantized"
    assert set(first["eval_budget"]["phases"]) == {"quantized"}
    second = eval_json(capsys, run_dir)
    assert first["result_path"] != second["result_path"]
    saved = json.loads(open(first["result_path"]).read())
    assert saved["val_bpb"] == first["val_bpb"] and saved["evaluated_at"] == first["evaluated_at"]
    assert len(list((run_dir / "evals").glob("*.json"))) == 2


def test_overrides_enable_the_sliding_and_ttt_phases(finished_run, capsys):
    run_dir, report = finished_run
    # Stride == window is exactly the plain evaluation: the override reaches the evaluator.
    same = eval_json(capsys, run_dir, "SLIDING_WINDOW_ENABLED=1", "EVAL_STRIDE=64")
    assert same["phases"][1]["val_bpb"] == pytest.approx(report["val_bpb"], rel=1e-6)  # batching: float32 sums
    result = eval_json(capsys, run_dir, "SLIDING_WINDOW_ENABLED=1", "EVAL_STRIDE=16", "TTT_ENABLED=1",
                       "TTT_CHUNK_TOKENS=1024", "TTT_EPOCHS=1")
    labels = [p["label"] for p in result["phases"]]
    assert labels == ["quantized", "quantized_sliding_window", "quantized_ttt"]
    assert abs(result["phases"][1]["val_bpb"] - result["val_bpb"]) > 1e-5  # other windows, other scores
    assert result["overrides"]["TTT_ENABLED"] == "1" and result["val_bpb_final_label"] == "quantized_ttt"
    assert set(result["eval_budget"]["phases"]) == set(labels) and all(p["seconds"] > 0 for p in result["phases"])
    assert all(p["token_count"] == result["token_count"] for p in result["phases"])


def test_lora_ttt_with_phases_and_one_line_per_phase(finished_run, capsys):
    run_dir, _ = finished_run
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), "VAL_MAX_TOKENS=1024", "TTT_ENABLED=1", "TTT_MODE=lora",
                     "TTT_LORA_BATCH_DOCS=4", "TTT_PHASES=2", "TTT_PHASE_PREFIX_DOCS=4", "TTT_CHUNK_TOKENS=64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("quantized val_loss:") and "tokens:1024" in lines[0]
    assert lines[1].startswith("quantized_ttt_lora val_loss:") and "eval_time:" in lines[1]
    assert lines[2].startswith("eval_budget: total") and lines[3].startswith("result: ")


@pytest.mark.parametrize("item", ["NUM_LAYERS=3", "MATRIX_BITS=6", "TRAIN_SEQ_LEN=128"])
def test_keys_the_artifact_fixes_are_refused(finished_run, capsys, item):
    run_dir, _ = finished_run
    assert cli_main(["eval", str(run_dir), item]) == 2
    err = capsys.readouterr().err
    assert item.split("=")[0] in err and "pgolf eval" in err and "Traceback" not in err


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_another_tokenizer_is_refused_before_scoring(finished_run, tmp_path, capsys):
    """The run recorded its tokenizer's sha256: a TOKENIZER_PATH of other content (here the run's
    tokenizer with bytes appended; in practice another tokenizer of the same vocabulary, whose ids name
    other pieces) is refused with both fingerprints, before any data is read."""
    run_dir, report = finished_run
    other = tmp_path / "other.model"
    other.write_bytes(Path(report["data"]["tokenizer_path"]).read_bytes() + b"\0")
    assert cli_main(["eval", str(run_dir), f"TOKENIZER_PATH={other}"]) == 2
    err = capsys.readouterr().err
    assert f"TOKENIZER_PATH={other}" in err and "is not the tokenizer the run" in err
    assert report["data"]["tokenizer_sha256"][:16] in err and "Traceback" not in err


def test_relative_data_paths_are_found_from_the_folder_the_run_started_in(tmp_path, monkeypatch, capsys):
    """A run started with relative DATA_PATH/TOKENIZER_PATH is evaluated from any folder (its config.json
    keeps the relative paths; the run recorded where it was started). When they exist neither there nor
    from here, the error names config.json and says how to give the data's place."""
    data = ensure_default_dataset(tmp_path / "cache", log=lambda _: None)
    monkeypatch.chdir(data.data_path.parent)
    overrides = tiny_run_overrides(data, tmp_path / "runs", "relative", iterations=2)
    overrides.update(DATA_PATH=data.data_path.name, TOKENIZER_PATH=os.path.relpath(data.tokenizer_path))
    report = run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    run_dir = tmp_path / "runs" / "relative"
    assert json.loads((run_dir / "config.json").read_text())["data"]["data_path"] == data.data_path.name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert eval_json(capsys, run_dir)["val_bpb"] == pytest.approx(report["val_bpb"], rel=1e-12)

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "report.json").write_text(json.dumps({**report, "data": {**report["data"], "launch_dir": str(tmp_path / "gone")}}))
    assert cli_main(["eval", str(moved)]) == 2
    err = capsys.readouterr().err
    assert f"DATA_PATH='{data.data_path.name}'" in err and str(moved / "config.json") in err and "does not exist here" in err
    assert eval_json(capsys, moved, f"DATA_PATH={data.data_path}", f"TOKENIZER_PATH={data.tokenizer_path}")["val_bpb"] \
        == pytest.approx(report["val_bpb"], rel=1e-12)
