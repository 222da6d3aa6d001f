"""Reading finished (or crashed) runs: training curves, validation points and final scores (tooling).

Three sources are understood:

* a pgolf run directory: ``metrics.jsonl`` is authoritative (one JSON event per line: ``header``,
  ``train``, ``val``, ``eval``); ``train.log`` is the fallback when it is missing or holds no curve;
  ``report.json`` gives the final score and where training ended;
* a pgolf ``train.log`` or a log of the challenge's own ``train_gpt.py``, in the baseline's format
  (SPEC 2.11: ``step:200/20000 train_loss:2.9 train_time:9000ms step_avg:45.00ms``,
  ``step:200/20000 val_loss:2.8 val_bpb:1.6 train_time:9000ms ...``) or the R1081 format (SPEC 4.15:
  ``500/20000 train_loss: 3.1 train_time: 1.1m tok/s: 7700000``, ``4000/20000 val_loss: 2.1 val_bpb: 1.1``);
* a ``metrics.jsonl`` file on its own.

The final score of a log is its LAST ``<label> val_loss:<x> val_bpb:<y>`` line (e.g.
``final_int8_zlib_roundtrip_exact ...`` or ``quantized_ttt ...``: the records report their last evaluation
phase). In-training validation lines (``step:200/20000 val_loss:...``) are not scores. Lines that match
no known form, or match one only partly (a line cut off by a crash), are ignored.

Validation lines of pgolf and of R1081 carry no training time; it is interpolated from the training
points around them (exact when the validation step is also a logged training step, since the training
clock is paused while validating).
"""

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.train.resume import TRAINING_DONE_FILE, read_json_file

_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
# Scores may read nan or inf (a diverged run): such a line is still the run's last score, and is refused
# as one (checked_final_score) rather than skipped in favour of an earlier line.
SCORE_LINE = re.compile(r"^(?P<label>[A-Za-z][\w\-]*) val_loss:(?P<loss>[0-9.]+|[-+]?nan|[-+]?inf) "
                        r"val_bpb:(?P<bpb>[0-9.]+|[-+]?nan|[-+]?inf)")
SEED_LINE = re.compile(r"\bseed[:=]\s*(?P<seed>\d+)", re.IGNORECASE)
CODE_HASH_LINE = re.compile(r"\bcode_hash:(?P<hash>[0-9a-f]+)\b")
# The baseline's (and pgolf's) curve lines; pgolf's validation lines have no train_time.
STEP_TRAIN_LINE = re.compile(rf"^step:(?P<step>\d+)/\d+ train_loss:(?P<loss>{_NUMBER}) train_time:(?P<ms>{_NUMBER})ms")
STEP_VAL_LINE = re.compile(rf"^step:(?P<step>\d+)/\d+ val_loss:(?P<loss>{_NUMBER}) val_bpb:(?P<bpb>{_NUMBER})"
                           rf"(?: train_time:(?P<ms>{_NUMBER})ms)?(?:\s|$)")
# R1081's curve lines: training time in minutes (one decimal), and tok/s = step x batch tokens / seconds.
R1081_TRAIN_LINE = re.compile(rf"^(?P<step>\d+)/\d+ train_loss: (?P<loss>{_NUMBER}) train_time: (?P<minutes>{_NUMBER})m"
                              rf"(?: tok/s: (?P<tok_s>{_NUMBER}))?(?:\s|$)")
R1081_VAL_LINE = re.compile(rf"^(?P<step>\d+)/\d+ val_loss: (?P<loss>{_NUMBER}) val_bpb: (?P<bpb>{_NUMBER})(?:\s|$)")
BATCH_TOKENS_LINE = re.compile(r"^\s*train_batch_tokens:\s*(?P<tokens>\d+)")
# Where training ended: the challenge's early stop, or pgolf's summary line.
STOP_LINE = re.compile(r"^stopping_early: wallclock_cap train_time: ?(?P<ms>\d+(?:\.\d+)?)ms step: ?(?P<step>\d+)/")
DONE_LINE = re.compile(r"^train_done steps:(?P<step>\d+) train_time:(?P<ms>\d+(?:\.\d+)?)ms")
PREQUANT_LABEL = "final_prequant"  # pgolf's evaluation of the trained weights, at the last step


@dataclass(frozen=True)
class RunScore:
    source: str
    label: str
    val_loss: float
    val_bpb: float
    seed: int | None = None
    code_hash: str | None = None
    val_subset: bool | None = None  # scored on part of the validation split (report.json; None: not known)

    @property
    def tokens_per_byte(self) -> float:
        """bpb = loss / ln 2 x tokens / bytes, so tokens / bytes = bpb x ln 2 / loss."""
        return self.val_bpb * math.log(2.0) / self.val_loss


@dataclass(frozen=True)
class TrainPoint:
    step: int
    train_loss: float
    train_seconds: float | None


@dataclass(frozen=True)
class ValPoint:
    step: int
    val_loss: float
    val_bpb: float
    train_seconds: float | None  # training time when it was measured (the clock is paused meanwhile)


@dataclass
class RunLog:
    """Everything a log says about one run. ``name`` labels it in plots (run id or file name)."""

    name: str
    source: str
    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    score: RunScore | None = None
    seed: int | None = None
    code_hash: str | None = None
    end: tuple[int, float] | None = None  # (last step, training seconds) when the log says where it ended

    def final_score(self) -> RunScore:
        """The final score, or a clear error for a run that never got one."""
        if self.score is None:
            raise PgolfError(f"{self.source} has no final score line (like `final_int8_zlib_roundtrip_exact "
                             "val_loss:... val_bpb:...`); the run did not finish, or this is not a training log.")
        return self.score


# ---- final scores (what `pgolf significance` and `pgolf record` read) ----

# Why a run directory may lack report.json (for commands that cannot look inside it: see
# missing_report_message for the explanation of one directory).
NO_REPORT_HINT = ("A run of an exported train_gpt.py writes report.json only when the script was exported "
                  "with `pgolf export --full-records`; a `pgolf train` run writes it when it finishes (also "
                  "when its score is not finite), not when it stopped during training (a non-finite loss, "
                  "Ctrl-C, a crash: its train.log says which).")
# The first line of train.log: `pgolf train` writes ``pgolf run preset:...`` (pgolf/report.py), an
# exported train_gpt.py ``pgolf submission preset:...`` (pgolf/submission.py).
SUBMISSION_HEADER = re.compile(r"^pgolf submission preset:", re.MULTILINE)
# What pgolf/run.py's log_failure writes when a run stops on an error, and the loop's non-finite stop.
ERROR_LINE = re.compile(r"^error: (?P<message>.+)$", re.MULTILINE)
NON_FINITE_STOP_LINE = re.compile(r"^stopping:non_finite_loss step:(?P<step>\d+)", re.MULTILINE)


def _runs_inside(folder: Path) -> list[Path]:
    """The run directories directly inside ``folder`` (a seed group's or a sweep's)."""
    if not folder.is_dir():
        return []
    return [child for child in folder.iterdir()
            if child.is_dir() and ((child / "report.json").is_file() or (child / "train.log").is_file())]


def _folder_of_runs_message(folder: Path, runs: list[Path]) -> str:
    """``folder`` holds runs (a seed group, a sweep) but is not one: name the runs to give instead."""
    names = sorted(run.name for run in runs)
    if (folder / "group.json").is_file() or all(name.startswith("seed_") for name in names):
        what, give = "a seed group (`pgolf seeds`)", f"{folder}/seed_*"
    elif (folder / "plan.json").is_file():
        arm = names[0].rsplit("_seed", 1)[0]
        what, give = "a sweep (`pgolf sweep`)", f"the runs of one arm, like {folder}/{arm}_seed*"
    else:
        what, give = "a folder of runs", f"the run folders inside it, like {folder / names[0]}"
    listed = ", ".join(names[:4]) + (f", ... ({len(names)} runs)" if len(names) > 4 else "")
    return f"{folder} is {what}, not a run: it holds {listed}. Give {give}."


def missing_report_message(run_dir: Path, *, logs_accepted: bool = True) -> str:
    """Why ``run_dir`` has no report.json, as far as its files tell, and what to give instead.
    ``logs_accepted``: the command also reads a run's train.log (`pgolf significance` does, `pgolf record`
    needs report.json)."""
    log_path = run_dir / "train.log"
    runs = _runs_inside(run_dir)
    if runs and not log_path.is_file():
        return _folder_of_runs_message(run_dir, runs)
    if not log_path.is_file():
        return (f"{run_dir} has neither report.json nor train.log: it is not a pgolf run directory. Give finished "
                "pgolf run directories" + (" or log files." if logs_accepted else "."))
    text = log_path.read_text(encoding="utf-8", errors="replace")
    errors = ERROR_LINE.findall(text)
    if errors:
        return (f"{run_dir} has no report.json: the run stopped on an error and has no score ({errors[-1]}). "
                f"See {log_path}.")
    if stop := NON_FINITE_STOP_LINE.search(text):
        return (f"{run_dir} has no report.json: its training loss became non-finite at step {stop['step']} (the "
                f"run diverged) and it has no score. See {log_path}.")
    if SUBMISSION_HEADER.search(text):
        instead = (f"give its log instead ({log_path})" if logs_accepted else
                   "export with `pgolf export --full-records` and run the seeds with that script")
        return (f"{run_dir} was written by an exported train_gpt.py, which writes report.json only when it was "
                f"exported with `pgolf export --full-records`: {instead}.")
    if (run_dir / TRAINING_DONE_FILE).is_file():
        return (f"{run_dir} has no report.json: its training finished ({TRAINING_DONE_FILE}) but the run stopped "
                f"before its report (in quantization or evaluation), or is still there. `pgolf train --resume "
                f"{run_dir}` quantizes and evaluates its final weights again, without training.")
    return (f"{run_dir} has no report.json: the run has not finished (it is still running, or was stopped by "
            f"Ctrl-C or a crash before writing it; {log_path} ends where it stopped). `pgolf train --resume "
            f"{run_dir}` continues it from its last checkpoint.")


def _last_score(text: str, source: str) -> RunScore | None:
    matches = [m for m in map(SCORE_LINE.match, text.splitlines()) if m and not m.group("label").startswith("step")]
    if not matches:
        return None
    last = matches[-1]
    seeds = SEED_LINE.findall(text)
    hashes = CODE_HASH_LINE.findall(text)
    return RunScore(source, last.group("label"), float(last.group("loss")), float(last.group("bpb")),
                    int(seeds[0]) if seeds else None, hashes[0] if hashes else None)


def checked_final_score(score: RunScore) -> RunScore:
    """``score`` if it is a real final score: of the quantized model (not pgolf's ``final_prequant``, the
    evaluation before quantization, which a log cut off after it ends with), finite, and positive."""
    if score.label.startswith(PREQUANT_LABEL):
        raise PgolfError(f"{score.source} ends with {score.label}, the evaluation BEFORE quantization, and has no "
                         "score of the quantized model (like `final_int8_zlib_roundtrip_exact val_loss:... "
                         "val_bpb:...`): the run stopped before its round trip. Give finished runs.")
    values = (score.val_loss, score.val_bpb)
    if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in values):
        raise PgolfError(f"{score.source}: its score {score.label} is not a finite number (val_loss={score.val_loss}, "
                         f"val_bpb={score.val_bpb}): the run diverged and has no score to test.")
    if score.val_loss <= 0 or score.val_bpb <= 0:
        raise PgolfError(f"{score.source}: its score {score.label} has val_loss={score.val_loss}, "
                         f"val_bpb={score.val_bpb}; a real score is above 0. The log or report is damaged.")
    return score


def score_from_log_text(text: str, source: str) -> RunScore:
    """The last score line of a log, checked (:func:`checked_final_score`)."""
    return checked_final_score(RunLog(source, source, score=_last_score(text, source)).final_score())


def _report_number(report: dict, key: str, report_path: Path):
    """A score field of report.json: a number, or None (a diverged run's report holds null); anything
    else means the file is damaged."""
    value = report[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise PgolfError(f"{report_path}: {key} is {value!r}, not a number; the file is damaged. Restore it from "
                         "a copy of the run, or give the run's train.log.")
    return value


def score_from_run_dir(run_dir: Path) -> RunScore:
    """A pgolf run: ``report.json``'s final score (the last evaluation phase), as written (not checked:
    a diverged run's report holds null). A report without its score fields is damaged, and said so."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise PgolfError(missing_report_message(run_dir))
    report = read_json_file(report_path, "restore it from a copy of the run")
    label = report.get("val_bpb_final_label", "quantized")
    if not isinstance(label, str) or not label:
        raise PgolfError(f"{report_path}: val_bpb_final_label is {label!r}, not a phase name; the file is damaged.")
    loss_key = f"val_loss_{label}" if f"val_loss_{label}" in report else "val_loss"
    bpb_key = "val_bpb_final" if "val_bpb_final" in report else "val_bpb"
    missing = [key for key in (bpb_key, loss_key) if key not in report]
    if missing:
        raise PgolfError(f"{report_path} has no {' and no '.join(missing)}: it is not the report of a finished run "
                         "(damaged or cut short); restore it from a copy of the run, or give the run's train.log.")
    loss, bpb = _report_number(report, loss_key, report_path), _report_number(report, bpb_key, report_path)
    seed = report.get("seed")
    return RunScore(str(run_dir), label, loss, bpb, seed if isinstance(seed, int) else None, report.get("code_hash"),
                    report.get("val_subset") if isinstance(report.get("val_subset"), bool) else None)


def read_run_score(path: str | Path) -> RunScore:
    """The checked final score of a run directory or a log file."""
    path = Path(path)
    if path.is_dir():
        return checked_final_score(score_from_run_dir(path))
    if path.is_file():
        return score_from_log_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
    raise PgolfError(f"{path} does not exist; give pgolf run directories or challenge log files.")


# ---- curves from log text (the challenge's formats and pgolf's train.log) ----

def _optional_float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _r1081_train_seconds(match: re.Match, batch_tokens: int | None) -> float:
    """Seconds from tok/s when the batch size is known (precise), else from the rounded minutes."""
    tok_s = _optional_float(match.group("tok_s"))
    step = int(match.group("step"))
    if batch_tokens and tok_s and tok_s > 0 and step > 0:
        return step * batch_tokens / tok_s
    return float(match.group("minutes")) * 60.0


def _parse_curve_line(line: str, log: RunLog, batch_tokens: int | None) -> None:
    """Add what one line says to ``log`` (nothing for lines of no known form)."""
    if m := STEP_TRAIN_LINE.match(line):
        log.train.append(TrainPoint(int(m["step"]), float(m["loss"]), float(m["ms"]) / 1000.0))
    elif m := STEP_VAL_LINE.match(line):
        seconds = _optional_float(m["ms"])
        log.val.append(ValPoint(int(m["step"]), float(m["loss"]), float(m["bpb"]),
                                None if seconds is None else seconds / 1000.0))
    elif m := R1081_TRAIN_LINE.match(line):
        log.train.append(TrainPoint(int(m["step"]), float(m["loss"]), _r1081_train_seconds(m, batch_tokens)))
    elif m := R1081_VAL_LINE.match(line):
        log.val.append(ValPoint(int(m["step"]), float(m["loss"]), float(m["bpb"]), None))
    elif m := (STOP_LINE.match(line) or DONE_LINE.match(line)):
        log.end = (int(m["step"]), float(m["ms"]) / 1000.0)


def _prequant_point(text: str) -> tuple[float, float] | None:
    """pgolf's ``final_prequant`` (loss, bpb), the exact line when present."""
    found = None
    for m in map(SCORE_LINE.match, text.splitlines()):
        if m and m["label"] in (PREQUANT_LABEL, f"{PREQUANT_LABEL}_exact"):
            found = (float(m["loss"]), float(m["bpb"]))
    return found


# ``pgolf train --resume`` logs this, then repeats the steps after the checkpoint (pgolf/train/checkpoint.py).
RESUME_LINE = re.compile(r"resume:from \S+ step:(?P<step>\d+)")


def drop_points_after(log: RunLog, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: the points logged for them before the
    interruption are superseded by the ones logged after it."""
    log.train[:] = [point for point in log.train if point.step <= step]
    log.val[:] = [point for point in log.val if point.step <= step]


def parse_log_text(text: str, source: str, name: str | None = None) -> RunLog:
    """Curves, end of training, seed, code hash and final score (if any) of one log's text."""
    log = RunLog(name or Path(source).name, source, score=_last_score(text, source))
    batch_tokens = None
    for line in text.splitlines():
        if batch_tokens is None and (m := BATCH_TOKENS_LINE.match(line)):
            batch_tokens = int(m["tokens"])
        if m := RESUME_LINE.match(line):
            drop_points_after(log, int(m["step"]))
        _parse_curve_line(line, log, batch_tokens)
    seeds, hashes = SEED_LINE.findall(text), CODE_HASH_LINE.findall(text)
    log.seed = int(seeds[0]) if seeds else None
    log.code_hash = hashes[0] if hashes else None
    prequant = _prequant_point(text)
    if prequant is not None:
        _add_final_point(log, *prequant)
    return _fill_val_seconds(log)


# ---- curves from a pgolf run (metrics.jsonl) ----

def read_metrics_events(path: Path) -> list[dict]:
    """The JSON events of a metrics.jsonl; a line that is not a JSON object (cut off by a crash) is skipped."""
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _number(event: dict, key: str) -> float | None:
    value = event.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_metrics_events(events: list[dict], source: str, name: str) -> tuple[RunLog, tuple[float, float] | None]:
    """Curves, seed, code hash and (when the events give it exactly) the end of training from metrics.jsonl
    events (malformed events are skipped), and the ``final_prequant`` (loss, bpb) if it was evaluated."""
    log = RunLog(name, source)
    prequant = None
    for event in events:
        kind, step = event.get("event"), event.get("step")
        if kind == "header":
            log.code_hash = event.get("code_hash")
            log.seed = (event.get("config") or {}).get("seed")
        elif kind == "train" and isinstance(step, int) and _number(event, "train_loss") is not None:
            log.train.append(TrainPoint(step, _number(event, "train_loss"), _number(event, "train_seconds")))
        elif kind == "val" and isinstance(step, int) and _number(event, "val_loss") is not None:
            if _number(event, "val_bpb") is not None:
                log.val.append(ValPoint(step, _number(event, "val_loss"), _number(event, "val_bpb"), None))
        elif kind == "resume" and isinstance(step, int):
            drop_points_after(log, step)
        elif kind == "eval" and event.get("label") == PREQUANT_LABEL and _number(event, "val_bpb") is not None:
            prequant = (_number(event, "val_loss"), _number(event, "val_bpb"))
    log.end = exact_training_end(events, log.train)
    return log, prequant


def exact_training_end(events: list[dict], train: list[TrainPoint]) -> tuple[int, float] | None:
    """(last step, training seconds) when metrics.jsonl says exactly where training ended, else None.

    metrics.jsonl has no end-of-training event (train.log's ``train_done`` line and report.json have it),
    and training points are logged only every TRAIN_LOG_EVERY steps, so in general its last point need not
    be the last step. Two cases are exact: a run resumed after its training had finished logs a ``resume``
    event with ``training_done`` and the outcome's step and seconds; and the training loop never runs past
    ITERATIONS (pgolf/train/loop.py), so a last training point at ITERATIONS (from the header's config)
    is the last step, at the training clock of that point. A run stopped by its wall-clock cap ends at a
    step these events do not name: no end (a point there would be a guess)."""
    end = None
    for event in events:
        if (event.get("event") == "resume" and event.get("training_done") is True
                and isinstance(event.get("step"), int) and _number(event, "train_seconds") is not None):
            end = (event["step"], _number(event, "train_seconds"))
    if end is not None:
        return end
    iterations = [(event.get("config") or {}).get("iterations") for event in events if event.get("event") == "header"]
    last = train[-1] if train else None
    if (last is not None and last.train_seconds is not None and iterations
            and isinstance(iterations[-1], int) and last.step == iterations[-1]):
        return (last.step, last.train_seconds)
    return None


def _apply_report(run_dir: Path, log: RunLog) -> None:
    """report.json, when the run finished: the final score (its last evaluation phase) and the end of training."""
    if not (run_dir / "report.json").is_file():
        return
    log.score = score_from_run_dir(run_dir)
    fields = read_json_file(run_dir / "report.json", "restore it from a copy of the run")
    if isinstance(fields.get("steps"), int) and isinstance(fields.get("train_seconds"), (int, float)):
        log.end = (fields["steps"], float(fields["train_seconds"]))


def read_run_dir_log(run_dir: Path) -> RunLog:
    """A pgolf run directory: the curves of metrics.jsonl when it holds any, else of train.log."""
    metrics, text_log = run_dir / "metrics.jsonl", run_dir / "train.log"
    if not (metrics.is_file() or text_log.is_file()):
        runs = _runs_inside(run_dir)
        if runs:
            raise PgolfError(_folder_of_runs_message(run_dir, runs))
        raise PgolfError(f"{run_dir} has neither metrics.jsonl nor train.log; "
                         "give a pgolf run directory or a log file.")
    text = text_log.read_text(encoding="utf-8", errors="replace") if text_log.is_file() else ""
    log = parse_log_text(text, str(run_dir), run_dir.name)
    events, prequant = (parse_metrics_events(read_metrics_events(metrics), str(metrics), run_dir.name)
                        if metrics.is_file() else (None, None))
    if events is not None and (events.train or events.val):
        log.train, log.val = events.train, events.val
        log.seed = events.seed if events.seed is not None else log.seed
        log.code_hash = events.code_hash or log.code_hash
    if events is not None and log.end is None:
        log.end = events.end  # no train_done line (train.log missing or cut off): the events' exact end, if any
    _apply_report(run_dir, log)
    if prequant is not None and None not in prequant:
        _add_final_point(log, *prequant)
    return _fill_val_seconds(log)


def read_run_log(path: str | Path) -> RunLog:
    """A pgolf run directory, a ``metrics.jsonl``, or a log file (pgolf's or the challenge's)."""
    path = Path(path)
    if path.is_dir():
        return read_run_dir_log(path)
    if not path.is_file():
        raise PgolfError(f"{path} does not exist; give pgolf run directories or challenge log files.")
    if path.name == "metrics.jsonl" and (path.parent / "report.json").is_file():
        return read_run_dir_log(path.parent)  # the run's own file: its report ends the curve as for the directory
    if path.suffix == ".jsonl":
        log, prequant = parse_metrics_events(read_metrics_events(path), str(path), path.parent.name or path.name)
        if prequant is not None and None not in prequant:
            _add_final_point(log, *prequant)
        return _fill_val_seconds(log)
    return parse_log_text(path.read_text(encoding="utf-8", errors="replace"), str(path))


# ---- training time at validation points ----

def _add_final_point(log: RunLog, val_loss: float, val_bpb: float) -> None:
    """pgolf evaluates the trained weights once more at the end (``final_prequant``): the curve's last
    point, at the last step, as the challenge's baseline logs a validation at its last step."""
    if log.end is None or any(point.step == log.end[0] for point in log.val):
        return
    log.val.append(ValPoint(log.end[0], val_loss, val_bpb, log.end[1]))


def _time_anchors(log: RunLog) -> list[tuple[int, float]]:
    """(step, training seconds) pairs known exactly: step 0, the training points, the end of training."""
    anchors = {0: 0.0}
    anchors.update({p.step: p.train_seconds for p in log.train if p.train_seconds is not None})
    if log.end is not None:
        anchors[log.end[0]] = log.end[1]
    return sorted(anchors.items())


def interpolate_train_seconds(step: int, anchors: list[tuple[int, float]]) -> float | None:
    """Training seconds at ``step``: linear between known anchors; past the last one, at its average
    pace. None when nothing but step 0 is known."""
    steps = [s for s, _ in anchors]
    i = bisect.bisect_left(steps, step)
    if i < len(anchors) and steps[i] == step:
        return anchors[i][1]
    if i == len(anchors):
        last_step, last_seconds = anchors[-1]
        return last_seconds * step / last_step if last_step > 0 else None
    (s0, t0), (s1, t1) = anchors[i - 1], anchors[i]
    return t0 + (t1 - t0) * (step - s0) / (s1 - s0)


def _fill_val_seconds(log: RunLog) -> RunLog:
    anchors = _time_anchors(log)
    log.val = [p if p.train_seconds is not None else
               ValPoint(p.step, p.val_loss, p.val_bpb, interpolate_train_seconds(p.step, anchors)) for p in log.val]
    return log
