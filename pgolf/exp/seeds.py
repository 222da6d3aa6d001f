"""One configuration under several seeds: the work behind ``pgolf seeds`` (tooling; the command is
pgolf/commands/seeds.py).

One configuration trained once per seed, one run after the other in this process, into
``RUNS_DIR/<group>/seed_<SEED>``. ``group.json`` (written first, never overwritten) records the
configuration, the seeds and the run directories; ``seeds.json`` (written last) the scores. The table
shows each seed's final score (the last evaluation phase, e.g. TTT, else the round trip) and the mean,
the standard deviation and the t-interval of the mean. A group stopped by a failure or Ctrl-C writes
``seeds.partial.json`` (the finished seeds, marked partial) and is continued with ``--resume``
(:func:`pgolf.exp.runner.run_planned`). Under ``torchrun`` every rank runs the same loop and only rank 0
prints.
"""

import json
import sys
from pathlib import Path

from pgolf.exp.runner import (CONFIDENCE, PlannedRun, describe_config, earlier_partial_holds_more, mean_interval,
                              now_text, partial_fields, print_stop, reusable_reports,
                              run_planned, write_partial_summary)

GROUP_PLAN_FILE = "group.json"
GROUP_SUMMARY_FILE = "seeds.json"
GROUP_PARTIAL_FILE = "seeds.partial.json"


def seed_run_id(seed: int) -> str:
    return f"seed_{seed}"


def group_plan(group_dir: Path, cfg, preset, preset_name: str, seeds: list[int]) -> dict:
    """The content of group.json: what will run, where."""
    return {"kind": "seed_group", "group": group_dir.name, "created": now_text(), "argv": sys.argv[1:],
            "seeds": seeds, "run_dirs": [str(group_dir / seed_run_id(seed)) for seed in seeds],
            **describe_config(cfg, preset, preset_name)}


def run_seed_group(cfg, preset, preset_name: str, seeds: list[int], group_dir: Path, *, echo: bool,
                   resume: bool = False) -> list[dict]:
    """Train every seed in order (with ``resume``, reusing the finished ones and continuing a started one).
    Stops at the first failure or Ctrl-C, with a message naming the seed, what finished and what did not,
    after writing the partial summary of the finished seeds (``seeds.partial.json``)."""
    planned = [PlannedRun(f"seed {seed}", cfg, seed, seed_run_id(seed)) for seed in seeds]
    reuse = reusable_reports(planned, group_dir) if resume else None
    runs: list[dict] = []
    try:
        run_planned(planned, group_dir, runs, preset_name=preset_name, preset_cfg=preset, echo=echo, reuse=reuse,
                    banner=lambda i: f"== seeds {group_dir.name}: seed {seeds[i]} ({i + 1}/{len(seeds)}) ==")
    except BaseException as stop:
        partial_path = group_dir / GROUP_PARTIAL_FILE
        if not earlier_partial_holds_more(partial_path, len(runs)):
            partial = partial_seed_group_result(group_dir, preset_name, planned, runs, stop)
            write_partial_summary(partial_path, json.dumps(partial, indent=2, default=list) + "\n")
        print_stop("seed group", group_dir, planned, runs, stop, [str(partial_path)],
                   f"the summary of the finished seed(s) is partial; {GROUP_SUMMARY_FILE} is written when every "
                   "seed has finished")
        raise
    return runs


def seed_group_result(group_dir: Path, preset_name: str, runs: list[dict]) -> dict:
    interval = mean_interval([run["val_bpb"] for run in runs], CONFIDENCE) if runs else None
    return {"group": str(group_dir), "preset": preset_name, "seeds": [run["seed"] for run in runs], "runs": runs,
            "summary": interval.as_dict() if interval else None}


def partial_seed_group_result(group_dir: Path, preset_name: str, planned: list[PlannedRun], runs: list[dict],
                              stop: BaseException) -> dict:
    """The summary of the seeds that finished, marked partial, with the seeds it lacks."""
    return {**partial_fields(stop, planned, runs, group_dir), **seed_group_result(group_dir, preset_name, runs),
            "planned_seeds": [run.seed for run in planned]}


def format_seed_table(result: dict) -> list[str]:
    """The per-seed table and the mean line, as printed."""
    lines = [f"seed group {result['group']} (preset {result['preset']}, {len(result['runs'])} seeds)",
             f"  {'seed':>10}  {'val_bpb':>11}  {'score':<26} {'steps':>6}  {'total_bytes':>11}  run"]
    for run in result["runs"]:
        lines.append(f"  {run['seed']:>10}  {run['val_bpb']:11.8f}  {run['score_label']:<26} "
                     f"{run['steps'] if run['steps'] is not None else '-':>6}  "
                     f"{run['total_bytes'] if run['total_bytes'] is not None else '-':>11}  {run['run_dir']}")
    summary = result["summary"]
    if summary["std"] is None:
        lines.append(f"mean val_bpb {summary['mean']:.8f}  std n/a (1 seed)  interval n/a (1 seed)")
    else:
        lines.append(f"mean val_bpb {summary['mean']:.8f}  std {summary['std']:.8f}  "
                     f"{summary['confidence']:.0%} t-interval of the mean [{summary['ci_low']:.8f}, "
                     f"{summary['ci_high']:.8f}] (n={summary['n']}, df={summary['n'] - 1})")
    return lines
