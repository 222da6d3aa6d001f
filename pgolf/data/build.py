"""Train a SentencePiece tokenizer and export documents to challenge shards (SPEC 1.3, 1.4).

The challenge's recipe: a BPE tokenizer with byte fallback trained on the documents' text, then every
document becomes ``[BOS] + encode(text)`` (no EOS), the first ``num_val_docs`` documents go to the
validation split and the rest to training, packed into fixed-size shards that never mix the splits.

With CaseOps (SPEC 5.10) every document is transformed with ``encode_caseops`` first, the tokenizer is
trained on the transformed text with the four operators as ``user_defined_symbols`` (ids 4..7), and every
validation shard gets a byte sidecar ``fineweb_val_bytes_%06d.bin``: the UTF-8 bytes of each token with
the case transform undone (BOS 0), by the byte convention the caller picks
(``pgolf.data.caseops.encode_caseops_document``): ``decoded`` (the default, the challenge's: a document's
counts sum to the bytes of its decoded text) or ``original`` (they sum to the raw document's bytes). The
manifest records the convention (``val_bytes_convention``) and the tokenizer's sha256, which runs check
before scoring.
"""

import io
import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pgolf.data.caseops import (CASEOPS_BYTE_CONVENTION_KEY, CASEOPS_DEFAULT_BYTE_CONVENTION, CASEOPS_OPERATORS,
                                CASEOPS_TRANSFORM_NAME, build_caseops_piece_bytes, encode_caseops,
                                encode_caseops_document, require_caseops_byte_convention)
from pgolf.data.shards import SHARD_GLOBS, SHARD_MAX_TOKEN_ID, SHARD_MAX_TOKENS, write_shard
from pgolf.data.tokenizer_match import DATASET_MANIFEST_NAME, file_sha256
from pgolf.data.val_bytes import VAL_SIDECAR_GLOB, VAL_SIDECAR_PREFIX
from pgolf.errors import DataError
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.log import ProgressBar

# SentencePiece records its trainer's thread count inside the .model file, so the count must not follow
# the machine or --workers: the same text would give tokenizers with different sha256 fingerprints, and a
# dataset rebuilt elsewhere would fail `pgolf data verify` against its own tokenizer. The pieces and scores
# are the same for any count (checked for 1, 2 and 8 threads).
TOKENIZER_TRAINER_THREADS = 8
SENTENCEPIECE_TRAINER_SETTINGS = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# SentencePiece silently skips training sentences longer than max_sentence_length (default 4192
# bytes), which would drop most long web documents. 16 MiB keeps every realistic document; anything
# longer is reported with a warning rather than dropped silently.
TOKENIZER_MAX_SENTENCE_BYTES = 1 << 24
EXPORT_MANIFEST_NAME = DATASET_MANIFEST_NAME
# A CaseOps tokenizer: the four operators are pieces of their own (SPEC 5.10).
CASEOPS_TRAINER_OVERRIDES = {"user_defined_symbols": list(CASEOPS_OPERATORS)}
EXPORT_MANIFEST_VERSION = 1
EXPORT_ENCODE_BATCH_DOCS = 256


def clean_tokenizer_training_texts(texts: Iterable[str], too_long: list[int]) -> Iterator[str]:
    """Training text as the challenge prepares it: NUL -> space, stripped, empty documents skipped.

    Appends the byte length of each document over the sentence limit to ``too_long``.
    """
    for text in texts:
        cleaned = text.replace("\x00", " ").strip()
        if not cleaned:
            continue
        size = len(cleaned.encode("utf-8"))
        if size > TOKENIZER_MAX_SENTENCE_BYTES:
            too_long.append(size)
        yield cleaned


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_prefix: str | os.PathLike,
    *,
    overrides: dict | None = None,
) -> Path:
    """Train a BPE tokenizer with the challenge's settings; write ``<prefix>.model`` and ``.vocab``.

    Deterministic: the same texts, vocab size and overrides give a byte-identical model on any machine
    (:data:`TOKENIZER_TRAINER_THREADS`). Returns the ``.model`` path. Refuses to overwrite existing files.
    """
    model_path = Path(f"{model_prefix}.model")
    vocab_path = Path(f"{model_prefix}.vocab")
    for path in (model_path, vocab_path):
        if path.exists():
            raise DataError(f"{path} already exists; refusing to overwrite a tokenizer. Choose another model prefix.")
    too_long: list[int] = []
    settings = dict(SENTENCEPIECE_TRAINER_SETTINGS, vocab_size=vocab_size, num_threads=TOKENIZER_TRAINER_THREADS,
                    max_sentence_length=TOKENIZER_MAX_SENTENCE_BYTES, minloglevel=2)
    settings.update(overrides or {})
    model_bytes = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=clean_tokenizer_training_texts(texts, too_long), model_writer=model_bytes, **settings
        )
    except RuntimeError as exc:
        raise DataError(
            f"SentencePiece training for {model_path} failed: {exc}. Check vocab_size={vocab_size} (it must exceed "
            "the 256 byte pieces, 4 special pieces and every required character) and that the texts are not empty."
        ) from exc
    if too_long:
        warnings.warn(f"{len(too_long)} documents longer than {TOKENIZER_MAX_SENTENCE_BYTES} bytes were skipped by "
                      "SentencePiece while training the tokenizer.", stacklevel=2)
    processor = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    write_bytes_atomic(model_path, model_bytes.getvalue())
    write_text_atomic(vocab_path, format_sentencepiece_vocab(processor))
    return model_path


def format_sentencepiece_vocab(sp: spm.SentencePieceProcessor) -> str:
    """The ``.vocab`` text SentencePiece writes itself: ``piece<TAB>score`` per line, C++ number format."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


class _ShardWriter:
    """Packs one split's documents into fixed-size shards named ``fineweb_<split>_%06d.bin``.

    Pending tokens are kept as a list of pieces rather than a preallocated ``shard_tokens`` buffer, so a
    small export does not reserve 200 MB per split. With ``sidecars`` every shard gets a byte sidecar
    ``fineweb_val_bytes_%06d.bin`` cut at the same positions (one count per token).
    """

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, written: list[Path], *, sidecars: bool = False):
        self.out_dir, self.split, self.shard_tokens, self.written = out_dir, split, shard_tokens, written
        self.sidecars = sidecars
        self.pending: list[np.ndarray] = []
        self.pending_counts: list[np.ndarray] = []
        self.filled = 0
        self.num_files = 0
        self.num_tokens = 0
        self.num_docs = 0
        self.counted_bytes = 0

    def add_document(self, tokens: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.num_docs += 1
        if self.sidecars:
            if counts is None or len(counts) != len(tokens):
                raise DataError(f"document {self.num_docs} of the {self.split} split has no byte count per token.")
            self.counted_bytes += int(counts.sum())
        start = 0
        while start < len(tokens):
            count = min(len(tokens) - start, self.shard_tokens - self.filled)
            self.pending.append(tokens[start : start + count])
            if self.sidecars:
                self.pending_counts.append(counts[start : start + count])
            self.filled += count
            start += count
            if self.filled == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.filled == 0:
            return
        path = self.out_dir / f"fineweb_{self.split}_{self.num_files:06d}.bin"
        write_shard(path, np.concatenate(self.pending))
        self.written.append(path)
        if self.sidecars:
            sidecar = self.out_dir / f"{VAL_SIDECAR_PREFIX}{self.num_files:06d}.bin"
            write_shard(sidecar, np.concatenate(self.pending_counts))
            self.written.append(sidecar)
        self.num_files += 1
        self.num_tokens += self.filled
        self.pending, self.pending_counts, self.filled = [], [], 0


def _numbered_batches(docs: Iterable[str], batch_docs: int) -> Iterator[tuple[int, list[str]]]:
    """``(index of the batch's first document, texts)``, ``batch_docs`` documents at a time."""
    batch: list[str] = []
    first = 0
    for text in docs:
        batch.append(text)
        if len(batch) == batch_docs:
            yield first, batch
            first, batch = first + len(batch), []
    if batch:
        yield first, batch


@dataclass(frozen=True)
class DocumentEncoding:
    """How documents become shard tokens: plain ``[BOS] + encode(text)``, or CaseOps (the text
    transformed first, and byte counts by ``byte_convention`` for the first ``sidecar_docs`` documents)."""

    caseops: bool = False
    sidecar_docs: int = 0
    byte_convention: str = CASEOPS_DEFAULT_BYTE_CONVENTION


def _encode_document_batch(sp: spm.SentencePieceProcessor, encoding: DocumentEncoding, first: int,
                           texts: list[str], table=None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(uint16 ids [BOS] + encode(text), byte counts or None)`` for each document of a batch."""
    bos = sp.bos_id()
    if not encoding.caseops:
        return [(np.array([bos, *ids], dtype=np.uint16), None) for ids in sp.encode(texts)]
    num_val = min(max(encoding.sidecar_docs - first, 0), len(texts))
    out = []
    for index, text in enumerate(texts[:num_val], first):
        ids, counts = encode_caseops_document(text, sp, table, byte_convention=encoding.byte_convention)
        if max(counts) > SHARD_MAX_TOKEN_ID:
            raise DataError(f"document {index}: one token stands for {max(counts)} original bytes, more than a "
                            f"byte sidecar entry holds ({SHARD_MAX_TOKEN_ID}); shorten the document's runs of "
                            "characters the tokenizer's normaliser removes.")
        out.append((np.array(ids, dtype=np.uint16), np.array(counts, dtype=np.uint16)))
    transformed = [encode_caseops(text) for text in texts[num_val:]]
    return out + [(np.array([bos, *ids], dtype=np.uint16), None) for ids in sp.encode(transformed)]


# The tokenizer (and CaseOps byte tables) of an encoding worker process, set once by its initializer.
_export_worker_state: tuple | None = None


def _export_worker_start(model_proto: bytes, encoding: DocumentEncoding) -> None:
    global _export_worker_state
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    _export_worker_state = (sp, encoding, build_caseops_piece_bytes(sp) if encoding.caseops else None)


def _export_worker_encode(job: tuple[int, list[str]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    sp, encoding, table = _export_worker_state
    return _encode_document_batch(sp, encoding, job[0], job[1], table)


def _encode_document_batches(
    docs: Iterable[str], sp: spm.SentencePieceProcessor, batch_docs: int, num_workers: int,
    encoding: DocumentEncoding = DocumentEncoding(),
) -> Iterator[list[tuple[np.ndarray, np.ndarray | None]]]:
    """Yield lists of per-document ``(uint16 ids, byte counts or None)``, ``batch_docs`` at a time, in order.

    With ``num_workers > 1`` the batches are encoded by that many processes (SentencePiece's own
    threads barely scale, because building the Python id lists holds the GIL); ``imap`` keeps the
    input order, so the output is identical to the single-process one.
    """
    if num_workers <= 1:
        table = build_caseops_piece_bytes(sp) if encoding.caseops else None
        for first, texts in _numbered_batches(docs, batch_docs):
            yield _encode_document_batch(sp, encoding, first, texts, table)
        return
    # "fork" starts workers in milliseconds (spawn re-imports the caller, torch included, for seconds);
    # the workers only run SentencePiece and NumPy. Elsewhere (macOS, Windows) spawn is the safe default.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods and os.name == "posix" and
                                          os.uname().sysname == "Linux" else "spawn")
    with context.Pool(num_workers, initializer=_export_worker_start,
                      initargs=(sp.serialized_model_proto(), encoding)) as pool:
        yield from pool.imap(_export_worker_encode, _numbered_batches(docs, batch_docs), chunksize=1)


def refuse_existing_export(out_dir: Path) -> None:
    """DataError when ``out_dir`` already holds shards, sidecars or a manifest: exports never overwrite."""
    existing = [p for pattern in SHARD_GLOBS.values() for p in out_dir.glob(pattern)]
    if (out_dir / EXPORT_MANIFEST_NAME).exists():
        existing.append(out_dir / EXPORT_MANIFEST_NAME)
    if existing:
        raise DataError(
            f"{out_dir} already holds an export ({existing[0].name} and {len(existing) - 1} more); refusing to "
            "overwrite shards. Choose an empty output directory or delete the old export."
        )


def export_documents_to_shards(
    docs: Iterable[str],
    sp: spm.SentencePieceProcessor,
    out_dir: str | os.PathLike,
    *,
    num_val_docs: int,
    shard_tokens: int = 10**8,
    tokenizer_path: str | os.PathLike | None = None,
    num_workers: int = 1,
    batch_docs: int = EXPORT_ENCODE_BATCH_DOCS,
    caseops: bool = False,
    caseops_bytes: str = CASEOPS_DEFAULT_BYTE_CONVENTION,
) -> dict:
    """Tokenize ``docs`` into validation then training shards in ``out_dir`` and write ``manifest.json``.

    The first ``num_val_docs`` documents are validation, the rest training. Text is encoded as given
    (the tokenizer's normalizer does the cleaning). All or nothing: on any failure, including too few
    documents for a training split, the shards written so far are removed. ``num_workers`` processes
    encode in parallel (same output for any count). With ``caseops`` (a CaseOps tokenizer), documents
    are transformed before encoding and every validation shard gets its byte sidecar, counted by the
    byte convention ``caseops_bytes`` (``decoded``, the challenge's, or ``original``; recorded in the
    manifest). Returns the manifest (with the tokenizer's sha256 when ``tokenizer_path`` is given).
    """
    out_dir = Path(out_dir)
    if num_val_docs < 1:
        raise DataError(f"num_val_docs must be at least 1 (got {num_val_docs}); the validation split cannot be empty.")
    if not 1 <= shard_tokens <= SHARD_MAX_TOKENS:
        raise DataError(f"shard_tokens must be between 1 and {SHARD_MAX_TOKENS}, got {shard_tokens}.")
    if sp.vocab_size() > SHARD_MAX_TOKEN_ID + 1:
        raise DataError(f"tokenizer vocabulary {sp.vocab_size()} does not fit the uint16 shard format (at most 65536).")
    if caseops:
        require_caseops_byte_convention(caseops_bytes)
        build_caseops_piece_bytes(sp)  # DataError unless the operators are pieces of their own
    refuse_existing_export(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    writers = {split: _ShardWriter(out_dir, split, shard_tokens, written, sidecars=caseops and split == "val")
               for split in ("val", "train")}
    encoding = DocumentEncoding(caseops=caseops, sidecar_docs=num_val_docs if caseops else 0,
                                byte_convention=caseops_bytes)
    try:
        _write_split_shards(docs, sp, writers, num_val_docs, num_workers, batch_docs, encoding)
        if writers["train"].num_docs == 0:
            raise DataError(
                f"only {writers['val'].num_docs} documents were given but num_val_docs={num_val_docs}, leaving no "
                "training documents. Provide more documents or lower num_val_docs."
            )
        manifest = _export_manifest(out_dir, sp, writers, shard_tokens, tokenizer_path,
                                    caseops_bytes if caseops else None)
        write_text_atomic(out_dir / EXPORT_MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        for path in written:  # only files this call created
            path.unlink(missing_ok=True)
        raise
    return manifest


def _write_split_shards(docs, sp, writers, num_val_docs: int, num_workers: int, batch_docs: int,
                        encoding: DocumentEncoding) -> None:
    """Route each encoded document to its split; the val buffer is flushed before train starts."""
    docs_seen = 0
    # The total is known only for sized inputs (lists); a generator shows documents done so far.
    bar = ProgressBar("export", len(docs) if hasattr(docs, "__len__") else None)
    for batch in _encode_document_batches(docs, sp, batch_docs, num_workers, encoding):
        for tokens, counts in batch:
            if docs_seen == num_val_docs:
                writers["val"].flush()  # val and train never share a shard
            writers["val" if docs_seen < num_val_docs else "train"].add_document(tokens, counts)
            docs_seen += 1
        bar.update(docs_seen, f"{docs_seen} docs")
    bar.close()
    writers["val"].flush()
    writers["train"].flush()


def _relative_to_root(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), root.resolve())
    except ValueError:  # different drive on Windows
        return str(path)


def _export_manifest(out_dir: Path, sp, writers, shard_tokens: int, tokenizer_path,
                     caseops_bytes: str | None) -> dict:
    """The manifest in the challenge's layout (SPEC 1.3), paths relative to ``out_dir``; the tokenizer
    entry carries the ``.model`` file's sha256 (the fingerprint runs check), and a CaseOps export
    (``caseops_bytes`` is its byte convention, None for a plain export) names its transform, its sidecars
    (``val_bytes_glob``, as the record's exporter does), their byte convention (``val_bytes_convention``)
    and what they sum to (``stats.val_original_bytes``: the validation text's bytes with the case
    transform undone, by that convention)."""
    vocab_size = sp.vocab_size()
    name = f"sp_bpe_{vocab_size}"
    model_path = _relative_to_root(Path(tokenizer_path), out_dir) if tokenizer_path else None
    vocab_path = model_path[: -len(".model")] + ".vocab" if model_path and model_path.endswith(".model") else None
    bigram = math.ceil(vocab_size / 128) * 128 * 5
    common = {"vocab_size": vocab_size, "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "recommended_bigram_vocab_size": bigram}
    val, train = writers["val"], writers["train"]
    stats = {
        "docs_total": val.num_docs + train.num_docs, "docs_val": val.num_docs, "docs_train": train.num_docs,
        "files_total": val.num_files + train.num_files, "files_val": val.num_files, "files_train": train.num_files,
        "tokens_total": val.num_tokens + train.num_tokens, "tokens_val": val.num_tokens, "tokens_train": train.num_tokens,
    }
    tokenizer = {"name": name, "kind": "sentencepiece_bpe", **common, "model_path": model_path, "vocab_path": vocab_path}
    if tokenizer_path and Path(tokenizer_path).is_file():
        tokenizer["sha256"] = file_sha256(tokenizer_path)
    dataset = {"name": out_dir.name, "tokenizer_name": name, "tokenizer_kind": "sentencepiece_bpe", "path": ".",
               "train_glob": SHARD_GLOBS["train"], "val_glob": SHARD_GLOBS["val"], **common, "stats": stats}
    if caseops_bytes is not None:
        tokenizer["text_transform"] = dataset["text_transform"] = CASEOPS_TRANSFORM_NAME
        dataset["val_bytes_glob"] = VAL_SIDECAR_GLOB
        dataset[CASEOPS_BYTE_CONVENTION_KEY] = caseops_bytes
        stats["val_original_bytes"] = val.counted_bytes
    return {
        "version": EXPORT_MANIFEST_VERSION,
        "num_docs": stats["docs_total"],
        "num_val_docs": val.num_docs,
        "shuffle_seed": None,
        "shard_size": shard_tokens,
        "append_eos": False,
        "tokenizers": [tokenizer],
        "datasets": [dataset],
    }
