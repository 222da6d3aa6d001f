"""The hostile probes of issue 17 that need no training: each used to end in a traceback, a silent wrong
result or work done before a failure; each is now a one-line error naming the setting, file or argument
(docs/reliability.md lists them with the tests that reproduce them)."""

import json
import math

import pytest
import torch

from pgolf.cli import main as cli_main
from pgolf.commands.check import find_artifact
from pgolf.config import Config, ModelConfig, TrainConfig, config_to_json, validate_config
from pgolf.errors import ConfigError, PgolfError, TrainingError
from pgolf.exp.logs import read_run_score
from pgolf.fsutil import require_writable_directory
from pgolf.presets import tiny_cpu
from pgolf.report import json_safe_report, refuse_non_finite_scores
from pgolf.train import memory
from pgolf.train.memory import check_training_fits_memory, count_parameters_without_allocating
from pgolf.train.resume import TRAINING_DONE_FILE, finished_training, set_aside_unfinished_outputs
from testkit import RecordingLogger, unwritable


def one_line_error(capsys, argv: list[str]) -> str:
    """Run a command that must fail with a PgolfError: exit 2 and no traceback; its message."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


# ---- configuration (items 7, 8, 9) ----

@pytest.mark.parametrize("setting,fragment", [
    ("NUM_HEADS=0", "NUM_HEADS=0"),  # was ZeroDivisionError
    ("NUM_HEADS=-2", "NUM_HEADS=-2"),  # was a negative tensor dimension
    ("MLP_MULT=nan", "MLP_MULT='nan' is not a finite number"),  # was ValueError converting NaN
    ("MLP_MULT=0.001", "MLP_MULT=0.001 gives an MLP of"),  # a 0-wide MLP
    ("LOGIT_SOFTCAP=inf", "LOGIT_SOFTCAP='inf' is not a finite number"),
    ("MATRIX_LR=nan", "MATRIX_LR='nan'"),
    ("MAX_WALLCLOCK_SECONDS=inf", "MAX_WALLCLOCK_SECONDS='inf'"),
    ("GRAD_CLIP_NORM=-inf", "GRAD_CLIP_NORM='-inf'"),
    ("TIED_EMBED_INIT_STD=-1", "TIED_EMBED_INIT_STD=-1.0 must be >= 0"),  # was torch's normal_ error
    ("SEED=-1", "SEED=-1 must be in [0, 4294967295]"),
    ("SEED=18446744073709551616", "SEED=18446744073709551616"),
    ("BETA1=1", "BETA1=1.0"),
    ("ADAM_EPS=-1", "ADAM_EPS=-1.0 must be >= 0"),
    ("MUON_BACKEND_STEPS=0", "MUON_BACKEND_STEPS=0 must be >= 1"),
    ("ROPE_BASE=0", "ROPE_BASE=0.0 must be > 0"),  # was blamed on the learning rates
    ("ROPE_BASE=-5", "ROPE_BASE=-5.0 must be > 0"),
    ("ITERATIONS=-1", "ITERATIONS=-1 must be >= 1"),  # trained 0 steps with a time budget and exited 0
    ("TTT_LORA_TARGETS=c_q,qkv", "TTT_LORA_TARGETS has 'qkv'"),  # failed after training and quantization
])
def test_a_setting_outside_its_range_is_one_line_naming_it(setting, fragment, capsys):
    assert fragment in one_line_error(capsys, ["describe", "--preset", "tiny_cpu", setting])


def test_non_finite_values_are_refused_in_export_too(tmp_path, capsys):
    err = one_line_error(capsys, ["export", "tiny_cpu", "LOGIT_SOFTCAP=nan", "-o", str(tmp_path / "t.py")])
    assert "LOGIT_SOFTCAP='nan' is not a finite number" in err and not (tmp_path / "t.py").exists()


def test_a_config_built_in_python_is_checked_the_same_way():
    with pytest.raises(ConfigError, match="MLP_MULT=nan is not a finite number"):
        validate_config(Config(model=ModelConfig(mlp_mult=math.nan)))
    with pytest.raises(ConfigError, match="ITERATIONS=0 must be >= 1"):
        validate_config(Config(train=TrainConfig(iterations=0)))
    with pytest.raises(ConfigError, match="TTT_LORA_TARGETS is empty but TTT_MODE=lora"):
        validate_config(Config(ttt=tiny_cpu().ttt.__class__(ttt_mode="lora", ttt_lora_targets=())))


# ---- a diverged run's report (item 4; the run itself: tests/e2e/test_reliability.py) ----

def test_the_report_is_valid_json_whatever_it_holds(tmp_path):
    report = {"val_bpb": math.nan, "eval_budget": {"phases": {"quantized_ttt": math.inf}}, "steps": 3}
    safe = json_safe_report(report)
    assert safe == {"val_bpb": None, "eval_budget": {"phases": {"quantized_ttt": None}}, "steps": 3,
                    "non_finite": {"val_bpb": "nan", "eval_budget.phases.quantized_ttt": "inf"}}
    json.dumps(safe, allow_nan=False)
    with pytest.raises(TrainingError, match=r"no valid score \(val_bpb=nan\)"):
        refuse_non_finite_scores(report, tmp_path / "report.json")
    refuse_non_finite_scores({"eval_budget": {"total_seconds": math.inf}}, tmp_path / "report.json")  # not a score


# ---- memory (item 9) ----

def test_describe_estimates_a_huge_model_without_allocating_it(capsys):
    assert cli_main(["describe", "--preset", "tiny_cpu", "MODEL_DIM=65536"]) == 0  # used to exhaust the memory
    out = capsys.readouterr().out
    assert "model_params: 120327372816" in out and "training holds at least 1793.02 GiB" in out


def test_a_model_too_large_for_free_memory_is_refused_with_the_estimate(monkeypatch):
    cfg = tiny_cpu()
    params = count_parameters_without_allocating(cfg.model)
    assert params == 592_144
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 16 * params - 1)
    with pytest.raises(ConfigError, match=r"592,144 parameters: training holds at least 9\.0 MiB .* only"):
        check_training_fits_memory(cfg, torch.device("cpu"))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 16 * params)
    check_training_fits_memory(cfg, torch.device("cpu"))


# ---- significance and final scores (items 4, 9) ----

def write_log(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


PREQUANT_ONLY = ("seed:1\nfinal_prequant val_loss:2.0700 val_bpb:1.2200 eval_time:900ms\n"
                 "final_prequant_exact val_loss:2.07000000 val_bpb:1.22000000\n")


def test_a_log_cut_off_before_its_round_trip_has_no_score(tmp_path):
    """It used to give the pre-quantization number, the better one, as the run's score."""
    with pytest.raises(PgolfError, match="BEFORE quantization"):
        read_run_score(write_log(tmp_path, "cut.txt", PREQUANT_ONLY))


def test_a_nan_final_line_is_refused_not_skipped_for_an_earlier_one(tmp_path):
    text = PREQUANT_ONLY + "final_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan\n"
    with pytest.raises(PgolfError, match="not a finite number"):
        read_run_score(write_log(tmp_path, "nan.txt", text))


@pytest.mark.parametrize("report,fragment", [
    ('{"val_loss": NaN, "val_bpb": NaN, "seed": 1}', "not a finite number"),  # a report from before the fix
    ('{"val_loss": null, "val_bpb": null, "non_finite": {"val_bpb": "nan"}}', "not a finite number"),
    ('{"val_loss": 0.0, "val_bpb": 0.0}', "a real score is above 0"),  # was a ZeroDivisionError
    ('{"val_loss": 2.0, "val_b', "report.json is not a readable JSON file"),
])
def test_significance_refuses_reports_without_a_real_score(tmp_path, capsys, report, fragment):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(report)
    assert fragment in one_line_error(capsys, ["significance", str(run), str(run), "--against", "1.2"])


def good_logs(tmp_path) -> list[str]:
    return [str(write_log(tmp_path, f"s{i}.txt", f"final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:{bpb}\n"))
            for i, bpb in enumerate((1.20, 1.201, 1.199))]


@pytest.mark.parametrize("arguments,fragment", [
    (["--against", "nan"], "--against nan"),
    (["--against", "-1"], "--against -1.0"),
    (["--against", "1.3", "--alpha", "5"], "--alpha 5.0"),
    (["--against", "1.3", "--alpha", "0"], "--alpha 0.0"),
    (["--against", "1.3", "--margin", "-1"], "--margin -1.0"),  # would call a worse mean significant
    (["--against", "1.3", "--margin", "inf"], "--margin inf"),
])
def test_significance_refuses_absurd_arguments(tmp_path, capsys, arguments, fragment):
    assert fragment in one_line_error(capsys, ["significance", *good_logs(tmp_path), *arguments])


# ---- check (item 5) and damaged run files (item 9) ----

def test_check_uses_the_artifact_of_the_directory_it_is_given(tmp_path):
    for run in ("original", "copy"):
        (tmp_path / run / "artifact").mkdir(parents=True)
        (tmp_path / run / "artifact" / "final_model.int8.ptz").write_bytes(run.encode())
    report = {"artifact_path": str(tmp_path / "original" / "artifact" / "final_model.int8.ptz"),
              "artifact_file": "final_model.int8.ptz"}
    assert find_artifact(tmp_path / "copy", report) == tmp_path / "copy" / "artifact" / "final_model.int8.ptz"
    older = {"artifact_path": report["artifact_path"]}  # a report without artifact_file
    assert find_artifact(tmp_path / "copy", older) == tmp_path / "copy" / "artifact" / "final_model.int8.ptz"


def fake_run(tmp_path, config_text: str | None = None, report_text: str | None = None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config_text if config_text is not None else config_to_json(tiny_cpu()))
    if report_text is not None:
        (run / "report.json").write_text(report_text)
    return run


@pytest.mark.parametrize("command", [["check"], ["eval"], ["quantize"], ["export"], ["train", "--resume"]])
def test_a_damaged_config_json_is_named(tmp_path, capsys, command):
    run = fake_run(tmp_path, config_text='{"model": {"num_layers": 2,', report_text="{}")
    output = ["-o", str(tmp_path / "t.py")] if command == ["export"] else []
    err = one_line_error(capsys, [*command, str(run), *output])
    assert f"{run / 'config.json'} is not a readable JSON file" in err


def test_a_config_json_of_the_wrong_shape_is_named(tmp_path, capsys):
    run = fake_run(tmp_path, config_text='{"model": 5}', report_text="{}")
    assert "is not a pgolf config.json" in one_line_error(capsys, ["eval", str(run)])


def test_a_damaged_report_json_is_named(tmp_path, capsys):
    run = fake_run(tmp_path, report_text="[1, 2")
    assert f"{run / 'report.json'} is not a readable JSON file" in one_line_error(capsys, ["check", str(run)])


# ---- output locations that cannot be written fail before the work (item 9) ----

def no_work(*args, **kwargs):
    raise AssertionError("the work started although its output cannot be written")


def test_plot_into_a_missing_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pgolf.exp.plot.read_run_log", no_work)
    err = one_line_error(capsys, ["plot", str(tmp_path), "-o", str(tmp_path / "missing" / "curves.png")])
    assert f"the directory {tmp_path / 'missing'} does not exist" in err


@pytest.mark.parametrize("command,work", [
    (["check", "{run}"], "pgolf.commands.check.run_checks"),
    (["eval", "{run}"], "pgolf.commands.eval.evaluate_run"),
    (["quantize", "{run}"], "pgolf.commands.quantize.open_session"),
    (["quantize", "{run}", "--sweep"], "pgolf.commands.quantize.open_session"),
    (["plot", "{run}", "-o", "{run}/curves.png"], "pgolf.exp.plot.read_run_log"),
    (["export", "tiny_cpu", "-o", "{run}/train_gpt.py"], "pgolf.commands.export.build_exported_script"),
    (["profile", "--preset", "tiny_cpu", "-o", "{run}/profile"], "pgolf.commands.profile.profile_training"),
])
def test_a_read_only_output_location_fails_before_the_work(tmp_path, capsys, monkeypatch, command, work):
    run = fake_run(tmp_path, report_text='{"preset": "tiny_cpu"}')
    monkeypatch.setattr(work, no_work)
    with unwritable(run):
        err = one_line_error(capsys, [part.format(run=run) for part in command])
    assert "not writable" in err and "nothing was done" in err


def test_resuming_a_run_in_a_read_only_directory_names_the_lock(tmp_path, capsys, monkeypatch):
    """It used to end in a PermissionError traceback while taking the run's lock."""
    run = fake_run(tmp_path)
    outcome = {"steps": 6, "train_seconds": 1.0, "tokens_seen": 3072, "last_train_loss": 6.9,
               "stopped_by": "iterations", "looping_enabled_step": None, "ema_applied": False, "qat_enabled_step": None}
    (run / TRAINING_DONE_FILE).write_text(json.dumps({"outcome": outcome, "preset": "tiny_cpu"}))
    (run / "final_weights.pgtc").write_bytes(b"weights")
    monkeypatch.setattr("pgolf.commands.train.exported_code_bytes", lambda cfg, preset_name: 50_000)
    monkeypatch.setattr("pgolf.run.run_pipeline", no_work)
    monkeypatch.setattr("pgolf.run.prepare_validation_data", lambda cfg: None)  # the fake run has no data
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")
    with unwritable(run):
        err = one_line_error(capsys, ["train", "--resume", str(run)])
    assert f"cannot write the lock {run / 'run.lock'}" in err


def test_profile_refuses_steps_it_cannot_run(capsys, monkeypatch):
    monkeypatch.setattr("pgolf.commands.profile.profile_training", no_work)
    assert "--steps -1" in one_line_error(capsys, ["profile", "--preset", "tiny_cpu", "--steps", "-1"])
    assert "--warmup -3" in one_line_error(capsys, ["profile", "--preset", "tiny_cpu", "--warmup", "-3"])


def test_the_writability_check_leaves_nothing_behind(tmp_path):
    assert require_writable_directory(tmp_path / "a" / "b", "x") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(PgolfError, match="is not a directory"):
        require_writable_directory(tmp_path / "file" / "sub", "x")


# ---- what a resumed run keeps (item 1) ----

def test_unfinished_outputs_are_moved_aside_never_deleted(tmp_path):
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "final_model.int8.ptz").write_bytes(b"artifact")
    (tmp_path / "final_weights.pgtc").write_bytes(b"weights")  # written, but killed before its marker
    logger = RecordingLogger()
    set_aside_unfinished_outputs(tmp_path, logger, keep_final_weights=False)
    names = sorted(path.name.split("_2")[0] for path in tmp_path.iterdir())  # <name>.unfinished_<time>
    assert names == ["artifact.unfinished", "final_weights.unfinished"]
    assert [path.read_bytes() for path in sorted(tmp_path.glob("final_weights.unfinished_*.pgtc"))] == [b"weights"]
    assert (next(tmp_path.glob("artifact.unfinished_*")) / "final_model.int8.ptz").read_bytes() == b"artifact"
    (tmp_path / "final_weights.pgtc").write_bytes(b"trained")
    (tmp_path / "artifact").mkdir()  # an empty folder (killed before its file) holds nothing to keep
    set_aside_unfinished_outputs(tmp_path, logger, keep_final_weights=True)
    assert (tmp_path / "final_weights.pgtc").read_bytes() == b"trained" and not (tmp_path / "artifact").exists()
    assert all("moved" in line for line in logger.lines)


def test_a_damaged_training_marker_is_named_with_the_way_out(tmp_path):
    assert finished_training(tmp_path) is None
    (tmp_path / TRAINING_DONE_FILE).write_text("{")
    with pytest.raises(PgolfError, match=f"{TRAINING_DONE_FILE} is not a readable JSON file.*move"):
        finished_training(tmp_path)
    (tmp_path / TRAINING_DONE_FILE).write_text(json.dumps({"outcome": {"steps": 3}}))
    with pytest.raises(TrainingError, match="does not hold a training outcome"):
        finished_training(tmp_path)
