"""The 1.06 stacks (``frontier_caseops``, ``top_sp8192``) shrunk to CPU size: a whole run (training with
the recurrence switch, GPTQ + LQER, per-group compression, the round trip, phased LoRA TTT with per-slot,
branch and head adapters) and then ``pgolf check`` passing on it.

Only sizes change (width, sequence, batch, steps, calibration batches, the TTT prefix), plus the data:
the embedded default dataset stands in for the CaseOps shards (CaseOps data is tested with the data
tools), so ``BYTE_SIDECARS=off`` replaces the presets' ``on``: that data has no byte sidecars.
``top_sp8192`` asks for lrzip; where the program is missing the run uses pgolf's own ``pergroup``.
"""

import json
import shutil

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.presets import preset_config
from pgolf.run import main as run_main

SHRINK = {"MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "1024", "TRAIN_SEQ_LEN": "64",
          "ROPE_TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096", "ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0",
          "GPTQ_RESERVE_SECONDS": "0", "WARMUP_STEPS": "0", "COMPILE": "0", "VAL_LOSS_EVERY": "0",
          "VAL_MAX_TOKENS": "4096", "VAL_BATCH_SIZE": "4096", "GPTQ_CALIBRATION_BATCHES": "2", "TTT_LORA_RANK": "4",
          "TTT_LORA_BATCH_DOCS": "4", "TTT_PHASE_PREFIX_DOCS": "6", "TTT_CHUNK_TOKENS": "256", "TTT_BATCH_SEQS": "4",
          "PGOLF_DEVICE": "cpu", "BYTE_SIDECARS": "off"}


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


@pytest.fixture(autouse=True)
def quantize_small_matrices(monkeypatch):
    """Quantize (GPTQ, LQER, per-group streams) matrices above 1,024 weights instead of 65,536, so the tiny
    model's blocks and embedding take the record's path rather than the fp16 passthrough."""
    for module in ("pgolf.quant.policy", "pgolf.quant.calibration"):
        monkeypatch.setattr(f"{module}.QUANT_PASSTHROUGH_MAX_NUMEL", 1024)


@pytest.mark.parametrize("name", ["frontier_caseops", "top_sp8192"])
def test_frontier_preset_runs_and_passes_check(name, tmp_path, capsys):
    data = ensure_default_dataset(tmp_path / "cache", log=lambda _: None)
    overrides = dict(SHRINK, DATA_PATH=str(data.data_path), TOKENIZER_PATH=str(data.tokenizer_path),
                     RUNS_DIR=str(tmp_path / "runs"), RUN_ID=name)
    cfg = preset_config(name)
    if cfg.artifact.compressor == "pergroup_lrzip" and shutil.which("lrzip") is None:
        overrides["COMPRESSOR"] = "pergroup"
    report = run_main(apply_config_overrides(cfg, overrides, source="test"), preset_name=name, echo=False)
    run_dir = tmp_path / "runs" / name
    assert report["steps"] == 4 and report["looping_enabled_step"] is not None
    assert report["artifact_compressor"] == overrides.get("COMPRESSOR", cfg.artifact.compressor)
    assert "val_bpb_quantized_ttt_lora" in report and report["quant_method"] == "gptq"
    log = (run_dir / "train.log").read_text()
    assert "quant_plan: tok_emb.weight 1024x64 int8_per_row (embed) stored:int8 bits:7" in log
    assert "quant_plan: blocks.0.attn.c_q.weight 64x64 int8_per_row (attn) stored:int8 bits:6 clip:sdclip k:13" in log
    assert cli_main(["check", str(run_dir), "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["passed"] and all(check["passed"] for check in receipt["checks"])
    score_first = receipt["checks"][0]
    assert score_first["check"] == "score_before_update" and "LoRA TTT" in score_first["details"][-1]
