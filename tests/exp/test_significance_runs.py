"""``pgolf significance``: the runs of a test are checked before any statistics (pgolf.exp.samples): a run
given twice or a seed repeated is refused, a sample mixing setups is refused unless --allow-mixed, a
validation-subset score is flagged as no evidence for a record, and options of the other test are errors.
The run directories are written out here (report.json + config.json), as `pgolf train` leaves them."""

import json

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides, config_to_json
from pgolf.presets import tiny_cpu


def fake_run(folder, seed: int, bpb: float, *, code_hash="abc", label="quantized", config=None, **report):
    """A finished pgolf run directory: report.json (score, seed, code hash) and config.json."""
    folder.mkdir(parents=True)
    fields = {"val_loss": 2.0 * bpb, "val_bpb": bpb, "val_bpb_final": bpb, "val_bpb_final_label": label,
              f"val_loss_{label}": 2.0 * bpb, "seed": seed, "code_hash": code_hash, "val_subset": False, **report}
    (folder / "report.json").write_text(json.dumps(fields))
    settings = {"SEED": seed, "RUN_ID": folder.name, "RUNS_DIR": str(folder.parent), "PGOLF_DEVICE": f"cuda:{seed % 2}",
                **(config or {})}
    (folder / "config.json").write_text(config_to_json(apply_config_overrides(tiny_cpu(), settings, source="test")))
    (folder / "train.log").write_text(f"pgolf run preset:tiny_cpu code_hash:{code_hash}\nseed:{seed}\n"
                                      f"{label} val_loss:{2.0 * bpb:.8f} val_bpb:{bpb:.8f}\n")
    return folder


@pytest.fixture
def group(tmp_path):
    """runs/g1/seed_<s>: one setup under three seeds (they differ in SEED, RUN_ID and the machine's device)."""
    return {seed: fake_run(tmp_path / "g1" / f"seed_{seed}", seed, bpb)
            for seed, bpb in ((42, 1.200), (314, 1.201), (999, 1.199))}


def significance(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli_main(["significance", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_one_setup_under_different_seeds_is_evidence(group, capsys):
    status, out, err = significance(capsys, *group.values(), "--against", "1.3", "--json")
    summary = json.loads(out)
    assert status == 0 and summary["n"] == 3 and summary["evidence_for_record"] is True
    assert summary["warnings"] == [] and err == ""


def test_the_same_run_given_twice_is_refused(group, capsys):
    """It used to count twice: n=3 and 'significant' from two runs."""
    status, out, err = significance(capsys, group[42], group[42], group[314], "--against", "2.9")
    assert status == 2 and out == ""
    assert f"{group[42]} (runs) is the run {group[42]} (runs) again" in err
    # another spelling of the same folder, and the run's own train.log, are the same run too
    spelled = group[42].parent / ".." / "g1" / "seed_42"
    assert significance(capsys, group[42], spelled, group[314], "--against", "2.9")[0] == 2
    status, _, err = significance(capsys, group[42], group[42] / "train.log", group[314], "--against", "2.9")
    assert status == 2 and "again" in err


def test_two_runs_with_one_seed_are_refused_by_name(group, tmp_path, capsys):
    copy = fake_run(tmp_path / "elsewhere" / "copy_of_42", 42, 1.2003)
    status, _, err = significance(capsys, group[42], copy, group[314], "--against", "1.3")
    assert status == 2 and f"seed 42: {group[42]}, {copy}" in err and "one run per seed" in err


@pytest.mark.parametrize("change,fragment", [
    ({"config": {"MATRIX_LR": 0.08}}, "configuration differs in MATRIX_LR: MATRIX_LR 0.04"),
    ({"code_hash": "fff"}, "code hash differs"),
    ({"label": "quantized_sliding_window"}, "score label (evaluation phase) differs"),
])
def test_a_sample_mixing_setups_is_refused_unless_allowed(group, tmp_path, capsys, change, fragment):
    other = fake_run(tmp_path / "other" / "seed_7", 7, 1.1995, **change)
    runs = [group[42], group[314], other]
    status, out, err = significance(capsys, *runs, "--against", "1.3")
    assert status == 2 and out == "" and fragment in err and "--allow-mixed" in err
    status, out, err = significance(capsys, *runs, "--against", "1.3", "--allow-mixed", "--json")
    summary = json.loads(out)
    assert status == 0 and summary["evidence_for_record"] is False
    assert any(fragment in warning for warning in summary["warnings"])
    assert "NOT evidence for a record" in err and fragment in err


def test_a_validation_subset_score_is_no_evidence_for_a_record(group, tmp_path, capsys):
    subset = fake_run(tmp_path / "sub" / "seed_7", 7, 1.1995, val_subset=True)
    status, out, err = significance(capsys, group[42], group[314], subset, "--against", "1.3")
    assert status == 0 and "NOT evidence for a record" in out
    assert f"subset of the validation split (val_subset in report.json, VAL_MAX_TOKENS > 0): {subset}" in err
    status, out, _ = significance(capsys, group[42], group[314], subset, "--against", "1.3", "--json")
    assert json.loads(out)["evidence_for_record"] is False


def test_welch_samples_are_checked_each_and_against_each_other(group, tmp_path, capsys):
    baseline = [fake_run(tmp_path / "old" / f"seed_{s}", s, 1.21 + s * 1e-5, code_hash="old") for s in (1, 2)]
    status, out, _ = significance(capsys, *group.values(), "--test", "welch", "--baseline", *baseline, "--json")
    assert status == 0 and json.loads(out)["evidence_for_record"] is True  # other code across samples: expected
    status, _, err = significance(capsys, group[42], group[314], "--test", "welch", "--baseline", group[42], baseline[0])
    assert status == 2 and f"{group[42]} (baseline) is the run {group[42]} (runs) again" in err


@pytest.mark.parametrize("arguments,fragment", [
    (["--against", "1.3", "--baseline", "BASE"], "--baseline applies to --test welch only"),
    (["--test", "welch", "--against", "1.3", "--baseline", "BASE"], "--against 1.3 does not apply to --test welch"),
])
def test_an_option_of_the_other_test_is_an_error(group, capsys, arguments, fragment):
    """Both used to be ignored silently (the one-sample test ran without the baseline, Welch without --against)."""
    arguments = [str(group[999]) if item == "BASE" else item for item in arguments]
    status, out, err = significance(capsys, group[42], group[314], *arguments)
    assert status == 2 and out == "" and fragment in err
