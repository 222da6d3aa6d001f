"""``pgolf record`` and ``pgolf record-check`` (pgolf.exp.record): a folder made from two tiny seed runs
passes the check; tampering with it fails with the right message; mixed runs are refused.

The package's code hash is pinned for this module: other edits to the checkout while the runs train
would otherwise (rightly) make ``pgolf record`` refuse runs whose code is no longer the installed one.
"""

import contextlib
import datetime
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from exp_runs import tiny_run_config, train_tiny_run

from pgolf.cli import main as cli_main
from pgolf.errors import PgolfError
from pgolf.exp.record import make_record
from pgolf.exp.record_check import check_record_folder
from pgolf.export.bundle import ENVIRONMENT_FIELDS, SCRIPT_SEED, build_exported_script
from pgolf.export.minify import unwrap_script

PINNED_HASH = "0123456789abcdef"
SEEDS = (7, 8)


@pytest.fixture(scope="module")
def pinned_code_hash():
    with pytest.MonkeyPatch.context() as patch:
        for module in ("pgolf.report", "pgolf.exp.record"):
            patch.setattr(f"{module}.pgolf_code_hash", lambda: PINNED_HASH)
        yield


@pytest.fixture(scope="module")
def seed_runs(exp_default_data, tmp_path_factory, pinned_code_hash):
    """Both seeds log the size of their configuration's exported script (one script for every seed: SEED
    is not baked), as `pgolf train` runs do, with the pinned code hash."""
    runs = tmp_path_factory.mktemp("runs")
    first = tiny_run_config(exp_default_data, runs, "seed7", SEED=str(SEEDS[0]))
    code_bytes = build_exported_script(first, preset_name="tiny_cpu", code_hash=PINNED_HASH, verify=False).wrapped_bytes
    for seed in SEEDS:
        train_tiny_run(exp_default_data, runs, f"seed{seed}", code_bytes=code_bytes, SEED=str(seed))
    return [runs / f"seed{seed}" for seed in SEEDS]


@pytest.fixture(scope="module")
def record(seed_runs, tmp_path_factory):
    """The folder ``pgolf record`` writes, and what it printed (--json)."""
    out = tmp_path_factory.mktemp("records") / "track_10min_16mb"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli_main(["record", *map(str, seed_runs), "--name", "TinyTest", "--author", "Ada",
                           "--github-id", "ada", "--out", str(out), "--json"])
    assert status == 0
    result = json.loads(printed.getvalue())
    return Path(result["folder"]), result["submission"], result["warnings"]


def test_the_record_folder_and_its_numbers(record, seed_runs):
    folder, submission, warnings = record
    assert folder.name == f"{submission['date']}_TinyTest"
    assert datetime.date.fromisoformat(submission["date"]) >= datetime.date.today() - datetime.timedelta(days=1)
    assert not [w for w in warnings if w.startswith("record-check")]  # it checked its own folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "submission.json", "train_gpt.py",
                                                         "train_gpt.readable.py", "train_seed7.log", "train_seed8.log"]
    assert json.loads((folder / "submission.json").read_text()) == submission
    reports = [json.loads((run / "report.json").read_text()) for run in seed_runs]
    scores = [r["val_bpb_final"] for r in reports]
    mean = sum(scores) / 2
    assert submission["val_bpb"] == pytest.approx(mean, abs=1e-15)
    # the sample standard deviation: divided by n - 1 = 1
    assert submission["val_bpb_std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores)), abs=1e-15)
    script_bytes = (folder / "train_gpt.py").stat().st_size
    for entry, report, run in zip(submission["seeds"], reports, seed_runs):
        artifact = (run / "artifact" / report["artifact_file"]).stat().st_size
        assert entry["seed"] == report["seed"] and entry["steps"] == 4
        assert (entry["artifact_bytes"], entry["code_bytes"]) == (artifact, script_bytes)
        assert entry["total_bytes"] == artifact + script_bytes
        assert (folder / f"train_seed{entry['seed']}.log").read_bytes() == (run / "train.log").read_bytes()
    assert submission["bytes_total"] == max(e["total_bytes"] for e in submission["seeds"])
    assert (submission["track"], submission["code_hash"], submission["gpu"]) == ("10min_16mb", PINNED_HASH, "none (cpu)")
    assert (submission["name"], submission["author"], submission["github_id"]) == ("TinyTest", "Ada", "ada")
    source = unwrap_script((folder / "train_gpt.py").read_bytes())
    assert PINNED_HASH in source and "'SEED'" not in source  # each seed comes from the environment
    for seed in SEEDS:  # every log states the size of the script the folder ships
        assert f"Code size: {script_bytes} bytes" in (folder / f"train_seed{seed}.log").read_text()
    readable = (folder / "train_gpt.readable.py").read_text()
    assert f"seed: int = {SCRIPT_SEED}" in readable  # pgolf's default, not a run's: each seed comes as SEED=...
    readme = (folder / "README.md").read_text()
    assert f"without `SEED=` it runs pgolf's default {SCRIPT_SEED}" in readme
    assert "environment variables with the same names override" not in readme
    assert all(f"`{name.upper()}`" in readme for name in ENVIRONMENT_FIELDS)
    assert "SEED=7 torchrun --standalone --nproc_per_node=1 train_gpt.py" in readme
    assert f"| 7 | {submission['seeds'][0]['val_bpb']:.8f} |" in readme and "`ITERATIONS` | `4` | `20000`" in readme
    assert any("subset of the validation split" in w for w in warnings) and "## Warnings" in readme


def test_record_check_passes(record, capsys):
    folder = record[0]
    assert check_record_folder(folder) == []
    assert cli_main(["record-check", str(folder)]) == 0
    assert "OK" in capsys.readouterr().out


def tampered_copy(record, tmp_path, change):
    copy = shutil.copytree(record[0], tmp_path / record[0].name)
    submission = json.loads((copy / "submission.json").read_text())
    change(submission, copy)
    (copy / "submission.json").write_text(json.dumps(submission))
    return copy


def _wrong_mean(submission, _):
    submission["val_bpb"] += 0.001


def _missing_key(submission, _):
    del submission["gpu"]


def _over_the_cap(submission, copy):
    code = (copy / "train_gpt.py").stat().st_size
    entry = submission["seeds"][1]
    entry["artifact_bytes"] = 16_000_000 - code + 5
    entry["total_bytes"] = submission["bytes_total"] = 16_000_005


def _mixed_code_hash(submission, copy):
    log = copy / "train_seed8.log"
    log.write_text(log.read_text().replace(f"code_hash:{PINNED_HASH}", "code_hash:fedcba9876543210"))


@pytest.mark.parametrize("change, message", [
    (_wrong_mean, "val_bpb .* is not the mean of the seeds' val_bpb"),
    (_missing_key, "submission.json: missing key 'gpu'"),
    (_over_the_cap, "seed 8: artifact .* = 16,000,005 bytes, over the 16,000,000-byte cap by 5"),
    (_mixed_code_hash, "seed 8: train_seed8.log was written by code hash fedcba9876543210 but submission.json says"),
])
def test_a_tampered_record_fails_with_the_right_message(record, tmp_path, capsys, change, message):
    copy = tampered_copy(record, tmp_path, change)
    failures = check_record_folder(copy)
    assert len(failures) >= 1 and any(re.search(message, f) for f in failures), failures
    assert cli_main(["record-check", str(copy), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_a_missing_file_and_a_changed_script_fail(record, tmp_path):
    copy = shutil.copytree(record[0], tmp_path / "copy")
    (copy / "train_seed7.log").unlink()
    with open(copy / "train_gpt.py", "ab") as handle:
        handle.write(b"# one more line\n")
    failures = check_record_folder(copy)
    assert "seed 7: train_seed7.log is missing" in failures
    assert any("code_bytes" in f and "on disk" in f for f in failures)


def copy_run(run, tmp_path, name, edit_file, edit):
    copy = shutil.copytree(run, tmp_path / name)
    data = json.loads((copy / edit_file).read_text())
    edit(data)
    (copy / edit_file).write_text(json.dumps(data))
    return copy


def test_mixed_runs_are_refused(seed_runs, tmp_path, pinned_code_hash):
    out = tmp_path / "records"
    other_lr = copy_run(seed_runs[1], tmp_path, "lr", "config.json", lambda c: c["optim"].update(matrix_lr=0.08))
    with pytest.raises(PgolfError, match=r"differ in more than SEED: MATRIX_LR 0.04 vs 0.08"):
        make_record([seed_runs[0], other_lr], name="Mixed", out=out)
    other_code = copy_run(seed_runs[1], tmp_path, "code", "report.json", lambda r: r.update(code_hash="ffff"))
    with pytest.raises(PgolfError, match="made by different code"):
        make_record([seed_runs[0], other_code], name="Mixed", out=out)
    with pytest.raises(PgolfError, match=r"seed\(s\) \[7\] given more than once"):
        make_record([seed_runs[0], seed_runs[0]], name="Mixed", out=out)
    unfinished = shutil.copytree(seed_runs[1], tmp_path / "unfinished")
    (unfinished / "report.json").unlink()
    with pytest.raises(PgolfError, match="has no report.json"):
        make_record([seed_runs[0], unfinished], name="Mixed", out=out)
    with pytest.raises(PgolfError, match="at least one run"):
        make_record([], name="Mixed", out=out)
    assert not out.exists()


def test_never_overwrites_and_refuses_changed_code(record, seed_runs, monkeypatch):
    folder = record[0]
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    with pytest.raises(PgolfError, match="already exists"):
        make_record(seed_runs, name="TinyTest", out=folder.parent, date=folder.name.split("_")[0])
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before
    monkeypatch.setattr("pgolf.exp.record.pgolf_code_hash", lambda: "another")
    with pytest.raises(PgolfError, match="installed pgolf is another"):
        make_record(seed_runs, name="Later", out=folder.parent)


def _log_with_code_size(copy: Path, seed: int, code_bytes: int) -> None:
    log = copy / f"train_seed{seed}.log"
    log.write_text(re.sub(r"^Code size: \d+", f"Code size: {code_bytes}", log.read_text(), flags=re.MULTILINE))


def test_record_check_catches_a_log_of_another_script(record, tmp_path):
    """A log whose Code size is not the shipped script's was made by another script (another configuration,
    or the lean script instead of --full-records): its totals are not the folder's."""
    copy = shutil.copytree(record[0], tmp_path / "copy")
    script_bytes = (copy / "train_gpt.py").stat().st_size
    _log_with_code_size(copy, 8, script_bytes + 4)
    failures = check_record_folder(copy)
    assert failures == [f"seed 8: train_seed8.log says 'Code size: {script_bytes + 4}' but train_gpt.py is "
                        f"{script_bytes:,} bytes; the seed was not run by this script (record the runs of one "
                        "script, see docs/experiments.md)"]


def test_runs_that_logged_other_code_sizes_are_refused(seed_runs, tmp_path, pinned_code_hash):
    """Runs that logged different sizes were not made by one script, and a record of them would state sizes
    of scripts it does not ship."""
    out = tmp_path / "records"
    other = shutil.copytree(seed_runs[1], tmp_path / "other")
    logged = int(re.search(r"^Code size: (\d+)", (other / "train.log").read_text(), re.MULTILINE).group(1))
    log = other / "train.log"
    log.write_text(log.read_text().replace(f"Code size: {logged} ", f"Code size: {logged + 3} "))
    with pytest.raises(PgolfError, match=rf"logged different code sizes \(seed 7: {logged:,} bytes; seed 8: "
                                         rf"{logged + 3:,} bytes\).*SEED=<seed> python DIR/train_gpt.py"):
        make_record([seed_runs[0], other], name="Mixed", out=out)
    assert not out.exists()


def test_a_code_size_no_export_has_is_refused(seed_runs, tmp_path, pinned_code_hash):
    out = tmp_path / "records"
    odd = shutil.copytree(seed_runs[0], tmp_path / "odd")
    log = odd / "train.log"
    log.write_text(re.sub(r"^Code size: \d+", "Code size: 12345", log.read_text(), flags=re.MULTILINE))
    with pytest.raises(PgolfError, match=r"logged a code size of 12,345 bytes, but no export .*lean: .*"
                                         r"--full-records: "):
        make_record([odd], name="Odd", out=out)
    assert not out.exists()


def test_a_run_without_report_says_which_export_writes_one(seed_runs, tmp_path, pinned_code_hash):
    """A run of the lean exported script (its log starts `pgolf submission`) has no report.json: the
    message says which export writes one."""
    lean = shutil.copytree(seed_runs[0], tmp_path / "lean")
    (lean / "report.json").unlink()
    log = lean / "train.log"
    log.write_text(log.read_text().replace("pgolf run preset:", "pgolf submission preset:", 1))
    with pytest.raises(PgolfError, match="exported with `pgolf export --full-records`") as error:
        make_record([lean], name="Lean", out=tmp_path / "records")
    assert "give its log" not in str(error.value)  # pgolf record reads report.json, never a log


def test_a_pgolf_train_run_without_report_is_not_told_it_always_has_one(seed_runs, tmp_path, pinned_code_hash):
    """A `pgolf train` run without report.json stopped before it: the message says where, not that such
    runs always write one."""
    stopped = shutil.copytree(seed_runs[0], tmp_path / "stopped")
    (stopped / "report.json").unlink()
    with pytest.raises(PgolfError, match=r"its training finished .* `pgolf train --resume") as error:
        make_record([stopped], name="Stopped", out=tmp_path / "records")
    assert "always" not in str(error.value)


@pytest.mark.parametrize("name,text,fragment", [
    ("report.json", "42", "report.json holds a JSON int, not an object"),  # was a TypeError
    ("report.json", '{"seed": 7, "code_ha', "report.json is not a readable JSON file"),  # was a JSONDecodeError
    ("report.json", None, "report.json: artifact_bytes is 'many', not an integer"),  # was a ValueError later
    ("config.json", "[1, 2]", "config.json holds a JSON list, not an object"),
    ("config.json", "{not json", "config.json is not a readable JSON file"),
])
def test_a_damaged_run_file_is_one_clear_error(seed_runs, tmp_path, capsys, pinned_code_hash, name, text, fragment):
    damaged = shutil.copytree(seed_runs[0], tmp_path / "damaged")
    if text is None:  # valid JSON, a wrong type in a field the record copies
        report = json.loads((damaged / name).read_text())
        text = json.dumps({**report, "artifact_bytes": "many"})
    (damaged / name).write_text(text)
    assert cli_main(["record", str(damaged), "--name", "Damaged", "--out", str(tmp_path / "records")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(damaged / name) in err and "Traceback" not in err
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "a/b", ".hidden", ""])
def test_record_names_are_plain_folder_names(seed_runs, tmp_path, pinned_code_hash, name):
    with pytest.raises(PgolfError, match="--name"):
        make_record(seed_runs, name=name, out=tmp_path / "records")
    assert not (tmp_path / "records").exists() and not (tmp_path / "escaped").exists()
