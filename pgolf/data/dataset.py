"""Datasets as a whole: build one from documents, count it, and verify it.

* build: documents -> a tokenizer (trained unless given) and challenge shards, laid out like the
  challenge's ``data/`` folder: ``DIR/tokenizers/fineweb_<V>_bpe.model`` and ``DIR/datasets/<name>_sp<V>/``.
* stats: per split shards, tokens, documents and the bits-per-byte denominator (bytes), counted the
  way the evaluator counts them, streaming the shards in chunks so an 8-GB dataset is never in memory.
* verify: every problem a dataset can have (broken shards, out-of-range ids, missing BOS, validation
  documents leaking into training, counts that disagree with the manifest), all collected in one report.

The ``pgolf data build|stats|verify`` commands (pgolf/commands/data.py) print what these return; a
training run never imports this module.
"""

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgolf.data.build import EXPORT_MANIFEST_NAME, export_documents_to_shards, train_sentencepiece_tokenizer
from pgolf.data.shards import SHARD_GLOBS, SHARD_MAX_TOKEN_ID, list_split_shards, read_shard
from pgolf.data.tokenizer import build_byte_tables, check_tokenizer_vocab, count_target_bytes, load_sentencepiece
from pgolf.errors import DataError

DATA_TOOLS_DEFAULT_NUM_VAL_DOCS = 50_000  # the challenge's validation split: the first 50,000 documents
DATA_TOOLS_CHUNK_TOKENS = 1 << 24  # 16M tokens (32 MB as uint16) per streamed chunk
DATA_TOOLS_DEFAULT_BOS_ID = 1
DATA_TOOLS_SPLITS = ("val", "train")

# --------------------------------------------------------------------------- build


def iter_jsonl_documents(path: str | os.PathLike) -> Iterator[str]:
    """The ``"text"`` field of each JSON object (one per line) in ``path``; blank lines are skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                message = f"{path} line {line_number} is not valid JSON ({exc}); fix or remove that line."
                raise DataError(message) from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path} line {line_number} has no string "text" field; each line must be '
                                'a JSON object like {"text": "..."}.')
            yield record["text"]


def iter_text_file_documents(paths: list[str | os.PathLike]) -> Iterator[str]:
    """Each text file in ``paths`` as one document."""
    for path in paths:
        yield Path(path).read_text(encoding="utf-8")


def _dataset_dir_name(name: str, vocab_size: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"
    return f"{safe}_sp{vocab_size}"


def build_dataset(
    documents: Callable[[], Iterator[str]],
    vocab_size: int,
    out_root: str | os.PathLike,
    *,
    name: str = "dataset",
    tokenizer_path: str | os.PathLike | None = None,
    num_val_docs: int = DATA_TOOLS_DEFAULT_NUM_VAL_DOCS,
    num_workers: int = 1,
) -> dict:
    """Train (unless given) a tokenizer and export ``documents()`` as shards under ``out_root``.

    ``documents`` is called once per pass over the corpus. Returns counts, paths and per-phase
    timings (``tokenizer_seconds`` is 0 when a tokenizer was given).
    """
    out_root = Path(out_root)
    started = time.perf_counter()
    num_docs, text_bytes = 0, 0
    for text in documents():
        num_docs += 1
        text_bytes += len(text.encode("utf-8"))
    if num_docs <= num_val_docs:
        raise DataError(f"the input has {num_docs} documents but --num-val-docs is {num_val_docs}: the first "
                        f"{num_val_docs} documents are validation, so at least {num_val_docs + 1} are needed. "
                        "Give more documents or a smaller --num-val-docs.")
    count_seconds = time.perf_counter() - started
    started = time.perf_counter()
    train_tokenizer = tokenizer_path is None
    if train_tokenizer:
        model_prefix = out_root / "tokenizers" / f"fineweb_{vocab_size}_bpe"
        model_prefix.parent.mkdir(parents=True, exist_ok=True)
        tokenizer_path = train_sentencepiece_tokenizer(documents(), vocab_size, model_prefix, num_threads=num_workers)
    tokenizer_seconds = time.perf_counter() - started if train_tokenizer else 0.0
    sp = load_sentencepiece(tokenizer_path)
    check_tokenizer_vocab(sp, vocab_size, tokenizer_path)
    data_dir = out_root / "datasets" / _dataset_dir_name(name, vocab_size)
    started = time.perf_counter()
    manifest = export_documents_to_shards(documents(), sp, data_dir, num_val_docs=num_val_docs,
                                          tokenizer_path=tokenizer_path, num_workers=num_workers)
    export_seconds = time.perf_counter() - started
    return {"data_dir": str(data_dir), "tokenizer_path": str(tokenizer_path), "num_docs": num_docs,
            "text_bytes": text_bytes, "stats": manifest["datasets"][0]["stats"], "count_seconds": count_seconds,
            "tokenizer_seconds": tokenizer_seconds, "export_seconds": export_seconds}


# --------------------------------------------------------------------------- streaming shards


def iter_shard_chunks(tokens: np.ndarray, chunk_tokens: int) -> Iterator[np.ndarray]:
    """Consecutive in-memory copies of at most ``chunk_tokens`` tokens of a (memory-mapped) shard."""
    for start in range(0, len(tokens), chunk_tokens):
        yield np.array(tokens[start : start + chunk_tokens], dtype=np.int64)


def _read_manifest(data_dir: Path) -> dict | None:
    path = data_dir / EXPORT_MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); repair it or delete it.") from exc


def _manifest_dataset(manifest: dict | None) -> dict:
    datasets = (manifest or {}).get("datasets") or [{}]
    return datasets[0] if isinstance(datasets[0], dict) else {}


def find_dataset_tokenizer(data_dir: Path, manifest: dict | None) -> Path | None:
    """The manifest's tokenizer (path relative to ``data_dir``), else ``DIR/../../tokenizers/*.model``
    of the manifest's vocabulary size; None when nothing fits."""
    if manifest is None:
        return None
    for entry in manifest.get("tokenizers") or []:
        model_path = entry.get("model_path") if isinstance(entry, dict) else None
        if model_path and (data_dir / model_path).is_file():
            return (data_dir / model_path).resolve()
    vocab_size = _manifest_dataset(manifest).get("vocab_size")
    candidates = sorted((data_dir.parent.parent / "tokenizers").glob("*.model"))
    matching = [p for p in candidates if vocab_size and f"_{vocab_size}_" in p.name]
    return matching[0] if len(matching) == 1 else None


# --------------------------------------------------------------------------- stats


@dataclass
class SplitStats:
    """Counts of one split; ``target_bytes`` is None without a tokenizer."""

    shards: int = 0
    tokens: int = 0
    documents: int = 0
    target_bytes: int | None = None

    def as_dict(self) -> dict:
        targets = max(self.tokens - 1, 0)  # the split's first token is never a scored target
        per_token = self.target_bytes / targets if self.target_bytes is not None and targets else None
        return {"shards": self.shards, "tokens": self.tokens, "documents": self.documents,
                "target_tokens": targets, "bytes": self.target_bytes, "bytes_per_target_token": per_token}


def dataset_stats(data_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, *,
                  chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> dict:
    """Per-split stats of the shards in ``data_dir``; bytes are the BPB denominator (SPEC 2.8):
    targets are ``tokens[1:]`` of the split's whole stream with ``prev = tokens[:-1]``."""
    data_dir, tokenizer_path, tables, bos_id = _stats_inputs(data_dir, tokenizer_path)
    splits = {split: _split_stats(list_split_shards(data_dir, split), tables, bos_id, chunk_tokens)
              for split in DATA_TOOLS_SPLITS}
    return {"data_dir": str(data_dir), "tokenizer": str(tokenizer_path) if tokenizer_path else None,
            "bos_id": bos_id, "splits": {split: stats.as_dict() for split, stats in splits.items()}}


def dataset_split_stats(data_dir: str | os.PathLike, split: str, tokenizer_path: str | os.PathLike | None = None, *,
                        chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> dict:
    """:func:`dataset_stats` of one split only (``SplitStats.as_dict`` keys)."""
    data_dir, _, tables, bos_id = _stats_inputs(data_dir, tokenizer_path)
    return _split_stats(list_split_shards(data_dir, split), tables, bos_id, chunk_tokens).as_dict()


def _stats_inputs(data_dir, tokenizer_path):
    """The folder, the tokenizer (given or found from the manifest), its byte tables and BOS id."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; give the folder holding the .bin shards.")
    manifest = _read_manifest(data_dir)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else find_dataset_tokenizer(data_dir, manifest)
    tables, bos_id = None, int(_manifest_dataset(manifest).get("bos_id", DATA_TOOLS_DEFAULT_BOS_ID))
    if tokenizer_path is not None:
        sp = load_sentencepiece(tokenizer_path)
        tables, bos_id = build_byte_tables(sp, SHARD_MAX_TOKEN_ID + 1), sp.bos_id()
    return data_dir, tokenizer_path, tables, bos_id


def _split_stats(files: list[Path], tables, bos_id: int, chunk_tokens: int) -> SplitStats:
    stats = SplitStats(shards=len(files), target_bytes=0 if tables is not None else None)
    previous_token = None  # the split is one stream: a shard's first target follows the last shard's end
    for path in files:
        for chunk in iter_shard_chunks(read_shard(path), chunk_tokens):
            stats.tokens += len(chunk)
            stats.documents += int(np.count_nonzero(chunk == bos_id))
            if tables is not None:
                stream = chunk if previous_token is None else np.concatenate(([previous_token], chunk))
                if len(stream) > 1:
                    ids = torch.from_numpy(stream)
                    stats.target_bytes += int(count_target_bytes(tables, ids[:-1], ids[1:]).sum())
            previous_token = int(chunk[-1])
    return stats


# --------------------------------------------------------------------------- verify


@dataclass
class DatasetCheck:
    """What :func:`verify_dataset` found: ``problems`` make the dataset unusable, ``notes`` are informational."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    documents: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def iter_documents_in_stream(chunks: Iterator[np.ndarray], bos_id: int) -> Iterator[tuple[bool, np.ndarray]]:
    """``(starts_with_bos, tokens)`` for each document of a token stream split at BOS markers.

    A document may span chunks; the stream's leading tokens before the first BOS come out with
    ``starts_with_bos=False``.
    """
    pending: list[np.ndarray] = []
    pending_has_bos = False
    for chunk in chunks:
        starts = np.flatnonzero(chunk == bos_id)
        cut_points = [0, *starts.tolist(), len(chunk)]
        for index, (begin, end) in enumerate(zip(cut_points[:-1], cut_points[1:])):
            if index > 0:  # a BOS at `begin`: the previous document is complete
                if pending:
                    yield pending_has_bos, np.concatenate(pending)
                pending, pending_has_bos = [], True
            if end > begin:
                pending.append(chunk[begin:end])
    if pending:
        yield pending_has_bos, np.concatenate(pending)


def _document_digest(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(tokens.astype("<u2").tobytes(), digest_size=16).digest()


def _checked_shard_chunks(path: Path, vocab_size: int | None, check: DatasetCheck,
                          chunk_tokens: int) -> Iterator[np.ndarray]:
    """Chunks of one shard, recording header/size and token-id problems in ``check``."""
    try:
        tokens = read_shard(path)
    except DataError as error:
        check.problems.append(str(error))
        return
    for offset, chunk in zip(range(0, len(tokens), chunk_tokens), iter_shard_chunks(tokens, chunk_tokens)):
        if vocab_size is not None and (chunk >= vocab_size).any():
            position = int(np.argmax(chunk >= vocab_size))
            check.problems.append(
                f"{path}: token id {int(chunk[position])} at position {offset + position} is out of range for vocab "
                f"size {vocab_size}; the shard was exported with a different tokenizer. Re-export it with the "
                "tokenizer you train with, or pass the matching --vocab-size/--tokenizer.")
            vocab_size = None  # one report per shard is enough
        yield chunk


def _scan_split(data_dir: Path, split: str, vocab_size, bos_id: int, check: DatasetCheck, chunk_tokens: int,
                on_document: Callable[[Path, np.ndarray], None]) -> None:
    """Stream every shard of ``split`` through the shard checks and hand each complete document on."""
    files = list_split_shards(data_dir, split)
    if not files:
        check.problems.append(f"{data_dir}: no {split} shards ({SHARD_GLOBS[split]}). Export the {split} split "
                              "(pgolf data build) or point at the folder that holds it.")
    documents = tokens = 0
    for index, path in enumerate(files):
        chunks = _checked_shard_chunks(path, vocab_size, check, chunk_tokens)
        first = next(chunks, None)
        if first is None:
            continue
        if first[0] != bos_id:
            if index == 0:
                check.problems.append(f"{path}: the first {split} shard does not start with BOS (id {bos_id}), so its "
                                      "first document is cut. Re-export the split.")
            else:
                check.notes.append(f"{path}: starts mid-document (continues the previous {split} shard).")
        for has_bos, document in iter_documents_in_stream(_prepend(first, chunks), bos_id):
            tokens += len(document)
            documents += int(has_bos)
            if has_bos:
                on_document(path, document)
    check.documents[split], check.tokens[split] = documents, tokens


def _prepend(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def verify_dataset(data_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                   vocab_size: int | None = None, *, chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> DatasetCheck:
    """Check every shard of ``data_dir`` and the split's integrity; collects all problems, raises nothing
    for a broken dataset (only for a missing directory or unreadable tokenizer/manifest).

    Documents are split per shard: the continuation of a document that spans two shards is not
    hashed, which can only miss a leak of such a document, never report a false one.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; give the folder holding the .bin shards.")
    check = DatasetCheck()
    manifest = _read_manifest(data_dir)
    dataset_entry = _manifest_dataset(manifest)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else find_dataset_tokenizer(data_dir, manifest)
    bos_id = int(dataset_entry.get("bos_id", DATA_TOOLS_DEFAULT_BOS_ID))
    if tokenizer_path is not None:
        sp = load_sentencepiece(tokenizer_path)
        bos_id = sp.bos_id()
        vocab_size = vocab_size or sp.vocab_size()
    vocab_size = vocab_size or dataset_entry.get("vocab_size")
    if vocab_size is None:
        check.notes.append("no --vocab-size, tokenizer or manifest: token ids were not range-checked.")
    val_digests: dict[bytes, Path] = {}
    _scan_split(data_dir, "val", vocab_size, bos_id, check, chunk_tokens,
                lambda path, doc: val_digests.setdefault(_document_digest(doc), path))
    leaks: list[str] = []

    def find_leak(path: Path, document: np.ndarray) -> None:
        source = val_digests.get(_document_digest(document))
        if source is not None:
            leaks.append(f"{path}: a training document ({len(document)} tokens) is identical to a validation document "
                         f"in {source.name}; validation text leaked into training. Remove it and re-export.")

    _scan_split(data_dir, "train", vocab_size, bos_id, check, chunk_tokens, find_leak)
    check.problems += leaks
    _compare_with_manifest(data_dir, manifest, check)
    return check


def _compare_with_manifest(data_dir: Path, manifest: dict | None, check: DatasetCheck) -> None:
    if manifest is None:
        check.notes.append(f"{data_dir}: no {EXPORT_MANIFEST_NAME}; document counts were not cross-checked.")
        return
    stats = _manifest_dataset(manifest).get("stats") or {}
    expected = {("documents", "val"): manifest.get("num_val_docs", stats.get("docs_val")),
                ("documents", "train"): stats.get("docs_train"),
                ("tokens", "val"): stats.get("tokens_val"), ("tokens", "train"): stats.get("tokens_train")}
    for (what, split), value in expected.items():
        found = getattr(check, what).get(split)
        if value is not None and found is not None and int(value) != found:
            check.problems.append(f"{data_dir / EXPORT_MANIFEST_NAME}: says {value} {split} {what} but the shards hold "
                                  f"{found}; shards are missing, extra or altered. Re-export the dataset.")
