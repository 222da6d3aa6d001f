"""A challenge records folder from runs of one setup (tooling; ``pgolf record`` and ``pgolf record-check``
print what this module and :mod:`pgolf.exp.record_check` return, from pgolf/commands/record.py).

    pgolf record runs/s42 runs/s314 runs/s999 --name MyIdea --author "Ada" --github-id ada
    pgolf record-check records/track_10min_16mb/2026-05-02_MyIdea

writes ``<out>/<YYYY-MM-DD>_<NAME>/``:

* ``train_gpt.py``: the one-file script ``pgolf export`` makes from the runs' configuration (wrapped:
  lzma or brotli + base85 + exec; its size on disk is the counted code size): the export whose size every
  run logged (:func:`record_script`; SEED is not baked in: each seed is given as SEED=...), and
  ``train_gpt.readable.py``
  (which holds the messages the counted script's errors point at);
* ``train_seed<SEED>.log``: each run's ``train.log``;
* ``submission.json``: name, author, scores per seed, mean and std, bytes, timings, versions, code hash;
* ``README.md``: results table, the command that reproduces each seed, the configuration's changes
  from its preset, bytes, timings, environment, and warnings (a validation subset, a CPU run, ...).

The runs must differ only in SEED (and RUN_ID/RUNS_DIR), share one code hash (the package's current
one, since the script is exported from it), each have a ``report.json``, and all have logged the size
of one script (the one the folder ships). The counted total of each seed is its artifact plus that
script's real size. An existing folder is never overwritten.
"""

import datetime
import json
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from pgolf.artifact.size import ARTIFACT_CAP_BYTES
from pgolf.config import Config, flatten_config
from pgolf.errors import PgolfError
from pgolf.exp.logs import RunScore, checked_final_score, missing_report_message, score_from_run_dir
from pgolf.exp.record_check import (RECORD_SCRIPT, check_record_folder, logged_code_bytes, schema_failures,
                                    seed_log_name)
from pgolf.exp.record_readme import record_readme
from pgolf.exp.runner import check_folder_name
from pgolf.export.bundle import ExportedScript, build_exported_script, write_exported_script
from pgolf.fsutil import write_text_atomic
from pgolf.provenance import pgolf_code_hash
from pgolf.train.resume import read_config_file, read_json_file

# Keys in which the seeds of one record may differ.
PER_RUN_KEYS = ("seed", "run_id", "runs_dir")
REPORT_KEYS = ("seed", "code_hash", "artifact_bytes", "steps", "train_seconds", "val_bpb", "val_loss")
# The types of the report fields a record copies (the scores are checked by checked_final_score).
REPORT_TYPES = {"seed": int, "code_hash": str, "artifact_bytes": int, "steps": int, "train_seconds": (int, float)}
REPORT_TYPE_NAMES = {int: "an integer", str: "a string", (int, float): "a number"}
WORLD_SIZE_LINE = re.compile(r"^world_size:(\d+)", re.MULTILINE)
DEFAULT_TRACK = "10min_16mb"


@dataclass(frozen=True)
class SeedRun:
    """One finished run: its report, configuration, log and final score."""

    run_dir: Path
    report: dict
    cfg: Config
    log_text: str
    score: RunScore

    @property
    def seed(self) -> int:
        return self.report["seed"]

    @property
    def world_size(self) -> int:
        found = WORLD_SIZE_LINE.search(self.log_text)
        return int(found.group(1)) if found else 1


def _required_file(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.is_file():
        if name == "report.json":
            raise PgolfError(f"{missing_report_message(run_dir, logs_accepted=False)} (`pgolf record` needs the "
                             "report.json of finished runs.)")
        raise PgolfError(f"{run_dir} has no {name}; give finished `pgolf train` run directories.")
    return path


def load_seed_run(run_dir: str | Path) -> SeedRun:
    """A finished run, every file read and checked: a damaged one is an error naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PgolfError(f"{run_dir} is not a directory; give finished `pgolf train` run directories.")
    report_path = _required_file(run_dir, "report.json")
    report = read_json_file(report_path, "restore it from a copy of the run")
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise PgolfError(f"{report_path} lacks {', '.join(missing)}; "
                         "the run did not finish packing its artifact (or the file is damaged).")
    for key, kinds in REPORT_TYPES.items():
        if isinstance(report[key], bool) or not isinstance(report[key], kinds):
            raise PgolfError(f"{report_path}: {key} is {report[key]!r}, not {REPORT_TYPE_NAMES[kinds]}; the file is "
                             "damaged. Restore it from a copy of the run.")
    cfg = read_config_file(_required_file(run_dir, "config.json"))
    log_text = _required_file(run_dir, "train.log").read_text(encoding="utf-8", errors="replace")
    return SeedRun(run_dir, report, cfg, log_text, checked_final_score(score_from_run_dir(run_dir)))


def check_runs_agree(runs: list[SeedRun]) -> None:
    """One setup under several seeds: same code, same configuration but for SEED, distinct seeds."""
    if not runs:
        raise PgolfError("give at least one run directory.")
    seeds = [run.seed for run in runs]
    duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if duplicates:
        raise PgolfError(f"seed(s) {duplicates} given more than once; each run of a record must use its own SEED.")
    hashes = {run.report["code_hash"] for run in runs}
    if len(hashes) > 1:
        listing = ", ".join(f"{run.run_dir} {run.report['code_hash']}" for run in runs)
        raise PgolfError(f"the runs were made by different code ({listing}); a record's seeds must run the same code.")
    first = flatten_config(runs[0].cfg)
    for run in runs[1:]:
        other = flatten_config(run.cfg)
        differing = [key for key in first if key not in PER_RUN_KEYS and first[key] != other[key]]
        if differing:
            detail = "; ".join(f"{key.upper()} {first[key]!r} vs {other[key]!r}" for key in differing)
            raise PgolfError(f"{runs[0].run_dir} and {run.run_dir} differ in more than SEED: {detail}. "
                             "A record's runs must share one configuration.")


def check_code_unchanged(runs: list[SeedRun]) -> str:
    """The package's code hash, which must be the runs' (the script is exported from this code)."""
    current, recorded = pgolf_code_hash(), runs[0].report["code_hash"]
    if current != recorded:
        raise PgolfError(f"the runs were made by code hash {recorded} but the installed pgolf is {current}; the "
                         "exported train_gpt.py would not be the code that made these scores. Record from the "
                         "checkout the runs used (or re-run the seeds).")
    return current


def run_code_bytes(run: SeedRun) -> int:
    """The code size the run logged (the size of the script that made it), else its report's."""
    logged = logged_code_bytes(run.log_text)
    return logged if logged is not None else int(run.report.get("code_bytes", -1))


def _sizes_text(sizes: dict[int, int]) -> str:
    return "; ".join(f"seed {seed}: {size:,} bytes" for seed, size in sizes.items())


ONE_SCRIPT_FIX = ("A record ships one train_gpt.py, and every seed's log must state its size: record runs of one "
                  "pgolf and one configuration (`pgolf seeds`), or export once (`pgolf export RUN_DIR "
                  "--full-records -o DIR/train_gpt.py`), run every seed with it (`SEED=<seed> python "
                  "DIR/train_gpt.py`) and record those runs.")


def record_script(runs: list[SeedRun], code_hash: str) -> ExportedScript:
    """The script every seed ran: the runs' configuration exported (SEED is never baked, each seed is given
    as SEED=... in the environment, so all seeds share one script), lean or with ``--full-records``, the
    one whose size the runs logged. Runs that logged different sizes, or a size neither export has, were
    not made by one script of this configuration: refused."""
    sizes = {run.seed: run_code_bytes(run) for run in runs}
    if len(set(sizes.values())) > 1:
        raise PgolfError(f"the runs logged different code sizes ({_sizes_text(sizes)}): they were not made by one "
                         f"script. {ONE_SCRIPT_FIX}")
    logged = next(iter(sizes.values()))
    tried = []
    for full_records in (False, True):
        script = build_exported_script(runs[0].cfg, preset_name=runs[0].report.get("preset", "custom"),
                                       code_hash=code_hash, full_records=full_records)
        if script.wrapped_bytes == logged:
            return script
        tried.append(f"{'--full-records' if full_records else 'lean'}: {script.wrapped_bytes:,}")
    raise PgolfError(f"the runs logged a code size of {logged:,} bytes, but no export of their configuration has "
                     f"that size ({'; '.join(tried)}), so the script that made them cannot be rebuilt (another "
                     f"configuration baked in, or KEY=value changes given at export). {ONE_SCRIPT_FIX}")


def seed_entry(run: SeedRun, code_bytes: int) -> dict:
    """submission.json's entry of one seed; its total counts the exported script's real size."""
    report = run.report
    artifact = int(report["artifact_bytes"])
    eval_seconds = (report.get("eval_budget") or {}).get("total_seconds", report.get("eval_seconds", 0.0))
    return {"seed": run.seed, "val_bpb": run.score.val_bpb, "val_loss": run.score.val_loss,
            "total_bytes": artifact + code_bytes, "artifact_bytes": artifact, "code_bytes": code_bytes,
            "train_seconds": float(report["train_seconds"]), "eval_seconds": float(eval_seconds),
            "steps": int(report["steps"])}


def gpu_description(run: SeedRun) -> str:
    env = run.report.get("env", {})
    if not env.get("gpu"):
        return f"none ({env.get('device', 'cpu')})"
    return f"{run.world_size}x {env['gpu']}"


def build_submission(runs: list[SeedRun], script: ExportedScript, *, name: str, author: str, github_id: str,
                     date: str, track: str) -> dict:
    """submission.json (schema in docs/experiments.md and pgolf.exp.record_check)."""
    seeds = [seed_entry(run, script.wrapped_bytes) for run in runs]
    scores = [entry["val_bpb"] for entry in seeds]
    env = runs[0].report.get("env", {})
    return {
        "name": name, "author": author, "github_id": github_id, "date": date, "track": track,
        "val_bpb": statistics.fmean(scores), "val_bpb_std": statistics.stdev(scores) if len(scores) > 1 else None,
        "val_loss": statistics.fmean(entry["val_loss"] for entry in seeds),
        "score_label": runs[0].score.label, "seeds": seeds,
        "bytes_total": max(entry["total_bytes"] for entry in seeds), "code_bytes": script.wrapped_bytes,
        "cap_bytes": ARTIFACT_CAP_BYTES, "torch_version": str(env.get("torch", "unknown")),
        "cuda_version": env.get("cuda"), "gpu": gpu_description(runs[0]), "python_version": env.get("python"),
        "preset": runs[0].report.get("preset", "custom"), "code_hash": runs[0].report["code_hash"],
    }


def record_warnings(runs: list[SeedRun], submission: dict) -> list[str]:
    """What keeps these runs from being a valid record as they stand (the folder is still written)."""
    cfg, env = runs[0].cfg, runs[0].report.get("env", {})
    warnings = []
    if any(run.report.get("val_subset") for run in runs):
        warnings.append(f"scored on a subset of the validation split (VAL_MAX_TOKENS={cfg.eval.val_max_tokens}); "
                        "a record is scored on all of it")
    if not env.get("gpu"):
        warnings.append(f"trained on {env.get('device', 'cpu')}, not on the challenge's 8xH100")
    cap = cfg.train.max_wallclock_seconds
    if cap <= 0 or cap > 600:
        warnings.append(f"MAX_WALLCLOCK_SECONDS={cap:g}: the challenge allows at most 600 s of training")
    if submission["bytes_total"] > ARTIFACT_CAP_BYTES:
        warnings.append(f"bytes_total {submission['bytes_total']:,} is over the {ARTIFACT_CAP_BYTES:,}-byte cap")
    if len(runs) < 3:
        warnings.append(f"{len(runs)} seed(s): the challenge usually asks for 3 to show p < 0.01")
    return warnings


def track_of(out_dir: Path) -> str:
    """``records/track_10min_16mb`` -> ``10min_16mb``; the main track for any other folder name."""
    return out_dir.name.removeprefix("track_") if out_dir.name.startswith("track_") else DEFAULT_TRACK


def write_record_folder(folder: Path, runs: list[SeedRun], script: ExportedScript, submission: dict,
                        readme: str) -> None:
    """Create ``folder`` (never an existing one) and fill it; on any failure nothing is left behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise PgolfError(f"{folder} already exists; pgolf record never overwrites. Choose another --name.") from None
    try:
        write_exported_script(script, folder / RECORD_SCRIPT)
        for run in runs:
            shutil.copyfile(run.run_dir / "train.log", folder / seed_log_name(run.seed))
        write_text_atomic(folder / "submission.json", json.dumps(submission, indent=2) + "\n")
        write_text_atomic(folder / "README.md", readme)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def make_record(run_dirs: list[str | Path], *, name: str, out: str | Path, author: str = "", github_id: str = "",
                date: str | None = None) -> tuple[Path, dict, list[str]]:
    """Check the runs, export the script and write the folder; returns (folder, submission, warnings)."""
    check_folder_name(name)
    runs = [load_seed_run(path) for path in run_dirs]
    check_runs_agree(runs)
    code_hash = check_code_unchanged(runs)
    date = date or datetime.date.today().isoformat()
    folder = Path(out) / f"{date}_{name}"
    if folder.exists():
        raise PgolfError(f"{folder} already exists; pgolf record never overwrites. Choose another --name.")
    script = record_script(runs, code_hash)
    submission = build_submission(runs, script, name=name, author=author, github_id=github_id, date=date,
                                  track=track_of(Path(out)))
    problems = schema_failures(submission)
    if problems:
        raise PgolfError(f"internal: the submission does not meet its own schema: {problems}; please report this.")
    warnings = record_warnings(runs, submission)
    write_record_folder(folder, runs, script, submission, record_readme(runs, script, submission, warnings))
    # The counted sizes assumed the script's in-memory bytes; the check measures the file on disk.
    warnings += [f"record-check: {failure}" for failure in check_record_folder(folder)]
    return folder, submission, warnings
