"""Quantization inside a run (GPTQ calibrated on training shards, fitting to the cap) and `pgolf quantize`
(re-quantize a finished run into a new folder, refuse what cannot change, the rate-distortion sweep).

The model is tiny_cpu with MLP_MULT=5: its MLP matrices (640 x 128 = 81,920 weights) are above the
65,536-element passthrough limit, so they really are quantized to int6 with GPTQ; the tied embedding is
the ninth quantized matrix. A few steps on the embedded default data keep each run at seconds.
"""

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch

import pgolf.commands.quantize as quant_tools
import pgolf.data.run_data
from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.data.shards import find_shards
from pgolf.export.bundle import exported_code_bytes
from pgolf.dist import DistContext
from pgolf.errors import ArtifactError, ConfigError, DataError
from pgolf.log import RunLogger
from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu
from pgolf.commands.check import check_budgets, load_run as check_load_run
from pgolf.commands.quantize import quantize_run
from pgolf.quant.calibration import collect_gptq_hessians
from pgolf.run import main as run_main

QUICK = {"ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096",
         "VAL_MAX_TOKENS": "8192", "TRAIN_LOG_EVERY": "2", "MLP_MULT": "5"}
GPTQ = {"QUANT_METHOD": "gptq", "MATRIX_BITS": "6", "CLIP_METHOD": "sdclip", "GPTQ_CALIBRATION_BATCHES": "3"}
# Quantized matrices of the model: 4 layers x (mlp.fc, mlp.proj) + the tied embedding (via final_norm).
EXPECTED_HESSIANS = 9


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)


def quick_config(default_data, runs_dir, **extra):
    overrides = {**QUICK, "DATA_PATH": str(default_data.data_path), "TOKENIZER_PATH": str(default_data.tokenizer_path),
                 "RUNS_DIR": str(runs_dir), **extra}
    return apply_config_overrides(tiny_cpu(), overrides, source="test")


def force_single_cpu_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    force_single_cpu_process(monkeypatch)


@pytest.fixture(scope="module")
def gptq_run(default_data, tmp_path_factory):
    """One GPTQ int6 run, with every training-loader construction recorded: (run dir, report, loader files)."""
    runs = tmp_path_factory.mktemp("runs")
    loader_files: list[list[str]] = []
    real_build = pgolf.data.run_data.build_train_loader

    def spy(train_loader, vocab_size, ctx, train_files):
        loader_files.append([str(path) for path in train_files])
        return real_build(train_loader, vocab_size, ctx, train_files)

    with pytest.MonkeyPatch.context() as patch:
        force_single_cpu_process(patch)
        patch.setattr("pgolf.train.setup.build_train_loader", spy)  # the training loader
        patch.setattr("pgolf.quant.calibration.build_train_loader", spy)  # GPTQ calibration's
        report = run_main(quick_config(default_data, runs, RUN_ID="gptq", **GPTQ), preset_name="tiny_cpu", echo=False)
    return runs / "gptq", report, loader_files


def test_gptq_run_writes_its_artifact_and_logs_the_calibration(gptq_run):
    run_dir, report, _ = gptq_run
    artifact = run_dir / "artifact" / "final_model.gptq_int6.ptz"
    assert artifact.is_file() and [p.name for p in (run_dir / "artifact").iterdir()] == [artifact.name]
    assert report["artifact_file"] == artifact.name and report["artifact_bytes"] == artifact.stat().st_size
    assert report["total_bytes"] == report["artifact_bytes"] + report["code_bytes"] and report["prune"] is None
    log = (run_dir / "train.log").read_text()
    assert "GPTQ:collecting Hessians from calibration data..." in log
    assert f"GPTQ:collected {EXPECTED_HESSIANS} Hessians in " in log
    assert "quant_plan: blocks.0.mlp.fc.weight 640x128 int8_per_row (mlp) stored:int8 bits:6 clip:sdclip k:12.85" in log
    assert "Quantized weights:" in log and "gptq (int6, sdclip k=12.85): blocks.mlp.fc.weight, blocks.mlp.proj.weight" in log
    assert "final_gptq_int6_zlib_roundtrip_exact val_loss:" in log
    # calibration time is reported against the training budget
    assert report["calibration_seconds"] > 0
    assert report["train_plus_calibration_seconds"] == pytest.approx(report["train_seconds"] + report["calibration_seconds"])
    assert report["train_plus_calibration_fits"] is None  # MAX_WALLCLOCK_SECONDS=0: no cap to fit
    assert "GPTQ:train_time " in log and "of MAX_WALLCLOCK_SECONDS=0 (no cap)" in log
    assert math.isfinite(report["val_bpb"]) and abs(report["quant_gap_bpb"]) < 0.05


def test_calibration_reads_only_training_shards(gptq_run, default_data):
    _, _, loader_files = gptq_run
    assert len(loader_files) == 2  # the training loader, then a fresh one for calibration
    for files in loader_files:
        assert files and all("fineweb_train_" in path and "fineweb_val_" not in path for path in files)
    # handed validation shards, calibration refuses them
    cfg = quick_config(default_data, "unused", **GPTQ)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
    val_files = find_shards(cfg.data.data_path, "val")
    with pytest.raises(DataError):
        collect_gptq_hessians(build_model(cfg.model, ctx.runtime), cfg, ctx, val_files, RunLogger(None))


def test_eval_finds_the_gptq_artifact(gptq_run, capsys):
    run_dir, report, _ = gptq_run
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(report["val_bpb"], rel=1e-12)


def test_over_the_cap_fails_with_the_margin_or_prunes_to_fit(default_data, tmp_path, monkeypatch):
    settings = {"ITERATIONS": "1", "MATRIX_BITS": "6", "CLIP_METHOD": "sdclip"}
    monkeypatch.setattr("pgolf.quant.model_artifact.ARTIFACT_CAP_BYTES", 100_000)
    with pytest.raises(ArtifactError) as failure:
        run_main(quick_config(default_data, tmp_path, RUN_ID="over", FIT_TO_CAP="0", **settings), echo=False)
    over = json.loads((tmp_path / "over" / "report.json").read_text())
    assert not over["fits"] and over["prune"] is None
    assert f"over the 100,000-byte cap by {over['total_bytes'] - 100_000:,} bytes" in str(failure.value)

    cap = over["total_bytes"] - 3_000
    monkeypatch.setattr("pgolf.quant.model_artifact.ARTIFACT_CAP_BYTES", cap)
    fitted = run_main(quick_config(default_data, tmp_path, RUN_ID="fit", FIT_TO_CAP="1", **settings), echo=False)
    artifact = tmp_path / "fit" / "artifact" / fitted["artifact_file"]
    assert fitted["fits"] and fitted["total_bytes"] <= cap
    assert fitted["total_bytes"] == artifact.stat().st_size + fitted["code_bytes"]
    prune = fitted["prune"]
    assert prune["pruned"] > 0 and prune["total_bytes_before"] == over["total_bytes"] > cap
    assert prune["total_bytes_after"] == fitted["total_bytes"] and sum(prune["per_tensor"].values()) == prune["pruned"]
    assert "fit_to_cap: pruned " in (tmp_path / "fit" / "train.log").read_text()
    assert abs(fitted["val_bpb"] - fitted["val_bpb_prequant"]) < 0.05

    monkeypatch.setattr("pgolf.quant.model_artifact.ARTIFACT_CAP_BYTES", 100_000)
    with pytest.raises(ArtifactError, match="even zeroing all"):
        run_main(quick_config(default_data, tmp_path, RUN_ID="hopeless", FIT_TO_CAP="1", **settings), echo=False)


def run_files(run_dir):
    return {path.relative_to(run_dir): path.read_bytes() for path in run_dir.rglob("*")
            if path.is_file() and "quantize" not in path.relative_to(run_dir).parts}


def test_quantize_with_the_runs_own_settings_reproduces_its_artifact(gptq_run):
    run_dir, report, _ = gptq_run
    result = quantize_run(run_dir, {}, name="same", echo=False)
    same = run_dir / "quantize" / "same" / report["artifact_file"]
    assert same.read_bytes() == (run_dir / "artifact" / report["artifact_file"]).read_bytes()
    assert result["val_bpb_prequant"] == report["val_bpb_prequant"] and result["val_bpb"] == report["val_bpb"]


def test_quantize_writes_a_new_folder_and_never_overwrites(gptq_run, capsys):
    run_dir, report, _ = gptq_run
    before = run_files(run_dir)
    capsys.readouterr()
    assert cli_main(["quantize", str(run_dir), "MATRIX_BITS=5", "COMPRESSOR=brotli", "--name", "int5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    out_dir = run_dir / "quantize" / "int5"
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "final_model.gptq_int5.ptz", "quantize.log",
                                                         "report.json"]
    assert json.loads((out_dir / "report.json").read_text()) == result
    assert result["artifact_bytes"] == (out_dir / "final_model.gptq_int5.ptz").stat().st_size
    assert result["total_bytes"] == result["artifact_bytes"] + result["code_bytes"]
    assert result["artifact_bytes"] < report["artifact_bytes"]  # int5 + brotli is smaller than int6 + zlib
    assert result["val_bpb_prequant"] == report["val_bpb_prequant"] and math.isfinite(result["val_bpb"])
    assert result["quant_gap_bpb"] == pytest.approx(result["val_bpb"] - result["val_bpb_prequant"])
    assert run_files(run_dir) == before  # the run itself is untouched
    written = (out_dir / "report.json").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        quantize_run(run_dir, {"MATRIX_BITS": "4"}, name="int5", echo=False)
    assert (out_dir / "report.json").read_bytes() == written


def test_gptq_calibration_counts_in_pgolf_checks_training_budget(gptq_run):
    run_dir, report, _ = gptq_run
    cfg, loaded = check_load_run(run_dir, ["MAX_WALLCLOCK_SECONDS=600"])
    assert report["calibration_seconds"] > 0
    assert report["train_plus_calibration_seconds"] == pytest.approx(report["train_seconds"] + report["calibration_seconds"])
    details = check_budgets(cfg, loaded).details
    assert details[0] == f"training + calibration {report['train_plus_calibration_seconds']:.1f}s of 600s"


def fail_if_evaluated(*_args, **_kwargs):
    raise AssertionError("the pre-quantization evaluation ran before --name was checked")


@pytest.mark.parametrize("bad_name", ["../../escape", "/abs", "a/b", "..", ".", ""])
@pytest.mark.parametrize("sweep", [False, True])
def test_quantize_refuses_a_name_that_is_not_a_plain_folder_before_any_work(gptq_run, monkeypatch, bad_name, sweep):
    run_dir, _, _ = gptq_run
    monkeypatch.setattr(quant_tools, "open_session", fail_if_evaluated)
    action = quant_tools.sweep_run if sweep else quantize_run
    with pytest.raises(ConfigError, match="is not a plain folder name"):
        action(run_dir, {}, name=bad_name, echo=False)
    assert not (run_dir.parent / "escape").exists() and not Path("/abs").exists()
    assert not (run_dir / "quantize" / "a").exists()


@pytest.mark.parametrize("sweep", [False, True])
def test_quantize_refuses_an_existing_name_before_any_work(gptq_run, monkeypatch, capsys, sweep):
    run_dir, _, _ = gptq_run
    taken = run_dir / "quantize" / "taken_by_the_user"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("mine")
    monkeypatch.setattr(quant_tools, "open_session", fail_if_evaluated)
    try:
        assert cli_main(["quantize", str(run_dir), *(["--sweep"] if sweep else []), "--name", taken.name]) == 2
        assert "already exists" in capsys.readouterr().err
        assert (taken / "notes.txt").read_text() == "mine"
    finally:
        shutil.rmtree(taken)


def test_a_failed_quantize_leaves_no_folder_and_the_same_name_can_be_retried(gptq_run, monkeypatch):
    run_dir, _, _ = gptq_run
    out_dir = run_dir / "quantize" / "retried"

    def round_trip_fails(*_args, **_kwargs):
        assert (out_dir / "config.json").is_file()  # the folder existed and held the partial output
        raise RuntimeError("the round trip failed")

    with monkeypatch.context() as patch:
        patch.setattr(quant_tools, "load_artifact_into_fresh_model", round_trip_fails)
        with pytest.raises(RuntimeError, match="the round trip failed"):
            quantize_run(run_dir, {}, name="retried", echo=False)
    assert not out_dir.exists()
    result = quantize_run(run_dir, {}, name="retried", echo=False)
    assert result["output_dir"] == str(out_dir) and (out_dir / "report.json").is_file()


@pytest.mark.parametrize("item,fragment", [
    ("NUM_LAYERS=3", "NUM_LAYERS is in the model section"),
    ("MATRIX_LR=0.1", "MATRIX_LR is in the optim section"),
    ("QAT_START_FRAC=0.5", "QAT_START_FRAC acts during training"),
    ("QUANT_METHOD=awq", "QUANT_METHOD"),
    ("MATRIX_BITS=9", "MATRIX_BITS"),
])
def test_quantize_refuses_what_it_cannot_change(gptq_run, capsys, item, fragment):
    run_dir, _, _ = gptq_run
    existing = sorted((run_dir / "quantize").iterdir()) if (run_dir / "quantize").exists() else []
    assert cli_main(["quantize", str(run_dir), item]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    now = sorted((run_dir / "quantize").iterdir()) if (run_dir / "quantize").exists() else []
    assert now == existing


def test_quantize_needs_the_full_precision_weights(gptq_run, tmp_path, capsys):
    run_dir, _, _ = gptq_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("quantize"))
    (copy / "final_weights.pgtc").unlink()
    assert cli_main(["quantize", str(copy)]) == 2
    assert "no full-precision weights" in capsys.readouterr().err


def png_text_chunks(path):
    """The tEXt chunks of a PNG file, read with plain struct (independent of matplotlib)."""
    data, chunks, offset = path.read_bytes(), {}, 8
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            chunks[key.decode("latin-1")] = value.decode("latin-1")
        offset += 12 + length
    return chunks


def test_sweep_writes_the_rate_distortion_table_and_plot(gptq_run, monkeypatch, capsys):
    run_dir, report, _ = gptq_run
    schemes = {label: settings for label, settings in quant_tools.SWEEP_SCHEMES.items()
               if label in ("rtn int8 percentile", "rtn int6 sdclip", "gptq int6 sdclip")}
    monkeypatch.setattr("pgolf.commands.quantize.SWEEP_SCHEMES", schemes)
    monkeypatch.setattr("pgolf.commands.quantize.available_model_compressor_names", lambda: ["zlib", "pergroup"])
    capsys.readouterr()
    assert cli_main(["quantize", str(run_dir), "--sweep", "--name", "sweep", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(row["scheme"], row["compressor"]) for row in rows] == [
        (scheme, compressor) for scheme in schemes for compressor in ("zlib", "pergroup")]
    out_dir = run_dir / "quantize" / "sweep"
    assert json.loads((out_dir / "sweep.json").read_text())["rows"] == rows
    csv_lines = (out_dir / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scheme,") and len(csv_lines) == len(rows) + 1
    log = (out_dir / "quantize.log").read_text()
    assert "rate-distortion sweep" in log and "gptq int6 sdclip" in log and "sweep.png" in log
    for scheme in schemes:  # one evaluation per scheme, whatever the compressor
        assert len({row["val_bpb"] for row in rows if row["scheme"] == scheme}) == 1
    # the run used exactly "gptq int6 sdclip" + zlib: same round-trip score and the same bytes
    run_row = next(row for row in rows if row["scheme"] == "gptq int6 sdclip" and row["compressor"] == "zlib")
    assert run_row["val_bpb"] == report["val_bpb"] and run_row["model_bytes"] == report["artifact_bytes"]
    assert all(row["total_bytes"] == row["model_bytes"] + row["code_bytes"] for row in rows)
    # code bytes are the exported script's, exactly as `pgolf train` counts them
    cfg = quant_tools.load_run_config(run_dir, {})
    assert result["code_bytes"] == exported_code_bytes(cfg, preset_name="tiny_cpu")
    # the plot: its points (read back from the PNG) are exactly the table's rows
    points = json.loads(png_text_chunks(out_dir / "sweep.png")[quant_tools.SWEEP_PNG_POINTS_KEY])
    assert sorted((p["scheme"], p["compressor"], p["total_bytes"], p["val_bpb"]) for p in points) == sorted(
        (row["scheme"], row["compressor"], row["total_bytes"], row["val_bpb"]) for row in rows)


def test_sweep_without_matplotlib_still_writes_the_table(tmp_path, monkeypatch):
    rows = [{"scheme": "rtn int8 percentile", "compressor": "zlib", "total_bytes": 1000, "val_bpb": 3.5}]
    summary = {"run_dir": "r", "val_bpb_prequant": 3.4, "cap_bytes": 16_000_000}
    monkeypatch.setattr(quant_tools, "Figure", None)  # what the guarded import leaves without matplotlib
    notes = quant_tools.write_sweep_files(tmp_path, rows, summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.json"]
    assert "no sweep.png: matplotlib is not installed" in notes[0]
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows


def test_pergroup_artifact_scores_exactly_like_the_runs_and_pgolf_eval_reads_it(gptq_run, tmp_path, capsys):
    run_dir, report, _ = gptq_run
    pergroup = quantize_run(run_dir, {"COMPRESSOR": "pergroup", "BYTE_SHUFFLE_STRIDE": "2"}, name="pergroup", echo=False)
    assert (pergroup["artifact_compressor"], pergroup["artifact_shuffle_stride"]) == ("pergroup", 2)
    assert pergroup["val_bpb"] == report["val_bpb"]  # the run's codes (zlib), restored bit for bit: the same score
    pergroup_blob = Path(pergroup["artifact_path"]).read_bytes()
    assert pergroup_blob[:5] == b"PGZ\x05\x02" and pergroup_blob[5:9] == b"PGRP"
    # `pgolf eval` on a run whose artifact is the pergroup one
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("quantize"))
    (copy / "artifact" / report["artifact_file"]).write_bytes(pergroup_blob)
    capsys.readouterr()
    assert cli_main(["eval", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(pergroup["val_bpb"], rel=1e-12)


def test_find_run_artifact_prefers_the_report_then_the_single_file(tmp_path):
    artifact_dir = tmp_path / "artifact"
    artifact_dir.mkdir()
    with pytest.raises(ArtifactError, match="no artifact"):
        quant_tools.find_run_artifact(tmp_path)
    (artifact_dir / "final_model.int6.ptz").write_bytes(b"x")
    assert quant_tools.find_run_artifact(tmp_path) == artifact_dir / "final_model.int6.ptz"
    (artifact_dir / "final_model.int8.ptz").write_bytes(b"y")
    with pytest.raises(ArtifactError, match="several artifacts"):
        quant_tools.find_run_artifact(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"artifact_file": "final_model.int8.ptz"}))
    assert quant_tools.find_run_artifact(tmp_path) == artifact_dir / "final_model.int8.ptz"
