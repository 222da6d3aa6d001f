"""``pgolf significance RUN_OR_LOG... --against BPB``: is a claimed improvement real under the challenge's
rule? (tooling; the statistics are in :mod:`pgolf.exp.stats`, the scores come from :mod:`pgolf.exp.logs`)"""

import argparse
import json
import math
import statistics
import sys

from pgolf.errors import PgolfError
from pgolf.exp.samples import (SampleRun, mixed_setup_problems, read_sample, refuse_repeated_runs, subset_problems,
                               unknown_seed_notes)
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


def check_options_fit_the_test(test: str, against: float | None, baseline: list[str] | None) -> None:
    """Each test reads its own reference: an option of the other test would be silently ignored, so it is
    an error (the user meant one of the two tests, and only they know which)."""
    if test == "welch":
        if against is not None:
            raise PgolfError(f"--against {against} does not apply to --test welch, which compares with the "
                             "--baseline runs; drop --against, or drop --test welch to test against that score.")
        if not baseline:
            raise PgolfError("--test welch compares two run sets: give the previous record's runs with --baseline.")
    else:
        if baseline:
            raise PgolfError("--baseline applies to --test welch only; the one-sample test (the default) compares "
                             "with --against BPB. Add --test welch to compare with the baseline runs, or drop "
                             "--baseline.")
        if against is None:
            raise PgolfError("--test one-sample needs --against BPB (the record to beat).")


def read_checked_samples(args: argparse.Namespace) -> tuple[dict[str, list[SampleRun]], list[str]]:
    """The runs of each sample, refused when a run repeats (or, unless --allow-mixed, when a sample mixes
    setups); and the warnings that make the test no evidence for a record."""
    samples = {"runs": read_sample(args.runs)}
    if args.baseline:
        samples["baseline"] = read_sample(args.baseline)
    refuse_repeated_runs(samples)
    mixed = [problem for name, runs in samples.items() for problem in mixed_setup_problems(name, runs)]
    if mixed and not args.allow_mixed:
        raise PgolfError("the runs of one sample must be one setup under different seeds, but "
                         + "; ".join(mixed) + ". Give runs of one setup, or pass --allow-mixed to test them anyway "
                         "(the result is then no evidence for a record).")
    return samples, mixed + subset_problems(samples)


def run_significance_command(args: argparse.Namespace) -> int:
    """Print the test and exit 0 when the rule is met, 1 when it is not."""
    check_significance_arguments(args.against, args.margin, args.alpha)
    check_options_fit_the_test(args.test, args.against, args.baseline)
    samples, not_evidence = read_checked_samples(args)
    notes = unknown_seed_notes(samples)
    runs = [run.score for run in samples["runs"]]
    scores = [run.val_bpb for run in runs]
    tokens_per_byte = statistics.fmean(run.tokens_per_byte for run in runs)
    margin = margin_in_bpb(args.margin, args.units, tokens_per_byte)
    if args.test == "welch":
        baseline = [run.score.val_bpb for run in samples["baseline"]]
        result = welch_improvement_test(scores, baseline, margin, args.alpha)
    else:
        result = one_sample_improvement_test(scores, args.against - margin, args.alpha)
    for problem in not_evidence:
        print(f"pgolf significance: warning: NOT evidence for a record: {problem}", file=sys.stderr)
    for note in notes:
        print(f"pgolf significance: note: {note}", file=sys.stderr)
    summary = {**result.as_dict(), "margin": args.margin, "units": args.units, "margin_bpb": margin,
               "tokens_per_byte": tokens_per_byte, "evidence_for_record": not not_evidence,
               "warnings": not_evidence, "notes": notes, "runs": [run.__dict__ for run in runs]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for run in runs:
            print(f"  {run.val_bpb:.8f}  {run.label}  seed {run.seed}  {run.source}")
        print(f"n={result.n} mean={result.mean:.8f} std={result.std:.8f} threshold={result.threshold:.8f} "
              f"(margin {args.margin} {args.units} = {margin:.5f} bpb)")
        print(f"{result.test} t={result.t:.3f} df={result.df:.2f} p={result.p:.5f}: "
              f"{'significant' if result.significant else 'NOT significant'} at alpha {args.alpha}"
              + ("" if not not_evidence else f" (NOT evidence for a record: {len(not_evidence)} warning(s) above)"))
    return 0 if result.significant else 1
