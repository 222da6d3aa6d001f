"""Resuming real runs on the embedded default data: a run killed with SIGKILL mid-run, one stopped by
Ctrl-C and one that crashed under auto-resume all continue from their last checkpoint and end with the
same losses (bit for bit) and score as an uninterrupted run of the same seed. A run that crashed after
training (in evaluation) continues from its final weights without training again (issue 17, item 1)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from testkit import run_config, run_items
import torch

from pgolf.cli import main as cli_main
from pgolf.errors import ConfigError, PgolfError
from pgolf import run as run_module
from pgolf import steps as steps_module
from pgolf.run import main as run_main
from pgolf.train import loop as loop_module

REPO = Path(__file__).resolve().parents[2]
# A very small model and batch: the run's fixed costs (imports, data, evaluation) dominate anyway.
QUICK = {"ITERATIONS": "6", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
         "VAL_MAX_TOKENS": "1024", "TRAIN_LOG_EVERY": "1", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2",
         "NUM_KV_HEADS": "1"}
# Runs a training command whose 5th optimizer step, once done, hangs: the kill lands mid-run, after
# the step-4 checkpoint, with the model and loader already past it.
HANGING_TRAIN = textwrap.dedent("""
    import sys, time
    import pgolf.train.loop as loop
    real_step, calls = loop.run_training_step, []
    def step_then_hang_at_five(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            print("HANGING", flush=True)
            time.sleep(600)
        return loss
    loop.run_training_step = step_then_hang_at_five
    from pgolf.cli import main
    sys.exit(main(sys.argv[1:]))
""")


pytestmark = pytest.mark.usefixtures("single_cpu_process")  # tests/e2e/conftest.py


def items(default_data, runs_dir, **extra) -> list[str]:
    return run_items(default_data, runs_dir, QUICK, **extra)


def config(default_data, runs_dir, **extra):
    return run_config(default_data, runs_dir, QUICK, **extra)


@pytest.fixture(scope="module")
def reference(default_data, tmp_path_factory):
    """The uninterrupted run: its report and its train losses by step."""
    runs = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_AUTO_RESUME"):
            patch.delenv(key, raising=False)
        patch.setenv("PGOLF_DEVICE", "cpu")
        report = run_main(config(default_data, runs, RUN_ID="reference"), echo=False)
    return report, train_losses(runs / "reference")


def train_losses(run_dir: Path, after_last_resume: bool = False) -> dict[int, float]:
    """Step -> train loss from metrics.jsonl (full precision); the newest event wins for a repeated step."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if after_last_resume:
        starts = [i for i, event in enumerate(events) if event["event"] == "resume"]
        events = events[starts[-1]:]
    return {event["step"]: event["train_loss"] for event in events if event["event"] == "train"}


def assert_same_as_reference(run_dir: Path, resumed_from: int, reference) -> None:
    ref_report, ref_losses = reference
    report = json.loads((run_dir / "report.json").read_text())
    after = train_losses(run_dir, after_last_resume=True)
    assert sorted(after) == list(range(resumed_from + 1, 7))
    assert after == {step: ref_losses[step] for step in after}  # bit for bit
    assert report["steps"] == 6
    assert (report["val_loss"], report["val_bpb"]) == (ref_report["val_loss"], ref_report["val_bpb"])
    log = (run_dir / "train.log").read_text()
    assert log.count("pgolf run preset:") == 2  # appended, never truncated
    assert f"step:{resumed_from} " in log and f"/checkpoints/step_{resumed_from:08d} step:{resumed_from}" in log


def wait_for_line(process: subprocess.Popen, marker: str) -> list[str]:
    """Read the process's output until a line contains ``marker`` (the test's timeout bounds the wait)."""
    lines = []
    while not lines or marker not in lines[-1]:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("training exited before " + marker + ":\n" + "".join(lines))
        lines.append(line)
    return lines


def test_sigkilled_run_resumes_to_the_uninterrupted_result(default_data, tmp_path, reference):
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # The same thread count as this process, so both compute the same floating-point sums.
    env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), PGOLF_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    command = [sys.executable, "-c", HANGING_TRAIN, "train", *items(default_data, tmp_path, RUN_ID="killed",
                                                                        CHECKPOINT_EVERY="2")]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    run_dir = tmp_path / "killed"
    try:
        output = wait_for_line(process, "HANGING")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert any(line.startswith("checkpoint:saved step:4") for line in output)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "report.json").exists()
    before_kill = train_losses(run_dir)
    # Killed after the 5th update, before its loss was logged: steps 1-4 are in the log, as in the reference.
    assert before_kill == {step: reference[1][step] for step in range(1, 5)}

    assert cli_main(["train", "--resume", str(run_dir)]) == 0
    assert_same_as_reference(run_dir, 4, reference)


def test_ctrl_c_writes_a_checkpoint_exits_130_and_resumes(default_data, tmp_path, reference, monkeypatch, capsys):
    real_step, calls = loop_module.run_training_step, []

    def ctrl_c_during_step_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the step still finishes
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_training_step", ctrl_c_during_step_three)
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="ctrl_c")]) == 130
    run_dir = tmp_path / "ctrl_c"
    assert "pgolf train --resume" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "step_00000003" / "manifest.json").is_file()
    assert "interrupted:step:3" in (run_dir / "train.log").read_text()
    assert sorted(train_losses(run_dir)) == [1, 2, 3]

    monkeypatch.setattr(loop_module, "run_training_step", real_step)
    assert cli_main(["train", "--resume", str(run_dir), "TRAIN_LOG_EVERY=1"]) == 0
    assert_same_as_reference(run_dir, 3, reference)
    assert cli_main(["train", "--resume", str(run_dir)]) == 2  # finished runs are never resumed
    assert "finished run" in capsys.readouterr().err


def test_ctrl_c_after_training_says_how_to_finish_and_resume_does(default_data, tmp_path, reference, monkeypatch,
                                                                   capsys):
    """Ctrl-C in quantization or evaluation printed only "pgolf train: interrupted": now the message (and
    train.log) says the weights are kept and `--resume` evaluates them, which then gives the same score."""
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    real_quantize = run_module.quantize_and_score
    monkeypatch.setattr(run_module, "quantize_and_score", ctrl_c)
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="late")]) == 130
    run_dir = tmp_path / "late"
    err = capsys.readouterr().err
    assert "interrupted after training" in err and f"pgolf train --resume {run_dir}" in err
    assert "interrupted: interrupted after training" in (run_dir / "train.log").read_text()
    monkeypatch.setattr(run_module, "quantize_and_score", real_quantize)
    assert cli_main(["train", "--resume", str(run_dir)]) == 0
    report, ref_report = json.loads((run_dir / "report.json").read_text()), reference[0]
    assert (report["steps"], report["val_bpb"]) == (ref_report["steps"], ref_report["val_bpb"])


def test_damaged_final_weights_point_at_the_newest_checkpoint(default_data, tmp_path, monkeypatch, capsys):
    """The final weights of a run stopped after training, damaged: the error said the run must be trained
    again, though its checkpoints let it train on; it now names the newest one and the two moves."""
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "quantize_and_score", ctrl_c)
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="fw", CHECKPOINT_EVERY=3)]) == 130
    run_dir = tmp_path / "fw"
    weights = run_dir / "final_weights.pgtc"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"final weights {weights} cannot be read" in err and "newest checkpoint (step_00000003)" in err
    assert f"move {weights} and {run_dir / 'training_done.json'} aside" in err


def test_auto_resume_continues_a_crashed_run_with_the_same_command(default_data, tmp_path, reference, monkeypatch):
    real_step, calls = loop_module.run_training_step, []

    def crash_at_step_four(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("worker lost")
        return real_step(*args, **kwargs)

    # PGOLF_AUTO_RESUME is a config field: the environment variable reaches it through the CLI's
    # configuration (test_auto_resume_from_the_environment_through_the_cli), run.main reads the field.
    cfg = config(default_data, tmp_path, RUN_ID="auto", CHECKPOINT_EVERY="2", PGOLF_AUTO_RESUME="1")
    monkeypatch.setattr(loop_module, "run_training_step", crash_at_step_four)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_main(cfg, echo=False)  # RUN_ID did not exist: a fresh start
    monkeypatch.setattr(loop_module, "run_training_step", real_step)
    with pytest.raises(ConfigError, match="already exists"):
        run_main(config(default_data, tmp_path, RUN_ID="auto", CHECKPOINT_EVERY="2"), echo=False)
    with pytest.raises(ConfigError, match="NUM_LAYERS=3"):
        run_main(config(default_data, tmp_path, RUN_ID="auto", NUM_LAYERS="3", PGOLF_AUTO_RESUME="1"), echo=False)
    run_main(cfg, echo=False)  # what a restarted torchrun worker group does: the same command again
    assert_same_as_reference(tmp_path / "auto", 2, reference)


def test_auto_resume_from_the_environment_through_the_cli(default_data, tmp_path, monkeypatch, capsys):
    """torchrun restarts run the same command; PGOLF_AUTO_RESUME=1 in the environment reaches the run's
    config field, so an existing (checkpoint-less) directory is continued from step 0, not refused."""
    (tmp_path / "restarted").mkdir()
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="restarted")]) == 2  # refused: exists
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setenv("PGOLF_AUTO_RESUME", "1")
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="restarted")]) == 0
    assert json.loads((tmp_path / "restarted" / "report.json").read_text())["steps"] == 6


def test_two_writers_of_one_run_directory_are_refused_before_training(default_data, tmp_path, monkeypatch):
    """Two launches with one RUN_ID and auto-resume: the second names the first and trains nothing."""
    (tmp_path / "shared").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "shared" / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(PgolfError, match=f"in use by process {holder.pid}"):
            run_main(config(default_data, tmp_path, RUN_ID="shared", PGOLF_AUTO_RESUME="1"), echo=False)
        assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == ["run.lock"]
    finally:
        holder.kill()
        holder.wait()
    report = run_main(config(default_data, tmp_path, RUN_ID="shared", PGOLF_AUTO_RESUME="1"), echo=False)
    assert report["steps"] == 6 and not (tmp_path / "shared" / "run.lock").exists()


EXTRA_EVALUATION_PHASES = steps_module.extra_evaluation_phases


def crash_in_evaluation(*args, **kwargs):
    """What a TTT phase that runs out of memory does, after training, quantization and the round trip."""
    raise RuntimeError("TTT out of memory")


def test_a_run_interrupted_after_training_continues_from_its_final_weights(default_data, tmp_path, reference,
                                                                           monkeypatch):
    """Issue 17 item 1: a crash in evaluation, after training, then --resume: the final weights are kept and
    quantized and evaluated again; nothing trains again and nothing is deleted."""
    monkeypatch.setattr(steps_module, "extra_evaluation_phases", crash_in_evaluation)
    with pytest.raises(RuntimeError, match="TTT out of memory"):
        cli_main(["train", *items(default_data, tmp_path, RUN_ID="late", CHECKPOINT_EVERY="2")])
    run_dir = tmp_path / "late"
    weights = (run_dir / "final_weights.pgtc").read_bytes()
    first_artifact = sorted(path.name for path in (run_dir / "artifact").iterdir())
    assert (run_dir / "training_done.json").is_file() and first_artifact and not (run_dir / "report.json").exists()
    trained = train_losses(run_dir)

    monkeypatch.setattr(steps_module, "extra_evaluation_phases", EXTRA_EVALUATION_PHASES)
    assert cli_main(["train", "--resume", str(run_dir)]) == 0
    log = (run_dir / "train.log").read_text()
    assert "resume:removed" not in log and log.count("train_done steps:6") == 1  # trained once
    assert "resume:from " + str(run_dir / "final_weights.pgtc") + " step:6" in log
    assert train_losses(run_dir) == trained  # no step ran again
    assert (run_dir / "final_weights.pgtc").read_bytes() == weights
    aside = list(run_dir.glob("artifact.unfinished_*"))
    assert len(aside) == 1 and sorted(path.name for path in aside[0].iterdir()) == first_artifact
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["steps"], report["val_loss"], report["val_bpb"]) == (6, reference[0]["val_loss"],
                                                                         reference[0]["val_bpb"])


def test_an_evaluation_crash_that_repeats_under_restarts_never_retrains(default_data, tmp_path, reference,
                                                                          monkeypatch):
    """torchrun --max-restarts runs the same command again after each crash: with the training done, each
    restart quantizes and evaluates again, and keeps what the crashed attempts wrote."""
    cfg = config(default_data, tmp_path, RUN_ID="restarts", PGOLF_AUTO_RESUME="1")
    monkeypatch.setattr(steps_module, "extra_evaluation_phases", crash_in_evaluation)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="TTT out of memory"):
            run_main(cfg, echo=False)
    monkeypatch.setattr(steps_module, "extra_evaluation_phases", EXTRA_EVALUATION_PHASES)
    report = run_main(cfg, echo=False)
    run_dir = tmp_path / "restarts"
    assert (run_dir / "train.log").read_text().count("train_done steps:") == 1
    assert len(list(run_dir.glob("artifact.unfinished_*"))) == 2  # both crashed attempts' artifacts kept
    assert (report["val_loss"], report["val_bpb"]) == (reference[0]["val_loss"], reference[0]["val_bpb"])
