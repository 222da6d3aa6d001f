"""``pgolf record-check FOLDER``: is a records folder complete and consistent? (tooling)

Checked, each failure reported with a message that names the file, the key or the seed:

* files: ``README.md``, ``submission.json``, ``train_gpt.py`` and one ``train_seed<SEED>.log`` per seed;
* schema: every required key of ``submission.json`` present, with its type (:data:`SUBMISSION_FIELDS`,
  :data:`SEED_FIELDS`), the date as YYYY-MM-DD, seeds unique;
* bytes: for every seed, artifact bytes + the REAL size of ``train_gpt.py`` on disk <= 16,000,000, and
  the recorded ``code_bytes``, ``total_bytes`` and ``bytes_total`` agree with that size;
* code: every seed's log was written by the code hash ``submission.json`` names, and so was the
  wrapped ``train_gpt.py`` (the hash baked into it); every seed's log states, in its ``Code size:``
  line, the size of the ``train_gpt.py`` the folder ships (else the log was made by another script);
* scores: ``val_bpb`` (mean) and ``val_bpb_std`` recomputed from the seeds; each seed's score equal to
  the last score line of its log.
"""

import json
import lzma
import math
import re
import statistics
from pathlib import Path

from pgolf.artifact.size import ARTIFACT_CAP_BYTES
from pgolf.errors import PgolfError
from pgolf.exp.logs import score_from_log_text
from pgolf.export.minify import unwrap_script

RECORD_SCRIPT = "train_gpt.py"
RECORD_FILES = ("README.md", "submission.json", RECORD_SCRIPT)
# key -> allowed JSON types ("number" accepts int and float, never bool).
SUBMISSION_FIELDS = {
    "name": "str", "author": "str", "github_id": "str", "date": "str", "track": "str",
    "val_bpb": "number", "val_bpb_std": "number|null", "seeds": "list", "bytes_total": "int", "code_bytes": "int",
    "torch_version": "str", "cuda_version": "str|null", "gpu": "str", "code_hash": "str",
}
SEED_FIELDS = {
    "seed": "int", "val_bpb": "number", "val_loss": "number", "total_bytes": "int", "artifact_bytes": "int",
    "code_bytes": "int", "train_seconds": "number", "eval_seconds": "number", "steps": "int",
}
DATE_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The line every run logs with the size of the script that made it (pgolf/quant/model_artifact.py).
CODE_SIZE_LINE = re.compile(r"^Code size: (\d+) bytes", re.MULTILINE)
SCORE_TOLERANCE = 1e-8  # logs print scores with 8 decimals


def seed_log_name(seed: int) -> str:
    return f"train_seed{seed}.log"


def logged_code_bytes(log_text: str) -> int | None:
    """The code size a run's log states (its last ``Code size:`` line), or None when it has none."""
    found = CODE_SIZE_LINE.findall(log_text)
    return int(found[-1]) if found else None


def code_size_failures(folder: Path, submission: dict, script_bytes: int) -> list[str]:
    """Each seed's log must state the size of the shipped script: a log whose ``Code size:`` differs was
    made by another script (for example one with another SEED baked in), so its totals are not this one's."""
    failures = []
    for entry in submission["seeds"]:
        path = folder / seed_log_name(entry["seed"])
        if not path.is_file():
            continue  # reported by log_failures
        logged = logged_code_bytes(path.read_text(encoding="utf-8", errors="replace"))
        if logged is None:
            failures.append(f"seed {entry['seed']}: {path.name} has no 'Code size:' line; the run did not finish")
        elif logged != script_bytes:
            failures.append(f"seed {entry['seed']}: {path.name} says 'Code size: {logged}' but {RECORD_SCRIPT} is "
                            f"{script_bytes:,} bytes; the seed was not run by this script (record the runs of one "
                            "script, see docs/experiments.md)")
    return failures


def _type_ok(value, kinds: str) -> bool:
    checks = {"str": lambda v: isinstance(v, str), "list": lambda v: isinstance(v, list), "null": lambda v: v is None,
              "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return any(checks[kind](value) for kind in kinds.split("|"))


def _fields_failures(obj: dict, fields: dict[str, str], where: str) -> list[str]:
    failures = []
    for key, kinds in fields.items():
        if key not in obj:
            failures.append(f"{where}: missing key {key!r} ({kinds})")
        elif not _type_ok(obj[key], kinds):
            failures.append(f"{where}: {key!r} should be {kinds.replace('|', ' or ')}, got {obj[key]!r}")
    return failures


def schema_failures(submission) -> list[str]:
    """What makes ``submission`` not a valid submission.json (empty when valid)."""
    if not isinstance(submission, dict):
        return ["submission.json: not a JSON object"]
    failures = _fields_failures(submission, SUBMISSION_FIELDS, "submission.json")
    if isinstance(submission.get("date"), str) and not DATE_FORMAT.match(submission["date"]):
        failures.append(f"submission.json: 'date' should be YYYY-MM-DD, got {submission['date']!r}")
    seeds = submission.get("seeds")
    if isinstance(seeds, list):
        if not seeds:
            failures.append("submission.json: 'seeds' is empty; a record needs at least one run")
        for index, entry in enumerate(seeds):
            if not isinstance(entry, dict):
                failures.append(f"submission.json: seeds[{index}] is not an object")
                continue
            failures += _fields_failures(entry, SEED_FIELDS, f"submission.json: seeds[{index}]")
        numbers = [entry.get("seed") for entry in seeds if isinstance(entry, dict)]
        duplicates = sorted({seed for seed in numbers if numbers.count(seed) > 1}, key=str)
        if duplicates:
            failures.append(f"submission.json: seeds {duplicates} appear more than once")
    return failures


def size_failures(submission: dict, script_bytes: int, cap: int = ARTIFACT_CAP_BYTES) -> list[str]:
    """Each seed's artifact + the script's real size against the cap, and the recorded byte counts."""
    failures = []
    if submission["code_bytes"] != script_bytes:
        failures.append(f"submission.json: code_bytes {submission['code_bytes']:,} but {RECORD_SCRIPT} is "
                        f"{script_bytes:,} bytes on disk")
    totals = []
    for entry in submission["seeds"]:
        seed, artifact = entry["seed"], entry["artifact_bytes"]
        total = artifact + script_bytes
        totals.append(total)
        if total > cap:
            failures.append(f"seed {seed}: artifact {artifact:,} + {RECORD_SCRIPT} {script_bytes:,} = {total:,} bytes, "
                            f"over the {cap:,}-byte cap by {total - cap:,}")
        if entry["code_bytes"] != script_bytes:
            failures.append(f"seed {seed}: code_bytes {entry['code_bytes']:,} but {RECORD_SCRIPT} is "
                            f"{script_bytes:,} bytes")
        if entry["total_bytes"] != total:
            failures.append(f"seed {seed}: total_bytes {entry['total_bytes']:,} but artifact + {RECORD_SCRIPT} "
                            f"= {total:,}")
    if submission["bytes_total"] != max(totals):
        failures.append(f"submission.json: bytes_total {submission['bytes_total']:,} but the largest seed total is "
                        f"{max(totals):,}")
    return failures


def stats_failures(submission: dict) -> list[str]:
    """The mean and (sample) standard deviation of the seeds' val_bpb, recomputed."""
    scores = [entry["val_bpb"] for entry in submission["seeds"]]
    failures = []
    mean = statistics.fmean(scores)
    if abs(submission["val_bpb"] - mean) > SCORE_TOLERANCE:
        failures.append(f"submission.json: val_bpb {submission['val_bpb']!r} is not the mean of the seeds' val_bpb "
                        f"({mean:.8f})")
    std = statistics.stdev(scores) if len(scores) > 1 else None
    recorded = submission["val_bpb_std"]
    if (std is None) != (recorded is None) or (std is not None and abs(recorded - std) > SCORE_TOLERANCE):
        expected = "null (one seed)" if std is None else f"{std:.8f}"
        failures.append(f"submission.json: val_bpb_std {recorded!r} is not the seeds' sample standard deviation "
                        f"({expected})")
    return failures


def log_failures(folder: Path, submission: dict) -> list[str]:
    """Each seed's log: present, written by the recorded code hash, for that seed, ending in its score."""
    failures, code_hash = [], submission["code_hash"]
    for entry in submission["seeds"]:
        seed, path = entry["seed"], folder / seed_log_name(entry["seed"])
        if not path.is_file():
            failures.append(f"seed {seed}: {path.name} is missing")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            score = score_from_log_text(text, path.name)
        except PgolfError as error:
            failures.append(f"seed {seed}: {error}")
            continue
        if score.code_hash != code_hash:
            failures.append(f"seed {seed}: {path.name} was written by code hash {score.code_hash} but submission.json "
                            f"says {code_hash}; all seeds must run the same code")
        if score.seed != seed:
            failures.append(f"seed {seed}: {path.name} logs seed {score.seed}")
        if abs(score.val_bpb - entry["val_bpb"]) > SCORE_TOLERANCE:
            failures.append(f"seed {seed}: val_bpb {entry['val_bpb']!r} but {path.name} ends with "
                            f"{score.label} val_bpb:{score.val_bpb}")
    return failures


def script_hash_failures(script: Path, code_hash: str) -> list[str]:
    """The wrapped script must carry the recorded code hash (pgolf export bakes it in)."""
    try:
        source = unwrap_script(script.read_bytes())
    except (ValueError, lzma.LZMAError) as error:
        return [f"{script.name}: cannot be unwrapped ({error}); record-check expects a script from pgolf export"]
    if code_hash not in source:
        return [f"{script.name}: does not carry code hash {code_hash}; it was exported from other code than the runs"]
    return []


def check_record_folder(folder: str | Path) -> list[str]:
    """Every problem found in a records folder; an empty list means it passes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PgolfError(f"{folder} is not a folder; give a folder written by `pgolf record`.")
    failures = [f"{name} is missing" for name in RECORD_FILES if not (folder / name).is_file()]
    if not (folder / "submission.json").is_file():
        return failures
    try:
        submission = json.loads((folder / "submission.json").read_text())
    except json.JSONDecodeError as error:
        return failures + [f"submission.json is not valid JSON: {error}"]
    schema = schema_failures(submission)
    if schema:
        return failures + schema + ["(bytes, code hash and score checks skipped until the schema is valid)"]
    failures += stats_failures(submission) + log_failures(folder, submission)
    script = folder / RECORD_SCRIPT
    if script.is_file():
        failures += size_failures(submission, script.stat().st_size)
        failures += code_size_failures(folder, submission, script.stat().st_size)
        failures += script_hash_failures(script, submission["code_hash"])
    return failures
