"""Writes notebooks/colab_t4.ipynb and notebooks/kaggle_2xt4.ipynb (nbformat 4) from the cells below.

    python notebooks/make_notebooks.py          # after editing a cell here; tests/unit/test_notebooks.py
                                                # fails while a notebook differs from what this writes

Every ``!pgolf ...`` line must parse with pgolf's own command-line parser (the test checks it), so the
commands use literal values; edit YOUR_NAME (the hub user) and the run name in the notebook before running.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

INSTALL = """# pgolf from a git repository: your fork, or the repository you cloned it from.
PGOLF_REPO = "https://github.com/YOUR_NAME/pgolf"
!git clone -q {PGOLF_REPO} pgolf 2>/dev/null || git -C pgolf pull -q
%pip install -q -e pgolf
!pgolf doctor --quick"""

PLOT = """!pgolf plot {run_dir} -o curves.png
from IPython.display import Image
Image("curves.png")"""


def markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}


def code(text: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": text.strip("\n").splitlines(keepends=True)}


def notebook(cells: list[dict], accelerator: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}, "accelerator": accelerator}}


def colab_t4() -> dict:
    run = "t4_seed42"
    return notebook([
        markdown("""
# pgolf on a free Colab T4

Trains the `t4` preset (fp16 with loss scaling, SDPA attention) on one T4, mirrors every checkpoint to
the Hugging Face hub, and continues in the next session. Step by step: `docs/cloud.md` in pgolf.

1. Runtime > Change runtime type > T4 GPU.
2. Add a secret `HF_TOKEN` (key icon on the left; a token with write access) and let this notebook read it.
3. Replace `YOUR_NAME` below by your hub user name (the repository `YOUR_NAME/pgolf-runs` is created private).
"""),
        code(INSTALL),
        code("""import os
from google.colab import userdata
os.environ["HF_TOKEN"] = userdata.get("HF_TOKEN")  # read by huggingface_hub for the checkpoint mirror"""),
        markdown("""
## Train (and resume)

`--budget 1h` trains for 50 minutes and checkpoints every 10 minutes (`--budget 10m` is a quick test,
`--budget 11h` a long session). With `CHECKPOINT_SYNC` and `RUN_ID`, `pgolf launch` adds
`PGOLF_AUTO_RESUME=1`: when the session ends, run every cell again in a new one and training continues
from the newest checkpoint on the hub.
"""),
        code(f"!pgolf launch --preset t4 --budget 1h --train-shards 10 RUN_ID={run} "
             f"CHECKPOINT_SYNC=hf://YOUR_NAME/pgolf-runs/{run}"),
        markdown("## Curves"),
        code(PLOT.format(run_dir=f"runs/{run}")),
    ], accelerator="GPU")


def kaggle_2xt4() -> dict:
    run = "t4x2_seed42"
    return notebook([
        markdown("""
# pgolf on Kaggle's two T4s

Kaggle's "GPU T4 x2" accelerator gives two T4s for sessions of up to 12 hours (30 hours a week).
`pgolf launch` sees both GPUs and starts `torchrun` with two processes. Checkpoints are mirrored to the
Hugging Face hub, so the next session continues the run. Step by step: `docs/cloud.md` in pgolf.

1. Settings > Accelerator > GPU T4 x2; Settings > Internet on.
2. Add-ons > Secrets: add `HF_TOKEN` (a token with write access) and attach it to this notebook.
3. Replace `YOUR_NAME` below by your hub user name.
"""),
        code(INSTALL),
        code("""import os
from kaggle_secrets import UserSecretsClient
os.environ["HF_TOKEN"] = UserSecretsClient().get_secret("HF_TOKEN")
os.environ["RUNS_DIR"] = "/kaggle/working/runs"  # kept as the notebook's output when the session ends"""),
        markdown("""
## Train (and resume)

`--budget 11h` trains for 10.5 hours and checkpoints every 30 minutes, leaving time for quantization,
evaluation and the last upload before the 12-hour limit. Run every cell again in the next session:
the launch fetches the newest checkpoint from the hub and continues (`PGOLF_AUTO_RESUME=1`).
"""),
        code(f"!pgolf launch --preset t4 --budget 11h --train-shards 20 RUN_ID={run} "
             f"CHECKPOINT_SYNC=hf://YOUR_NAME/pgolf-runs/{run}"),
        markdown("## Curves"),
        code(PLOT.format(run_dir=f"/kaggle/working/runs/{run}")),
    ], accelerator="nvidiaTeslaT4")


NOTEBOOKS = {"colab_t4.ipynb": colab_t4, "kaggle_2xt4.ipynb": kaggle_2xt4}


def notebook_text(name: str) -> str:
    return json.dumps(NOTEBOOKS[name](), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    for name in NOTEBOOKS:
        (HERE / name).write_text(notebook_text(name), encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
