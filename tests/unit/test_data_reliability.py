"""Issue 17's data probes, each reproduced: a wrong tokenizer (item 3), a damaged cached default dataset
(item 6), BOS_TOKEN_ID and ids beyond the vocabulary (items 7, 8), build arguments checked before the
tokenizer is trained (item 8), and input that is not UTF-8 (item 9). Each failed (or passed silently)
before the fix. docs/reliability.md lists them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from testkit import word_documents

from pgolf.cli import main as cli_main
from pgolf.config import Config, apply_config_overrides
from pgolf.data import dataset as dataset_module
from pgolf.data.build import export_documents_to_shards, train_sentencepiece_tokenizer
from pgolf.data.corpus import ensure_default_dataset
from pgolf.data.dataset import build_dataset, dataset_stats, iter_jsonl_documents, verify_dataset
from pgolf.data.run_data import prepare_validation_data
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SP1024_VAL = SHARED_DATA / "fineweb-sp1024-val-sample" / "fineweb_val_head_262145tok.bin"
SP1024_TRAIN = SHARED_DATA / "fineweb-sp1024-val-sample" / "fineweb_val_tail_2021846tok.bin"
TOKENIZERS = SHARED_DATA / "parameter-golf-tokenizers"
VOCAB = 320


def _docs(count: int, seed: int) -> list[str]:
    return word_documents("the of and to in is was for that with golf model token data byte river stone quick 42 7", count, seed)


@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory):
    """Two tokenizers of the same vocabulary size trained on different text."""
    root = tmp_path_factory.mktemp("tokenizers")
    first = train_sentencepiece_tokenizer(_docs(400, 0), VOCAB, root / "first")
    other_words = [" ".join(reversed(d.split())).upper() + " xyzzy plugh" for d in _docs(400, 1)]
    second = train_sentencepiece_tokenizer(other_words, VOCAB, root / "second")
    return first, second


@pytest.fixture(scope="module")
def pgolf_dataset(tmp_path_factory, two_tokenizers):
    """A dataset written by pgolf with the first tokenizer (its manifest fingerprints it)."""
    out = tmp_path_factory.mktemp("export") / "data"
    export_documents_to_shards(_docs(120, 2), load_sentencepiece(two_tokenizers[0]), out, num_val_docs=30,
                               tokenizer_path=two_tokenizers[0])
    return out


def _config(data_dir, tokenizer, vocab=VOCAB, **extra) -> Config:
    values = {"DATA_PATH": str(data_dir), "TOKENIZER_PATH": str(tokenizer), "VOCAB_SIZE": str(vocab),
              "TRAIN_SEQ_LEN": "32", "TRAIN_BATCH_TOKENS": "256", **extra}
    return apply_config_overrides(Config(), values, source="test")


# --------------------------------------------------------------------------- item 3: tokenizer vs shards


def test_a_pgolf_dataset_refuses_another_tokenizer_of_the_same_size(pgolf_dataset, two_tokenizers):
    first, second = two_tokenizers
    assert prepare_validation_data(_config(pgolf_dataset, first)).tokens.numel() > 0
    with pytest.raises(DataError, match=r"is not the one the shards .* were made with: their manifest.json records"):
        prepare_validation_data(_config(pgolf_dataset, second))
    copied = pgolf_dataset.parent / "copy_of_first.model"
    shutil.copyfile(first, copied)  # the same file elsewhere is the same tokenizer
    assert prepare_validation_data(_config(pgolf_dataset, copied)).tokens.numel() > 0


def test_shards_without_a_manifest_are_checked_by_reencoding(pgolf_dataset, two_tokenizers, tmp_path):
    first, second = two_tokenizers
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in pgolf_dataset.glob("*.bin"):
        shutil.copyfile(path, bare / path.name)
    assert prepare_validation_data(_config(bare, first)).tokens.numel() > 0
    with pytest.raises(DataError, match=r"did not make the validation shards .* decoded with it and encoded again"):
        prepare_validation_data(_config(bare, second))


def test_data_verify_reports_the_wrong_tokenizer(pgolf_dataset, two_tokenizers, capsys):
    first, second = two_tokenizers
    assert verify_dataset(pgolf_dataset, first).ok
    check = verify_dataset(pgolf_dataset, second)
    assert any("is not the one the shards" in problem for problem in check.problems)
    assert cli_main(["data", "verify", str(pgolf_dataset), "--tokenizer", str(second)]) == 1
    assert "problem: the tokenizer" in capsys.readouterr().out


@pytest.mark.skipif(not SP1024_VAL.is_file(), reason="../shared/data is not available")
@pytest.mark.parametrize("model,vocab,matches", [("fineweb_1024_bpe.model", 1024, True),
                                                 ("fineweb_8192_bpe.model", 8192, False)])
def test_sp8192_on_sp1024_shards_is_refused(tmp_path, model, vocab, matches):
    data = tmp_path / "sp1024"
    data.mkdir()
    shutil.copyfile(SP1024_VAL, data / "fineweb_val_000000.bin")
    shutil.copyfile(SP1024_VAL, data / "fineweb_train_000000.bin")  # content-equal: only the tokenizer is tested
    tokens = np.array(read_shard(SP1024_VAL))
    (data / "fineweb_train_000000.bin").unlink()
    write_shard(data / "fineweb_train_000000.bin", tokens[::-1].copy())
    cfg = _config(data, TOKENIZERS / model, vocab, VAL_MAX_TOKENS="8192")
    if matches:
        assert prepare_validation_data(cfg).tokens.numel() == 8193
    else:
        with pytest.raises(DataError, match="did not make the validation shards"):
            prepare_validation_data(cfg)


# --------------------------------------------------------------------------- items 7 and 8: before training


def test_bos_token_id_must_be_the_tokenizers(pgolf_dataset, two_tokenizers):
    with pytest.raises(ConfigError, match=r"BOS_TOKEN_ID=5 but the tokenizer .* starts every document with id 1"):
        prepare_validation_data(_config(pgolf_dataset, two_tokenizers[0], BOS_TOKEN_ID="5"))


def test_validation_ids_beyond_the_vocabulary_are_refused_before_training(pgolf_dataset, two_tokenizers, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pgolf_dataset, bad)
    tokens = np.array(read_shard(bad / "fineweb_val_000000.bin"))
    tokens[10] = VOCAB + 3
    (bad / "fineweb_val_000000.bin").unlink()
    write_shard(bad / "fineweb_val_000000.bin", tokens)
    with pytest.raises(DataError, match=rf"fineweb_val_000000.bin: token id {VOCAB + 3} at position 10 is out of range"):
        prepare_validation_data(_config(bad, two_tokenizers[0]))


def test_data_stats_refuses_ids_beyond_the_vocabulary(pgolf_dataset, two_tokenizers, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pgolf_dataset, bad)
    tokens = np.array(read_shard(bad / "fineweb_train_000000.bin"))
    tokens[7] = 4000
    (bad / "fineweb_train_000000.bin").unlink()
    write_shard(bad / "fineweb_train_000000.bin", tokens)
    with pytest.raises(DataError, match=r"fineweb_train_000000.bin: token id 4000 at position 7 is out of range"):
        dataset_stats(bad, two_tokenizers[0])


@pytest.mark.parametrize("option,value,message", [("--num-val-docs", "-5", "--num-val-docs must be at least 1"),
                                                  ("--vocab-size", "70000", "does not fit the shard format"),
                                                  ("--vocab-size", "200", "leaves no room for merges")])
def test_build_arguments_are_checked_before_the_tokenizer_is_trained(tmp_path, monkeypatch, capsys, option, value,
                                                                     message):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(50, 3)))
    trained = []
    monkeypatch.setattr(dataset_module, "train_sentencepiece_tokenizer", lambda *a, **k: trained.append(a))
    args = ["data", "build", "--docs", str(source), "--vocab-size", "300", "--num-val-docs", "5",
            "--out", str(tmp_path / "out")]
    args[args.index(option) + 1] = value
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    assert not trained and not (tmp_path / "out").exists()


def test_a_failed_build_leaves_no_tokenizer_that_blocks_the_retry(tmp_path, monkeypatch):
    docs = _docs(60, 4)

    def failing_export(*args, **kwargs):
        raise DataError("the disk is full (simulated)")

    monkeypatch.setattr(dataset_module, "export_documents_to_shards", failing_export)
    with pytest.raises(DataError, match="simulated"):
        build_dataset(lambda: iter(docs), 300, tmp_path, num_val_docs=5)
    assert not list((tmp_path / "tokenizers").glob("*"))  # the trained tokenizer went with the failed build
    monkeypatch.undo()
    result = build_dataset(lambda: iter(docs), 300, tmp_path, num_val_docs=5)
    assert Path(result["tokenizer_path"]).is_file()


# --------------------------------------------------------------------------- item 9: input that is not UTF-8


def test_non_utf8_input_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    out = ["--vocab-size", "300", "--num-val-docs", "1", "--out", str(tmp_path / "out")]
    assert cli_main(["data", "build", "--docs", str(jsonl), *out]) == 2
    err = capsys.readouterr().err
    assert f"{jsonl} line 2 is not valid UTF-8 (byte 0xe9 at column 14)" in err and len(err.strip().splitlines()) == 1
    text = tmp_path / "notes.txt"
    text.write_bytes(b"first line\nsecond \xff line\n")
    assert cli_main(["data", "build", "--text", str(text), str(text), *out]) == 2
    assert f"{text} line 2 is not valid UTF-8 (byte 0xff at column 8)" in capsys.readouterr().err
    jsonl.write_text('{"text": "ok"}\n{"text": "broken \\ud800 escape"}\n')
    with pytest.raises(DataError, match=r"line 2: the text holds U\+D800, a lone surrogate"):
        list(iter_jsonl_documents(jsonl))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 6: the cached default dataset


def test_a_flipped_byte_in_the_cached_default_dataset_is_detected_and_rebuilt(tmp_path):
    first = ensure_default_dataset(tmp_path, log=lambda line: None)
    shard = next(first.data_path.glob("fineweb_val_*.bin"))
    good = shard.read_bytes()
    damaged = bytearray(good)
    damaged[5000] ^= 0x01  # same size: only a hash can tell
    shard.write_bytes(bytes(damaged))
    lines: list[str] = []
    again = ensure_default_dataset(tmp_path, log=lines.append)
    assert any("is damaged" in line and shard.name in line and "sha256" in line for line in lines)
    assert "built in" in lines[-1]
    assert again.data_path == first.data_path and shard.read_bytes() == good


def test_too_little_text_for_the_vocabulary_names_the_size_it_can_have(tmp_path):
    docs = _docs(40, 5)
    with pytest.raises(DataError, match=r"too little distinct text for --vocab-size 2000: SentencePiece made \d+ pieces"):
        build_dataset(lambda: iter(docs), 2000, tmp_path, num_val_docs=5)
    assert not list((tmp_path / "tokenizers").glob("*"))
