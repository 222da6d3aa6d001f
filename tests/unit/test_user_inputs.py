"""What a user gives pgolf and what they get back: file modes of atomic writes, the batch split and
VAL_MAX_TOKENS checked before a run, errors naming where a bad value came from, `pgolf data stats` of an
empty folder, the plain evaluation's windows."""

import os
import stat

import pytest
import torch
from testkit import small_scoring_gpt

from pgolf.cli import main as cli_main
from pgolf.config import (MICRO_BATCHES_PER_STEP, Config, EvalConfig, TrainConfig,
                          apply_config_overrides, validate_config)
from pgolf.data.dataset import dataset_stats
from pgolf.data.loader import local_batch_tokens
from pgolf.data.run_data import ValidationData
from pgolf.data.shards import write_shard
from pgolf.data.tokenizer import ByteTables
from pgolf.dist import REFERENCE_WORLD_SIZE, DistContext
from pgolf.eval.bpb import evaluate_bpb
from pgolf.eval.phases import plain_evaluator
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.presets import tiny_cpu


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask_022):
    written = write_text_atomic(tmp_path / "report.json", "{}")
    with open(tmp_path / "plain.json", "w") as handle:
        handle.write("{}")
    assert _mode(written) == _mode(tmp_path / "plain.json") == 0o644


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        written = write_bytes_atomic(tmp_path / "model.ptz", b"x")
    finally:
        os.umask(previous)
    assert _mode(written) == 0o600


def test_an_overwrite_keeps_the_files_mode(tmp_path, umask_022):
    target = tmp_path / "config.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new", overwrite=True)
    assert _mode(target) == 0o640 and target.read_text() == "new"


# --- items 3-5: configuration checks -----------------------------------------------------------------

def _one_line_error(capsys, argv) -> str:
    assert cli_main(argv) == 2
    return capsys.readouterr().err


def test_a_batch_that_cannot_split_into_eight_micro_batches_is_refused_by_describe(capsys):
    err = _one_line_error(capsys, ["describe", "--preset", "tiny_cpu", "TRAIN_BATCH_TOKENS=512"])
    assert "TRAIN_BATCH_TOKENS=512 must be a positive multiple of 2048" in err and "TRAIN_SEQ_LEN=256" in err


@pytest.mark.parametrize("tokens", [8 * 64, 8 * 64 * 3])
def test_a_batch_of_whole_micro_batches_is_accepted(tokens):
    cfg = apply_config_overrides(tiny_cpu(), {"TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": str(tokens)}, source="test")
    assert validate_config(cfg) is cfg


def test_the_split_the_config_checks_is_the_training_codes():
    assert MICRO_BATCHES_PER_STEP == REFERENCE_WORLD_SIZE
    for world_size in (1, 2, 4, 8):  # every world size the launcher accepts splits a step into 8 micro-batches
        assert local_batch_tokens(8 * 64 * 3, 64, world_size, REFERENCE_WORLD_SIZE // world_size) == 3 * 64


@pytest.mark.parametrize("value, words", [("-5", "VAL_MAX_TOKENS=-5 must be >= 0"),
                                          ("10", "VAL_MAX_TOKENS=10 is less than one evaluation window")])
def test_val_max_tokens_out_of_range_is_refused(capsys, value, words):
    assert words in _one_line_error(capsys, ["describe", "--preset", "tiny_cpu", f"VAL_MAX_TOKENS={value}"])


def test_a_bad_value_names_its_source(capsys, monkeypatch):
    monkeypatch.setenv("ITERATIONS", "abc")
    assert "environment variable ITERATIONS: ITERATIONS='abc'" in _one_line_error(capsys, ["describe"])
    monkeypatch.delenv("ITERATIONS")
    assert "command line: ITERATIONS='abc'" in _one_line_error(capsys, ["describe", "iterations=abc"])


# --- item 6: data stats on a folder without shards -----------------------------------------------------

def test_data_stats_refuses_a_folder_without_shards(tmp_path, capsys):
    err = _one_line_error(capsys, ["data", "stats", str(tmp_path)])
    assert str(tmp_path) in err and "fineweb_val_*.bin" in err and "fineweb_train_*.bin" in err


def test_data_stats_shows_a_missing_split_as_zero_shards(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 5, 6, 7])
    assert dataset_stats(tmp_path)["splits"]["train"]["shards"] == 0


# --- item 8: the plain evaluation's windows are EVAL_SEQ_LEN -----------------------------------------

def test_the_plain_evaluation_uses_windows_of_eval_seq_len():
    vocab = 32
    model = small_scoring_gpt(vocab)  # context matters to its scores, so the window length shows
    tables = ByteTables(base_bytes=torch.ones(vocab, dtype=torch.int16),
                        has_leading_space=torch.zeros(vocab, dtype=torch.bool),
                        is_boundary=torch.zeros(vocab, dtype=torch.bool))
    tokens = torch.randint(0, vocab, (97,), generator=torch.Generator().manual_seed(1))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
    data = ValidationData(tokens, tables, [], [])
    cfg = Config(train=TrainConfig(train_seq_len=16, train_batch_tokens=128), eval=EvalConfig(eval_seq_len=32))
    plain = plain_evaluator(cfg, ctx, data)(model)

    def direct(seq_len):
        return evaluate_bpb(model, tokens, seq_len=seq_len, batch_sequences=4, target_bytes=tables,
                            runtime=ctx.runtime).loss_sum

    assert plain.loss_sum == pytest.approx(direct(32), abs=1e-9) and abs(plain.loss_sum - direct(16)) > 1e-6


def test_val_max_tokens_is_measured_in_evaluation_windows(capsys):
    err = _one_line_error(capsys, ["describe", "--preset", "tiny_cpu", "EVAL_SEQ_LEN=512", "VAL_MAX_TOKENS=300"])
    assert "VAL_MAX_TOKENS=300 is less than one evaluation window" in err and "512 tokens" in err
