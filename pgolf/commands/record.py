"""``pgolf record RUN_DIR... --name NAME`` and ``pgolf record-check RECORD_DIR`` (tooling).

``record`` writes a ``records/track_10min_16mb/<date>_<name>/`` submission folder from runs that differ
only in SEED (:func:`pgolf.exp.record.make_record`); ``record-check`` verifies one
(:func:`pgolf.exp.record_check.check_record_folder`). Both print a summary, or JSON with ``--json``.
"""

import argparse
import json

from pgolf.artifact.size import ARTIFACT_CAP_BYTES
from pgolf.exp.record import make_record
from pgolf.exp.record_check import check_record_folder


def run_record_command(args: argparse.Namespace) -> int:
    """``pgolf record``: write the folder and summarise it."""
    folder, submission, warnings = make_record(args.runs, name=args.name, out=args.out, author=args.author,
                                               github_id=args.github_id)
    if args.json:
        print(json.dumps({"folder": str(folder), "submission": submission, "warnings": warnings}, indent=2))
        return 0
    std = submission["val_bpb_std"]
    print(f"wrote {folder}")
    print(f"  val_bpb {submission['val_bpb']:.8f} (mean of {len(submission['seeds'])} seeds"
          + (f", std {std:.8f})" if std is not None else ")"))
    print(f"  bytes_total {submission['bytes_total']:,} of {ARTIFACT_CAP_BYTES:,} "
          f"(train_gpt.py {submission['code_bytes']:,} bytes)")
    for warning in warnings:
        print(f"  warning: {warning}")
    return 0


def run_record_check_command(args: argparse.Namespace) -> int:
    """``pgolf record-check``: exit 0 when the folder passes, 1 with every problem listed when not."""
    failures = check_record_folder(args.folder)
    if args.json:
        print(json.dumps({"folder": str(args.folder), "ok": not failures, "failures": failures}, indent=2))
    elif failures:
        print(f"{args.folder}: {len(failures)} problem(s)")
        for failure in failures:
            print(f"  FAIL {failure}")
    else:
        print(f"{args.folder}: OK (files, submission.json schema, bytes under {ARTIFACT_CAP_BYTES:,} with the real "
              "train_gpt.py size, one code hash, mean/std, scores in the logs)")
    return 1 if failures else 0
