"""``pgolf seeds --seeds 42,314,999 [--preset P] [--name N] [--resume] [--json] [KEY=value ...]`` (tooling).

Trains one configuration once per seed into ``RUNS_DIR/<group>/seed_<SEED>`` and prints the table of
scores with the mean and its t-interval (:mod:`pgolf.exp.seeds`). ``--resume`` continues a named group
that stopped (Ctrl-C, a crash): the same arguments, the finished seeds reused. Under ``torchrun`` every
rank runs the same loop and only rank 0 prints.
"""

import argparse
import json

from pgolf.commands.configuration import fill_default_data, resolve_config
from pgolf.exp.runner import (check_folder_name, claim_output_dir, parse_seed_list, print_main, refuse_reserved_keys,
                              reopen_output_dir, write_json_once)
from pgolf.exp.seeds import (GROUP_PLAN_FILE, GROUP_SUMMARY_FILE, format_seed_table, group_plan, run_seed_group,
                             seed_group_result)


def run_seeds_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf seeds``: train, then print (and save) the table."""
    seeds = parse_seed_list(args.seeds)  # every argument checked before anything is created
    if args.name is not None:
        check_folder_name(args.name)
    refuse_reserved_keys(args.overrides, "seeds")
    cfg, preset, preset_name = resolve_config(args.preset, args.overrides)
    cfg = fill_default_data(cfg)
    if args.resume:
        group_dir = reopen_output_dir(cfg, args.name, "seeds", GROUP_PLAN_FILE, GROUP_SUMMARY_FILE,
                                      lambda path: group_plan(path, cfg, preset, preset_name, seeds))
    else:
        group_dir = claim_output_dir(cfg, args.name, "seeds", GROUP_PLAN_FILE, GROUP_SUMMARY_FILE)
        write_json_once(group_dir / GROUP_PLAN_FILE, group_plan(group_dir, cfg, preset, preset_name, seeds))
    runs = run_seed_group(cfg, preset, preset_name, seeds, group_dir, echo=not args.json, resume=args.resume)
    result = seed_group_result(group_dir, preset_name, runs)
    write_json_once(group_dir / GROUP_SUMMARY_FILE, result)
    if args.json:
        print_main(json.dumps(result, indent=2))
    else:
        print_main("\n".join(format_seed_table(result)))
    return 0
