"""CaseOps end to end (SPEC 5.10, issue 16): `pgolf data build --caseops` writes byte sidecars, `data verify`
and `data stats` read them, and every evaluator divides by the bytes they count (the text with the case
transform undone). Both byte conventions: `decoded` (the default, the challenge's: the decoded text,
the record's sidecar byte for byte) and `original` (the raw documents).

The FineWeb parts use ../shared/data and skip cleanly without it; the rest runs on synthetic text.
"""

import copy
import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import small_scoring_gpt

from pgolf.cli import main as cli_main
from pgolf.commands.check import audit_byte_accounting, audit_decoder
from pgolf.config import Config, TTTConfig, apply_config_overrides
from pgolf.data.caseops import CASEOPS_OPERATORS, decode_caseops
from pgolf.data.dataset import build_dataset, dataset_stats, iter_jsonl_documents, verify_dataset
from pgolf.data.run_data import prepare_validation_data
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.tokenizer import build_byte_tables, load_sentencepiece
from pgolf.data.val_bytes import TARGET_BYTES_FROM_SIDECARS, dataset_byte_convention, target_bytes_from_tables
from pgolf.errors import DataError
from pgolf.eval.bpb import evaluate_bpb
from pgolf.eval.compliance import check_byte_accounting
from pgolf.eval.sliding import evaluate_sliding_bpb
from pgolf.eval.ttt import evaluate_ttt_bpb
from pgolf.eval.ttt_lora import evaluate_lora_ttt_bpb
from pgolf.runtime import Runtime

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FINEWEB_DOCS = SHARED_DATA / "fineweb-text-sample" / "fineweb_val_sample_decoded.jsonl"
GOLDEN = SHARED_DATA / "caseops-sample"
CPU = Runtime(torch.device("cpu"))
WORDS = "The river NASA iPhone McDonald stone OK quick Brown fox x86_64 HTML5 café ÉCOLE über 42 I a".split()


def _docs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + rng.choice(".!?")
            for _ in range(count)]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A CaseOps dataset built from synthetic mixed-case text: (data_dir, tokenizer, docs, docs.jsonl)."""
    root = tmp_path_factory.mktemp("caseops")
    docs = _docs(160, seed=1) + ["\ue001 literal operators \ue004 and CAPS", "   "]  # escapes; a token-less doc
    docs = docs[:20] + docs[-2:] + docs[20:-2]  # both special documents in the validation split
    source = _write_jsonl(root / "docs.jsonl", docs)
    result = build_dataset(lambda: iter_jsonl_documents(source), 400, root / "out", name="docs",
                           num_val_docs=22, caseops=True)
    return Path(result["data_dir"]), Path(result["tokenizer_path"]), docs, source


def _documents(tokens: np.ndarray, bos: int = 1) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == bos)
    return [tokens[b:e] for b, e in zip(starts, list(starts[1:]) + [len(tokens)])]


def test_build_writes_a_caseops_tokenizer_sidecars_and_a_fingerprinted_manifest(synthetic):
    data_dir, tokenizer, docs, _ = synthetic
    sp = load_sentencepiece(tokenizer)
    assert tokenizer.name == "docs_400_bpe_lossless_caps_caseops_v1_reserved.model"
    assert [sp.piece_to_id(op) for op in CASEOPS_OPERATORS] == [4, 5, 6, 7]
    assert sorted(p.name for p in data_dir.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    tokens, counts = read_shard(data_dir / "fineweb_val_000000.bin"), read_shard(data_dir / "fineweb_val_bytes_000000.bin")
    assert len(tokens) == len(counts) and not counts[tokens == 1].any()
    val_docs = _documents(np.asarray(tokens))
    assert len(val_docs) == 22
    for text, ids, start in zip(docs, val_docs, np.flatnonzero(np.asarray(tokens) == 1)):
        assert decode_caseops(sp.decode(ids[1:].tolist())) == text.strip()  # round trip (the normaliser strips)
        expected = len(text.encode("utf-8")) if len(ids) > 1 else 0
        assert int(counts[start: start + len(ids)].sum()) == expected
    manifest = json.loads((data_dir / "manifest.json").read_text())
    entry, tok = manifest["datasets"][0], manifest["tokenizers"][0]
    assert entry["val_bytes_glob"] == "fineweb_val_bytes_*.bin" and entry["text_transform"] == "lossless_caps_caseops_v1"
    assert entry["val_bytes_convention"] == "decoded"  # the default
    assert entry["stats"]["val_original_bytes"] == int(counts.sum()) == sum(
        len(d.encode()) for d in docs[:22] if d.strip())
    assert len(tok["sha256"]) == 64


def test_train_documents_are_transformed_and_have_no_sidecar(synthetic):
    data_dir, tokenizer, docs, _ = synthetic
    sp = load_sentencepiece(tokenizer)
    train = _documents(np.asarray(read_shard(data_dir / "fineweb_train_000000.bin")))
    assert [decode_caseops(sp.decode(d[1:].tolist())) for d in train] == docs[22:]
    assert not any(ord("A") <= t <= ord("Z") for d in train for t in sp.decode(d[1:].tolist()).encode())


def test_verify_and_stats_read_the_sidecars(synthetic, capsys):
    data_dir, _, docs, source = synthetic
    check = verify_dataset(data_dir, docs_path=source)
    assert check.ok, check.problems
    assert any("the decoded text of each of the 22 validation documents" in note for note in check.notes)
    # Only the token-less "   " differs from its decoded text "" (information, not a problem).
    assert [(d["document"], d["raw_minus_decoded"]) for d in check.raw_differences] == [(21, 3)]
    stats = dataset_stats(data_dir)["splits"]
    original = sum(len(d.encode()) for d in docs[:22] if d.strip())
    assert stats["val"]["bytes"] == original and stats["val"]["bytes_source"] == TARGET_BYTES_FROM_SIDECARS
    operators = sum(d.count(op) for d in docs[:22] for op in CASEOPS_OPERATORS)
    assert stats["val"]["transformed_bytes"] > original + 3 * operators  # every operator piece is 3 bytes
    assert stats["train"]["bytes"] is None and stats["train"]["transformed_bytes"] > 0
    assert cli_main(["data", "stats", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "case transform undone; the transformed text has" in out
    assert "byte sidecars: convention 'decoded': bytes of the decoded text" in out


def test_verify_catches_altered_sidecars_and_wrong_documents(synthetic, tmp_path):
    data_dir, _, docs, source = synthetic
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for path in data_dir.iterdir():
        copy_dir.joinpath(path.name).write_bytes(path.read_bytes())
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["tokenizers"][0]["model_path"] = str(data_dir.parent.parent / "tokenizers" /
                                                   Path(manifest["tokenizers"][0]["model_path"]).name)
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    sidecar = copy_dir / "fineweb_val_bytes_000000.bin"
    counts = np.array(read_shard(sidecar), dtype=np.int64)
    counts[5] += 1  # one byte too many on one token
    sidecar.unlink()
    write_shard(sidecar, counts)
    check = verify_dataset(copy_dir, docs_path=source)
    assert any("sidecars sum to" in p for p in check.problems)  # the manifest's total
    assert any("the sidecar does not sum to the UTF-8 bytes of the decoded text" in p for p in check.problems)
    wrong_docs = _write_jsonl(tmp_path / "other.jsonl", _docs(30, seed=9))
    assert any("are not the validation documents of this dataset" in p
               for p in verify_dataset(data_dir, docs_path=wrong_docs).problems)
    short_docs = _write_jsonl(tmp_path / "short.jsonl", docs[:5])
    assert any("holds 5 documents but the validation split has 22" in p
               for p in verify_dataset(data_dir, docs_path=short_docs).problems)
    sidecar.unlink()
    write_shard(sidecar, np.roll(counts, 1))  # shifted by one position: a BOS gets bytes
    assert any("does not line up" in p for p in verify_dataset(copy_dir).problems)
    sidecar.unlink()
    assert any("have no byte sidecar" in p or "lists byte sidecars" in p for p in verify_dataset(copy_dir).problems)


def _config(data_dir: Path, tokenizer: Path, vocab: int, seq_len: int, val_max_tokens: int = 0) -> Config:
    return apply_config_overrides(Config(), {
        "DATA_PATH": str(data_dir), "TOKENIZER_PATH": str(tokenizer), "VOCAB_SIZE": str(vocab),
        "TRAIN_SEQ_LEN": str(seq_len), "TRAIN_BATCH_TOKENS": str(seq_len * 8),
        "VAL_MAX_TOKENS": str(val_max_tokens)}, source="test")


def _span_ending_at_a_document(tokens: np.ndarray, low: int, high: int, min_tokens: int = 0) -> tuple[int, int]:
    """``(TRAIN_SEQ_LEN, VAL_MAX_TOKENS)`` for which the scored span (SPEC 2.8's truncation to whole
    sequences plus one token) ends exactly where a document ends, the shortest such span of at least
    ``min_tokens``: its bytes are then those of whole original documents."""
    for start in sorted(np.flatnonzero(tokens == 1).tolist() + [len(tokens)]):
        for seq_len in range(low, high):
            if start < min_tokens:
                break
            if start > seq_len and (start - 1) % seq_len == 0:
                return seq_len, start - 1
    pytest.skip("no sequence length makes the scored span end at a document boundary")


def _assert_every_evaluator_divides_by(data, vocab: int, original_bytes: int, seq_len: int, bos: int = 1):
    """Plain, sliding, score-first TTT and LoRA TTT all count exactly ``original_bytes``; the plain BPB is
    the model's summed loss / ln 2 / those bytes, computed here independently."""
    model = small_scoring_gpt(vocab)
    tokens = data.tokens
    plain = evaluate_bpb(model, tokens, seq_len=seq_len, batch_sequences=4, target_bytes=data.target_bytes, runtime=CPU)
    with torch.no_grad():
        x, y = tokens[:-1].view(-1, seq_len), tokens[1:].view(-1, seq_len)
        loss_sum = float(model(x, y, reduction="sum").double())
    assert plain.byte_count == original_bytes
    assert plain.val_bpb == pytest.approx(loss_sum / math.log(2) / original_bytes, rel=1e-5)
    sliding = evaluate_sliding_bpb(model, tokens, window=seq_len, stride=seq_len // 2, batch_windows=4,
                                   target_bytes=data.target_bytes, runtime=CPU)
    ttt_cfg = TTTConfig(ttt_enabled=True, ttt_chunk_tokens=4 * seq_len, ttt_epochs=1, ttt_batch_seqs=2)
    ttt = evaluate_ttt_bpb(copy.deepcopy(model), tokens, ttt_cfg, window=seq_len, stride=seq_len, batch_windows=4,
                           target_bytes=data.target_bytes, runtime=CPU)
    lora_cfg = dataclasses.replace(ttt_cfg, ttt_mode="lora", ttt_lora_chunk_tokens=min(64, seq_len),
                                   ttt_lora_batch_docs=4)
    lora = evaluate_lora_ttt_bpb(copy.deepcopy(model), tokens, lora_cfg, window=seq_len, bos_id=bos,
                                 target_bytes=data.target_bytes, runtime=CPU)
    assert sliding.byte_count == ttt.byte_count == lora.byte_count == original_bytes
    assert sliding.token_count == ttt.token_count == lora.token_count == tokens.numel() - 1


def test_every_evaluator_divides_by_the_original_bytes(synthetic):
    data_dir, tokenizer, docs, _ = synthetic
    tokens = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    seq_len, val_max_tokens = _span_ending_at_a_document(tokens, 16, 200, min_tokens=len(tokens) // 2)
    data = prepare_validation_data(_config(data_dir, tokenizer, 400, seq_len, val_max_tokens))
    assert data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS
    kept = _documents(data.tokens.numpy())
    original = sum(len(d.encode()) for d, ids in zip(docs, kept) if len(ids) > 1)
    _assert_every_evaluator_divides_by(data, 400, original, seq_len)
    tables = target_bytes_from_tables(build_byte_tables(load_sentencepiece(tokenizer), 400), data.tokens)
    assert tables.total() > original  # what ignoring the sidecars would have divided by (operators charged)


def test_a_dataset_with_sidecars_is_always_scored_with_them_and_never_without(synthetic, tmp_path):
    data_dir, tokenizer, _, _ = synthetic
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for path in data_dir.glob("*.bin"):
        copy_dir.joinpath(path.name).write_bytes(path.read_bytes())
    cfg = _config(copy_dir, tokenizer, 400, 32)
    assert prepare_validation_data(cfg).target_bytes.source == TARGET_BYTES_FROM_SIDECARS  # no setting needed
    (copy_dir / "fineweb_val_bytes_000000.bin").rename(copy_dir / "fineweb_val_bytes_000001.bin")
    with pytest.raises(DataError, match="have no byte sidecar"):
        prepare_validation_data(cfg)
    (copy_dir / "fineweb_val_bytes_000001.bin").unlink()
    with pytest.raises(DataError, match="is a CaseOps tokenizer .* have no byte sidecars"):
        prepare_validation_data(cfg)
    counts = np.array(read_shard(data_dir / "fineweb_val_bytes_000000.bin"))
    write_shard(copy_dir / "fineweb_val_bytes_000000.bin", np.roll(counts, 1))
    with pytest.raises(DataError, match="is a BOS .* not 0"):
        prepare_validation_data(cfg)
    (copy_dir / "fineweb_val_bytes_000000.bin").unlink()
    write_shard(copy_dir / "fineweb_val_bytes_000000.bin", counts[:-1])
    with pytest.raises(DataError, match="one count per token"):
        prepare_validation_data(cfg)


def test_pgolf_check_byte_audit_uses_the_sidecars(synthetic):
    data_dir, tokenizer, _, _ = synthetic
    data = prepare_validation_data(_config(data_dir, tokenizer, 400, 32))
    sp = load_sentencepiece(tokenizer)
    tokens = data.tokens
    good = check_byte_accounting(tokens, audit_decoder(sp, data), data.target_bytes, 1)
    # The token-less document counts 0 and decodes to "", so every document audits exactly.
    assert good.passed, good.details
    assert "byte sidecars" in good.details[-1]
    tables = build_byte_tables(sp, 400)
    wrong = check_byte_accounting(tokens, audit_decoder(sp, data), tables, 1)  # sidecars ignored: operators charged
    assert not wrong.passed


# --------------------------------------------------------------------------- the real FineWeb sample


@pytest.fixture(scope="module")
def fineweb_caseops(tmp_path_factory):
    if not FINEWEB_DOCS.is_file():
        pytest.skip("../shared/data/fineweb-text-sample is not available")
    root = tmp_path_factory.mktemp("fineweb_caseops")
    lines = FINEWEB_DOCS.read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    source = root / "docs.jsonl"
    source.write_text("".join(lines), encoding="utf-8")
    result = build_dataset(lambda: iter_jsonl_documents(source), 1024, root / "out", name="sample",
                           num_val_docs=60, caseops=True)
    return Path(result["data_dir"]), Path(result["tokenizer_path"]), list(iter_jsonl_documents(source)), source


def test_fineweb_caseops_round_trips_exactly(fineweb_caseops):
    data_dir, tokenizer, docs, source = fineweb_caseops
    sp = load_sentencepiece(tokenizer)
    for split, texts in (("val", docs[:60]), ("train", docs[60:])):
        ids = np.concatenate([read_shard(p) for p in sorted(data_dir.glob(f"fineweb_{split}_0*.bin"))])
        assert [decode_caseops(sp.decode(d[1:].tolist())) for d in _documents(ids)] == texts
    assert verify_dataset(data_dir, docs_path=source).ok


def test_fineweb_caseops_bpb_is_loss_over_the_original_bytes(fineweb_caseops):
    data_dir, tokenizer, docs, _ = fineweb_caseops
    tokens = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    seq_len, val_max_tokens = _span_ending_at_a_document(tokens, 64, 512, min_tokens=8000)
    data = prepare_validation_data(_config(data_dir, tokenizer, 1024, seq_len, val_max_tokens))
    kept = len(_documents(data.tokens.numpy()))
    original = sum(len(d.encode("utf-8")) for d in docs[:kept])
    _assert_every_evaluator_divides_by(data, 1024, original, seq_len)
    sp = load_sentencepiece(tokenizer)
    assert check_byte_accounting(data.tokens, audit_decoder(sp, data), data.target_bytes, 1).passed


@pytest.fixture(scope="module")
def golden_exports(tmp_path_factory):
    """The golden sample's 300 documents as the validation split (one more document for training), built
    with the record's tokenizer in both byte conventions: {convention: data_dir}, and the docs file."""
    if not (GOLDEN / "fineweb_val_bytes_000000.bin").is_file():
        pytest.skip("../shared/data/caseops-sample is not available")
    root = tmp_path_factory.mktemp("golden")
    docs = list(iter_jsonl_documents(GOLDEN / "docs.jsonl"))
    assert len(docs) == 300
    source = _write_jsonl(root / "docs.jsonl", docs + ["One Training document."])
    tokenizer = GOLDEN / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    exports = {}
    for convention in ("decoded", "original"):
        result = build_dataset(lambda: iter_jsonl_documents(source), 8192, root / convention, name="golden",
                               tokenizer_path=tokenizer, num_val_docs=300, caseops=True, caseops_bytes=convention)
        exports[convention] = Path(result["data_dir"])
    return exports, source


def test_decoded_build_reproduces_the_records_files_byte_for_byte(golden_exports):
    """With the default convention pgolf's export IS the record's: the token shard and the sidecar file
    are byte-identical to the published ones."""
    exports, _ = golden_exports
    decoded = exports["decoded"]
    assert json.loads((decoded / "manifest.json").read_text())["datasets"][0]["val_bytes_convention"] == "decoded"
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"):
        assert (decoded / name).read_bytes() == (GOLDEN / name).read_bytes(), name
    assert sorted(p.name for p in decoded.glob("fineweb_val*.bin")) == ["fineweb_val_000000.bin",
                                                                        "fineweb_val_bytes_000000.bin"]


def test_original_build_differs_from_the_record_at_the_one_documented_token(golden_exports):
    """The raw-bytes convention: the same tokens, and a sidecar 3 bytes larger at the last token of
    document 233 (its raw text ends in U+FFFD, which the normaliser deletes; docs/caseops.md)."""
    exports, _ = golden_exports
    original = exports["original"]
    assert (original / "fineweb_val_000000.bin").read_bytes() == (GOLDEN / "fineweb_val_000000.bin").read_bytes()
    ours = np.asarray(read_shard(original / "fineweb_val_bytes_000000.bin"), dtype=np.int64)
    record = np.asarray(read_shard(GOLDEN / "fineweb_val_bytes_000000.bin"), dtype=np.int64)
    differ = np.flatnonzero(ours != record)
    assert differ.tolist() == [201_269] and (int(ours[201_269]), int(record[201_269])) == (5, 2)
    assert int(ours.sum()) == 839_793 and int(record.sum()) == 839_790


def test_verify_passes_on_the_golden_exports_and_names_document_233(golden_exports):
    exports, source = golden_exports
    for convention, data_dir in exports.items():
        check = verify_dataset(data_dir, docs_path=source)
        assert check.ok, (convention, check.problems)
        assert any(f"byte convention {convention!r} (named by the manifest)" in note for note in check.notes)
        # Both report the one raw document that differs from its decoded text, as information.
        assert [(d["document"], d["raw_bytes"] - d["decoded_bytes"]) for d in check.raw_differences] == [(233, 3)]
        assert "U+FFFD" in check.raw_differences[0]["how"]
    # The record's own files verify as 'decoded' (their folder has no manifest naming a convention).
    record_dir = exports["decoded"].parent / "record"
    record_dir.mkdir()
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"):
        (record_dir / name).write_bytes((GOLDEN / name).read_bytes())
    write_shard(record_dir / "fineweb_train_000000.bin", np.array([1, 300, 301], dtype=np.uint16))
    check = verify_dataset(record_dir, GOLDEN / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    assert check.ok, check.problems
    assert any("taken as the challenge's" in note for note in check.notes)


@pytest.mark.parametrize("convention", ["decoded", "original"])
def test_caseops_export_with_worker_processes_is_identical(synthetic, tmp_path, convention):
    from pgolf.data.build import export_documents_to_shards

    _, tokenizer, docs, _ = synthetic
    sp = load_sentencepiece(tokenizer)
    docs = [d.replace(" ", "  \n", 2) for d in docs]  # raw whitespace: the two conventions differ
    files = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        manifest = export_documents_to_shards(docs, sp, out, num_val_docs=30, shard_tokens=500, batch_docs=7,
                                              num_workers=workers, caseops=True, caseops_bytes=convention)
        assert manifest["datasets"][0]["val_bytes_convention"] == convention
        files[workers] = {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}
    assert files[1] == files[3]
    expected = sum(len(d.encode()) for d in docs[:30] if d.strip()) if convention == "original" else None
    assert expected is None or manifest["datasets"][0]["stats"]["val_original_bytes"] == expected
    assert sum(name.startswith("fineweb_val_bytes_") for name in files[1]) == sum(
        name.startswith("fineweb_val_0") for name in files[1]) > 1  # a sidecar for each of several shards


# ------------------------------------------------------ the two byte conventions on raw web text


def _raw_docs(count: int, seed: int = 3) -> list[str]:
    """Web-like raw text: newlines, blank lines, runs of spaces, tabs, trailing whitespace, a U+FFFD and
    an NFKC ligature (all changed by SentencePiece's normaliser); every third document is clean."""
    rng = random.Random(seed)
    docs = []
    for index in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
        if index % 3 == 0:
            docs.append(" ".join(words) + ".")  # clean: the decoded text is the raw text
            continue
        separators = [rng.choice([" ", " ", "  ", "\n", "\n\n", "\t", " \r\n"]) for _ in words]
        text = "".join(w + sep for w, sep in zip(words, separators))
        docs.append(text + rng.choice(["", "\ufffd", " ﬁn", "\n"]))
    return docs


@pytest.fixture(scope="module")
def raw_web(tmp_path_factory):
    """The same raw documents built in both conventions with one tokenizer:
    ({convention: data_dir}, tokenizer, docs, docs.jsonl)."""
    root = tmp_path_factory.mktemp("raw_web")
    docs = _raw_docs(150)
    source = _write_jsonl(root / "docs.jsonl", docs)
    decoded = build_dataset(lambda: iter_jsonl_documents(source), 400, root / "decoded", name="web", num_val_docs=40,
                            caseops=True)
    assert decoded["val_bytes_convention"] == "decoded"
    tokenizer = Path(decoded["tokenizer_path"])
    original = build_dataset(lambda: iter_jsonl_documents(source), 400, root / "original", name="web",
                             num_val_docs=40, caseops=True, caseops_bytes="original", tokenizer_path=tokenizer)
    assert original["val_bytes_convention"] == "original"
    return {"decoded": Path(decoded["data_dir"]), "original": Path(original["data_dir"])}, tokenizer, docs, source


def _val_documents_with_counts(data_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    tokens = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"), dtype=np.int64)
    counts = np.asarray(read_shard(data_dir / "fineweb_val_bytes_000000.bin"), dtype=np.int64)
    starts = np.flatnonzero(tokens == 1).tolist() + [len(tokens)]
    return [(tokens[b:e], counts[b:e]) for b, e in zip(starts[:-1], starts[1:])]


def test_raw_documents_count_their_decoded_or_raw_bytes(raw_web):
    exports, tokenizer, docs, _ = raw_web
    sp = load_sentencepiece(tokenizer)
    decoded_docs, original_docs = _val_documents_with_counts(exports["decoded"]), _val_documents_with_counts(
        exports["original"])
    assert len(decoded_docs) == len(original_docs) == 40
    differing = 0
    for index, ((ids, decoded_counts), (same_ids, original_counts)) in enumerate(zip(decoded_docs, original_docs)):
        assert np.array_equal(ids, same_ids)  # the convention changes the sidecar only
        decoded_text = decode_caseops(sp.decode(ids[1:].tolist()))
        assert int(decoded_counts.sum()) == len(decoded_text.encode("utf-8")), index
        assert int(original_counts.sum()) == len(docs[index].encode("utf-8")), index
        if len(docs[index].encode("utf-8")) != len(decoded_text.encode("utf-8")):
            assert int(original_counts.sum()) > int(decoded_counts.sum()), index  # the normaliser removed bytes
            differing += 1
        if docs[index] == decoded_text:
            assert np.array_equal(decoded_counts, original_counts), index
    assert differing >= 20  # two thirds of the documents are raw web text


def test_the_manifest_records_the_convention_and_stats_print_it(raw_web, capsys):
    exports, _, docs, _ = raw_web
    for convention, data_dir in exports.items():
        entry = json.loads((data_dir / "manifest.json").read_text())["datasets"][0]
        assert entry["val_bytes_convention"] == convention
        assert dataset_byte_convention(data_dir) == (convention, True)
        stats = dataset_stats(data_dir)
        assert (stats["val_bytes_convention"], stats["val_bytes_convention_named"]) == (convention, True)
        assert stats["splits"]["val"]["bytes"] + int(read_shard(data_dir / "fineweb_val_bytes_000000.bin")[0]) == \
            entry["stats"]["val_original_bytes"]
        assert cli_main(["data", "stats", str(data_dir)]) == 0
        assert f"byte sidecars: convention {convention!r}" in capsys.readouterr().out
    assert json.loads((exports["original"] / "manifest.json").read_text())["datasets"][0]["stats"][
        "val_original_bytes"] == sum(len(d.encode("utf-8")) for d in docs[:40])
    assert dataset_stats(exports["original"])["splits"]["val"]["bytes"] > dataset_stats(
        exports["decoded"])["splits"]["val"]["bytes"]


def test_an_unknown_convention_is_a_clear_error(raw_web, tmp_path, capsys):
    _, tokenizer, _, source = raw_web
    with pytest.raises(DataError, match=r"unknown CaseOps byte convention 'raw': use 'decoded' .* or 'original'"):
        build_dataset(lambda: iter_jsonl_documents(source), 400, tmp_path / "a", caseops=True, caseops_bytes="raw",
                      tokenizer_path=tokenizer, num_val_docs=10)
    assert not (tmp_path / "a").exists()  # refused before any work
    base = ["data", "build", "--docs", str(source), "--vocab-size", "400", "--tokenizer", str(tokenizer),
            "--num-val-docs", "10", "--out", str(tmp_path / "b")]
    assert cli_main(base + ["--caseops", "--caseops-bytes", "exact"]) == 2
    assert "unknown CaseOps byte convention 'exact'" in capsys.readouterr().err
    assert cli_main(base + ["--caseops-bytes", "original"]) == 2  # without --caseops
    assert "applies only to CaseOps datasets; add --caseops" in capsys.readouterr().err
    assert cli_main(base + ["--caseops", "--caseops-bytes", "original", "--workers", "1"]) == 0
    assert "byte convention 'original'" in capsys.readouterr().out
    built = tmp_path / "b" / "datasets" / "docs_sp400_caseops"
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["datasets"][0]["val_bytes_convention"] = "exact"  # an altered manifest
    (built / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="val_bytes_convention is 'exact', not one of 'decoded', 'original'"):
        dataset_byte_convention(built)
    assert any("val_bytes_convention is 'exact'" in p for p in verify_dataset(built).problems)


def test_verify_checks_each_convention_by_its_own_rule(raw_web, tmp_path):
    exports, tokenizer, docs, source = raw_web
    decoded = verify_dataset(exports["decoded"], docs_path=source)
    assert decoded.ok, decoded.problems
    assert any("the decoded text of each of the 40 validation documents (the 'decoded' rule)" in n
               for n in decoded.notes)
    raw_minus_decoded = {d["document"]: d["raw_minus_decoded"] for d in decoded.raw_differences}
    assert sum(v > 0 for v in raw_minus_decoded.values()) >= 20 and min(raw_minus_decoded.values()) >= 0
    sp = load_sentencepiece(tokenizer)
    for index, (ids, _) in enumerate(_val_documents_with_counts(exports["decoded"])):
        decoded_text = decode_caseops(sp.decode(ids[1:].tolist()))
        expected = len(docs[index].encode("utf-8")) - len(decoded_text.encode("utf-8"))
        assert raw_minus_decoded.get(index, 0) == expected, index
    assert "whitespace collapsed or stripped" in decoded.raw_differences[0]["how"]
    assert any("information, not a problem" in n for n in decoded.notes)
    original = verify_dataset(exports["original"], docs_path=source)
    assert original.ok, original.problems
    assert any("sum to the UTF-8 bytes of each of the 40 raw documents" in n for n in original.notes)
    assert original.raw_differences == decoded.raw_differences
    assert verify_dataset(exports["decoded"]).ok
    without_docs = verify_dataset(exports["original"])
    assert without_docs.ok and any("pass --docs FILE.jsonl" in n for n in without_docs.notes)
    # A sidecar checked by the other convention's rule fails: the manifest decides which rule applies.
    for convention, other in (("decoded", "original"), ("original", "decoded")):
        copy_dir = tmp_path / convention
        copy_dir.mkdir()
        for path in exports[convention].glob("*.bin"):
            (copy_dir / path.name).write_bytes(path.read_bytes())
        manifest = json.loads((exports[convention] / "manifest.json").read_text())
        manifest["datasets"][0]["val_bytes_convention"] = other
        manifest["tokenizers"][0]["model_path"] = str(tokenizer)
        (copy_dir / "manifest.json").write_text(json.dumps(manifest))
        assert not verify_dataset(copy_dir, docs_path=source).ok, convention
    # A dataset built by an earlier pgolf (raw bytes, no field in its manifest) is checked as 'decoded'
    # and fails with a hint.
    del manifest["datasets"][0]["val_bytes_convention"]
    (tmp_path / "original" / "manifest.json").write_text(json.dumps(manifest))
    legacy = verify_dataset(tmp_path / "original")
    assert any("before --caseops-bytes existed" in p for p in legacy.problems)


def test_bpb_on_decoded_data_is_the_loss_over_the_decoded_text(raw_web):
    exports, tokenizer, _, _ = raw_web
    sp = load_sentencepiece(tokenizer)
    data_dir = exports["decoded"]
    tokens = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    seq_len, val_max_tokens = _span_ending_at_a_document(tokens, 16, 200, min_tokens=len(tokens) // 2)
    data = prepare_validation_data(_config(data_dir, tokenizer, 400, seq_len, val_max_tokens))
    assert data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS
    # The decoded text of every scored document, independently: SentencePiece's decode, then the inverse
    # transform; its UTF-8 bytes are what the challenge divides by.
    decoded_bytes = sum(len(decode_caseops(sp.decode(ids[1:].tolist())).encode("utf-8"))
                        for ids in _documents(data.tokens.numpy()))
    raw_bytes = sum(len(d.encode("utf-8")) for d in iter_jsonl_documents(raw_web[3]))
    assert decoded_bytes < raw_bytes
    _assert_every_evaluator_divides_by(data, 400, decoded_bytes, seq_len)
    assert audit_byte_accounting(sp, data, 1).passed


def test_the_check_byte_audit_follows_the_convention(raw_web):
    """`decoded` passes on normalised-away whitespace; `original` audits the documents its counts agree
    with the decoded text on and says how many it skipped (their raw text is not at hand)."""
    exports, tokenizer, docs, _ = raw_web
    sp = load_sentencepiece(tokenizer)
    decoded = audit_byte_accounting(sp, prepare_validation_data(_config(exports["decoded"], tokenizer, 400, 32)), 1)
    assert decoded.passed and decoded.applicable, decoded.details
    assert decoded.details[-1] == "byte convention 'decoded' (the dataset's manifest)"
    assert "skipped" not in " ".join(decoded.details)
    data = prepare_validation_data(_config(exports["original"], tokenizer, 400, 32))
    original = audit_byte_accounting(sp, data, 1)
    assert original.passed and original.applicable, original.details
    assert original.details[-1] == "byte convention 'original' (the dataset's manifest)"
    audited = int(original.details[-3].split()[0])
    skipped = int(original.details[-2].split()[0])
    assert audited >= 5 and skipped >= 10 and "only the raw documents can confirm" in original.details[-2]
    # Without the skip rule (the 'decoded' rule) those raw-byte documents would fail the audit.
    assert not check_byte_accounting(data.tokens, audit_decoder(sp, data), data.target_bytes, 1).passed
