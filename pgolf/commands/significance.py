"""``pgolf significance RUN_OR_LOG... --against BPB``: is a claimed improvement real under the challenge's
rule? (tooling; the statistics are in :mod:`pgolf.exp.stats`, the scores come from :mod:`pgolf.exp.logs`)"""

import argparse
import json
import math
import statistics

from pgolf.errors import PgolfError
from pgolf.exp.logs import read_run_score
from pgolf.exp.stats import nats_to_bpb, one_sample_improvement_test, welch_improvement_test


# A one-sided test at alpha above one half would call a mean significant that lies above the threshold.
MAX_ALPHA = 0.5


def margin_in_bpb(margin: float, units: str, tokens_per_byte: float) -> float:
    return margin if units == "bpb" else nats_to_bpb(margin, tokens_per_byte)


def check_significance_arguments(against: float | None, margin: float, alpha: float) -> None:
    """PgolfError naming the argument when a value makes the test meaningless."""
    if against is not None and not (math.isfinite(against) and against > 0):
        raise PgolfError(f"--against {against}: give the score to beat in bits per byte, a finite number above 0 "
                         "(like 1.2244).")
    if not (math.isfinite(margin) and margin >= 0):
        raise PgolfError(f"--margin {margin}: give the required improvement, a finite number >= 0 (the challenge "
                         "asks 0.005 nats); a negative margin would call a worse mean significant.")
    if not (math.isfinite(alpha) and 0 < alpha <= MAX_ALPHA):
        raise PgolfError(f"--alpha {alpha}: give the significance level, above 0 and at most {MAX_ALPHA} (the "
                         "challenge uses 0.01).")


def run_significance_command(args: argparse.Namespace) -> int:
    """Print the test and exit 0 when the rule is met, 1 when it is not."""
    check_significance_arguments(args.against, args.margin, args.alpha)
    runs = [read_run_score(path) for path in args.runs]
    scores = [run.val_bpb for run in runs]
    tokens_per_byte = statistics.fmean(run.tokens_per_byte for run in runs)
    margin = margin_in_bpb(args.margin, args.units, tokens_per_byte)
    if args.test == "welch":
        if not args.baseline:
            raise PgolfError("--test welch compares two run sets: give the previous record's runs with --baseline.")
        baseline = [read_run_score(path).val_bpb for path in args.baseline]
        result = welch_improvement_test(scores, baseline, margin, args.alpha)
    else:
        if args.against is None:
            raise PgolfError("--test one-sample needs --against BPB (the record to beat).")
        result = one_sample_improvement_test(scores, args.against - margin, args.alpha)
    summary = {**result.as_dict(), "margin": args.margin, "units": args.units, "margin_bpb": margin,
               "tokens_per_byte": tokens_per_byte, "runs": [run.__dict__ for run in runs]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for run in runs:
            print(f"  {run.val_bpb:.8f}  {run.label}  seed {run.seed}  {run.source}")
        print(f"n={result.n} mean={result.mean:.8f} std={result.std:.8f} threshold={result.threshold:.8f} "
              f"(margin {args.margin} {args.units} = {margin:.5f} bpb)")
        print(f"{result.test} t={result.t:.3f} df={result.df:.2f} p={result.p:.5f}: "
              f"{'significant' if result.significant else 'NOT significant'} at alpha {args.alpha}")
    return 0 if result.significant else 1
