"""The runs of a significance test, checked before any statistics (tooling; used by ``pgolf significance``).

A t test takes its runs as independent draws of ONE setup. What breaks that, and what this module says:

* the same run given twice (one resolved path, or a run directory and its own train.log/metrics.jsonl):
  refused, it would count one draw twice;
* two runs of one sample with the same seed: refused, they are the same draw run twice;
* runs of one sample that differ in code hash, in configuration (config.json, where a run directory has
  one, minus SEED/RUN_ID/RUNS_DIR and the machine's own settings) or in the score label (e.g. quantized
  vs quantized_sliding_window): "mixed"; the command refuses them unless told to allow them, and then
  says the test is not evidence for a record;
* a score on a subset of the validation split (``val_subset`` in report.json): not evidence for a record
  (records are scored on all of it), a warning.

What a log file does not say (its configuration; for a challenge log, its code hash and subset) is not
compared: only what is known.
"""

from dataclasses import dataclass
from pathlib import Path

from pgolf.config import flatten_config
from pgolf.errors import PgolfError
from pgolf.exp.logs import RunScore, read_run_score
from pgolf.train.resume import MACHINE_FIELDS, read_config_file

# Fields in which the runs of one sample may differ: the seed, and where a run's files go.
PER_RUN_FIELDS = frozenset({"seed", "run_id", "runs_dir"}) | MACHINE_FIELDS
# A run directory's own logs: given as a file, they name the run of their folder.
RUN_LOG_NAMES = ("train.log", "metrics.jsonl")


@dataclass(frozen=True)
class SampleRun:
    """One run of a sample: as given, the run it is (a resolved directory, or a log file), its score and,
    for a run directory with config.json, the settings that must agree across the sample."""

    given: str
    identity: Path
    score: RunScore
    settings: dict | None


def run_identity(path: Path) -> Path:
    """The run a path names: a run directory resolved; a run's own train.log/metrics.jsonl is its folder."""
    resolved = path.resolve()
    if resolved.is_file() and resolved.name in RUN_LOG_NAMES and (
            (resolved.parent / "config.json").is_file() or (resolved.parent / "report.json").is_file()):
        return resolved.parent
    return resolved


def run_settings(path: Path) -> dict | None:
    """config.json of a run directory minus the per-run and machine fields; None when there is none."""
    config_path = path / "config.json"
    if not (path.is_dir() and config_path.is_file()):
        return None
    return {key: value for key, value in flatten_config(read_config_file(config_path)).items()
            if key not in PER_RUN_FIELDS}


def read_sample(paths: list[str]) -> list[SampleRun]:
    """Every run's checked final score (a damaged or unfinished run is an error naming it) and settings."""
    return [SampleRun(str(path), run_identity(Path(path)), read_run_score(path), run_settings(Path(path)))
            for path in paths]


def refuse_repeated_runs(samples: dict[str, list[SampleRun]]) -> None:
    """A run given twice (in one sample or in both) and two runs of one sample with one seed are errors."""
    seen: dict[Path, str] = {}
    for name, runs in samples.items():
        for run in runs:
            if run.identity in seen:
                raise PgolfError(f"{run.given} ({name}) is the run {seen[run.identity]} again ({run.identity}); "
                                 "each run counts once. Give every run once.")
            seen[run.identity] = f"{run.given} ({name})"
    for name, runs in samples.items():
        by_seed: dict[int, list[str]] = {}
        for run in runs:
            if run.score.seed is not None:
                by_seed.setdefault(run.score.seed, []).append(run.given)
        repeated = {seed: given for seed, given in by_seed.items() if len(given) > 1}
        if repeated:
            listing = "; ".join(f"seed {seed}: {', '.join(given)}" for seed, given in repeated.items())
            raise PgolfError(f"{name}: two runs with the same seed ({listing}) are one draw run twice, not two "
                             "independent ones. Give one run per seed.")


def _differing(runs: list[SampleRun], value, what: str) -> str | None:
    """``what`` differs across the runs whose value is known: one line listing each run's value."""
    known = [(run.given, value(run)) for run in runs if value(run) is not None]
    if len({repr(found) for _, found in known}) <= 1:
        return None
    return f"{what} differs: " + ", ".join(f"{given} {found}" for given, found in known)


def _settings_difference(runs: list[SampleRun]) -> str | None:
    """The config keys in which the runs with a config.json differ, each with every run's value."""
    known = [run for run in runs if run.settings is not None]
    if len(known) < 2:
        return None
    keys = sorted({key for run in known for key in run.settings})
    differing = [key for key in keys if len({repr(run.settings.get(key)) for run in known}) > 1]
    if not differing:
        return None
    details = "; ".join(f"{key.upper()} " + ", ".join(f"{run.settings.get(key)!r} ({run.given})" for run in known)
                        for key in differing[:8])
    more = f"; and {len(differing) - 8} more key(s)" if len(differing) > 8 else ""
    return f"configuration differs in {', '.join(key.upper() for key in differing)}: {details}{more}"


def mixed_setup_problems(name: str, runs: list[SampleRun]) -> list[str]:
    """Why the runs of one sample are not one setup (code hash, configuration, score label); [] if none."""
    found = [_differing(runs, lambda run: run.score.code_hash, "code hash"),
             _settings_difference(runs),
             _differing(runs, lambda run: run.score.label, "score label (evaluation phase)")]
    return [f"{name}: {problem}" for problem in found if problem]


def subset_problems(samples: dict[str, list[SampleRun]]) -> list[str]:
    """Runs scored on a subset of the validation split (VAL_MAX_TOKENS > 0)."""
    problems = []
    for name, runs in samples.items():
        subset = [run.given for run in runs if run.score.val_subset]
        if subset:
            problems.append(f"{name}: scored on a subset of the validation split (val_subset in report.json, "
                            f"VAL_MAX_TOKENS > 0): {', '.join(subset)}; a record is scored on all of it")
    return problems


def unknown_seed_notes(samples: dict[str, list[SampleRun]]) -> list[str]:
    """Runs whose seed is not known (a log without a seed line): their seeds could not be compared."""
    notes = []
    for name, runs in samples.items():
        unknown = [run.given for run in runs if run.score.seed is None]
        if unknown:
            notes.append(f"{name}: no seed found for {', '.join(unknown)}; could not check that these runs "
                         "have seeds of their own")
    return notes
