"""``pgolf describe [--preset NAME] [KEY=value ...] [--json]``: the resolved configuration and the
model's parameter count, with every field that differs from the preset marked (tooling)."""

import argparse
import json

from pgolf.commands.configuration import resolve_config
from pgolf.config import config_differences, flatten_config
from pgolf.model.gpt import GPT, count_parameters


def run_describe_command(args: argparse.Namespace) -> int:
    cfg, preset, name = resolve_config(args.preset, args.overrides)
    params = count_parameters(GPT(cfg.model))
    diffs = config_differences(cfg, preset)
    if args.json:
        print(json.dumps({"preset": name, "config": flatten_config(cfg), "model_params": params,
                          "differences": {k: {"preset": a, "value": b} for k, (a, b) in diffs.items()}},
                         indent=2, default=list))
        return 0
    print(f"preset: {name}   model_params: {params}")
    for key, value in flatten_config(cfg).items():
        marker = f"   (preset: {diffs[key][0]!r})" if key in diffs else ""
        print(f"  {key.upper():<36} {value!r}{marker}")
    return 0
