"""A shrunk copy of each cloud notebook runs end to end on this CPU: the notebook's own ``pgolf launch``
line with the tiny preset, a few steps and a local folder as the mirror (instead of T4s and the hub),
really launched (``python -m pgolf train`` in a subprocess), then the notebook's plot line."""

import json
import os
import shlex
from pathlib import Path

import pytest
import torch

from pgolf.cli import main as cli_main
from pgolf.data.corpus import ensure_default_dataset

pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[2]
SHRINK = {"ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
          "VAL_MAX_TOKENS": "1024", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
          "CHECKPOINT_EVERY": "2"}


def notebook_commands(name: str) -> list[list[str]]:
    notebook = json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))
    return [shlex.split(line.strip()[1:])[1:] for cell in notebook["cells"] if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if line.strip().startswith("!pgolf ")]


def shrink_launch(argv: list[str], mirror: Path, data) -> tuple[list[str], str]:
    """The launch line on the tiny preset, a few steps, the local mirror; and its RUN_ID."""
    shrunk, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--preset":
            shrunk += ["--preset", "tiny_cpu"]
            skip = True
        elif item.startswith("CHECKPOINT_SYNC="):
            shrunk.append(f"CHECKPOINT_SYNC={mirror}")
        else:
            shrunk.append(item)
    run_id = next(item.split("=", 1)[1] for item in argv if item.startswith("RUN_ID="))
    extra = {**SHRINK, "DATA_PATH": str(data.data_path), "TOKENIZER_PATH": str(data.tokenizer_path)}
    return shrunk + [f"{key}={value}" for key, value in extra.items()], run_id


@pytest.mark.parametrize("name", ["colab_t4.ipynb", "kaggle_2xt4.ipynb"])
def test_a_shrunk_notebook_runs_end_to_end_on_cpu(name, tmp_path, monkeypatch, capsys):
    data = ensure_default_dataset(tmp_path / "cache", log=lambda _: None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_PRESET", "CHECKPOINT_SYNC", "PGOLF_AUTO_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.chdir(tmp_path)
    commands = notebook_commands(name)
    launch, run_id = shrink_launch(next(argv for argv in commands if argv[0] == "launch"), tmp_path / "mirror", data)
    assert cli_main([*launch, "--nproc", "1"]) == 0  # one CPU process stands in for the notebook's GPUs
    run_dir = tmp_path / "runs" / run_id
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == 4
    assert json.loads((tmp_path / "mirror" / "report.json").read_text())["val_bpb"] == report["val_bpb"]
    assert (tmp_path / "mirror" / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    plot = next(argv for argv in commands if argv[0] == "plot")
    assert cli_main(["plot", str(run_dir), *plot[2:]]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
