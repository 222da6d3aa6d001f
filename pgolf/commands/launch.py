"""``pgolf launch [--preset NAME] [--budget 10m|1h|11h] [--nproc N] [--dry-run] [KEY=value ...]`` (tooling).

One command for a fresh machine (a Colab or Kaggle notebook, a rented 8xH100 pod):

1. checks the machine with ``pgolf doctor``'s quick report (no timing probes) and prints its warnings;
2. downloads the preset's FineWeb variant into the challenge's ``data/`` layout when its shards are
   missing (``pgolf data fineweb``'s code: resumable, checked); the embedded default data needs none;
3. picks the number of processes: ``--nproc``, else the visible GPUs, else 1 (CPU);
4. starts ``pgolf train`` with the preset, the budget's settings and the ``KEY=value`` items (which win):
   under ``torchrun --standalone`` with several processes, as a plain ``python -m pgolf`` with one.
   With ``CHECKPOINT_SYNC`` and ``RUN_ID`` it adds ``PGOLF_AUTO_RESUME=1``: the same launch command in
   the next session fetches the mirror's newest checkpoint and continues.

``--budget`` sizes a run to a session of the free tiers (:data:`BUDGETS`): the training wall clock
(``MAX_WALLCLOCK_SECONDS``, leaving time for evaluation, quantization and the last upload), a checkpoint
interval in seconds, and ``ITERATIONS`` raised so that time, not a step count, ends training. The
warm-down is a fraction of the budget (``WARMDOWN_FRAC`` of ``MAX_WALLCLOCK_SECONDS``), so it scales with it.
``--dry-run`` prints the checks, the download and the command, and runs nothing.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.commands.configuration import configured_runs_dir, resolve_config
from pgolf.commands.data_fineweb import (FINEWEB_DEFAULT_PREFIX, FINEWEB_PREFIX_ENV, FINEWEB_REPO_ENV, HubClient,
                                         download_fineweb, fineweb_default_repo)
from pgolf.commands.doctor import collect_doctor_report
from pgolf.config import parse_cli_overrides
from pgolf.errors import ConfigError


@dataclass(frozen=True)
class TimeBudget:
    """A session length of a free tier, and what a run in it gets."""

    name: str
    description: str
    train_seconds: int  # MAX_WALLCLOCK_SECONDS: the session less evaluation, quantization and upload
    checkpoint_every_seconds: int


BUDGETS = {budget.name: budget for budget in (
    TimeBudget("10m", "a quick test that the whole pipeline works", 420, 120),
    TimeBudget("1h", "an hour: a first real curve", 3000, 600),
    TimeBudget("11h", "a full Kaggle/Colab session (12 h limit)", 37800, 1800),
)}
# A budget's ITERATIONS: high enough that the wall clock always ends training first.
BUDGET_ITERATIONS = 10_000_000
FINEWEB_DATA_PATH = re.compile(r"^(?P<root>.*)/datasets/fineweb10B_(?P<variant>[A-Za-z0-9_]+)/?$")


def budget_overrides(name: str | None) -> list[str]:
    """The ``KEY=value`` items of ``--budget NAME`` (none without one)."""
    if not name:
        return []
    if name not in BUDGETS:
        raise ConfigError(f"unknown --budget {name!r}; choose one of {', '.join(BUDGETS)}.")
    budget = BUDGETS[name]
    return [f"MAX_WALLCLOCK_SECONDS={budget.train_seconds}", f"ITERATIONS={BUDGET_ITERATIONS}",
            f"CHECKPOINT_EVERY_SECONDS={budget.checkpoint_every_seconds}"]


def process_count(requested: int | None, visible_gpus: int) -> int:
    """``--nproc``, else one per visible GPU, else 1."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--nproc {requested} must be at least 1.")
        return requested
    return max(visible_gpus, 1)


def train_command(preset: str, items: list[str], nproc: int) -> list[str]:
    """The command that trains: torchrun for several processes, plain Python for one."""
    train = ["-m", "pgolf", "train", "--preset", preset, *items]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


@dataclass(frozen=True)
class DataNeed:
    """The FineWeb download a configuration needs (None fields: nothing to download)."""

    variant: str | None = None
    root: Path | None = None
    train_shards: int = 0


def data_need(data_path: str, train_shards: int) -> DataNeed:
    """What to download for DATA_PATH: a FineWeb folder (``<root>/datasets/fineweb10B_<variant>``) without
    its shards. The embedded default data (empty DATA_PATH) and other datasets need nothing."""
    match = FINEWEB_DATA_PATH.match(data_path.replace(os.sep, "/")) if data_path else None
    if match is None:
        return DataNeed()
    folder = Path(data_path)
    have_val = any(folder.glob("fineweb_val_*.bin"))
    have_train = len(list(folder.glob("fineweb_train_*.bin"))) >= train_shards
    if have_val and have_train:
        return DataNeed()
    return DataNeed(match.group("variant"), Path(match.group("root") or "."), train_shards)


def run_launch_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf launch``."""
    merged = {key.upper(): value for key, value in parse_cli_overrides(budget_overrides(args.budget)).items()}
    merged.update({key.upper(): value for key, value in parse_cli_overrides(list(args.overrides)).items()})
    cfg, _, preset = resolve_config(args.preset, [f"{key}={value}" for key, value in merged.items()])
    items = [f"{key}={value}" for key, value in merged.items() if key != "PRESET"]  # the user's items win
    if cfg.run.checkpoint_sync and cfg.run.run_id and "PGOLF_AUTO_RESUME" not in merged:
        items.append("PGOLF_AUTO_RESUME=1")  # the same launch in the next session continues from the mirror
    elif cfg.run.checkpoint_sync and not cfg.run.run_id:
        print("note: give RUN_ID=... with CHECKPOINT_SYNC so that the next session's launch resumes the run")
    report = collect_doctor_report(quick=True, runs_dir=configured_runs_dir())
    gpus = ", ".join(gpu["name"] for gpu in report["gpus"]) or "none (CPU)"
    print(f"pgolf launch: preset {preset}; torch {report['torch']}; GPUs: {gpus}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    need = data_need(cfg.data.data_path, args.train_shards)
    if need.variant is not None:
        print(f"data: {cfg.data.data_path} lacks its shards: pgolf data fineweb --variant {need.variant} "
              f"--train-shards {need.train_shards} --out {need.root}")
        if not args.dry_run:
            # The repository and folder as `pgolf data fineweb` picks them without flags (its environment variables).
            client = HubClient(os.environ.get(FINEWEB_REPO_ENV) or fineweb_default_repo(need.variant),
                               prefix=os.environ.get(FINEWEB_PREFIX_ENV, FINEWEB_DEFAULT_PREFIX))
            download_fineweb(need.variant, need.train_shards, need.root, client)
    else:
        print(f"data: {cfg.data.data_path or 'the embedded default dataset'} (nothing to download)")
    nproc = process_count(args.nproc, torch.cuda.device_count())
    command = train_command(preset, items, nproc)
    print(f"processes: {nproc}")
    print("command: " + shlex.join(command))
    if args.dry_run:
        return 0
    sys.stdout.flush()
    return subprocess.run(command, check=False).returncode

