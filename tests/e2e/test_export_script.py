"""The exported one-file train_gpt.py reproduces the package: same config and seed, same losses.

The package trains in this process; the wrapped script runs in a fresh interpreter (``python
train_gpt.py`` in an empty folder, and under ``torchrun`` with two processes), with SEED given as an
environment variable over the baked configuration. Both sides run single-threaded so the float
reductions happen in the same order; then one process must match bit for bit, and two gloo processes
(the same 8-micro-batch maths split over two ranks) to 1e-5 relative, as tests/dist requires.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.export.bundle import build_exported_script, write_exported_script
from pgolf.export.minify import unwrap_script
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main

pytestmark = pytest.mark.slow

QUICK = {"ITERATIONS": "3", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096",
         "VAL_MAX_TOKENS": "4096", "TRAIN_LOG_EVERY": "1"}
SEED = "7"  # not the preset's 1337: proves the environment overrides the baked configuration


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config the script bakes, folder holding train_gpt.py) for tiny_cpu on the embedded default data."""
    data = ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)
    cfg = apply_config_overrides(tiny_cpu(), {**QUICK, "DATA_PATH": str(data.data_path),
                                              "TOKENIZER_PATH": str(data.tokenizer_path)}, source="test")
    folder = tmp_path_factory.mktemp("export")
    script = build_exported_script(cfg, preset_name="tiny_cpu")
    wrapped, _ = write_exported_script(script, folder / "train_gpt.py")
    assert wrapped.stat().st_size == script.wrapped_bytes
    return cfg, folder


@pytest.fixture(scope="module")
def package_run(exported, tmp_path_factory):
    """The same configuration and seed through pgolf.run.main in this process, single-threaded."""
    cfg, _ = exported
    runs = tmp_path_factory.mktemp("package_runs")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(key, raising=False)
        patch.setenv("PGOLF_DEVICE", "cpu")
        torch.set_num_threads(1)
        try:
            run_main(apply_config_overrides(cfg, {"SEED": SEED, "RUNS_DIR": str(runs), "RUN_ID": "package"},
                                            source="test"), preset_name="tiny_cpu", echo=False)
        finally:
            torch.set_num_threads(threads)
    return runs / "package"


def run_script(command: list[str], folder: Path, runs: Path, run_id: str) -> Path:
    """Run the exported script in an empty working folder; returns its run directory."""
    work = runs.parent / f"cwd_{run_id}"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTHONPATH", "PGOLF_PRESET")}
    env.update(PGOLF_DEVICE="cpu", OMP_NUM_THREADS="1", RUNS_DIR=str(runs), RUN_ID=run_id, SEED=SEED)
    result = subprocess.run(command + [str(folder / "train_gpt.py")], cwd=work, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs / run_id


def metrics(run_dir: Path) -> tuple[list[tuple[int, float]], dict]:
    """(step, train loss) of every logged training step, and the header event."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(event["step"], event["train_loss"]) for event in events if event["event"] == "train"]
    return losses, next(event for event in events if event["event"] == "header")


def test_the_wrapped_script_holds_no_pgolf_import(exported):
    _, folder = exported
    source = unwrap_script((folder / "train_gpt.py").read_bytes())
    assert "from pgolf" not in source and "import pgolf" not in source


def test_python_train_gpt_py_gives_the_package_losses(exported, package_run, tmp_path):
    _, folder = exported
    script_run = run_script([sys.executable], folder, tmp_path / "runs", "script")
    script_losses, header = metrics(script_run)
    package_losses, package_header = metrics(package_run)
    assert [step for step, _ in script_losses] == [1, 2, 3]
    assert script_losses == package_losses  # bit for bit: same code, same data, same seed, one thread
    assert header["config"]["seed"] == int(SEED) and header["preset"] == "tiny_cpu"
    assert header["code_hash"] == package_header["code_hash"]  # the baked hash of the package it came from
    script_report = json.loads((script_run / "report.json").read_text())
    package_report = json.loads((package_run / "report.json").read_text())
    assert script_report["val_bpb"] == package_report["val_bpb"]


def test_torchrun_two_processes_train_like_one(exported, package_run, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    _, folder = exported
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script_losses, header = metrics(run_script(torchrun, folder, tmp_path / "runs", "torchrun"))
    package_losses, _ = metrics(package_run)
    assert header["env"]["device"] == "cpu" and [step for step, _ in script_losses] == [1, 2, 3]
    for (_, mine), (_, theirs) in zip(script_losses, package_losses):
        assert mine == pytest.approx(theirs, rel=1e-5)
