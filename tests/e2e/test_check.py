"""`pgolf check RUN_DIR` on a real tiny run: every check passes and a receipt is written, never replaced."""

import json

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    data = ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)
    runs = tmp_path_factory.mktemp("runs")
    overrides = {"ITERATIONS": "3", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096",
                 "VAL_MAX_TOKENS": "8192", "SMEAR_GATE_ENABLED": "1", "DATA_PATH": str(data.data_path),
                 "TOKENIZER_PATH": str(data.tokenizer_path), "RUNS_DIR": str(runs), "RUN_ID": "checked"}
    run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    return runs / "checked"


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


def test_check_passes_on_a_normal_run_and_writes_a_receipt(finished_run, capsys):
    assert cli_main(["check", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert ("N/A   model_document_isolation: not applicable: attention crosses documents by design "
            "(DOC_ISOLATED_ATTENTION=0)") in out
    receipt = json.loads((finished_run / "check.json").read_text())
    names = [c["check"] for c in receipt["checks"]]
    assert names == ["score_before_update", "causality", "normalization", "input_document_isolation",
                     "model_document_isolation", "validation_isolation", "byte_accounting", "budgets"]
    assert receipt["passed"] and all(c["passed"] for c in receipt["checks"])
    assert [c["check"] for c in receipt["checks"] if not c["applicable"]] == ["model_document_isolation"]
    assert receipt["verdict"] == "passed"
    # MAX_WALLCLOCK_SECONDS=0: said, and passed only because the time taken is within the challenge's 600 s
    assert receipt["checks"][-1]["details"][0].startswith("training budget not enforced: the run had no cap")
    assert cli_main(["check", str(finished_run), "--json"]) == 0
    assert (finished_run / "check_2.json").is_file()  # the first receipt is kept
    assert json.loads((finished_run / "check.json").read_text()) == receipt


def test_check_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli_main(["check", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_score_before_update_covers_batched_lora_ttt_and_its_phases(finished_run, capsys):
    assert cli_main(["check", str(finished_run), "TTT_MODE=lora", "TTT_PHASES=2", "VAL_MAX_TOKENS=1024", "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    check = receipt["checks"][0]
    assert check["check"] == "score_before_update" and check["passed"]
    steps = int(check["details"][-1].split("(")[1].split()[0])
    assert "LoRA TTT" in check["details"][-1] and "2 phases" in check["details"][-1] and steps > 0


def test_evaluation_over_its_budget_here_is_unverified_not_passed(finished_run, capsys):
    """The run's evaluation is over EVAL_BUDGET_SECONDS on a CPU, not the challenge's 8xH100: neither PASS
    (it is over) nor FAIL (it may fit there); the exit status and the receipt agree."""
    assert cli_main(["check", str(finished_run), "EVAL_BUDGET_SECONDS=0.01"]) == 1
    out = capsys.readouterr().out
    assert "UNVERIFIED  budgets: " in out and "not the challenge's 8xH100" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("NOT VERIFIED: no check failed")
    receipt = json.loads(open(last.split("receipt: ")[1]).read())
    assert not receipt["passed"] and receipt["verdict"] == "unverified"
    budgets = receipt["checks"][-1]
    assert budgets["check"] == "budgets" and not budgets["passed"] and budgets["unverified"]
