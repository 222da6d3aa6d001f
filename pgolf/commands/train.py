"""``pgolf train [--preset NAME] [--resume RUN_DIR] [KEY=value ...]`` (tooling: never exported).

Resolves the configuration, then runs the pipeline (:func:`pgolf.run.main`): train, quantize, pack,
round-trip evaluate, report. The code size counted against the cap is exactly the ``train_gpt.py``
that ``pgolf export`` would write for this configuration.
"""

import argparse
import sys
from pathlib import Path

from pgolf.commands.configuration import (fill_default_data, print_on_main_process, resolve_config,
                                          resolve_resumed_config)
from pgolf.dist import is_main_process
from pgolf.errors import ConfigError
from pgolf.export.bundle import exported_code_bytes
from pgolf.run import main as run_main
from pgolf.train.checkpoint_state import TrainingInterrupted


def train_config(args: argparse.Namespace):
    """(config, preset config or None, preset name): a new run's, or with ``--resume`` the run's own."""
    if not args.resume:
        cfg, preset, name = resolve_config(args.preset, args.overrides)
        return fill_default_data(cfg), preset, name
    if args.preset:
        raise ConfigError("--resume continues a run with its own configuration; drop --preset.")
    return resolve_resumed_config(Path(args.resume), args.overrides)


def run_train_command(args: argparse.Namespace) -> int:
    """Train (or with ``--resume RUN_DIR`` continue) a run. Ctrl-C writes a checkpoint and returns 130."""
    cfg, preset, name = train_config(args)
    try:
        report = run_main(cfg, preset_name=name, preset_cfg=preset,
                          code_bytes=exported_code_bytes(cfg, preset_name=name), resume=bool(args.resume))
    except TrainingInterrupted as interrupted:
        if is_main_process():
            print(f"pgolf train: {interrupted}", file=sys.stderr)
        return 130
    print_on_main_process(f"val_bpb:{report['val_bpb']:.4f} (round trip) total_bytes:{report.get('total_bytes')} "
                          f"run:{report['run_dir']}")
    return 0
