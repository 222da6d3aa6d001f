"""Issue 18's "done means": a run mirrored with CHECKPOINT_SYNC to a local folder crashes, its local run
directory is deleted (the machine is gone), and ``pgolf train --resume FOLDER RUNS_DIR=elsewhere`` ends
with the same val_loss as an uninterrupted run; PGOLF_AUTO_RESUME=1 with CHECKPOINT_SYNC does the same
with the unchanged command; and the same through ``hf://`` with the real huggingface_hub client against
the local hub stand-in (tests/unit/hub_standin.py)."""

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.corpus import ensure_default_dataset
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main
from pgolf.train import loop as loop_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from hub_standin import HubStandIn, RunningHub  # noqa: E402

QUICK = {"ITERATIONS": "6", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
         "VAL_MAX_TOKENS": "1024", "TRAIN_LOG_EVERY": "1", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2",
         "NUM_KV_HEADS": "1"}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_AUTO_RESUME", "CHECKPOINT_SYNC", "RUNS_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")
    monkeypatch.setattr("pgolf.commands.train.exported_code_bytes", lambda cfg, preset_name: 50_000)


def items(default_data, runs_dir, **extra) -> list[str]:
    values = {**QUICK, "DATA_PATH": str(default_data.data_path), "TOKENIZER_PATH": str(default_data.tokenizer_path),
              "RUNS_DIR": str(runs_dir), **extra}
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def reference(default_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("reference")
    overrides = dict(item.split("=", 1) for item in items(default_data, runs, RUN_ID="reference"))
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_AUTO_RESUME"):
            patch.delenv(key, raising=False)
        patch.setenv("PGOLF_DEVICE", "cpu")
        return run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), echo=False)


def crash_at_step_five(monkeypatch):
    real_step, calls = loop_module.run_training_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("machine reclaimed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop_module, "run_training_step", crashing)
    return real_step


def test_a_mirrored_run_resumes_from_the_folder_on_another_path(default_data, tmp_path, reference, monkeypatch):
    mirror, first, second = tmp_path / "drive" / "run1", tmp_path / "machine1", tmp_path / "machine2"
    real_step = crash_at_step_five(monkeypatch)
    with pytest.raises(RuntimeError, match="machine reclaimed"):
        cli_main(["train", *items(default_data, first, RUN_ID="golf", CHECKPOINT_EVERY="2", CHECKPOINT_KEEP="1",
                                  CHECKPOINT_SYNC=str(mirror))])
    assert sorted(p.name for p in (mirror / "checkpoints").iterdir()) == ["step_00000004"]  # pruned to KEEP
    assert (mirror / "train.log").is_file() and (mirror / "config.json").is_file()
    shutil.rmtree(first)  # the machine is gone

    monkeypatch.setattr(loop_module, "run_training_step", real_step)
    assert cli_main(["train", "--resume", str(mirror), f"RUNS_DIR={second}"]) == 0
    report = json.loads((second / "golf" / "report.json").read_text())
    assert report["steps"] == 6
    assert (report["val_loss"], report["val_bpb"]) == (reference["val_loss"], reference["val_bpb"])
    log = (second / "golf" / "train.log").read_text()
    assert log.count("pgolf run preset:") == 2 and "checkpoints/step_00000004 step:4" in log
    # The resumed run keeps mirroring to the same place: its report, artifact and logs are there at the end.
    assert json.loads((mirror / "report.json").read_text())["val_loss"] == reference["val_loss"]
    assert (mirror / "artifact").is_dir() and (mirror / "train.log").read_text() == log


def test_auto_resume_fetches_the_mirror_with_the_same_command(default_data, tmp_path, reference, monkeypatch):
    mirror, machine = tmp_path / "kaggle_dataset", tmp_path / "working"
    command = ["train", *items(default_data, machine, RUN_ID="golf", CHECKPOINT_EVERY="2",
                               CHECKPOINT_SYNC=str(mirror), PGOLF_AUTO_RESUME="1")]
    real_step = crash_at_step_five(monkeypatch)
    with pytest.raises(RuntimeError, match="machine reclaimed"):
        cli_main(command)
    shutil.rmtree(machine)  # the next session starts on a fresh machine
    monkeypatch.setattr(loop_module, "run_training_step", real_step)
    assert cli_main(command) == 0
    report = json.loads((machine / "golf" / "report.json").read_text())
    assert (report["val_loss"], report["val_bpb"]) == (reference["val_loss"], reference["val_bpb"])
    assert "step_00000004 step:4" in (machine / "golf" / "train.log").read_text()


def test_a_run_mirrored_to_the_hub_resumes_from_the_hub(default_data, tmp_path, reference, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    hub, url = HubStandIn("me/pgolf-runs", exists=False), "hf://datasets/me/pgolf-runs/golf"
    with RunningHub(hub) as endpoint:
        # What HF_ENDPOINT does for a real hub (read by huggingface_hub at import, so set here directly).
        monkeypatch.setattr("pgolf.commands.checkpoint_sync.HfApi", functools.partial(HfApi, endpoint=endpoint))
        real_step = crash_at_step_five(monkeypatch)
        with pytest.raises(RuntimeError, match="machine reclaimed"):
            cli_main(["train", *items(default_data, tmp_path / "colab1", RUN_ID="golf", CHECKPOINT_EVERY="2",
                                      CHECKPOINT_SYNC=url)])
        assert "golf/checkpoints/step_00000004/manifest.json" in hub.files
        shutil.rmtree(tmp_path / "colab1")
        monkeypatch.setattr(loop_module, "run_training_step", real_step)
        assert cli_main(["train", "--resume", url, f"RUNS_DIR={tmp_path / 'colab2'}"]) == 0
    report = json.loads((tmp_path / "colab2" / "golf" / "report.json").read_text())
    assert (report["val_loss"], report["val_bpb"]) == (reference["val_loss"], reference["val_bpb"])
    assert json.loads(hub.files["golf/report.json"])["val_loss"] == reference["val_loss"]


def mirror_files(mirror: Path) -> dict:
    return {p.relative_to(mirror): p.read_bytes() for p in mirror.rglob("*") if p.is_file()}


def test_a_refused_run_uploads_nothing_over_a_mirror(default_data, tmp_path, capsys):
    """A new run whose directory already exists is refused, and the existing run is not mirrored."""
    runs, mirror = tmp_path / "runs", tmp_path / "mirror_copy"
    assert cli_main(["train", *items(default_data, runs, RUN_ID="base")]) == 0  # an unrelated run
    capsys.readouterr()
    assert cli_main(["train", *items(default_data, runs, RUN_ID="base", CHECKPOINT_SYNC=str(mirror))]) != 0
    err = capsys.readouterr().err
    assert "already exists; pgolf never overwrites a run" in err and "checkpoint_sync:mirrored" not in err
    assert not mirror.exists() or mirror_files(mirror) == {}


def test_a_new_run_is_refused_the_mirror_of_a_finished_run(default_data, tmp_path, capsys):
    runs, mirror = tmp_path / "runs", tmp_path / "mirror_a"
    assert cli_main(["train", *items(default_data, runs, RUN_ID="a", CHECKPOINT_EVERY="2",
                                     CHECKPOINT_SYNC=str(mirror))]) == 0
    before = mirror_files(mirror)
    capsys.readouterr()
    assert cli_main(["train", *items(default_data, runs, RUN_ID="b", CHECKPOINT_EVERY="5",
                                     CHECKPOINT_SYNC=str(mirror))]) != 0
    assert "holds another run: its pgolf_mirror.json names run 'a'" in capsys.readouterr().err
    assert mirror_files(mirror) == before and not (runs / "b").exists()  # refused before training started
