"""Shared parts of ``pgolf seeds`` and ``pgolf sweep`` (tooling): seed lists, output folders that are
agreed across ranks and never reused, one in-process training run, and the t-interval of a mean.

Runs go through :func:`pgolf.run.main` one after the other in this process, each into its own run
directory, with the exact code size ``pgolf export`` would count. Under ``torchrun`` every rank runs
the same loop (each run is a distributed run); only rank 0 writes summaries and prints.
"""

import contextlib
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pgolf.config import MAX_SEED, Config, apply_config_overrides, config_to_json, flatten_config
from pgolf.dist import broadcast_object_from_main, init_distributed, is_main_process, shutdown_distributed
from pgolf.errors import ConfigError, PgolfError, TrainingError
from pgolf.exp.logs import checked_final_score, score_from_run_dir
from pgolf.exp.stats import student_t_upper_tail
from pgolf.export.bundle import exported_code_bytes
from pgolf.fsutil import write_text_atomic
from pgolf.provenance import pgolf_code_hash
from pgolf.run import main as run_main
from pgolf.train.resume import read_json_file
from pgolf.train.run_directory import new_run_id

# The sweep/seed tools own these keys: SEED comes from --seeds, RUN_ID from the folder layout.
RESERVED_KEYS = ("SEED", "RUN_ID")
CONFIDENCE = 0.95
# --name (of seeds, sweep and record) is one plain folder name: no separators, no "..", never absolute.
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def print_main(text: str = "", *, err: bool = False) -> None:
    """Print on rank 0 (or in a single process): the one that prints and writes summaries."""
    if is_main_process():
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def parse_seed_list(text: str) -> list[int]:
    """``"42,314,999"`` -> ``[42, 314, 999]``; empty items, non-integers, seeds outside 0 .. 2**32 - 1 (what
    NumPy accepts, as SEED) and repeats are errors, found before anything is created."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part for part in parts):
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 42,314,999.")
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: every seed must be an integer, e.g. --seeds 42,314,999.") from None
    outside = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if outside:
        raise ConfigError(f"--seeds {text!r}: {', '.join(map(str, outside))} outside 0 .. {MAX_SEED} (the seeds "
                          "NumPy takes, like SEED); give seeds in that range.")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text!r} repeats {', '.join(map(str, repeated))}; each seed runs once.")
    return seeds


def check_folder_name(name: str, option: str = "--name") -> str:
    """``name`` if it is one plain folder name (letters, digits, ``._+-``; not starting with a dot): a path
    (``../x``, ``/tmp/x``, ``a/b``) would put the folder outside the place the command writes to."""
    if not FOLDER_NAME.match(name):
        raise ConfigError(f"{option} {name!r}: give a plain folder name (letters, digits and . _ + -, starting with "
                          "a letter or digit; no / and no ..): it becomes a folder under the output directory.")
    return name


def refuse_reserved_keys(items: list[str], command: str) -> None:
    """SEED and RUN_ID on the command line would fight with what the command sets per run."""
    for item in items:
        key = item.partition("=")[0].strip().upper()
        if key in RESERVED_KEYS:
            how = "give the seeds with --seeds" if key == "SEED" else "name the folder with --name"
            raise ConfigError(f"`pgolf {command}` sets {key} for every run itself; remove {item!r} and {how}.")


def claim_output_dir(cfg: Config, name: str | None, prefix: str, plan_file: str, summary_file: str) -> Path:
    """Create the new folder ``RUNS_DIR/NAME`` (default ``PREFIX_<date>_<time>_<hex>``), the same on
    every rank. An existing folder is an error: a seed group or sweep is never added to or overwritten
    (one that stopped before its summary ``summary_file`` is continued with --resume). ``name`` was checked
    by the command (:func:`check_folder_name`, before any work)."""
    init_distributed(cfg.run.pgolf_device)  # under torchrun the ranks must agree on the (random) default name
    runs_dir = cfg.run.runs_dir
    chosen = broadcast_object_from_main(name or f"{prefix}_{new_run_id()}")
    path = Path(runs_dir) / chosen
    problem = None
    if is_main_process():
        if path.exists():
            unfinished = (path / plan_file).is_file() and not (path / summary_file).exists()
            problem = (f"{path} already exists; pgolf never adds to or overwrites a {prefix} folder. " + (
                f"It holds an unfinished {prefix} (no {summary_file}): continue it with --resume and the same "
                "arguments, or choose another --name." if unfinished else
                "Choose another --name (or leave it out for a fresh one)."))
        else:
            path.mkdir(parents=True)
    problem = broadcast_object_from_main(problem)
    if problem:
        raise ConfigError(problem)
    return path


def _without_machine_fields(value):
    """A plan without the pgolf_* settings of the machine (device, cache, auto-resume), at any depth."""
    if isinstance(value, dict):
        return {key: _without_machine_fields(item) for key, item in value.items()
                if not str(key).lower().startswith("pgolf_")}
    if isinstance(value, list):
        return [_without_machine_fields(item) for item in value]
    return value


PLAN_BOOKKEEPING_KEYS = ("created", "argv")


def plan_differences(saved: dict, planned: dict, prefix: str = "") -> list[str]:
    """The dotted keys where two plans differ (the bookkeeping and machine fields left out)."""
    saved, planned = _without_machine_fields(saved), _without_machine_fields(planned)
    differences = []
    for key in sorted(set(saved) | set(planned), key=str):
        if not prefix and key in PLAN_BOOKKEEPING_KEYS:
            continue
        before, after = saved.get(key), planned.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            differences += plan_differences(before, after, f"{prefix}{key}.")
        elif json.dumps(before, default=list) != json.dumps(after, default=list):
            differences.append(f"{prefix}{key} (planned {json.dumps(before, default=list)[:80]}, now "
                               f"{json.dumps(after, default=list)[:80]})")
    return differences


def reopen_output_dir(cfg: Config, name: str | None, prefix: str, plan_file: str, summary_file: str,
                      plan_for: Callable[[Path], dict]) -> Path:
    """--resume: the folder ``RUNS_DIR/NAME`` of an unfinished group or sweep, planned exactly as now
    (its ``plan_file`` is compared with ``plan_for(folder)``: the same seeds, arms and configuration)."""
    if name is None:
        raise ConfigError(f"--resume continues a {prefix} by name: give its --name (the folder under RUNS_DIR).")
    init_distributed(cfg.run.pgolf_device)
    path = Path(cfg.run.runs_dir) / name
    problem = None
    if is_main_process():
        if not (path / plan_file).is_file():
            problem = (f"cannot resume {path}: it has no {plan_file}, so it is not a {prefix} folder (check --name "
                       "and RUNS_DIR).")
        elif (path / summary_file).exists():
            problem = f"{path} is finished (it has {summary_file}); there is nothing to resume."
        else:
            try:
                planned = json.loads(json.dumps(plan_for(path), default=list))  # as the file would hold it
                differences = plan_differences(read_json_file(path / plan_file, "it cannot be resumed"), planned)
            except PgolfError as error:
                differences, problem = [], str(error)
            if differences:
                problem = (f"cannot resume {path}: it was planned with other settings than these: "
                           f"{'; '.join(differences[:6])}" + (" ..." if len(differences) > 6 else "") +
                           f". Give the arguments it was started with (its {plan_file} records them under argv).")
    problem = broadcast_object_from_main(problem)
    if problem:
        raise ConfigError(problem)
    return path


def write_json_once(path: Path, payload: dict) -> None:
    """Rank 0 writes ``payload`` atomically; an existing file is an error (never overwritten)."""
    if is_main_process():
        write_text_atomic(path, json.dumps(payload, indent=2, default=list) + "\n")


def earlier_partial_holds_more(path: Path, finished: int) -> bool:
    """Whether the partial summary ``path`` an earlier stop wrote holds more finished runs than ``finished``
    (then it is kept: a resume that stopped before reusing them all must not replace it with less)."""
    try:
        return len(json.loads(path.read_text(encoding="utf-8"))["finished_runs"]) > finished
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_partial_summary(path: Path, text: str) -> None:
    """Rank 0 writes a partial summary atomically, replacing an earlier stop's (see
    :func:`earlier_partial_holds_more`, which the caller asks first)."""
    if is_main_process():
        write_text_atomic(path, text, overwrite=True)


def describe_config(cfg: Config, preset: Config, preset_name: str) -> dict:
    """What a group/sweep file records about a configuration: preset, changes from it, every value."""
    preset_values = flatten_config(preset)
    changes = {key.upper(): value for key, value in flatten_config(cfg).items()
               if value != preset_values[key] and key not in ("run_id", "seed")}
    return {"preset": preset_name, "changes_from_preset": changes, "config": json.loads(config_to_json(cfg))}


@contextlib.contextmanager
def one_process_group_for_all_runs():
    """Under torchrun, one process group for all the runs, closed once after the last: every run is
    started with ``keep_process_group=True`` (see :func:`run_training`), because opening the group again
    in the same processes hangs when the ranks get there at different times (a second rendezvous on
    torchrun's store). After a failure the group is left alone (another rank may not be there)."""
    yield
    shutdown_distributed()


def run_training(cfg: Config, *, preset_name: str, preset_cfg: Config, out_dir: Path, run_id: str, seed: int,
                 echo: bool, continue_existing: bool = False) -> dict:
    """One full training run (train, quantize, pack, round trip) into ``out_dir/run_id``; its report, with
    the exact code bytes ``pgolf export`` would write for its configuration (as ``pgolf train`` counts).
    ``continue_existing``: that folder holds an unfinished attempt of this very run (--resume), continued
    as ``PGOLF_AUTO_RESUME=1`` does: from its newest checkpoint, its final weights, or step 0."""
    overrides = {"seed": seed, "run_id": run_id, "runs_dir": str(out_dir)}
    if continue_existing:
        overrides["pgolf_auto_resume"] = True
    cfg = apply_config_overrides(cfg, overrides, source="runner")
    return run_main(cfg, preset_name=preset_name, preset_cfg=preset_cfg, echo=echo,
                    code_bytes=exported_code_bytes(cfg, preset_name=preset_name), keep_process_group=True)


def run_or_explain(what: str, fn, *args, **kwargs) -> dict:
    """``fn(...)``, or an error naming the failed run (the caller then says what finished)."""
    try:
        return fn(*args, **kwargs)
    except PgolfError as error:
        raise TrainingError(f"{what} failed: {error}") from error
    except Exception:
        # A bug or a crash (CUDA OOM, ...): keep the traceback, but say which run it was first.
        print_main(f"{what} failed; the traceback follows", err=True)
        raise


@dataclass(frozen=True)
class PlannedRun:
    """One run of a seed group or sweep: what to call it, its configuration, seed and folder name."""
    what: str
    cfg: Config
    seed: int
    run_id: str


def finished_run_report(run_dir: Path, what: str, seed: int) -> dict:
    """--resume: the report of a run that finished before the interruption, checked: its seed, a finite
    score, and the installed code (a run of other code would not pair with the runs made now)."""
    report = read_json_file(run_dir / "report.json", "restore it from a copy of the run, or move the folder away "
                                                      "to run it again")
    if report.get("seed") != seed:
        raise PgolfError(f"{run_dir}/report.json has seed {report.get('seed')!r}, not {seed}: it is not the run "
                         f"{what}. Move it away to run it again.")
    try:
        checked_final_score(score_from_run_dir(run_dir))
    except PgolfError as error:
        raise PgolfError(f"{what} finished earlier without a score ({error}). It cannot be reused, and another "
                         "attempt with the same seed and settings would end the same way; move its folder away to "
                         "run it again anyway, or start a new --name without that setting (the partial summary "
                         "keeps what finished).") from None
    current = pgolf_code_hash()
    if report.get("code_hash") != current:
        raise PgolfError(f"{run_dir} was made by code hash {report.get('code_hash')}, but the installed pgolf is "
                         f"{current}: runs made now would not be comparable with it. Resume with the code that "
                         "started it, or start a new --name.")
    return report


def reusable_reports(planned: list[PlannedRun], out_dir: Path) -> dict[str, dict]:
    """--resume: the checked reports of the planned runs that finished before, by run id; checked all at
    once before anything runs, so a run that cannot be reused stops the command before any training."""
    return {run.run_id: finished_run_report(out_dir / run.run_id, run.what, run.seed) for run in planned
            if (out_dir / run.run_id / "report.json").is_file()}


def run_planned(planned: list[PlannedRun], out_dir: Path, done: list[dict], *, preset_name: str, preset_cfg: Config,
                echo: bool, reuse: dict[str, dict] | None, banner: Callable[[int], str]) -> None:
    """Run ``planned`` in order (:func:`run_training`, in one process group), appending each run's summary
    to ``done`` (so a caller that catches an interruption knows what finished). ``reuse`` (--resume, from
    :func:`reusable_reports`): the runs that finished before, reused from their reports; a planned run
    whose folder exists without a report is continued. None: a fresh start, where every folder is new."""
    with one_process_group_for_all_runs():
        _run_each(planned, out_dir, done, preset_name=preset_name, preset_cfg=preset_cfg, echo=echo, reuse=reuse,
                  banner=banner)


def _run_each(planned: list[PlannedRun], out_dir: Path, done: list[dict], *, preset_name: str, preset_cfg: Config,
              echo: bool, reuse: dict[str, dict] | None, banner: Callable[[int], str]) -> None:
    for index, run in enumerate(planned):
        run_dir = out_dir / run.run_id
        if reuse is not None and run.run_id in reuse:
            print_main(f"{banner(index)}: finished before, reusing {run_dir}", err=True)
            done.append(run_summary(run.seed, reuse[run.run_id]))
            continue
        started = reuse is not None and run_dir.is_dir()
        print_main(banner(index) + (f" (continuing {run_dir})" if started else ""), err=True)
        report = run_or_explain(f"{run.what} ({run_dir})", run_training, run.cfg, preset_name=preset_name,
                                preset_cfg=preset_cfg, out_dir=out_dir, run_id=run.run_id, seed=run.seed, echo=echo,
                                **({"continue_existing": True} if started else {}))
        done.append(run_summary(run.seed, report))


def stop_reason(stop: BaseException) -> tuple[bool, str]:
    """(interrupted by Ctrl-C?, how it stopped, in words)."""
    if isinstance(stop, KeyboardInterrupt):
        return True, "interrupted (Ctrl-C)"
    return False, f"stopped by a failure: {stop}"


def print_stop(kind: str, out_dir: Path, planned: list[PlannedRun], done: list[dict], stop: BaseException,
               partial_files: list[str], complete: str) -> None:
    """What finished, what did not, where the partial summary is, and how to continue (the error itself
    is printed after this by the command line)."""
    interrupted, _ = stop_reason(stop)
    finished = [run.run_id for run in planned[:len(done)]]
    left = planned[len(done):]
    unfinished = [run.run_id for run in left if (out_dir / run.run_id).exists()]
    not_started = [run.run_id for run in left if not (out_dir / run.run_id).exists()]
    lines = [f"{kind} {out_dir}: " + ("interrupted (Ctrl-C)" if interrupted else "stopped by the failure below"),
             f"  finished ({len(finished)} of {len(planned)}): {', '.join(finished) or 'none'}",
             f"  {complete}"]
    if unfinished:
        lines.append(f"  unfinished (its folder keeps what it wrote): {', '.join(unfinished)}")
    if not_started:
        lines.append(f"  not started: {', '.join(not_started)}")
    if partial_files:
        lines.append(f"  partial summary (marked \"partial\": true): {', '.join(partial_files)}")
    lines.append(f"  to continue: the same command with --resume --name {out_dir.name} (finished runs are reused; "
                 "an unfinished one continues from its last checkpoint, else from step 0)")
    if not interrupted:
        lines.append("  (a run that diverged diverges again with the same seed and settings: resuming helps after "
                     "an interruption or a crash, not a divergence)")
    print_main("\n".join(lines), err=True)


def partial_fields(stop: BaseException, planned: list[PlannedRun], done: list[dict], out_dir: Path) -> dict:
    """What a partial summary adds: that it is partial, why, and which runs it lacks."""
    interrupted, how = stop_reason(stop)
    return {"partial": True, "interrupted": interrupted, "stopped_by": how, "written": now_text(),
            "finished_runs": [str(out_dir / run.run_id) for run in planned[:len(done)]],
            "missing_runs": [str(out_dir / run.run_id) for run in planned[len(done):]]}


def final_score(report: dict) -> tuple[float, str]:
    """The score a run reports: its last evaluation phase (TTT, sliding window), else the round trip."""
    return float(report.get("val_bpb_final", report["val_bpb"])), str(report.get("val_bpb_final_label", "quantized"))


def run_summary(seed: int, report: dict) -> dict:
    """The per-run fields the seed and sweep tables show."""
    bpb, label = final_score(report)
    return {"seed": seed, "val_bpb": bpb, "score_label": label, "val_bpb_roundtrip": report["val_bpb"],
            "steps": report.get("steps"), "train_seconds": report.get("train_seconds"),
            "total_bytes": report.get("total_bytes"), "run_dir": report.get("run_dir")}


def student_t_critical(confidence: float, df: float) -> float:
    """The two-sided critical value: P(|T| <= t) = ``confidence`` for Student's t with ``df`` d.o.f.
    Found by bisection on the tail function of :mod:`pgolf.exp.stats` (monotone; 200 halvings)."""
    target = (1.0 - confidence) / 2.0
    low, high = 0.0, 1.0
    while student_t_upper_tail(high, df) > target:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_upper_tail(middle, df) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def two_sided_p(t: float, df: float) -> float:
    return min(1.0, 2.0 * student_t_upper_tail(abs(t), df))


@dataclass(frozen=True)
class MeanInterval:
    """Mean of n values, their sample std and the t-interval of the mean (None below two values)."""
    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci_low": self.low, "ci_high": self.high,
                "confidence": self.confidence}


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> MeanInterval:
    """mean +- t_{n-1} x std / sqrt(n): the one-sample t-interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return MeanInterval(len(values), mean, None, None, None, confidence)
    std = statistics.stdev(values)
    half = student_t_critical(confidence, len(values) - 1) * std / math.sqrt(len(values))
    return MeanInterval(len(values), mean, std, mean - half, mean + half, confidence)


def compare_arm(scores: list[float], reference: list[float], *, paired: bool = True,
                confidence: float = CONFIDENCE) -> dict:
    """An arm's scores against the reference's, seed by seed (paired t) or as two sets (Welch).

    delta = arm - reference (negative = the arm scores better). Fields: test, n, deltas (paired),
    delta_mean, delta_std (paired: std of the per-seed differences), delta_se (standard error of
    delta_mean), ci_low, ci_high, df, t, p (two-sided), uncertainty (why there is no interval)."""
    if paired:
        return paired_comparison(scores, reference, confidence)
    return welch_comparison(scores, reference, confidence)


def _with_interval(result: dict, delta: float, standard_error: float, df: float, confidence: float) -> dict:
    """Add the t-interval and the two-sided p-value of ``delta`` (undefined without spread)."""
    result = {**result, "delta_se": standard_error}
    if standard_error == 0.0:
        return {**result, "ci_low": delta, "ci_high": delta, "df": df, "t": None, "p": None,
                "uncertainty": "no spread: every seed gives the same difference"}
    half = student_t_critical(confidence, df) * standard_error
    t = delta / standard_error
    return {**result, "ci_low": delta - half, "ci_high": delta + half, "df": df, "t": t, "p": two_sided_p(t, df),
            "uncertainty": None}


def paired_comparison(scores: list[float], reference: list[float], confidence: float = CONFIDENCE) -> dict:
    """Paired t on the per-seed differences (the same seed and data order in both runs of a pair)."""
    if len(scores) != len(reference):
        raise ValueError(f"a paired comparison needs one score per seed on both sides, got {len(scores)} "
                         f"and {len(reference)}")
    deltas = [score - ref for score, ref in zip(scores, reference)]
    result = {"test": "paired", "n": len(deltas), "deltas": deltas, "delta_mean": statistics.fmean(deltas)}
    if len(deltas) < 2:
        return {**result, "delta_std": None, "delta_se": None, "ci_low": None, "ci_high": None, "df": None,
                "t": None, "p": None, "uncertainty": "n/a (1 seed)"}
    std = statistics.stdev(deltas)
    result["delta_std"] = std
    return _with_interval(result, result["delta_mean"], std / math.sqrt(len(deltas)), len(deltas) - 1, confidence)


def welch_comparison(scores: list[float], reference: list[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's t on two independent sets (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    delta = statistics.fmean(scores) - statistics.fmean(reference)
    result = {"test": "welch", "n": len(scores), "delta_mean": delta, "delta_std": None}
    if min(len(scores), len(reference)) < 2:
        return {**result, "delta_se": None, "ci_low": None, "ci_high": None, "df": None, "t": None, "p": None,
                "uncertainty": "n/a (1 seed)"}
    var_arm = statistics.variance(scores) / len(scores)
    var_ref = statistics.variance(reference) / len(reference)
    standard_error = math.sqrt(var_arm + var_ref)
    if standard_error == 0.0:
        return _with_interval(result, delta, 0.0, len(scores) + len(reference) - 2, confidence)
    df = (var_arm + var_ref) ** 2 / (var_arm ** 2 / (len(scores) - 1) + var_ref ** 2 / (len(reference) - 1))
    return _with_interval(result, delta, standard_error, df, confidence)


def describe_comparison(comparison: dict) -> str:
    """``[low, high] p=...`` or the reason there is no interval."""
    if comparison["ci_low"] is None or comparison["p"] is None:
        return comparison["uncertainty"]
    return f"[{comparison['ci_low']:+.6f}, {comparison['ci_high']:+.6f}] p={comparison['p']:.4g}"


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
