"""One configuration under several seeds: the work behind ``pgolf seeds`` (tooling; the command is
pgolf/commands/seeds.py).

One configuration trained once per seed, one run after the other in this process, into
``RUNS_DIR/<group>/seed_<SEED>``. ``group.json`` (written first, never overwritten) records the
configuration, the seeds and the run directories; ``seeds.json`` (written last) the scores. The table
shows each seed's final score (the last evaluation phase, e.g. TTT, else the round trip) and the mean,
the standard deviation and the t-interval of the mean. Under ``torchrun`` every rank runs the same
loop and only rank 0 prints.
"""

import sys
from pathlib import Path

from pgolf.exp.runner import (CONFIDENCE, describe_config, mean_interval, now_text, one_process_group_for_all_runs,
                              print_main, run_or_explain, run_summary, run_training)


def seed_run_id(seed: int) -> str:
    return f"seed_{seed}"


def group_plan(group_dir: Path, cfg, preset, preset_name: str, seeds: list[int]) -> dict:
    """The content of group.json: what will run, where."""
    return {"kind": "seed_group", "group": group_dir.name, "created": now_text(), "argv": sys.argv[1:],
            "seeds": seeds, "run_dirs": [str(group_dir / seed_run_id(seed)) for seed in seeds],
            **describe_config(cfg, preset, preset_name)}


def run_seed_group(cfg, preset, preset_name: str, seeds: list[int], group_dir: Path, *, echo: bool) -> list[dict]:
    """Train every seed in order; stops at the first failure with a message naming the seed."""
    runs: list[dict] = []
    with one_process_group_for_all_runs():
        for index, seed in enumerate(seeds, start=1):
            print_main(f"== seeds {group_dir.name}: seed {seed} ({index}/{len(seeds)}) ==", err=True)
            report = run_or_explain(f"seed {seed} ({group_dir / seed_run_id(seed)})", [r["run_dir"] for r in runs],
                                    run_training, cfg, preset_name=preset_name, preset_cfg=preset,
                                    out_dir=group_dir, run_id=seed_run_id(seed), seed=seed, echo=echo)
            runs.append(run_summary(seed, report))
    return runs


def seed_group_result(group_dir: Path, preset_name: str, runs: list[dict]) -> dict:
    interval = mean_interval([run["val_bpb"] for run in runs], CONFIDENCE)
    return {"group": str(group_dir), "preset": preset_name, "seeds": [run["seed"] for run in runs], "runs": runs,
            "summary": interval.as_dict()}


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
