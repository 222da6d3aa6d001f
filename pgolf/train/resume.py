"""Resuming a run: which directory and checkpoint to continue from, and which settings may change.

Three ways in:

* ``pgolf train --resume RUN_DIR``: the run's own ``config.json`` (command-line ``KEY=value`` only
  for the adjustable fields below), continued from its newest complete checkpoint;
* ``PGOLF_AUTO_RESUME=1`` (the run section's ``pgolf_auto_resume``) with ``RUN_ID`` naming a run
  under ``RUNS_DIR``: resumed when that directory exists (from its newest checkpoint, or from step 0
  when none is complete yet), started when it does not. The same command can therefore be re-run as
  is, which is what ``torchrun --max-restarts`` does with a failed worker group;
* neither: a fresh directory, and an existing one is an error (a run is never overwritten).

A finished run (one with ``report.json``) is never resumed. A resumed run must have the run's own
configuration: anything that changes the maths is refused, so a resumed run is the same run.

When training ends, the run keeps its weights (``final_weights.pgtc``, written atomically) and then
``training_done.json`` (the training outcome). A run interrupted after that (calibration, quantization,
evaluation, TTT) is resumed from those weights: it quantizes and evaluates again and never trains again,
so an evaluation crash that repeats under ``torchrun --max-restarts`` costs an evaluation, not a training.
Nothing an earlier attempt wrote is deleted: an unfinished artifact is moved aside under a timestamped name.
"""

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.config import (Config, apply_config_overrides, config_field_index, config_from_dict,
                          flatten_config)
from pgolf.errors import ArtifactError, ConfigError, PgolfError, TrainingError
from pgolf.fsutil import write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.quant.model_artifact import FINAL_WEIGHTS_FILE, load_final_weights, write_final_weights
from pgolf.train.checkpoint import CHECKPOINTS_DIR_NAME, newest_checkpoint, read_checkpoint_manifest
from pgolf.train.loop import TrainOutcome

# Written (atomically, after final_weights.pgtc) when training has finished: the outcome of training.
TRAINING_DONE_FILE = "training_done.json"

# pgolf's own settings of the machine (the pgolf_* fields: device, cache directory, auto-resume): they
# belong to where a run executes, not to the run, so a resumed run takes them from this machine.
MACHINE_FIELDS = frozenset(name for name in config_field_index() if name.startswith("pgolf_"))

# Config fields a resumed run may change: where things are, how often to log/checkpoint and where the
# checkpoints are mirrored. Anything else would make the resumed run a different run, so it is refused.
RESUME_ADJUSTABLE_FIELDS = frozenset({"data_path", "tokenizer_path", "runs_dir", "run_id", "train_log_every",
                                      "val_loss_every", "checkpoint_every", "checkpoint_every_seconds",
                                      "checkpoint_keep", "checkpoint_sync"}) | MACHINE_FIELDS


def read_json_file(path: Path, fix: str = "restore it from a copy") -> dict:
    """A JSON object from ``path``; a PgolfError naming the file (and ``fix``) when it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PgolfError(f"{path} is not a readable JSON file ({error}); {fix}.") from None
    if not isinstance(value, dict):
        raise PgolfError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}.")
    return value


def read_config_file(path: Path) -> Config:
    """A run's ``config.json`` as a Config; a PgolfError naming the file when it is damaged."""
    sections = read_json_file(path, "restore it from a copy of the run")
    if not all(isinstance(section, dict) for section in sections.values()):
        raise PgolfError(f"{path} is not a pgolf config.json (each section must be a JSON object); restore it "
                         "from a copy of the run.")
    return config_from_dict(sections)


def resume_config_conflicts(saved_sections: dict, cfg: Config) -> list[str]:
    """The fields (other than RESUME_ADJUSTABLE_FIELDS) where ``cfg`` differs from a run's saved config."""
    saved, current = flatten_config(config_from_dict(saved_sections)), flatten_config(cfg)
    return [f"{name.upper()}={current[name]!r} (the run has {saved[name]!r})" for name in sorted(current)
            if name not in RESUME_ADJUSTABLE_FIELDS and current[name] != saved.get(name)]


def check_resume_config(saved_sections: dict, cfg: Config, source: Path) -> None:
    """ConfigError if ``cfg`` would make a resumed run a different run than the one in ``source``."""
    conflicts = resume_config_conflicts(saved_sections, cfg)
    if conflicts:
        raise ConfigError(f"cannot resume with a configuration that differs from {source}: " + "; ".join(conflicts)
                          + ". Resume with the run's own settings (only paths and logging/checkpoint "
                          "intervals may change), or start a new run with another RUN_ID.")


def resume_run_config(run_dir: Path, overrides: dict[str, str],
                      machine: dict[str, str] | None = None) -> tuple[Config, str]:
    """The configuration of the run in ``run_dir`` (its config.json, placed where the directory is now)
    with this machine's settings ``machine`` (MACHINE_FIELDS, such as PGOLF_DEVICE, as the caller read
    them from the environment) and command-line ``overrides`` of the adjustable fields, and the run's
    preset name."""
    run_dir = Path(run_dir).resolve()  # `--resume .` from inside it: its name is the RUN_ID
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: {config_path} not found; pass the directory of a pgolf run.")
    allowed = RESUME_ADJUSTABLE_FIELDS - {"runs_dir", "run_id"}  # those two come from where run_dir is
    known = config_field_index()
    refused = sorted(key.upper() for key in overrides if key.strip().lower() in known
                     and key.strip().lower() not in allowed)
    if refused:
        raise ConfigError(f"--resume keeps the run's own configuration; {', '.join(refused)} cannot change. Only "
                          f"{', '.join(sorted(k.upper() for k in allowed))} may be given.")
    cfg = read_config_file(config_path)
    cfg = apply_config_overrides(cfg, machine or {}, source="environment")
    cfg = apply_config_overrides(cfg, overrides, source="command line")
    cfg = apply_config_overrides(cfg, {"runs_dir": str(run_dir.parent), "run_id": run_dir.name}, source="--resume")
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is not None:
        return cfg, read_checkpoint_manifest(checkpoint).get("preset", "custom")
    marker = finished_training(run_dir)
    return cfg, marker.get("preset", "custom") if marker is not None else "custom"


@dataclass(frozen=True)
class RunStart:
    """Where a run writes and what it continues from: a new directory, or an existing one (resumed,
    from ``checkpoint`` or, with no complete checkpoint yet under auto-resume, from step 0; with
    ``training_done``, from the final weights of a training that had finished)."""

    run_dir: Path
    existing: bool = False
    checkpoint: Path | None = None
    training_done: bool = False


def resume_mode(resume: bool, auto_resume: bool) -> str:
    """"required" (``--resume``), "auto" (``auto_resume``: the run section's ``pgolf_auto_resume``,
    ``PGOLF_AUTO_RESUME=1``) or "never"."""
    if resume:
        return "required"
    return "auto" if auto_resume else "never"


def resume_decision(cfg: Config, mode: str) -> tuple[RunStart | None, str | None]:
    """Rank 0: (how to start, None) or (None, why not); (None, None) means a fresh directory."""
    run_dir = Path(cfg.run.runs_dir) / cfg.run.run_id if cfg.run.run_id else None
    if run_dir is None or not run_dir.is_dir():
        if mode == "required":
            return None, f"cannot resume: run directory {run_dir} does not exist; pass the directory of a run."
        return None, None
    if (run_dir / "report.json").exists():
        return None, (f"{run_dir} is a finished run (it has report.json); there is nothing to resume. "
                      "Start a new run with another RUN_ID.")
    checkpoint = newest_checkpoint(run_dir)
    try:
        trained = finished_training(run_dir) is not None
        if checkpoint is None and not trained and mode == "required":
            return None, (f"cannot resume {run_dir}: it has no complete checkpoint in "
                          f"{run_dir / CHECKPOINTS_DIR_NAME} (run with CHECKPOINT_EVERY or CHECKPOINT_EVERY_SECONDS "
                          "to write them).")
        config_path = run_dir / "config.json"
        if config_path.is_file():
            read_config_file(config_path)  # a damaged file is named before it is compared
            check_resume_config(read_json_file(config_path), cfg, config_path)
        if checkpoint is not None:
            check_resume_config(read_checkpoint_manifest(checkpoint)["config"], cfg, checkpoint)
    except (PgolfError, ValueError) as error:
        return None, str(error)
    return RunStart(run_dir, existing=True, checkpoint=checkpoint, training_done=trained), None


def record_finished_training(model: GPT, run_dir: Path, outcome: TrainOutcome, preset_name: str) -> None:
    """Rank 0, as soon as training ends: the final weights, then ``training_done.json`` (both atomic), so a
    marker always has its weights beside it."""
    weights = write_final_weights(model, run_dir)
    marker = {"outcome": dataclasses.asdict(outcome), "final_weights": weights.name,
              "final_weights_bytes": weights.stat().st_size, "preset": preset_name,
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text_atomic(run_dir / TRAINING_DONE_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def finished_training(run_dir: Path) -> dict | None:
    """The ``training_done.json`` marker of a run whose training finished (checked: its outcome reads and
    its final weights are there), else None."""
    path = Path(run_dir) / TRAINING_DONE_FILE
    if not path.is_file():
        return None
    retrain = (f"or move {path.name} away to train again from the newest checkpoint (the resumed run then keeps "
               f"{FINAL_WEIGHTS_FILE} under another name)")
    marker = read_json_file(path, f"restore it from a copy, {retrain}")
    outcome_fields = {field.name for field in dataclasses.fields(TrainOutcome)}
    if not isinstance(marker.get("outcome"), dict) or set(marker["outcome"]) != outcome_fields:
        raise TrainingError(f"{path} does not hold a training outcome; restore it from a copy, {retrain}.")
    if not (Path(run_dir) / FINAL_WEIGHTS_FILE).is_file():
        raise TrainingError(f"{path} says training finished, but {Path(run_dir) / FINAL_WEIGHTS_FILE} is missing; "
                            f"put the weights back, {retrain}.")
    return marker


def restore_finished_training(model: GPT, run_dir: Path, logger: RunLogger) -> TrainOutcome:
    """Load the final weights of a finished training into ``model`` (and its looping state); the outcome."""
    marker = finished_training(run_dir)
    if marker is None:
        raise TrainingError(f"{Path(run_dir) / TRAINING_DONE_FILE} is missing: training of this run has not finished.")
    weights = Path(run_dir) / FINAL_WEIGHTS_FILE
    try:
        state, looping = load_final_weights(weights)
    except ArtifactError as error:
        raise ArtifactError(f"{error} {_without_final_weights(Path(run_dir))}") from None
    model.load_state_dict(state, strict=True)
    if looping:
        model.set_looping(True)
    outcome = TrainOutcome(**marker["outcome"])
    logger.line(f"resume:from {weights} step:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms "
                f"looping:{looping} (training had finished: quantizing and evaluating again, no training)")
    logger.event("resume", step=outcome.steps, path=str(weights), train_seconds=outcome.train_seconds,
                 training_done=True)
    return outcome


def _without_final_weights(run_dir: Path) -> str:
    """What can be done without the final weights: train on from the newest checkpoint when there is one."""
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is None:
        return "Without it (the run has no checkpoint) the run must be trained again (a new RUN_ID)."
    return (f"Or train on from the newest checkpoint ({checkpoint.name}): move {run_dir / FINAL_WEIGHTS_FILE} and "
            f"{run_dir / TRAINING_DONE_FILE} aside, then `pgolf train --resume {run_dir}`.")


def set_aside_unfinished_outputs(run_dir: Path, logger: RunLogger, *, keep_final_weights: bool) -> None:
    """Outputs an interrupted attempt of this run wrote after training (it never reached report.json) are
    moved aside under a timestamped name, never deleted; the resumed run writes them again. The final
    weights stay where they are when training had finished (``keep_final_weights``): they are its input."""
    names = ["artifact"] + ([] if keep_final_weights else [FINAL_WEIGHTS_FILE])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
        path = run_dir / name
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder holds nothing to keep
        elif path.exists():
            aside = aside_path(run_dir, name, stamp)
            path.rename(aside)
            logger.line(f"resume:moved {path} to {aside.name} (written by the unfinished attempt; kept; "
                        "written again below)")


def aside_path(run_dir: Path, name: str, stamp: str) -> Path:
    """A free name for ``name`` set aside: ``artifact.unfinished_<stamp>``, ``final_weights.unfinished_<stamp>.pgtc``
    (``_2``, ``_3``, ... after the stamp when taken)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = run_dir / f"{stem}.unfinished_{stamp}{suffix}", 2
    while candidate.exists():
        candidate, n = run_dir / f"{stem}.unfinished_{stamp}_{n}{suffix}", n + 1
    return candidate
