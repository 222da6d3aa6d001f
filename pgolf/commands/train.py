"""``pgolf train [--preset NAME] [--resume RUN_DIR|URL] [KEY=value ...]`` (tooling: never exported).

With ``CHECKPOINT_SYNC=URL`` the run is mirrored to URL as it goes (commands/checkpoint_sync.py), and
``--resume URL`` (or ``PGOLF_AUTO_RESUME=1`` on a machine without the run) fetches it back first.

Resolves the configuration, then runs the pipeline (:func:`pgolf.run.main`): train, quantize, pack,
round-trip evaluate, report. The code size counted against the cap is exactly the ``train_gpt.py``
that ``pgolf export`` would write for this configuration (cached by code hash + configuration under the
pgolf cache folder, so a run does not export again at start; only the main process, which writes the
artifact, needs it).
"""

import argparse
import sys
import time
from pathlib import Path

from pgolf.commands.checkpoint_sync import (CheckpointMirror, check_mirror_holds_this_run, fetch_mirrored_run,
                                            is_mirror_folder, is_remote_url, mirror_run_id, open_store,
                                            remote_complete_checkpoints)
from pgolf.commands.configuration import (configured_runs_dir, fill_default_data, print_on_main_process,
                                          resolve_config, resolve_resumed_config)
from pgolf.config import parse_cli_overrides
from pgolf.dist import is_main_process
from pgolf.errors import ConfigError
from pgolf.export.bundle import exported_code_bytes
from pgolf.run import main as run_main
from pgolf.train.checkpoint_state import TrainingInterrupted


def train_config(args: argparse.Namespace):
    """(config, preset config or None, preset name): a new run's, or with ``--resume`` the run's own."""
    if not args.resume:
        cfg, preset, name = resolve_config(args.preset, args.overrides)
        fetch_for_auto_resume(cfg)
        return fill_default_data(cfg), preset, name
    if args.preset:
        raise ConfigError("--resume continues a run with its own configuration; drop --preset.")
    if is_remote_url(args.resume) or is_mirror_folder(args.resume):  # a CHECKPOINT_SYNC mirror: fetch it first
        run_dir, rest = fetch_for_resume(args.resume, args.overrides)
        return resolve_resumed_config(run_dir, rest)
    return resolve_resumed_config(Path(args.resume), args.overrides)


def fetch_for_resume(url: str, cli_items: list[str]) -> tuple[Path, list[str]]:
    """``--resume URL``: the mirrored run fetched into RUNS_DIR/RUN_ID (RUNS_DIR=/RUN_ID= items or the
    environment's RUNS_DIR; the mirror's run id), and the remaining items."""
    overrides = parse_cli_overrides(cli_items)
    where = {key.lower(): overrides.pop(key) for key in list(overrides) if key.lower() in ("runs_dir", "run_id")}
    runs_dir = Path(where.get("runs_dir") or configured_runs_dir())
    store = open_store(url)
    if is_main_process():
        run_dir = fetch_mirrored_run(url, runs_dir, where.get("run_id"), store=store)
    else:  # rank 0 fetches; the directory appears at once (a rename) when complete
        run_dir = wait_for_fetched_run(runs_dir / (where.get("run_id") or mirror_run_id(store)))
    return run_dir, [f"{key}={value}" for key, value in overrides.items()]


def wait_for_fetched_run(run_dir: Path, timeout_seconds: float = 3600.0) -> Path:
    deadline = time.monotonic() + timeout_seconds
    while not (run_dir / "config.json").is_file():
        if time.monotonic() > deadline:
            raise ConfigError(f"rank 0 did not fetch the mirrored run into {run_dir} within {timeout_seconds:.0f} s.")
        time.sleep(1.0)
    return run_dir


def fetch_for_auto_resume(cfg) -> None:
    """PGOLF_AUTO_RESUME=1 with CHECKPOINT_SYNC and a RUN_ID absent here (a new session's machine): the
    mirror's newest checkpoint is fetched into RUNS_DIR/RUN_ID, which the run then continues."""
    run = cfg.run
    if not (run.checkpoint_sync and run.pgolf_auto_resume and run.run_id) or not is_main_process():
        return
    if (Path(run.runs_dir) / run.run_id).exists():
        return
    store = open_store(run.checkpoint_sync)
    if remote_complete_checkpoints(store) or store.exists("training_done.json"):
        fetch_mirrored_run(run.checkpoint_sync, Path(run.runs_dir), run.run_id, store=store)


def continues_a_run(args: argparse.Namespace, cfg, run_dir: Path | None) -> bool:
    """True when this command resumes an existing run (``--resume``, or auto-resume of a run directory that
    is here, fetched or not); False for a new run."""
    resuming = bool(args.resume) or cfg.run.pgolf_auto_resume
    return resuming and run_dir is not None and (run_dir / "config.json").is_file()


def start_mirror(args: argparse.Namespace, cfg, run_dir: Path | None) -> CheckpointMirror | None:
    """Rank 0's mirror for CHECKPOINT_SYNC, after checking that the mirror is empty or holds this run.
    A new run whose directory already exists is left to the run's own refusal (nothing is mirrored)."""
    if not (cfg.run.checkpoint_sync and is_main_process()):
        return None
    continuing = continues_a_run(args, cfg, run_dir)
    if run_dir is None or continuing or not run_dir.exists():
        check_mirror_holds_this_run(cfg.run.checkpoint_sync, run_dir, continuing)
    return CheckpointMirror(cfg.run.checkpoint_sync, cfg.train.checkpoint_keep)


def log_size(run_dir: Path | None) -> int:
    log = run_dir / "train.log" if run_dir is not None else None
    return log.stat().st_size if log is not None and log.is_file() else 0


def run_train_command(args: argparse.Namespace) -> int:
    """Train (or with ``--resume RUN_DIR`` continue) a run. Ctrl-C writes a checkpoint and returns 130."""
    cfg, preset, name = train_config(args)
    code_bytes = exported_code_bytes(cfg, preset_name=name) if is_main_process() else None
    run_dir = Path(cfg.run.runs_dir) / cfg.run.run_id if cfg.run.run_id else None
    mirror = start_mirror(args, cfg, run_dir)
    # Only a run this command started or resumed is mirrored at the end: one whose train.log it wrote to
    # (the log is opened after the run directory is created or resumed and locked). A refused command
    # (the directory is another run's, or its lock is held) must not upload that run's files.
    log_size_before = log_size(run_dir)
    try:
        report = run_main(cfg, preset_name=name, preset_cfg=preset, code_bytes=code_bytes, resume=bool(args.resume),
                          on_checkpoint_written=mirror)
        run_dir = Path(report["run_dir"])
    except TrainingInterrupted as interrupted:
        if is_main_process():
            print(f"pgolf train: {interrupted}", file=sys.stderr)
        return 130
    finally:
        if mirror is not None:  # the final files and logs too, and every upload waited for
            mirror.finish(run_dir if log_size(run_dir) > log_size_before else None)
    print_on_main_process(f"val_bpb:{report['val_bpb']:.4f} (round trip) total_bytes:{report.get('total_bytes')} "
                          f"run:{report['run_dir']}")
    return 0
