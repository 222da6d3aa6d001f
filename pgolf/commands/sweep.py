"""``pgolf sweep [--preset P] [--seeds 1,2] [--ablate] [--unpaired] [--name N] [--resume] [--json] KEY=v1,v2 ...``
(tooling).

Plans the arms (every axis value, or with ``--ablate`` every enabled feature switched off), trains
every arm under every seed into ``RUNS_DIR/<sweep>/``, and prints the paired comparison with the
reference; the planning and statistics are in :mod:`pgolf.exp.sweep`. ``--resume`` continues a named
sweep that stopped: the same arguments, the finished runs reused.
"""

import argparse
import json

from pgolf.commands.configuration import fill_default_data, resolve_config
from pgolf.config import Config
from pgolf.dist import is_main_process
from pgolf.errors import ConfigError
from pgolf.exp.runner import (check_folder_name, claim_output_dir, parse_seed_list, print_main, refuse_reserved_keys,
                              reopen_output_dir, write_json_once)
from pgolf.exp.sweep import (SWEEP_CSV, SWEEP_PLAN_FILE, SWEEP_SUMMARY_FILE, Arm, SweepItems, format_sweep_table,
                             parse_sweep_items, plan_ablation_arms, plan_axis_arms, run_arms, sweep_csv_text,
                             sweep_plan_payload, sweep_result)
from pgolf.fsutil import write_text_atomic


def plan_sweep(args: argparse.Namespace) -> tuple[list[Arm], Config, str, SweepItems]:
    """Resolve the reference configuration and every arm (all validated before anything trains)."""
    refuse_reserved_keys(args.overrides, "sweep")
    items = parse_sweep_items(args.overrides)
    if args.ablate and items.axes:
        raise ConfigError("--ablate makes its own arms; give only single values (fixed for every arm), not "
                          f"axes: {', '.join(key for key, _ in items.axes)}.")
    base, preset, preset_name = resolve_config(args.preset, items.fixed)
    base = fill_default_data(base)
    arms = plan_ablation_arms(base) if args.ablate else plan_axis_arms(base, items.axes)
    return arms, preset, preset_name, items


def run_sweep_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf sweep``: plan, train every arm x seed, compare, save and print."""
    seeds = parse_seed_list(args.seeds)  # every argument checked before anything is created
    if args.name is not None:
        check_folder_name(args.name)
    arms, preset, preset_name, items = plan_sweep(args)
    if args.resume:
        sweep_dir = reopen_output_dir(arms[0].cfg, args.name, "sweep", SWEEP_PLAN_FILE, SWEEP_SUMMARY_FILE,
                                      lambda path: sweep_plan_payload(path, arms, preset, preset_name, seeds, items))
    else:
        sweep_dir = claim_output_dir(arms[0].cfg, args.name, "sweep", SWEEP_PLAN_FILE, SWEEP_SUMMARY_FILE)
        write_json_once(sweep_dir / SWEEP_PLAN_FILE,
                        sweep_plan_payload(sweep_dir, arms, preset, preset_name, seeds, items))

    def summarise(runs: list[list[dict]], done_seeds: list[int]) -> dict:
        """The table of ``runs`` (per arm, one per seed of ``done_seeds``): all of them, or the complete pairs."""
        return sweep_result(sweep_dir, preset_name, arms, runs, done_seeds, paired=not args.unpaired,
                            ablate=args.ablate, items=items)

    runs = run_arms(arms, seeds, sweep_dir, preset, preset_name, echo=not args.json, resume=args.resume,
                    summarise=summarise)
    result = summarise(runs, seeds)
    write_json_once(sweep_dir / SWEEP_SUMMARY_FILE, result)
    if is_main_process():
        write_text_atomic(sweep_dir / SWEEP_CSV, sweep_csv_text(result))
    print_main(json.dumps(result, indent=2) if args.json else "\n".join(format_sweep_table(result)))
    return 0
