"""``pgolf describe [--preset NAME] [KEY=value ...] [--json]``: the resolved configuration, the model's
parameter count and the memory its training holds at least, with every field that differs from the
preset marked (tooling). The model is counted on the meta device: nothing is allocated, so describing a
model too large for the machine is safe (and says so)."""

import argparse
import json

import torch

from pgolf.commands.configuration import resolve_config
from pgolf.config import config_differences, flatten_config
from pgolf.train.memory import (available_memory_bytes, count_parameters_without_allocating,
                                describe_training_memory, format_memory_bytes, training_memory_bytes)


def memory_note(needed: int, available: int | None) -> str:
    """What the estimate means on this machine's CPU memory (describe knows no GPU choice)."""
    if available is None:
        return ""
    verdict = "fits in" if needed <= available else "does NOT fit in"
    return f"; {verdict} the {format_memory_bytes(available)} this machine has free"


def run_describe_command(args: argparse.Namespace) -> int:
    cfg, preset, name = resolve_config(args.preset, args.overrides)
    params = count_parameters_without_allocating(cfg.model)
    needed = training_memory_bytes(cfg, params)
    available = available_memory_bytes(torch.device("cpu"))
    diffs = config_differences(cfg, preset)
    if args.json:
        print(json.dumps({"preset": name, "config": flatten_config(cfg), "model_params": params,
                          "training_memory_bytes": needed, "available_memory_bytes": available,
                          "differences": {k: {"preset": a, "value": b} for k, (a, b) in diffs.items()}},
                         indent=2, default=list))
        return 0
    print(f"preset: {name}   model_params: {params}")
    print(f"memory: {describe_training_memory(cfg, params)}{memory_note(needed, available)}")
    for key, value in flatten_config(cfg).items():
        marker = f"   (preset: {diffs[key][0]!r})" if key in diffs else ""
        print(f"  {key.upper():<36} {value!r}{marker}")
    return 0
