"""End to end on the embedded default data: train -> quantize -> pack -> round trip -> report, and the
errors a user meets on the way. Tiny settings (a few steps of a 4x128 model) keep this at seconds."""

import json
import math

import pytest
import torch

from pgolf.cli import main as cli_main
from pgolf.commands.configuration import resolve_config
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.errors import ArtifactError, ConfigError, TrainingError
from pgolf.export.bundle import exported_code_bytes
from pgolf.presets import tiny_cpu
from pgolf.quant.model_artifact import load_artifact_into_fresh_model
from pgolf.runtime import Runtime
from pgolf.run import main as run_main

QUICK = {"ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096",
         "VAL_MAX_TOKENS": "8192", "TRAIN_LOG_EVERY": "2"}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


def quick_config(default_data, tmp_path, **extra):
    overrides = {**QUICK, "DATA_PATH": str(default_data.data_path), "TOKENIZER_PATH": str(default_data.tokenizer_path),
                 "RUNS_DIR": str(tmp_path / "runs"), **extra}
    return apply_config_overrides(tiny_cpu(), overrides, source="test")


def test_pipeline_writes_a_complete_run_and_the_artifact_rescores_identically(default_data, tmp_path, capsys):
    report = run_main(quick_config(default_data, tmp_path, RUN_ID="first"), preset_name="tiny_cpu", echo=False)
    run_dir = tmp_path / "runs" / "first"
    for name in ("config.json", "train.log", "metrics.jsonl", "report.json", "final_weights.pgtc",
                 "artifact/final_model.int8.ptz"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["val_bpb"] == report["val_bpb"]
    for key in ("run_id", "preset", "steps", "train_seconds", "val_loss", "val_bpb", "val_bpb_prequant",
                "artifact_bytes", "code_bytes", "total_bytes", "model_params"):
        assert key in report, key
    assert report["steps"] == 4 and report["stopped_by"] == "iterations"
    assert report["model_params"] == 592_144
    assert report["artifact_bytes"] == (run_dir / "artifact/final_model.int8.ptz").stat().st_size
    assert report["total_bytes"] == report["artifact_bytes"] + report["code_bytes"] and report["fits"]
    assert math.isfinite(report["val_bpb"]) and report["val_bpb"] < report["uniform_guess_bpb"]
    assert abs(report["quant_gap_bpb"]) < 0.05  # int8 per-row barely moves a tiny model
    log = (run_dir / "train.log").read_text()
    assert "final_int8_zlib_roundtrip_exact val_loss:" in log and "model_params:592144" in log
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "header" and "artifact" in events and events.count("eval") == 2

    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["val_bpb"] == pytest.approx(report["val_bpb"], rel=1e-12)


def test_a_run_directory_is_never_overwritten(default_data, tmp_path):
    cfg = quick_config(default_data, tmp_path, RUN_ID="same", ITERATIONS="1")
    run_main(cfg, echo=False)
    before = (tmp_path / "runs/same/report.json").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        run_main(cfg, echo=False)
    assert (tmp_path / "runs/same/report.json").read_bytes() == before


def test_same_seed_same_result(default_data, tmp_path):
    a = run_main(quick_config(default_data, tmp_path, RUN_ID="a", ITERATIONS="2"), echo=False)
    b = run_main(quick_config(default_data, tmp_path, RUN_ID="b", ITERATIONS="2"), echo=False)
    assert a["val_bpb"] == b["val_bpb"]


def test_over_the_cap_reports_then_fails(default_data, tmp_path, monkeypatch):
    monkeypatch.setattr("pgolf.quant.model_artifact.ARTIFACT_CAP_BYTES", 100_000)
    with pytest.raises(ArtifactError, match="over"):
        run_main(quick_config(default_data, tmp_path, RUN_ID="big", ITERATIONS="1"), echo=False)
    report = json.loads((tmp_path / "runs/big/report.json").read_text())
    assert report["fits"] is False and report["margin_bytes"] < 0


def test_non_finite_loss_stops_with_the_step_and_keeps_the_log(default_data, tmp_path):
    cfg = quick_config(default_data, tmp_path, RUN_ID="nan", TIED_EMBED_LR="1e300", SCALAR_LR="1e300")
    with pytest.raises(TrainingError, match=r"at step 2 \(last finite loss \d"):
        run_main(cfg, echo=False)
    assert "step:1/4 train_loss:" in (tmp_path / "runs/nan/train.log").read_text()


def test_cli_train_on_the_default_data(default_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGOLF_CACHE_DIR", str(default_data.data_path.parents[2]))
    items = [f"{k}={v}" for k, v in QUICK.items()] + [f"RUNS_DIR={tmp_path}", "ITERATIONS=1"]
    assert cli_main(["train", *items]) == 0
    printed = capsys.readouterr()
    assert "default dataset: " in printed.err and "default dataset" not in printed.out  # a status line
    assert "val_bpb:" in printed.out and "total_bytes:" in printed.out


@pytest.mark.parametrize("items,fragment", [
    (["DATA_PATH=/nonexistent/shards", "TOKENIZER_PATH=/nonexistent/t.model"], "/nonexistent/shards"),
    (["NUM_LAYER=3"], "NUM_LAYERS"),
    (["NUM_LAYERS=three"], "NUM_LAYERS"),
    (["VOCAB_SIZE=2048"], "VOCAB_SIZE"),
    (["DATA_PATH=/somewhere"], "TOKENIZER_PATH"),
])
def test_cli_errors_are_one_clear_line(items, fragment, tmp_path, capsys, monkeypatch, default_data):
    monkeypatch.setenv("PGOLF_CACHE_DIR", str(default_data.data_path.parents[2]))
    assert cli_main(["train", f"RUNS_DIR={tmp_path}", *items]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and fragment in err and "Traceback" not in err


def test_tokenizer_that_does_not_match_the_model(default_data, tmp_path):
    cfg = quick_config(default_data, tmp_path, VOCAB_SIZE="2048")
    with pytest.raises(Exception, match="1024 pieces but VOCAB_SIZE is 2048"):
        run_main(cfg, echo=False)


def test_record_features_sliding_and_ttt_run_end_to_end(default_data, tmp_path):
    """A tiny run with the record's feature kinds on: recurrence switched on mid-run (the artifact is
    evaluated looped, like the trained model), EMA, sliding window and score-first TTT phases."""
    features = {"NUM_LOOPS": "1", "LOOP_START": "1", "LOOP_END": "2", "ENABLE_LOOPING_AT": "0.5",
                "XSA_LAST_N": "2", "ROPE_DIMS": "16", "LN_SCALE": "1", "SKIP_GATES_ENABLED": "1",
                "PARALLEL_RESIDUAL_START": "3", "SMEAR_GATE_ENABLED": "1", "ACTIVATION": "leaky_relu2",
                "MUON_ROW_NORMALIZE": "1", "MUON_WD": "0.05", "EMA_DECAY": "0.9", "TRAIN_LOADER": "shuffled",
                "SLIDING_WINDOW_ENABLED": "1", "EVAL_STRIDE": "32", "VAL_MAX_TOKENS": "2048",
                "TTT_ENABLED": "1", "TTT_CHUNK_TOKENS": "512", "TTT_EPOCHS": "1", "RUN_ID": "rec"}
    report = run_main(quick_config(default_data, tmp_path, **features), preset_name="tiny_cpu", echo=False)
    assert report["looping_enabled_step"] == 2 and report["ema_applied"]
    assert report["val_bpb_final_label"] == "quantized_ttt"
    for label in ("quantized_sliding_window", "quantized_ttt"):
        assert math.isfinite(report[f"val_bpb_{label}"])
    assert set(report["eval_budget"]["phases"]) == {"quantized", "quantized_sliding_window", "quantized_ttt"}
    log = (tmp_path / "runs" / "rec" / "train.log").read_text()
    assert "layer_loop:enabled step:2" in log and "quantized_ttt val_loss:" in log
    # The looped model that was trained is what the artifact reloads: prequant and round trip differ
    # only by quantization, not by a different layer schedule.
    assert abs(report["val_bpb"] - report["val_bpb_prequant"]) < 0.05
    cfg = quick_config(default_data, tmp_path, **features)
    reloaded = load_artifact_into_fresh_model(tmp_path / "runs" / "rec" / "artifact" / "final_model.int8.ptz",
                                              cfg.model, Runtime(torch.device("cpu")))
    assert reloaded.looping


def test_qat_switches_on_in_a_run_and_the_artifact_round_trips(default_data, tmp_path):
    report = run_main(quick_config(default_data, tmp_path, RUN_ID="qat", MATRIX_BITS="5", CLIP_METHOD="sdclip", MODEL_DIM="256",
                                   QAT_START_FRAC="0.5"), preset_name="tiny_cpu", echo=False)
    assert report["qat_enabled_step"] == 2 and math.isfinite(report["val_bpb"])
    assert "qat:enabled step:2" in (tmp_path / "runs" / "qat" / "train.log").read_text()


def test_cli_train_counts_the_exact_exported_script_size(default_data, tmp_path, monkeypatch):
    items = [f"{key}={value}" for key, value in {**QUICK, "DATA_PATH": str(default_data.data_path),
                                                  "TOKENIZER_PATH": str(default_data.tokenizer_path),
                                                  "RUNS_DIR": str(tmp_path / "runs"), "RUN_ID": "cli"}.items()]
    assert cli_main(["train", "--preset", "tiny_cpu", *items]) == 0
    report = json.loads((tmp_path / "runs/cli/report.json").read_text())
    cfg, _, _ = resolve_config("tiny_cpu", items)
    assert report["code_bytes"] == exported_code_bytes(cfg, preset_name="tiny_cpu")
    assert report["code_bytes_note"].startswith("exact")
    assert report["total_bytes"] == report["code_bytes"] + (tmp_path / "runs/cli/artifact/final_model.int8.ptz").stat().st_size
