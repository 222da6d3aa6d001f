"""Byte tables (SPEC 2.8) checked against SentencePiece's own decode, id by id and on real text.

Bits per byte is only as right as these byte counts. The reference here is the UTF-8 length of the
decoded text: appending token t after a token p must grow the decoded text by exactly
``count_target_bytes(p, t)`` bytes, and a whole document ``[BOS] + encode(text)`` must count exactly
``len(text.encode("utf-8"))`` bytes.
"""

import json
import random
from pathlib import Path

import pytest
import torch

from pgolf.data.build import train_sentencepiece_tokenizer
from pgolf.data.tokenizer import (
    ByteTables,
    build_byte_tables,
    check_tokenizer_vocab,
    count_target_bytes,
    load_sentencepiece,
)
from pgolf.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OFFICIAL_TOKENIZERS = ["fineweb_1024_bpe.model", "fineweb_8192_bpe.model"]
BOS = 1


def _synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """English-like text with digits, accents, CJK and emoji, so byte fallback is exercised."""
    rng = random.Random(seed)
    words = ("the of and to in is was for that with on by at from this it be are or they we not but all "
             "can has one two three data model token learning small language golf café naïve résumé 12345 "
             "2024 3.14 (x) \"quoted\" e-mail, end. Zürich").split()
    rare = ["東京", "日本語", "Привет", "🙂", "Ωμέγα", "ﬁ", "①", "\u00a0", "é"]  # some NFKC-normalised
    texts = []
    for _ in range(count):
        pieces = [rng.choice(words) for _ in range(rng.randint(3, 40))]
        if rng.random() < 0.3:
            pieces.insert(rng.randrange(len(pieces)), rng.choice(rare))
        texts.append(" ".join(pieces))
    return texts


@pytest.fixture(scope="module")
def tiny_sp(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    model_path = train_sentencepiece_tokenizer(_synthetic_texts(1500), 320, prefix)
    return load_sentencepiece(model_path)


@pytest.fixture(scope="module", params=OFFICIAL_TOKENIZERS)
def official_sp(request):
    path = SHARED_DATA / "parameter-golf-tokenizers" / request.param
    if not path.is_file():
        pytest.skip("shared/data is absent")
    return load_sentencepiece(path)


def _normal_prev_ids(sp) -> list[int]:
    """Previous tokens that are ordinary text: one without and one with a leading space."""
    candidates = [i for i in range(sp.vocab_size()) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    plain = next(i for i in candidates if sp.id_to_piece(i).isalpha())
    spaced = next(i for i in candidates if sp.id_to_piece(i).startswith("\u2581") and len(sp.id_to_piece(i)) > 1)
    return [plain, spaced]


def _utf8_len(sp, ids) -> int:
    return len(sp.decode(ids).encode("utf-8"))


def _count(tables, prev: int, target: int) -> int:
    return int(count_target_bytes(tables, torch.tensor([prev]), torch.tensor([target]))[0])


def _assert_every_id_matches_decode(sp):
    """For every id that decodes to text on its own: decode growth == table count, after text and BOS."""
    tables = build_byte_tables(sp, sp.vocab_size())
    prev_ids = _normal_prev_ids(sp)
    checked = 0
    for token_id in range(sp.vocab_size()):
        if sp.is_control(token_id) or sp.is_unknown(token_id):
            continue
        if sp.is_byte(token_id) and token_id - 4 >= 0x80:
            continue  # a lone non-ASCII byte is not valid UTF-8; see the byte-sequence test
        for prev in prev_ids:
            grown = _utf8_len(sp, [prev, token_id]) - _utf8_len(sp, [prev])
            assert grown == _count(tables, prev, token_id), (token_id, sp.id_to_piece(token_id), prev)
        # After BOS the leading space is not decoded and not charged.
        assert _utf8_len(sp, [BOS, token_id]) == _count(tables, BOS, token_id), (token_id, sp.id_to_piece(token_id))
        checked += 1
    return checked


def _valid_utf8_chars_covering_all_bytes() -> list[str]:
    """Characters whose UTF-8 encodings use every lead byte C2..F4 and every continuation byte 80..BF."""
    chars = [chr(cp) for cp in range(0x80, 0x800, 0x40)]  # 2-byte: leads C2..DF
    chars += [chr(cp) for cp in [0x800] + [k << 12 for k in range(1, 16)]]  # 3-byte: leads E0..EF
    chars += [chr(0xE000 + cont) for cont in range(0x40)]  # every continuation byte 80..BF
    chars += [chr(cp) for cp in (0x10000, 0x40000, 0x80000, 0xC0000, 0x100000, 0x10FFFF)]  # 4-byte: F0..F4
    return chars


def _assert_byte_fallback_sequences_match_decode(sp):
    tables = build_byte_tables(sp, sp.vocab_size())
    byte_id = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    assert all(sp.is_byte(i) for i in byte_id.values())
    assert all(_count(tables, 1, i) == 1 for i in byte_id.values())
    seen = set()
    for prev in _normal_prev_ids(sp) + [BOS]:
        for char in _valid_utf8_chars_covering_all_bytes():
            encoded = char.encode("utf-8")
            seen.update(encoded)
            ids = [prev] + [byte_id[b] for b in encoded]
            counted = int(count_target_bytes(tables, torch.tensor(ids[:-1]), torch.tensor(ids[1:])).sum())
            assert sp.decode(ids).endswith(char)
            assert _utf8_len(sp, ids) - _utf8_len(sp, [prev]) == counted == len(encoded)
    assert seen >= set(range(0x80, 0xC0)) | set(range(0xC2, 0xF5))


def _assert_document_bytes(sp, tables, text: str, expected_bytes: int):
    ids = torch.tensor([BOS] + sp.encode(text))
    counted = int(count_target_bytes(tables, ids[:-1], ids[1:]).sum())
    assert counted == expected_bytes, text[:80]


def test_tiny_tokenizer_every_id_matches_decode(tiny_sp):
    assert _assert_every_id_matches_decode(tiny_sp) > 50


def test_tiny_tokenizer_byte_fallback_sequences(tiny_sp):
    _assert_byte_fallback_sequences_match_decode(tiny_sp)


def test_tiny_tokenizer_documents(tiny_sp):
    tables = build_byte_tables(tiny_sp, tiny_sp.vocab_size())
    fallback_used = False
    for text in _synthetic_texts(300, seed=1):
        ids = tiny_sp.encode(text)
        fallback_used |= any(tiny_sp.is_byte(i) for i in ids)
        # The normaliser may change the text (NFKC, spaces), so the truth is the decoded text.
        _assert_document_bytes(tiny_sp, tables, text, len(tiny_sp.decode(ids).encode("utf-8")))
    assert fallback_used


def test_special_ids_and_padding_to_model_vocab(tiny_sp):
    sp_vocab = tiny_sp.vocab_size()
    tables = build_byte_tables(tiny_sp, sp_vocab + 8)
    assert tables.base_bytes.shape == tables.has_leading_space.shape == tables.is_boundary.shape == (sp_vocab + 8,)
    for special in [0, 1, 2, 3] + list(range(sp_vocab, sp_vocab + 8)):
        assert tables.base_bytes[special] == 0 and tables.is_boundary[special] and not tables.has_leading_space[special]
    plain, space_piece = _normal_prev_ids(tiny_sp)
    text_bytes = len(tiny_sp.id_to_piece(space_piece)[1:].encode("utf-8"))
    assert _count(tables, plain, space_piece) == text_bytes + 1
    assert _count(tables, sp_vocab + 3, space_piece) == text_bytes  # an id beyond the tokenizer is a boundary
    assert build_byte_tables(tiny_sp, 10).base_bytes.shape == (sp_vocab,)


def test_count_target_bytes_shapes_dtypes_devices(tiny_sp):
    tables = build_byte_tables(tiny_sp, tiny_sp.vocab_size())
    row = torch.tensor([1] + tiny_sp.encode("the golf data café model token"))
    ids = torch.stack([row, row.flip(0)])
    counts = count_target_bytes(tables, ids[:, :-1].int(), ids[:, 1:].int())
    assert counts.shape == ids[:, 1:].shape and counts.dtype == torch.int32
    assert tables.to("cpu") is tables and tables.to("meta").base_bytes.device.type == "meta"
    with pytest.raises(ValueError):
        count_target_bytes(tables, ids[:, :-2], ids[:, 1:])


def test_missing_space_piece_is_refused():
    class NoSpacePiece:  # a stand-in for a tokenizer that never learned a bare "▁"
        def piece_to_id(self, piece):
            return 3

        def id_to_piece(self, token_id):
            return "<unk>"

        def is_unknown(self, token_id):
            return token_id == 3

    with pytest.raises(DataError, match="standalone"):
        build_byte_tables(NoSpacePiece(), 8)


def test_load_sentencepiece_errors(tmp_path, tiny_sp):
    with pytest.raises(DataError, match="does not exist"):
        load_sentencepiece(tmp_path / "missing.model")
    vocab = tmp_path / "tok.vocab"
    vocab.write_text("a\t0\n")
    with pytest.raises(DataError, match=r"\.model"):
        load_sentencepiece(vocab)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a model")
    with pytest.raises(DataError, match="could not be loaded"):
        load_sentencepiece(corrupt)


def test_check_tokenizer_vocab(tiny_sp):
    check_tokenizer_vocab(tiny_sp, tiny_sp.vocab_size(), "tiny.model")
    with pytest.raises(DataError) as info:
        check_tokenizer_vocab(tiny_sp, 1024, "tiny.model")
    for expected in ("tiny.model", str(tiny_sp.vocab_size()), "1024", "VOCAB_SIZE"):
        assert expected in str(info.value)


def test_official_every_id_matches_decode(official_sp):
    assert _assert_every_id_matches_decode(official_sp) == official_sp.vocab_size() - 4 - 128


def test_official_byte_fallback_sequences(official_sp):
    _assert_byte_fallback_sequences_match_decode(official_sp)


def test_official_tables_on_real_fineweb_text(official_sp):
    sample = SHARED_DATA / "fineweb-text-sample" / "fineweb_val_sample_decoded.jsonl"
    if not sample.is_file():
        pytest.skip("shared/data is absent")
    with open(sample, encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(400), handle)]
    # A document cut inside a multi-byte character decodes to U+FFFD and cannot round-trip.
    texts = [row["text"] for row in rows if not row["maybe_truncated"]]
    assert len(texts) >= 398
    tables = build_byte_tables(official_sp, official_sp.vocab_size())
    for text in texts:
        _assert_document_bytes(official_sp, tables, text, len(text.encode("utf-8")))


def test_tables_are_frozen(tiny_sp):
    tables = build_byte_tables(tiny_sp, tiny_sp.vocab_size())
    assert isinstance(tables, ByteTables)
    with pytest.raises(AttributeError):
        tables.base_bytes = None
