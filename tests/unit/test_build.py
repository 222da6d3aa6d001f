"""Tokenizer training (SPEC 1.4) and document export to shards (SPEC 1.3)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pgolf.data.build import (
    SENTENCEPIECE_TRAINER_SETTINGS,
    clean_tokenizer_training_texts,
    export_documents_to_shards,
    format_sentencepiece_vocab,
    train_sentencepiece_tokenizer,
)
from pgolf.data.shards import find_shards, read_shard
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the of and to in is was for that with on by at from golf model token data small byte 42 café".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 30))) for _ in range(count)]


@pytest.fixture(scope="module")
def small_sp(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "small"
    return load_sentencepiece(train_sentencepiece_tokenizer(_texts(800), 300, prefix))


def test_trainer_settings_are_the_challenges():
    assert SENTENCEPIECE_TRAINER_SETTINGS == {
        "model_type": "bpe", "character_coverage": 0.999, "byte_fallback": True, "split_digits": True,
        "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False,
        "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "hard_vocab_limit": False,
    }


def test_cleaning_of_training_text():
    too_long: list[int] = []
    cleaned = list(clean_tokenizer_training_texts(["  a\x00b  ", "", "   ", "\x00", "c"], too_long))
    assert cleaned == ["a b", "c"] and too_long == []


def test_training_is_deterministic_and_writes_model_and_vocab(tmp_path):
    texts = _texts(600)
    first = train_sentencepiece_tokenizer(texts, 300, tmp_path / "a")
    second = train_sentencepiece_tokenizer(iter(texts), 300, tmp_path / "b")
    assert first == tmp_path / "a.model" and first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a.vocab").read_bytes() == (tmp_path / "b.vocab").read_bytes()
    sp = load_sentencepiece(first)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256
    lines = (tmp_path / "a.vocab").read_text(encoding="utf-8").splitlines()
    assert len(lines) == sp.vocab_size() and lines[1] == "<s>\t0" and lines[4] == "<0x00>\t0"
    assert sp.decode(sp.encode("the golf model")) == "the golf model"
    different = train_sentencepiece_tokenizer(_texts(600, seed=1), 300, tmp_path / "c")
    assert different.read_bytes() != first.read_bytes()


def test_training_refuses_overwrite(tmp_path):
    train_sentencepiece_tokenizer(_texts(300), 300, tmp_path / "tok")
    with pytest.raises(DataError, match="already exists"):
        train_sentencepiece_tokenizer(_texts(300), 300, tmp_path / "tok")
    with pytest.raises(DataError, match="vocab_size=270"):
        train_sentencepiece_tokenizer(_texts(300), 270, tmp_path / "small")
    assert not (tmp_path / "small.model").exists()


def test_long_documents_are_not_dropped(tmp_path):
    # SentencePiece's default skips lines over 4192 bytes; this word appears only in one long document.
    long_doc = " ".join(["zqxv"] * 3000)
    sp = load_sentencepiece(train_sentencepiece_tokenizer(_texts(300) + [long_doc], 300, tmp_path / "tok"))
    assert sp.piece_to_id("\u2581zqxv") != sp.unk_id() or sp.piece_to_id("zqxv") != sp.unk_id()


def test_overrides_are_applied(tmp_path):
    sp = load_sentencepiece(train_sentencepiece_tokenizer(_texts(300), 300, tmp_path / "t", overrides={"split_digits": False}))
    assert len(sp.encode("42 42 42")) < 6  # "42" merged only when digits are not split


def test_vocab_format_matches_official_file():
    folder = SHARED_DATA / "parameter-golf-tokenizers"
    if not folder.is_dir():
        pytest.skip("shared/data is absent")
    for name in ("fineweb_1024_bpe", "fineweb_8192_bpe"):
        sp = load_sentencepiece(folder / f"{name}.model")
        assert format_sentencepiece_vocab(sp) == (folder / f"{name}.vocab").read_text(encoding="utf-8")


def _expected_tokens(sp, docs):
    return [np.array([1] + sp.encode(doc), dtype=np.uint16) for doc in docs]


def _split_tokens(out_dir, split):
    files = find_shards(out_dir, split)
    return files, np.concatenate([read_shard(f) for f in files])


def test_export_splits_and_packs_documents(tmp_path, small_sp):
    docs = _texts(40, seed=3) + [""]  # an empty document still gets its BOS
    expected = _expected_tokens(small_sp, docs)
    manifest = export_documents_to_shards(
        docs, small_sp, tmp_path / "out", num_val_docs=7, shard_tokens=50, tokenizer_path=tmp_path / "small.model", batch_docs=4
    )
    val_files, val_tokens = _split_tokens(tmp_path / "out", "val")
    train_files, train_tokens = _split_tokens(tmp_path / "out", "train")
    np.testing.assert_array_equal(val_tokens, np.concatenate(expected[:7]))
    np.testing.assert_array_equal(train_tokens, np.concatenate(expected[7:]))
    assert [f.name for f in val_files] == [f"fineweb_val_{i:06d}.bin" for i in range(len(val_files))]
    assert all(len(read_shard(f)) == 50 for f in val_files[:-1] + train_files[:-1])  # only last shards short
    assert 0 < len(read_shard(val_files[-1])) <= 50
    stats = manifest["datasets"][0]["stats"]
    assert stats == {
        "docs_total": 41, "docs_val": 7, "docs_train": 34,
        "files_total": len(val_files) + len(train_files), "files_val": len(val_files), "files_train": len(train_files),
        "tokens_total": len(val_tokens) + len(train_tokens), "tokens_val": len(val_tokens), "tokens_train": len(train_tokens),
    }
    assert manifest["append_eos"] is False and manifest["shard_size"] == 50 and manifest["num_val_docs"] == 7
    assert manifest["tokenizers"][0]["vocab_size"] == small_sp.vocab_size() and manifest["tokenizers"][0]["bos_id"] == 1
    assert manifest["tokenizers"][0]["model_path"] == "../small.model"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_export_with_worker_processes_is_identical(tmp_path, small_sp):
    docs = _texts(60, seed=4)
    shards = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        export_documents_to_shards(docs, small_sp, out, num_val_docs=9, shard_tokens=70, batch_docs=5,
                                   num_workers=workers)
        shards[workers] = {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}
    assert len(shards[1]) > 4 and shards[1] == shards[3]


def test_export_never_overwrites(tmp_path, small_sp):
    export_documents_to_shards(_texts(5), small_sp, tmp_path, num_val_docs=2)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    with pytest.raises(DataError, match="refusing to overwrite"):
        export_documents_to_shards(_texts(5, seed=9), small_sp, tmp_path, num_val_docs=2)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_export_without_training_documents_leaves_nothing(tmp_path, small_sp):
    with pytest.raises(DataError, match="no training documents"):
        export_documents_to_shards(_texts(5), small_sp, tmp_path, num_val_docs=5, shard_tokens=10)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="at least 1"):
        export_documents_to_shards(_texts(5), small_sp, tmp_path, num_val_docs=0)


def test_export_reproduces_official_fineweb_tokens(tmp_path):
    data = SHARED_DATA
    if not (data / "fineweb-sp1024-val-sample").is_dir():
        pytest.skip("shared/data is absent")
    sp = load_sentencepiece(data / "parameter-golf-tokenizers" / "fineweb_1024_bpe.model")
    head = read_shard(data / "fineweb-sp1024-val-sample" / "fineweb_val_head_262145tok.bin")
    starts = np.flatnonzero(head == 1)
    with open(data / "fineweb-text-sample" / "fineweb_val_sample_decoded.jsonl", encoding="utf-8") as handle:
        docs = [json.loads(line)["text"] for _, line in zip(range(24), handle)]
    export_documents_to_shards(docs, sp, tmp_path, num_val_docs=16)
    np.testing.assert_array_equal(_split_tokens(tmp_path, "val")[1], head[: starts[16]])
    np.testing.assert_array_equal(_split_tokens(tmp_path, "train")[1], head[starts[16] : starts[24]])
