"""Probes of issue 17 on real tiny runs: a diverged run fails with valid JSON, `pgolf check` of a copied run
checks the copy, and settings that used to fail after training (or train nothing) are refused before a run
directory exists. docs/reliability.md lists every probe and its test."""

import json
import shutil

import pytest
from testkit import run_config, run_items

from pgolf.cli import main as cli_main
from pgolf.errors import ConfigError
from pgolf.run import main as run_main
from testkit import unwritable

QUICK = {"ITERATIONS": "6", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
         "VAL_MAX_TOKENS": "1024", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1"}


pytestmark = pytest.mark.usefixtures("single_cpu_process")  # tests/e2e/conftest.py


@pytest.fixture
def read_only_dir(tmp_path):
    (tmp_path / "read_only").mkdir()
    with unwritable(tmp_path / "read_only") as folder:
        yield folder


def items(default_data, runs_dir, **extra) -> list[str]:
    return run_items(default_data, runs_dir, QUICK, **extra)


def config(default_data, runs_dir, **extra):
    return run_config(default_data, runs_dir, QUICK, **extra)


def reject_nan(text: str):
    raise AssertionError(f"report.json holds {text}, which is not JSON")


def test_a_diverged_run_fails_and_its_report_is_valid_json(default_data, tmp_path, capsys):
    """Item 4: MATRIX_LR=1e6 used to exit 0 with val_bpb:nan and NaN in report.json."""
    assert cli_main(["train", *items(default_data, tmp_path, RUN_ID="diverged", MATRIX_LR="1e6")]) == 2
    err = capsys.readouterr().err
    assert "no valid score" in err and "val_bpb=nan" in err and "learning rates" in err and "Traceback" not in err
    report = json.loads((tmp_path / "diverged" / "report.json").read_text(), parse_constant=reject_nan)
    assert report["val_bpb"] is None and report["non_finite"]["val_bpb"] == "nan"
    assert report["val_bpb_prequant"] is not None and report["steps"] == 6  # what was measured is kept
    # significance refuses it rather than testing a NaN (item 9)
    assert cli_main(["significance", str(tmp_path / "diverged"), str(tmp_path / "diverged"), "--against", "1.2"]) == 2
    assert "not a finite number" in capsys.readouterr().err


def test_check_of_a_copied_run_checks_the_copy(default_data, tmp_path, capsys):
    """Item 5: the copy's report names the original's artifact; the check must load the copy's own (here
    damaged) artifact, not pass on the original's."""
    run_main(config(default_data, tmp_path, RUN_ID="original"), echo=False)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "original", copy)
    artifact = next((copy / "artifact").glob("final_model.*.ptz"))
    damaged = bytearray(artifact.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    artifact.write_bytes(bytes(damaged))
    assert json.loads((copy / "report.json").read_text())["artifact_path"].startswith(str(tmp_path / "original"))
    assert cli_main(["check", str(copy)]) == 2
    err = capsys.readouterr().err
    assert str(artifact) in err and "Traceback" not in err


@pytest.mark.parametrize("setting,fragment", [
    ({"TTT_LORA_TARGETS": "c_q,attn.nothing"}, "TTT_LORA_TARGETS"),  # item 8: used to fail after training
    ({"ITERATIONS": "-1", "MAX_WALLCLOCK_SECONDS": "60"}, "ITERATIONS=-1"),  # item 7: trained 0 steps, exit 0
    ({"MODEL_DIM": "65536", "NUM_HEADS": "512", "NUM_KV_HEADS": "512"}, "too large for this machine"),  # item 9
])
def test_settings_that_cannot_work_are_refused_before_the_run_starts(default_data, tmp_path, setting, fragment):
    with pytest.raises(ConfigError, match=fragment):
        run_main(config(default_data, tmp_path, RUN_ID="refused", **setting), echo=False)
    assert not (tmp_path / "refused").exists()


def test_a_read_only_runs_dir_fails_before_training(default_data, tmp_path, read_only_dir, capsys):
    """Item 9: the output location is checked before any work."""
    assert cli_main(["train", *items(default_data, read_only_dir, RUN_ID="x")]) == 2
    err = capsys.readouterr().err
    assert "RUNS_DIR" in err and "Traceback" not in err
