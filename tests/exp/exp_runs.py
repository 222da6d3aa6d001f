"""Tiny real training runs for the experiment-tooling tests (imported as ``from exp_runs import ...``)."""

import pytest

from pgolf.config import apply_config_overrides
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main

# A few steps of the tiny preset on short sequences: seconds on a 2-core CPU. Training points at every
# step and validation every 2 steps, so validation steps are logged training steps.
TINY_RUN = {"ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "2048",
            "VAL_MAX_TOKENS": "2048", "TRAIN_LOG_EVERY": "1", "VAL_LOSS_EVERY": "2"}


def tiny_run_config(data, runs_dir, run_id: str, **overrides):
    """The configuration :func:`train_tiny_run` trains."""
    settings = {**TINY_RUN, "DATA_PATH": str(data.data_path), "TOKENIZER_PATH": str(data.tokenizer_path),
                "RUNS_DIR": str(runs_dir), "RUN_ID": run_id, **overrides}
    return apply_config_overrides(tiny_cpu(), settings, source="test")


def train_tiny_run(data, runs_dir, run_id: str, code_bytes: int | None = None, **overrides) -> dict:
    """Train one tiny run in this process on the CPU; returns its report (the run is runs_dir/run_id).
    ``code_bytes``: the code size the run logs (that of the script that "ran" it), as pgolf train passes it."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(key, raising=False)
        patch.setenv("PGOLF_DEVICE", "cpu")
        cfg = tiny_run_config(data, runs_dir, run_id, **overrides)
        return run_main(cfg, preset_name="tiny_cpu", echo=False, code_bytes=code_bytes)
