"""`pgolf data build|stats|verify` (pgolf/commands/data.py, pgolf/data/dataset.py) on synthetic and real shards."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pgolf.cli import build_parser
from pgolf.cli import main as cli_main
from pgolf.commands.data import command_data_build
from pgolf.data.build import train_sentencepiece_tokenizer
from pgolf.data.dataset import dataset_stats, iter_documents_in_stream, verify_dataset
from pgolf.data.shards import SHARD_HEADER_BYTES, read_shard, write_shard
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.data.tokenizer_match import file_sha256
from pgolf.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WORDS = ("the of and to in is was for that with on by at from golf model token data small byte "
         "river stone quick brown fox jumps over lazy dog 42 7 2026").split()


def _ascii_docs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
        docs.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
    return docs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    return train_sentencepiece_tokenizer(_ascii_docs(400), 320, prefix)


def _encode_docs(sp, docs: list[str]) -> list[list[int]]:
    return [[sp.bos_id(), *ids] for ids in sp.encode(docs)]


def _write_dataset(directory: Path, sp, docs: list[str], num_val: int, per_shard: int = 5) -> list[list[int]]:
    """Val docs then train docs, ``per_shard`` documents per shard; returns the encoded documents."""
    encoded = _encode_docs(sp, docs)
    directory.mkdir(parents=True, exist_ok=True)
    for split, chunk in (("val", encoded[:num_val]), ("train", encoded[num_val:])):
        for index in range(0, len(chunk), per_shard):
            tokens = [t for doc in chunk[index : index + per_shard] for t in doc]
            write_shard(directory / f"fineweb_{split}_{index // per_shard:06d}.bin", tokens)
    return encoded


@pytest.fixture
def clean_dataset(tmp_path, tokenizer):
    sp = load_sentencepiece(tokenizer)
    directory = tmp_path / "data"
    encoded = _write_dataset(directory, sp, _ascii_docs(40, seed=1), num_val=10)
    return directory, encoded


def test_documents_split_at_bos_across_chunks():
    stream = np.array([5, 6, 1, 7, 8, 9, 1, 1, 4], dtype=np.int64)
    for size in (1, 2, 3, 9):
        chunks = (stream[i : i + size] for i in range(0, len(stream), size))
        found = [(bos, doc.tolist()) for bos, doc in iter_documents_in_stream(chunks, 1)]
        assert found == [(False, [5, 6]), (True, [1, 7, 8, 9]), (True, [1]), (True, [1, 4])]


def test_clean_dataset_verifies(clean_dataset, tokenizer):
    directory, encoded = clean_dataset
    check = verify_dataset(directory, tokenizer, chunk_tokens=7)
    assert check.ok, check.problems
    assert check.documents == {"val": 10, "train": 30}
    assert check.tokens["val"] == sum(len(d) for d in encoded[:10])


def _break_shard(directory: Path, kind: str) -> Path:
    path = directory / "fineweb_train_000001.bin"
    data = bytearray(path.read_bytes())
    if kind == "empty":
        data = bytearray()
    elif kind == "truncated":
        data = data[:-3]
    elif kind == "magic":
        data[0:4] = (12345).to_bytes(4, "little")
    elif kind == "token":
        data[SHARD_HEADER_BYTES + 6 : SHARD_HEADER_BYTES + 8] = (999).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind, words", [("empty", "0 bytes"), ("truncated", "truncated"), ("magic", "magic 12345"),
                                         ("token", "token id 999 at position 3")])
def test_verify_reports_a_broken_shard_by_name(clean_dataset, tokenizer, kind, words):
    directory, _ = clean_dataset
    broken = _break_shard(directory, kind)
    check = verify_dataset(directory, tokenizer, chunk_tokens=7)
    assert len(check.problems) == 1, check.problems
    assert str(broken) in check.problems[0] and words in check.problems[0]


def test_verify_finds_a_validation_document_in_training(clean_dataset, tokenizer):
    directory, encoded = clean_dataset
    leaked = encoded[3]
    target = directory / "fineweb_train_000002.bin"
    tokens = read_shard(target, mmap=False).tolist()
    target.unlink()
    write_shard(target, tokens[:1] + tokens[1:] + leaked)  # appended as its own document
    check = verify_dataset(directory, tokenizer, chunk_tokens=4)
    assert len(check.problems) == 1 and str(target) in check.problems[0]
    assert "identical to a validation document in fineweb_val_000000.bin" in check.problems[0]


def test_many_leaked_documents_are_one_problem_summary_first(clean_dataset, tokenizer, capsys):
    """With many copies the report used to be one line per copy, scrolling its summary away: now the count,
    the shards and the fix come first, then 5 examples and how many more."""
    directory, encoded = clean_dataset
    for name, leaked in (("fineweb_train_000000.bin", encoded[0:4]), ("fineweb_train_000003.bin", encoded[4:9])):
        tokens = read_shard(directory / name, mmap=False).tolist()
        (directory / name).unlink()
        write_shard(directory / name, tokens + [t for doc in leaked for t in doc])
    check = verify_dataset(directory, tokenizer, chunk_tokens=5)
    assert len(check.problems) == 1, check.problems
    lines = check.problems[0].splitlines()
    assert lines[0].startswith("9 training documents in 2 training shards are identical to validation documents")
    assert "deduplicate" in lines[0] and "export the dataset again" in lines[0]
    examples = [line for line in lines[1:] if "is identical to a validation document in fineweb_val_" in line]
    assert len(examples) == 5 and str(directory / "fineweb_train_000000.bin") in examples[0]
    assert lines[-1].strip() == "... and 4 more" and len(lines) == 7
    assert cli_main(["data", "verify", str(directory), "--tokenizer", str(tokenizer)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("problem: 9 training documents") and out[-1] == "FAILED: 1 problem(s)"


def test_verify_first_shard_without_bos_is_a_problem_later_ones_a_note(clean_dataset, tokenizer):
    directory, _ = clean_dataset
    for name in ("fineweb_val_000000.bin", "fineweb_train_000003.bin"):
        tokens = read_shard(directory / name, mmap=False).tolist()
        (directory / name).unlink()
        write_shard(directory / name, tokens[1:])
    check = verify_dataset(directory, tokenizer)
    assert len(check.problems) == 1 and "fineweb_val_000000.bin" in check.problems[0]
    assert any("fineweb_train_000003.bin" in note and "mid-document" in note for note in check.notes)


def test_verify_command_exit_status_and_report(clean_dataset, tokenizer, capsys):
    directory, _ = clean_dataset
    assert cli_main(["data", "verify", str(directory), "--tokenizer", str(tokenizer)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    _break_shard(directory, "magic")
    assert cli_main(["data", "verify", str(directory), "--vocab-size", "320"]) == 1
    assert "problem: " in capsys.readouterr().out


def _decoded_bytes(sp, documents: list[list[int]]) -> int:
    return sum(len(sp.decode(doc[1:]).encode("utf-8")) for doc in documents)


def test_stats_bytes_equal_decoded_text(clean_dataset, tokenizer):
    directory, encoded = clean_dataset
    sp = load_sentencepiece(tokenizer)
    stats = dataset_stats(directory, tokenizer, chunk_tokens=5)["splits"]
    assert stats["val"]["bytes"] == _decoded_bytes(sp, encoded[:10])
    assert stats["train"]["bytes"] == _decoded_bytes(sp, encoded[10:])
    assert stats["val"]["documents"] == 10 and stats["train"]["shards"] == 6
    assert stats["val"]["tokens"] == sum(len(d) for d in encoded[:10])
    untokenized = dataset_stats(directory)["splits"]["val"]  # no manifest, no tokenizer: tokens only
    assert untokenized["bytes"] is None and untokenized["tokens"] == stats["val"]["tokens"]


def test_stats_bytes_on_real_fineweb_head(tmp_path):
    head = SHARED_DATA / "fineweb-sp1024-val-sample" / "fineweb_val_head_262145tok.bin"
    model = SHARED_DATA / "parameter-golf-tokenizers" / "fineweb_1024_bpe.model"
    if not (head.is_file() and model.is_file()):
        pytest.skip("shared/data (real FineWeb sample) is absent")
    sp = load_sentencepiece(model)
    tokens = read_shard(head, mmap=False)
    complete = tokens[: np.flatnonzero(tokens == 1)[-1]]  # drop the cut-off last document
    write_shard(tmp_path / "fineweb_val_000000.bin", complete)
    documents = np.split(complete, np.flatnonzero(complete == 1)[1:])
    stats = dataset_stats(tmp_path, model, chunk_tokens=100_000)["splits"]["val"]
    assert stats["documents"] == len(documents) == 233
    assert stats["bytes"] == _decoded_bytes(sp, [doc.tolist() for doc in documents])
    assert 2.3 < stats["bytes_per_target_token"] < 2.6


@pytest.mark.parametrize("vocab", [1024, 8192])
def test_stats_bytes_equal_utf8_of_real_validation_text(tmp_path, vocab):
    """`data build` with the official tokenizer, then `data stats`: the validation bytes (the BPB
    denominator) equal the UTF-8 length of the documents' text, for sp1024 and sp8192."""
    sample = SHARED_DATA / "fineweb-text-sample" / "fineweb_val_sample_decoded.jsonl"
    model = SHARED_DATA / "parameter-golf-tokenizers" / f"fineweb_{vocab}_bpe.model"
    if not (sample.is_file() and model.is_file()):
        pytest.skip("shared/data (real FineWeb text and tokenizers) is absent")
    records = [json.loads(line) for line in sample.read_text(encoding="utf-8").splitlines()[:400]]
    docs = [r["text"] for r in records if not r.get("maybe_truncated")][:300]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in docs), encoding="utf-8")
    assert command_data_build(build_parser().parse_args(
        ["data", "build", "--docs", str(source), "--vocab-size", str(vocab), "--tokenizer", str(model),
         "--num-val-docs", "200", "--out", str(tmp_path / "out"), "--workers", "2"])) == 0
    stats = dataset_stats(tmp_path / "out" / "datasets" / f"docs_sp{vocab}", model)["splits"]
    assert stats["val"]["documents"] == 200 and stats["train"]["documents"] == 100
    assert stats["val"]["bytes"] == sum(len(text.encode("utf-8")) for text in docs[:200])
    assert stats["train"]["bytes"] == sum(len(text.encode("utf-8")) for text in docs[200:])


def test_build_round_trips_jsonl(tmp_path, capsys):
    docs = _ascii_docs(120, seed=2)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    out = tmp_path / "out"
    args = ["data", "build", "--docs", str(source), "--vocab-size", "400", "--num-val-docs", "7", "--out", str(out)]
    assert cli_main(args) == 0
    data_dir = out / "datasets" / "docs_sp400"
    model = out / "tokenizers" / "docs_400_bpe.model"
    sp = load_sentencepiece(model)
    val = read_shard(data_dir / "fineweb_val_000000.bin", mmap=False)
    decoded = [sp.decode(doc[1:].tolist()) for doc in np.split(val, np.flatnonzero(val == 1)[1:])]
    assert decoded == docs[:7]
    assert "train docs        113" in capsys.readouterr().out
    assert verify_dataset(data_dir).ok  # finds the tokenizer through the manifest
    with_docs = verify_dataset(data_dir, docs_path=source)  # no byte sidecars: the tokens are compared
    assert with_docs.ok and any("each of the 7 validation documents is its raw document" in n for n in with_docs.notes)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": d}) + "\n" for d in [docs[0], docs[1] + " x", *docs[2:]]))
    wrong = verify_dataset(data_dir, docs_path=other)
    assert any(f"1 of 7 documents of {other} are not the validation documents" in p and "document 1 " in p
               for p in wrong.problems)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:5]))
    assert any(f"{short} holds 5 documents but the validation split has 7" in p
               for p in verify_dataset(data_dir, docs_path=short).problems)
    assert dataset_stats(data_dir)["splits"]["val"]["bytes"] == sum(len(d) for d in docs[:7])
    assert cli_main(args) == 2  # refuses to overwrite the tokenizer
    assert "refusing to overwrite" in capsys.readouterr().err


def test_a_trained_tokenizer_is_named_after_its_dataset_never_like_the_official_one(tmp_path, capsys):
    """`pgolf data build` used to write tokenizers/fineweb_<V>_bpe.model, the official tokenizer's name (which
    `pgolf data fineweb` fetches and the presets point at): a build was taken for it, or blocked by it."""
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in _ascii_docs(120, seed=4)))
    out = tmp_path / "out"
    official = out / "tokenizers" / "fineweb_400_bpe.model"
    official.parent.mkdir(parents=True)
    official.write_bytes(b"the official tokenizer, fetched earlier")
    base = ["data", "build", "--docs", str(source), "--vocab-size", "400", "--num-val-docs", "7", "--out", str(out)]
    assert cli_main(base) == 0  # the official file neither blocks the build nor is touched by it
    assert official.read_bytes() == b"the official tokenizer, fetched earlier"
    assert sorted(p.name for p in official.parent.iterdir()) == ["docs_400_bpe.model", "docs_400_bpe.vocab",
                                                                  "fineweb_400_bpe.model"]
    assert "tokenizer: " + str(out / "tokenizers" / "docs_400_bpe.model") in capsys.readouterr().out
    assert cli_main(base + ["--name", "web text"]) == 0  # another dataset of the same size: its own tokenizer
    assert (out / "tokenizers" / "web_text_400_bpe.model").is_file()
    assert verify_dataset(out / "datasets" / "web_text_sp400").ok
    assert cli_main(base + ["--name", "FineWeb"]) == 2  # the official name is refused before any work
    err = capsys.readouterr().err
    assert "official tokenizer" in err and "--name FineWeb_mine" in err
    assert not (out / "datasets" / "FineWeb_sp400").exists()
    given = base + ["--name", "fineweb", "--tokenizer", str(out / "tokenizers" / "docs_400_bpe.model")]
    assert cli_main(given) == 0  # nothing is trained, so the name is free
    assert (out / "datasets" / "fineweb_sp400" / "fineweb_val_000000.bin").is_file()
    assert official.read_bytes() == b"the official tokenizer, fetched earlier"


def test_the_tokenizer_a_build_trains_does_not_depend_on_its_workers(tmp_path):
    # SentencePiece stores its trainer's thread count in the .model file; a count that followed --workers
    # (or the machine) gave one text two fingerprints, and `data verify` refused a rebuilt dataset.
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in _ascii_docs(120, seed=3)))
    fingerprints = set()
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert cli_main(["data", "build", "--docs", str(source), "--vocab-size", "400", "--num-val-docs", "7",
                         "--out", str(out), "--workers", workers]) == 0
        fingerprints.add(file_sha256(out / "tokenizers" / "docs_400_bpe.model"))
    assert len(fingerprints) == 1
    assert verify_dataset(tmp_path / "out1" / "datasets" / "docs_sp400",
                          tmp_path / "out2" / "tokenizers" / "docs_400_bpe.model").ok


def test_build_needs_more_documents_than_validation(tmp_path, tokenizer):
    texts = []
    for index, doc in enumerate(_ascii_docs(3)):
        texts.append(tmp_path / f"doc{index}.txt")
        texts[-1].write_text(doc)
    args = ["data", "build", "--text", *map(str, texts), "--vocab-size", "320", "--tokenizer", str(tokenizer),
            "--num-val-docs", "3", "--out", str(tmp_path / "out")]
    with pytest.raises(DataError, match="at least 4 are needed"):
        command_data_build(build_parser().parse_args(args))
    args[args.index("--num-val-docs") + 1] = "2"
    assert cli_main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "datasets" / "doc0_sp320").iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "manifest.json"]


def test_build_rejects_a_tokenizer_of_another_size_and_bad_jsonl(tmp_path, tokenizer, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a b"}\n{"txt": "c"}\n')
    base = ["data", "build", "--docs", str(source), "--num-val-docs", "1", "--out", str(tmp_path / "o")]
    assert cli_main(base + ["--vocab-size", "320", "--tokenizer", str(tokenizer)]) == 2
    assert 'line 2 has no string "text" field' in capsys.readouterr().err
    source.write_text('{"text": "a b"}\n{"text": "c"}\n')
    assert cli_main(base + ["--vocab-size", "512", "--tokenizer", str(tokenizer)]) == 2
    assert "has 320 pieces" in capsys.readouterr().err
