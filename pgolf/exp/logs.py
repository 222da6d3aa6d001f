"""Scores of finished runs: from a pgolf run directory, a pgolf ``train.log``, or a challenge log.

The challenge's ``train_gpt.py`` logs (SPEC 2.11, 4.15) and pgolf's own log end with lines like
``final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570`` or
``quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366500ms``. The reported score is
the LAST such line (the records report their last evaluation phase). In-training validation lines
(``step:200/20000 val_loss:...``, ``4000/20000 val_loss: 2.1 ...``) are not scores and are skipped.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError

SCORE_LINE = re.compile(r"^(?P<label>[A-Za-z][\w\-]*) val_loss:(?P<loss>[0-9.]+) val_bpb:(?P<bpb>[0-9.]+)")
SEED_LINE = re.compile(r"\bseed[:=]\s*(?P<seed>\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class RunScore:
    source: str
    label: str
    val_loss: float
    val_bpb: float
    seed: int | None = None
    code_hash: str | None = None

    @property
    def tokens_per_byte(self) -> float:
        """bpb = loss / ln 2 x tokens / bytes, so tokens / bytes = bpb x ln 2 / loss."""
        return self.val_bpb * math.log(2.0) / self.val_loss


def score_from_log_text(text: str, source: str) -> RunScore:
    """The last score line of a log."""
    matches = [m for m in map(SCORE_LINE.match, text.splitlines()) if m and not m.group("label").startswith("step")]
    if not matches:
        raise PgolfError(f"{source} has no final score line (like `final_int8_zlib_roundtrip_exact val_loss:... "
                         "val_bpb:...`); the run did not finish, or this is not a training log.")
    last = matches[-1]
    seeds = SEED_LINE.findall(text)
    return RunScore(source, last.group("label"), float(last.group("loss")), float(last.group("bpb")),
                    int(seeds[0]) if seeds else None)


def score_from_run_dir(run_dir: Path) -> RunScore:
    """A pgolf run: ``report.json``'s final score (the last evaluation phase)."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise PgolfError(f"{run_dir} has no report.json; give a finished pgolf run or a log file.")
    report = json.loads(report_path.read_text())
    label = report.get("val_bpb_final_label", "quantized")
    loss = report.get(f"val_loss_{label}", report["val_loss"])
    bpb = report.get("val_bpb_final", report["val_bpb"])
    return RunScore(str(run_dir), label, loss, bpb, report.get("seed"), report.get("code_hash"))


def read_run_score(path: str | Path) -> RunScore:
    """A run directory or a log file."""
    path = Path(path)
    if path.is_dir():
        return score_from_run_dir(path)
    if path.is_file():
        return score_from_log_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
    raise PgolfError(f"{path} does not exist; give pgolf run directories or challenge log files.")
