"""Curves and scores from logs (pgolf.exp.logs): both challenge formats written out here, a real tiny
pgolf run (metrics.jsonl and the train.log fallback), malformed lines, and logs without a score."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from exp_runs import train_tiny_run

from pgolf.errors import PgolfError
from pgolf.exp.logs import interpolate_train_seconds, read_run_log, read_run_score, score_from_log_text

# SPEC 2.11 (the baseline) with a few lines no parser should take.
BASELINE_LOG = """\
seed:1337
step:0/20000 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.01ms
step:1/20000 train_loss:6.9370 train_time:410ms step_avg:410.00ms
step:2/20000 train_loss:6.5000 train_time:455ms step_avg:227.50ms
step:3/20000 train_loss:6.1 train_ti
step:x/20000 train_loss:6.1 train_time:10ms
step:4/20000 val_loss:abc val_bpb:1.0
garbage val_loss: nope
{"event": "train", "step": 9
step:200/20000 train_loss:2.9000 train_time:9000ms step_avg:45.00ms
step:200/20000 val_loss:2.8000 val_bpb:1.6583 train_time:9000ms step_avg:45.00ms
stopping_early: wallclock_cap train_time:600038ms step:13780/20000
final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1400ms
final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570
"""

# SPEC 4.15 (R1081): minutes and tok/s instead of milliseconds; validation lines without a time.
R1081_LOG = """\
Hyperparameters:
  seed: 42
  train_batch_tokens: 786432
train_shards: 128
0/20000 val_loss: 9.0090 val_bpb: 3.4877
500/20000 train_loss: 3.1000 train_time: 1.1m tok/s: 6000000
750/20000 val_loss: 2.9000 val_bpb: 1.4000
1000/20000 train_loss: 2.8000 train_time: 2.2m tok/s: 6000000
1000/20000 val_loss: 2.7000 val_bpb: 1.3000
1200/20000 train_loss:
2000/20000 train_loss: 2.5000 train_time: 4.5m
stopping_early: wallclock_cap train_time: 588047ms step: 4550/20000
4550/20000 val_loss: 2.8100 val_bpb: 1.0886
pre-quantization post-ema val_loss:2.80712345 val_bpb:1.08734790 eval_time:7400ms
quantized val_loss:2.84000000 val_bpb:1.09970431 eval_time:25500ms
quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366500ms
"""


def curves(log):
    return ([(p.step, p.train_loss, p.train_seconds) for p in log.train],
            [(p.step, p.val_loss, p.val_bpb, p.train_seconds) for p in log.val])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_baseline_format_and_malformed_lines(tmp_path):
    log = read_run_log(write(tmp_path, "baseline.txt", BASELINE_LOG))
    train, val = curves(log)
    assert train == [(1, 6.937, 0.41), (2, 6.5, 0.455), (200, 2.9, 9.0)]
    assert val == [(0, 6.9357, 4.1077, 0.0), (200, 2.8, 1.6583, 9.0)]
    assert log.end == (13780, 600.038) and log.seed == 1337 and log.name == "baseline.txt"
    score = log.final_score()
    assert (score.label, score.val_loss, score.val_bpb) == ("final_int8_zlib_roundtrip_exact", 2.07269931, 1.2243657)


def test_r1081_format_times_from_tok_s_and_interpolated_validation(tmp_path):
    log = read_run_log(write(tmp_path, "r1081_seed42.log", R1081_LOG))
    train, val = curves(log)
    # seconds = step x 786432 tokens / tok/s; without tok/s, the minutes (4.5 m = 270 s).
    assert train == [(500, 3.1, pytest.approx(65.536)), (1000, 2.8, pytest.approx(131.072)), (2000, 2.5, 270.0)]
    # 750 lies halfway between the points at 500 and 1000; 4550 is where training stopped.
    assert val == [(0, 9.009, 3.4877, 0.0), (750, 2.9, 1.4, pytest.approx(98.304)),
                   (1000, 2.7, 1.3, pytest.approx(131.072)), (4550, 2.81, 1.0886, 588.047)]
    assert log.seed == 42
    assert (log.final_score().label, log.final_score().val_bpb) == ("quantized_ttt", 1.08079352)


def test_r1081_times_fall_back_to_minutes_without_the_batch_size(tmp_path):
    text = "500/20000 train_loss: 3.1000 train_time: 1.1m tok/s: 6000000\n"
    assert curves(read_run_log(write(tmp_path, "no_batch.log", text)))[0] == [(500, 3.1, pytest.approx(66.0))]


def test_a_log_without_a_score_has_curves_but_no_final_score(tmp_path):
    path = write(tmp_path, "crashed.log", "step:1/20000 train_loss:6.9000 train_time:400ms step_avg:400.00ms\n"
                                          "step:2/20000 train_lo")
    log = read_run_log(path)
    assert curves(log)[0] == [(1, 6.9, 0.4)] and log.score is None
    with pytest.raises(PgolfError, match="no final score line"):
        log.final_score()
    with pytest.raises(PgolfError, match="no final score line"):
        read_run_score(path)
    with pytest.raises(PgolfError, match="does not exist"):
        read_run_log(tmp_path / "missing.log")


def test_interpolation_between_and_past_the_anchors():
    anchors = [(0, 0.0), (10, 5.0), (20, 15.0)]
    assert interpolate_train_seconds(15, anchors) == 10.0
    assert interpolate_train_seconds(10, anchors) == 5.0
    assert interpolate_train_seconds(30, anchors) == 22.5  # the average pace, 0.75 s per step
    assert interpolate_train_seconds(5, [(0, 0.0)]) is None


@pytest.fixture(scope="module")
def tiny_run(exp_default_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    report = train_tiny_run(exp_default_data, runs, "curves")
    return runs / "curves", report


def test_a_pgolf_run_reads_its_metrics(tiny_run):
    run_dir, report = tiny_run
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if e["event"] == "train"]
    val_events = [e for e in events if e["event"] == "val"]
    prequant = next(e for e in events if e["event"] == "eval" and e["label"] == "final_prequant")
    seconds_at = {e["step"]: e["train_seconds"] for e in train_events}
    log = read_run_log(run_dir)
    train, val = curves(log)
    assert train == [(e["step"], e["train_loss"], e["train_seconds"]) for e in train_events]
    assert [e["step"] for e in train_events] == [1, 2, 3, 4]
    # Validation at steps 0 and 2 (the clock is paused, so its time is that of step 2's training point),
    # then the final pre-quantization evaluation at the last step.
    assert val == [(0, val_events[0]["val_loss"], val_events[0]["val_bpb"], 0.0),
                   (2, val_events[1]["val_loss"], val_events[1]["val_bpb"], seconds_at[2]),
                   (4, prequant["val_loss"], prequant["val_bpb"], report["train_seconds"])]
    assert log.name == "curves" and log.seed == report["seed"] and log.code_hash == report["code_hash"]
    assert log.final_score().val_bpb == report["val_bpb_final"]


def test_a_runs_metrics_file_gives_the_curves_of_its_directory(tiny_run):
    """``pgolf plot RUN/metrics.jsonl`` draws what ``pgolf plot RUN`` draws: the run's report ends the
    validation curve with the final evaluation at the last step (it found no validation point without it)."""
    run_dir, report = tiny_run
    from_file, from_dir = read_run_log(run_dir / "metrics.jsonl"), read_run_log(run_dir)
    assert curves(from_file) == curves(from_dir) and from_file.name == from_dir.name == "curves"
    assert from_file.val[-1].step == report["steps"]


def test_the_run_records_its_data(tiny_run, exp_default_data):
    """report.json and the metrics header say where the run was started, its data and its tokenizer's
    sha256 (what pgolf eval/quantize/check check a later TOKENIZER_PATH against)."""
    run_dir, report = tiny_run
    expected = hashlib.sha256(exp_default_data.tokenizer_path.read_bytes()).hexdigest()
    assert report["data"]["tokenizer_sha256"] == expected
    assert report["data"]["launch_dir"] == os.getcwd()
    assert Path(report["data"]["data_path"]) == Path(exp_default_data.data_path).resolve()
    header = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "header")
    assert header["data"] == report["data"]
    assert f"tokenizer_sha256:{expected}" in (run_dir / "train.log").read_text()


def test_train_log_is_the_fallback_and_a_cut_metrics_line_is_skipped(tiny_run, tmp_path):
    run_dir, report = tiny_run
    reference = curves(read_run_log(run_dir))
    cut = shutil.copytree(run_dir, tmp_path / "cut")
    with open(cut / "metrics.jsonl", "a") as handle:
        handle.write('{"event": "train", "step": 5, "train_lo')
    assert curves(read_run_log(cut)) == reference

    no_metrics = shutil.copytree(run_dir, tmp_path / "text_only")
    (no_metrics / "metrics.jsonl").unlink()
    (no_metrics / "report.json").unlink()
    train, val = curves(read_run_log(no_metrics))
    assert [p[0] for p in train] == [p[0] for p in reference[0]] and [p[0] for p in val] == [0, 2, 4]
    for mine, theirs in zip(train, reference[0]):  # train.log prints 4 decimals and whole milliseconds
        assert mine[1] == pytest.approx(theirs[1], abs=5e-5) and mine[2] == pytest.approx(theirs[2], abs=5e-4)
    for mine, theirs in zip(val, reference[1]):
        assert mine[2] == pytest.approx(theirs[2], abs=5e-5) and mine[3] == pytest.approx(theirs[3], abs=1e-3)
    text_score = score_from_log_text((run_dir / "train.log").read_text(), "train.log")
    assert text_score.val_bpb == pytest.approx(report["val_bpb_final"], abs=5e-9)
    assert text_score.code_hash == report["code_hash"]


def test_a_resumed_run_keeps_only_the_redone_steps(tmp_path):
    """After ``--resume`` the steps past the checkpoint are logged twice: the later lines win."""
    text = ("seed:7\n"
            "step:2/10 train_loss:5.0000 train_time:100ms step_avg:50.00ms\n"
            "step:4/10 train_loss:4.0000 train_time:200ms step_avg:50.00ms\n"
            "step:6/10 train_loss:3.9000 train_time:300ms step_avg:50.00ms\n"
            "resume:from runs/r/checkpoints/step_00000004 step:4 train_time:200ms\n"
            "step:6/10 train_loss:3.5000 train_time:310ms step_avg:51.67ms\n")
    (tmp_path / "train.log").write_text(text)
    events = [{"event": "train", "step": s, "train_loss": l, "train_seconds": t}
              for s, l, t in ((2, 5.0, 0.1), (4, 4.0, 0.2), (6, 3.9, 0.3))]
    events += [{"event": "resume", "step": 4, "path": "x", "train_seconds": 0.2},
               {"event": "train", "step": 6, "train_loss": 3.5, "train_seconds": 0.31}]
    log_file = tmp_path / "train.log"
    assert [(p.step, p.train_loss) for p in read_run_log(log_file).train] == [(2, 5.0), (4, 4.0), (6, 3.5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert [(p.step, p.train_loss) for p in read_run_log(tmp_path).train] == [(2, 5.0), (4, 4.0), (6, 3.5)]


# ---- a metrics.jsonl away from its run: the final point only where the events give the last step exactly


def test_a_copied_metrics_file_ends_at_the_last_step_when_it_is_iterations(tiny_run, tmp_path):
    """The tiny run trains ITERATIONS=4 steps and logs every step: its last training point is at
    ITERATIONS, which the loop never passes, so it is the last step; the final_prequant evaluation is
    drawn there, at that point's training time (report.json is not beside the copy)."""
    run_dir, report = tiny_run
    copy = tmp_path / "elsewhere" / "metrics.jsonl"
    copy.parent.mkdir()
    shutil.copyfile(run_dir / "metrics.jsonl", copy)
    events = [json.loads(line) for line in copy.read_text().splitlines()]
    last_train = [e for e in events if e["event"] == "train"][-1]
    prequant = next(e for e in events if e["event"] == "eval" and e["label"] == "final_prequant")
    log = read_run_log(copy)
    assert log.end == (report["steps"], last_train["train_seconds"]) == (4, last_train["train_seconds"])
    assert curves(log)[1][-1] == (4, prequant["val_loss"], prequant["val_bpb"], last_train["train_seconds"])
    assert [p[0] for p in curves(log)[1]] == [0, 2, 4]


def test_a_metrics_file_that_does_not_name_the_last_step_gets_no_final_point(tiny_run, tmp_path):
    """Without a training point at ITERATIONS (a wall-clock stop, or a step TRAIN_LOG_EVERY skipped) the
    events do not say where training ended: no point rather than a guessed one. A resume after finished
    training does say it (its event carries the outcome's step and seconds)."""
    run_dir, _ = tiny_run
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    without_last = [e for e in events if not (e["event"] == "train" and e["step"] == 4)]
    cut = write(tmp_path, "cut.jsonl", "".join(json.dumps(e) + "\n" for e in without_last))
    log = read_run_log(cut)
    assert log.end is None and [p.step for p in log.val] == [0, 2]
    resumed = without_last + [{"event": "resume", "step": 4, "path": "x", "train_seconds": 9.5, "training_done": True}]
    log = read_run_log(write(tmp_path, "resumed.jsonl", "".join(json.dumps(e) + "\n" for e in resumed)))
    assert log.end == (4, 9.5) and (log.val[-1].step, log.val[-1].train_seconds) == (4, 9.5)


# ---- why a run directory has no score: each message true for its case


def fake_run_dir(tmp_path, name: str, log: str | None = None, report: str | None = None):
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    if log is not None:
        (run_dir / "train.log").write_text(log)
    if report is not None:
        (run_dir / "report.json").write_text(report)
    return run_dir


HEADER = "pgolf run preset:tiny_cpu code_hash:abc\n"


def score_error(path) -> str:
    with pytest.raises(PgolfError) as error:
        read_run_score(path)
    return str(error.value)


def test_a_diverged_pgolf_train_run_is_not_told_it_always_has_a_report(tmp_path):
    run_dir = fake_run_dir(tmp_path, "diverged", HEADER + "step:3/10 train_loss:9.1\n"
                           "stopping:non_finite_loss step:4 last_finite_loss:9.1000\n"
                           "error: the training loss is nan at step 4 (last finite 9.1000)\n")
    message = score_error(run_dir)
    assert "stopped on an error" in message and "the training loss is nan at step 4" in message
    assert "always" not in message


def test_unfinished_and_exported_runs_are_told_what_happened(tmp_path):
    message = score_error(fake_run_dir(tmp_path, "running", HEADER + "step:3/10 train_loss:9.1\n"))
    assert "has not finished" in message and "pgolf train --resume" in message
    done = fake_run_dir(tmp_path, "evaluating", HEADER)
    (done / "training_done.json").write_text("{}")
    assert "its training finished" in score_error(done)
    lean = fake_run_dir(tmp_path, "lean", "pgolf submission preset:tiny_cpu code_hash:abc seed:1\n")
    message = score_error(lean)
    assert "--full-records" in message and f"give its log instead ({lean / 'train.log'})" in message


def test_a_folder_of_runs_names_the_runs_to_give(tmp_path):
    """A seed group used to get a hint about runs/g1/train.log, which does not exist."""
    group = tmp_path / "g1"
    for seed in (42, 314):
        fake_run_dir(group, f"seed_{seed}", HEADER, "{}")
    (group / "group.json").write_text("{}")
    message = score_error(group)
    assert f"Give {group}/seed_*." in message and "seed group" in message and "train.log" not in message
    with pytest.raises(PgolfError, match=r"is a seed group .* Give .*/seed_\*"):
        read_run_log(group)  # pgolf plot
    sweep = tmp_path / "sw"
    for run in ("a0_reference_seed1", "a1_no_xsa_seed1"):
        fake_run_dir(sweep, run, HEADER)
    (sweep / "plan.json").write_text("{}")
    assert f"like {sweep}/a0_reference_seed*" in score_error(sweep)


@pytest.mark.parametrize("report,fragment", [
    ("{}", "report.json has no val_bpb and no val_loss: it is not the report of a finished run (damaged"),
    ('{"val_loss": 2.0, "val_bpb": "1.2"}', "val_bpb is '1.2', not a number; the file is damaged"),
    ('{"val_loss": 2.0, "val_bpb": 1.2, "val_bpb_final_label": 3}', "val_bpb_final_label is 3"),
])
def test_a_damaged_report_is_called_damaged_not_diverged(tmp_path, report, fragment):
    message = score_error(fake_run_dir(tmp_path, "run", HEADER, report))
    assert fragment in message and "diverged" not in message
