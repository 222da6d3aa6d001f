"""A `pgolf train` whose data cannot work leaves no run directory behind (the
corrected command reuses the RUN_ID), an error after the directory exists is kept in train.log, and
`pgolf eval` needs only the validation shards."""

import json
import shutil

import pytest
from testkit import tiny_run_overrides

from pgolf.cli import main as cli_main
from pgolf.data.build import train_sentencepiece_tokenizer
from pgolf.data.corpus import default_corpus_documents
from pgolf.errors import TrainingError

pytestmark = pytest.mark.usefixtures("single_cpu_process")  # tests/e2e/conftest.py


def _items(settings: dict[str, str]) -> list[str]:
    return ["train", "--preset", "tiny_cpu", *[f"{key}={value}" for key, value in settings.items()]]


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A 1024-piece tokenizer of the same corpus, upper-cased: same vocabulary size, other pieces."""
    texts = [text.upper() for _, text in default_corpus_documents()]
    return train_sentencepiece_tokenizer(texts, 1024, tmp_path_factory.mktemp("other") / "other_1024")


def test_an_empty_training_shard_leaves_no_run_directory_and_the_rerun_works(default_data, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(default_data.data_path, damaged)
    (damaged / "fineweb_train_000000.bin").write_bytes(b"")
    settings = tiny_run_overrides(default_data, tmp_path / "runs", "again", iterations=2)
    assert cli_main(_items({**settings, "DATA_PATH": str(damaged)})) == 2
    assert "fineweb_train_000000.bin is empty" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "again").exists()
    assert cli_main(_items(settings)) == 0  # the corrected command, the same RUN_ID
    assert (tmp_path / "runs" / "again" / "report.json").is_file()


def test_a_tokenizer_that_did_not_make_the_shards_leaves_no_run_directory(default_data, other_tokenizer, tmp_path,
                                                                         capsys):
    settings = tiny_run_overrides(default_data, tmp_path / "runs", "mismatch", iterations=2)
    assert cli_main(_items({**settings, "TOKENIZER_PATH": str(other_tokenizer)})) == 2
    assert "is not the one the shards" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_error_after_the_run_directory_exists_is_kept_in_train_log(default_data, tmp_path, monkeypatch, capsys):
    def fail(*_args, **_kwargs):
        raise TrainingError("the model could not be built (a test)")

    monkeypatch.setattr("pgolf.run.build_model", fail)
    settings = tiny_run_overrides(default_data, tmp_path / "runs", "failed", iterations=2)
    assert cli_main(_items(settings)) == 2
    assert capsys.readouterr().err.count("the model could not be built") == 1
    run_dir = tmp_path / "runs" / "failed"
    assert "error: the model could not be built (a test)" in (run_dir / "train.log").read_text()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["error_type"] == "TrainingError"


def test_eval_needs_only_the_validation_shards(default_data, tmp_path, capsys):
    settings = tiny_run_overrides(default_data, tmp_path / "runs", "scored", iterations=2)
    assert cli_main(_items(settings)) == 0
    validation_only = tmp_path / "valonly"
    validation_only.mkdir()
    shutil.copy(default_data.data_path / "fineweb_val_000000.bin", validation_only)
    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path / "runs" / "scored"), f"DATA_PATH={validation_only}"]) == 0
    assert "quantized val_loss:" in capsys.readouterr().out
