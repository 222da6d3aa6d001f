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
"""

import json
from dataclasses import dataclass
from pathlib import Path

from pgolf.config import (Config, apply_config_overrides, config_field_index, config_from_dict,
                          flatten_config)
from pgolf.errors import ConfigError, PgolfError
from pgolf.fsutil import remove_tree
from pgolf.log import RunLogger
from pgolf.train.checkpoint import CHECKPOINTS_DIR_NAME, newest_checkpoint, read_checkpoint_manifest

# pgolf's own settings of the machine (the pgolf_* fields: device, cache directory, auto-resume): they
# belong to where a run executes, not to the run, so a resumed run takes them from this machine.
MACHINE_FIELDS = frozenset(name for name in config_field_index() if name.startswith("pgolf_"))

# Config fields a resumed run may change: where things are and how often to log/checkpoint. Anything
# else would make the resumed run a different run, so it is refused.
RESUME_ADJUSTABLE_FIELDS = frozenset({"data_path", "tokenizer_path", "runs_dir", "run_id", "train_log_every",
                                      "val_loss_every", "checkpoint_every", "checkpoint_every_seconds",
                                      "checkpoint_keep"}) | MACHINE_FIELDS


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
    run_dir = Path(run_dir)
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
    cfg = config_from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    cfg = apply_config_overrides(cfg, machine or {}, source="environment")
    cfg = apply_config_overrides(cfg, overrides, source="command line")
    cfg = apply_config_overrides(cfg, {"runs_dir": str(run_dir.parent), "run_id": run_dir.name}, source="--resume")
    checkpoint = newest_checkpoint(run_dir)
    preset = read_checkpoint_manifest(checkpoint).get("preset", "custom") if checkpoint is not None else "custom"
    return cfg, preset


@dataclass(frozen=True)
class RunStart:
    """Where a run writes and what it continues from: a new directory, or an existing one (resumed,
    from ``checkpoint`` or, with no complete checkpoint yet under auto-resume, from step 0)."""

    run_dir: Path
    existing: bool = False
    checkpoint: Path | None = None


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
    if checkpoint is None and mode == "required":
        return None, (f"cannot resume {run_dir}: it has no complete checkpoint in {run_dir / CHECKPOINTS_DIR_NAME} "
                      "(run with CHECKPOINT_EVERY or CHECKPOINT_EVERY_SECONDS to write them).")
    try:
        config_path = run_dir / "config.json"
        if config_path.is_file():
            check_resume_config(json.loads(config_path.read_text(encoding="utf-8")), cfg, config_path)
        if checkpoint is not None:
            check_resume_config(read_checkpoint_manifest(checkpoint)["config"], cfg, checkpoint)
    except (PgolfError, ValueError) as error:
        return None, str(error)
    return RunStart(run_dir, existing=True, checkpoint=checkpoint), None


def remove_unfinished_outputs(run_dir: Path, logger: RunLogger) -> None:
    """Outputs an interrupted attempt of this run wrote after training (it never reached report.json):
    the resumed run writes them again."""
    for name in ("final_weights.pgtc", "artifact"):
        path = run_dir / name
        if path.is_dir():
            remove_tree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        logger.line(f"resume:removed {path} (written by the unfinished attempt; written again below)")
