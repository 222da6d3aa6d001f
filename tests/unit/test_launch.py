"""``pgolf launch --dry-run``: the machine check, the data it would fetch, the process count and the
command it would start (budget settings, overrides that win, torchrun only for several processes)."""

import shlex
import sys

import pytest

from pgolf.cli import build_parser, main as cli_main
from pgolf.commands.data_fineweb import FINEWEB_PREFIX_ENV, FINEWEB_REPO_ENV
from pgolf.commands.launch import BUDGETS, budget_overrides, data_need, process_count, train_command
from pgolf.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in ("PGOLF_PRESET", "RUNS_DIR", "CHECKPOINT_SYNC", "PGOLF_AUTO_RESUME", "RUN_ID", FINEWEB_REPO_ENV,
                FINEWEB_PREFIX_ENV):
        monkeypatch.delenv(key, raising=False)


def launched(capsys, *argv) -> tuple[list[str], str]:
    assert cli_main(["launch", "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("command: "))
    return shlex.split(line[len("command: "):]), out


def test_dry_run_on_cpu_runs_one_plain_process(capsys):
    command, out = launched(capsys, "--preset", "tiny_cpu", "ITERATIONS=5")
    assert command == [sys.executable, "-m", "pgolf", "train", "--preset", "tiny_cpu", "ITERATIONS=5"]
    assert "processes: 1" in out and "GPUs: none (CPU)" in out and "nothing to download" in out
    parsed = build_parser().parse_args(command[3:])  # the printed command parses with pgolf's own parser
    assert (parsed.command, parsed.preset, parsed.overrides) == ("train", "tiny_cpu", ["ITERATIONS=5"])


def test_nproc_starts_torchrun_and_budgets_scale_the_run(capsys):
    command, _ = launched(capsys, "--preset", "tiny_cpu", "--nproc", "2", "--budget", "1h",
                          "CHECKPOINT_EVERY_SECONDS=60")
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train_items = command[command.index("tiny_cpu") + 1:]
    assert "MAX_WALLCLOCK_SECONDS=3000" in train_items and "CHECKPOINT_EVERY_SECONDS=60" in train_items  # user wins
    assert "CHECKPOINT_EVERY_SECONDS=600" not in train_items


def test_sync_with_a_run_id_makes_the_launch_resumable(capsys, tmp_path):
    command, _ = launched(capsys, "--preset", "tiny_cpu", f"CHECKPOINT_SYNC={tmp_path}", "RUN_ID=golf")
    assert "PGOLF_AUTO_RESUME=1" in command
    _, out = launched(capsys, "--preset", "tiny_cpu", f"CHECKPOINT_SYNC={tmp_path}")
    assert "give RUN_ID" in out


def test_budgets_and_process_counts():
    assert budget_overrides(None) == []
    for budget in BUDGETS.values():
        items = dict(item.split("=") for item in budget_overrides(budget.name))
        assert 0 < int(items["MAX_WALLCLOCK_SECONDS"]) < {"10m": 600, "1h": 3600, "11h": 39600}[budget.name]
        assert int(items["CHECKPOINT_EVERY_SECONDS"]) < int(items["MAX_WALLCLOCK_SECONDS"])
    with pytest.raises(ConfigError, match="unknown --budget"):
        budget_overrides("3d")
    assert (process_count(None, 0), process_count(None, 2), process_count(None, 8), process_count(3, 8)) == (1, 2, 8, 3)
    with pytest.raises(ConfigError):
        process_count(0, 1)
    assert train_command("t4", [], 1)[1:3] == ["-m", "pgolf"]


def test_missing_fineweb_shards_are_downloaded_once(tmp_path, capsys):
    folder = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    need = data_need(str(folder), 2)
    assert (need.variant, need.root, need.train_shards) == ("sp1024", tmp_path / "data", 2)
    folder.mkdir(parents=True)
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"):
        (folder / name).write_bytes(b"")
    assert data_need(str(folder), 2).variant is None
    assert data_need(str(folder), 3).variant == "sp1024"
    assert data_need("", 80).variant is None and data_need(str(tmp_path / "mine"), 80).variant is None
    tokenizer = tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model"
    _, out = launched(capsys, "--preset", "baseline_sp1024", "--train-shards", "4",
                      f"DATA_PATH={folder}", f"TOKENIZER_PATH={tokenizer}")
    assert f"pgolf data fineweb --variant sp1024 --train-shards 4 --out {tmp_path / 'data'}" in out


def test_without_dry_run_it_downloads_then_runs_the_printed_command(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    downloads, runs = [], []
    monkeypatch.setattr("pgolf.commands.launch.download_fineweb",
                        lambda variant, shards, out, client: downloads.append((variant, shards, out, client.repo_id)))

    class Finished:
        returncode = 7

    monkeypatch.setattr("pgolf.commands.launch.subprocess.run", lambda command, check: runs.append(command) or Finished)
    tokenizer = tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model"
    assert cli_main(["launch", "--preset", "baseline_sp1024", "--train-shards", "3", f"DATA_PATH={folder}",
                     f"TOKENIZER_PATH={tokenizer}"]) == 7  # the training's exit status
    assert downloads == [("sp1024", 3, tmp_path / "data", "willdepueoai/parameter-golf")]
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("command: "))
    assert runs == [shlex.split(printed[len("command: "):])]
