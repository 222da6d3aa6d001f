"""The exported script's entry without full records (``run_submission(..., full_records=False)``, what
``pgolf export`` bakes by default) writes no report.json, yet still refuses what ``pgolf train``
refuses: a run without a finite score and an artifact over the cap, with the same errors, after the
log and metrics.jsonl have recorded what was measured. Run here through the package's own
``run_submission``, the code the script is specialized from (tests/e2e/test_export_script.py runs
the scripts themselves)."""

import json

import pytest
from testkit import run_config

from pgolf.artifact.size import ARTIFACT_CAP_BYTES
from pgolf.errors import ArtifactError, TrainingError
from pgolf.submission import run_submission

QUICK = {"ITERATIONS": "6", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
         "VAL_MAX_TOKENS": "1024", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1"}

pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_lean_run_records_its_scores_without_a_report(default_data, tmp_path):
    cfg = run_config(default_data, tmp_path, QUICK, RUN_ID="lean")
    scores = run_submission(cfg, preset_name="tiny_cpu", code_bytes=50_000)
    run_dir = tmp_path / "lean"
    assert not (run_dir / "report.json").exists() and (run_dir / "config.json").is_file()
    kinds = {event["event"] for event in events(run_dir)}
    assert kinds == {"header", "train", "eval"}  # no artifact, compile or budget events
    header = events(run_dir)[0]
    assert header["device"] == "cpu" and "env" not in header and header["preset"] == "tiny_cpu"
    rounds = [event for event in events(run_dir) if event["event"] == "eval"]
    assert scores["val_bpb"] == rounds[-1]["val_bpb"] and scores["val_bpb_prequant"] == rounds[0]["val_bpb"]
    log = (run_dir / "train.log").read_text()
    assert "Code size: 50000 bytes" in log and "Total submission size" in log and "quant plan" not in log.lower()


def test_a_lean_run_refuses_a_score_that_is_not_finite(default_data, tmp_path):
    """MATRIX_LR=1e6 diverges (as in tests/e2e/test_reliability.py): the round trip scores nan."""
    cfg = run_config(default_data, tmp_path, QUICK, RUN_ID="diverged", MATRIX_LR="1e6")
    with pytest.raises(TrainingError, match=r"no valid score \(.*val_bpb=nan.*learning rates.*train.log"):
        run_submission(cfg, preset_name="tiny_cpu", code_bytes=50_000)
    run_dir = tmp_path / "diverged"
    assert not (run_dir / "report.json").exists()
    assert [event["label"] for event in events(run_dir) if event["event"] == "eval"]  # what was measured is kept


def test_a_lean_run_refuses_an_artifact_over_the_cap(default_data, tmp_path):
    cfg = run_config(default_data, tmp_path, QUICK, RUN_ID="over")
    code_bytes = ARTIFACT_CAP_BYTES - 100  # no model fits beside this much code
    with pytest.raises(ArtifactError, match=r"over the 16,000,000-byte cap by [\d,]+ bytes") as refused:
        run_submission(cfg, preset_name="tiny_cpu", code_bytes=code_bytes)
    assert f"code {code_bytes:,}" in str(refused.value)
    run_dir = tmp_path / "over"
    log = (run_dir / "train.log").read_text()
    assert f"Code size: {code_bytes} bytes" in log and "_roundtrip_exact val_loss:" in log  # scored, then refused
    assert not (run_dir / "report.json").exists() and any((run_dir / "artifact").glob("final_model.*.ptz"))
