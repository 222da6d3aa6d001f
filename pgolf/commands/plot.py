"""``pgolf plot RUN_OR_LOG... [-o FILE.png]``: train loss and val BPB against step and wall-clock time,
runs overlaid (tooling). The figure is drawn by :mod:`pgolf.exp.plot`; an existing file is never replaced.
"""

import argparse

from pgolf.exp.plot import plot_runs


def run_plot_command(args: argparse.Namespace) -> int:
    """``pgolf plot``: write the figure and say what it holds."""
    output, logs = plot_runs(args.runs, args.output)
    for log in logs:
        best = min((p.val_bpb for p in log.val), default=None)
        print(f"  {log.name}: {len(log.train)} train points, {len(log.val)} val points"
              + (f", best val_bpb {best:.4f}" if best is not None else ""))
    print(f"wrote {output}")
    return 0
