"""Datasets as a whole: build one from documents, count it, and verify it.

* build: documents -> a tokenizer (trained unless given) and challenge shards, laid out like the
  challenge's ``data/`` folder: ``DIR/tokenizers/<name>_<V>_bpe.model`` and ``DIR/datasets/<name>_sp<V>/``
  (never ``fineweb_<V>_bpe.model``, the name of the challenge's official tokenizer).
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
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgolf.data.build import (CASEOPS_TRAINER_OVERRIDES, EXPORT_MANIFEST_NAME, export_documents_to_shards,
                              refuse_existing_export, train_sentencepiece_tokenizer)
from pgolf.data.byte_sidecars import byte_sidecar_path, find_byte_sidecars
from pgolf.data.caseops import (CASEOPS_BYTES_DECODED, CASEOPS_BYTES_ORIGINAL, CASEOPS_DEFAULT_BYTE_CONVENTION,
                                CASEOPS_OPERATORS, CASEOPS_TRANSFORM_NAME, build_caseops_piece_bytes,
                                caseops_decoded_text, encode_caseops, is_caseops_tokenizer,
                                require_caseops_byte_convention)
from pgolf.data.shards import SHARD_GLOBS, SHARD_MAX_TOKEN_ID, list_split_shards, read_shard
from pgolf.data.tokenizer import build_byte_tables, check_tokenizer_vocab, count_target_bytes, load_sentencepiece
from pgolf.data.tokenizer_match import (TOKENIZER_SAMPLE_TOKENS, manifest_tokenizer_entry, read_dataset_manifest,
                                        tokenizer_fingerprint_problem, tokenizer_reencoding_problem)
from pgolf.data.val_bytes import (TARGET_BYTES_FROM_SIDECARS, TARGET_BYTES_FROM_TABLES, VAL_SHARD_PREFIX,
                                  dataset_byte_convention, list_byte_sidecars)
from pgolf.errors import DataError

DATA_TOOLS_DEFAULT_NUM_VAL_DOCS = 50_000  # the challenge's validation split: the first 50,000 documents
DATA_TOOLS_CHUNK_TOKENS = 1 << 24  # 16M tokens (32 MB as uint16) per streamed chunk
DATA_TOOLS_DEFAULT_BOS_ID = 1
DATA_TOOLS_SPLITS = ("val", "train")
DATA_TOOLS_RESERVED_PIECES = 4 + 256  # pad/bos/eos/unk and the byte-fallback pieces
DATA_TOOLS_LISTED_DIFFERENCES = 20  # verify --docs: raw documents that differ from their decoded text, listed
DATA_TOOLS_LISTED_LEAKS = 5  # verify: training documents identical to validation ones, listed after the summary
# What `pgolf data stats` and `verify` say about each CaseOps byte convention.
CASEOPS_CONVENTION_MEANINGS = {
    CASEOPS_BYTES_DECODED: "bytes of the decoded text with the case transform undone: the challenge's convention, "
                           "comparable with the leaderboard",
    CASEOPS_BYTES_ORIGINAL: "exact bytes of the raw documents: NOT comparable with the leaderboard's scores",
}

# --------------------------------------------------------------------------- build


def _not_utf8(path: Path, line_number: int, byte: int, column: int) -> DataError:
    return DataError(f"{path} line {line_number} is not valid UTF-8 (byte 0x{byte:02x} at column {column}); convert "
                     "the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line.")


def _utf8_line(raw: bytes, path: Path, line_number: int) -> str:
    """One line of an input file as text; DataError naming the file, line and byte when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, line_number, raw[exc.start], exc.start + 1) from None


def _refuse_lone_surrogates(text: str, path: Path, line_number: int) -> str:
    """JSON can spell characters UTF-8 cannot hold (a lone surrogate such as "\\ud800"): refuse them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{path} line {line_number}: the text holds U+{ord(text[exc.start]):04X}, a lone surrogate "
                        "that is not valid Unicode text (a broken \\u escape); fix or remove that line.") from None
    return text


def iter_jsonl_documents(path: str | os.PathLike) -> Iterator[str]:
    """The ``"text"`` field of each JSON object (one per line) in ``path``; blank lines are skipped.

    Any line that is not UTF-8, not JSON, or has no string ``"text"`` is a DataError naming the line.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            line = _utf8_line(raw, path, line_number)
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
            yield _refuse_lone_surrogates(record["text"], path, line_number)


def iter_text_file_documents(paths: list[str | os.PathLike]) -> Iterator[str]:
    """Each text file in ``paths`` as one document (UTF-8; otherwise a DataError naming file and line)."""
    for path in paths:
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line_start = raw.rfind(b"\n", 0, exc.start) + 1
            raise _not_utf8(Path(path), raw.count(b"\n", 0, exc.start) + 1, raw[exc.start],
                            exc.start - line_start + 1) from None
        yield text


# The official tokenizers are tokenizers/fineweb_<V>_bpe[...].model (`pgolf data fineweb` fetches them and
# the presets point at them): a tokenizer a build trains is named after its dataset, never so.
OFFICIAL_TOKENIZER_STEM = "fineweb"


def _safe_dataset_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


def _dataset_dir_name(name: str, vocab_size: int, caseops: bool = False) -> str:
    return f"{_safe_dataset_name(name)}_sp{vocab_size}" + ("_caseops" if caseops else "")


def trained_tokenizer_prefix(out_root: str | os.PathLike, name: str, vocab_size: int, caseops: bool) -> Path:
    """Where a build of dataset ``name`` writes the tokenizer it trains (``.model``/``.vocab`` appended):
    ``DIR/tokenizers/<name>_<V>_bpe``, with CaseOps ``<name>_<V>_bpe_lossless_caps_caseops_v1_reserved``
    (the record's suffix scheme), so ``docs_sp1024`` gets ``docs_1024_bpe.model``."""
    suffix = f"_{CASEOPS_TRANSFORM_NAME}_reserved" if caseops else ""
    return Path(out_root) / "tokenizers" / f"{_safe_dataset_name(name)}_{vocab_size}_bpe{suffix}"


def _refuse_official_tokenizer_name(name: str, vocab_size: int, caseops: bool) -> None:
    """A trained tokenizer named like the official one would be taken for it (by `pgolf data fineweb`,
    the presets and anyone reading the folder), and would stand where the official one is fetched."""
    if _safe_dataset_name(name).casefold() == OFFICIAL_TOKENIZER_STEM:
        official = trained_tokenizer_prefix(".", name, vocab_size, caseops).name
        raise DataError(f"the dataset name {name!r} (--name, else the input file's name) would name the trained "
                        f"tokenizer {official}.model, the file name of the challenge's official tokenizer (pgolf "
                        "data fineweb fetches it, the presets point at it). Choose another name (e.g. --name "
                        f"{name}_mine), or pass the tokenizer to use with --tokenizer.")


def check_build_arguments(vocab_size: int, num_val_docs: int, *, caseops: bool, train_tokenizer: bool,
                          caseops_bytes: str | None = None, name: str = "dataset") -> None:
    """Every argument of a build checked before any work (a trained tokenizer is minutes of it)."""
    if train_tokenizer:
        _refuse_official_tokenizer_name(name, vocab_size, caseops)
    if caseops_bytes is not None:
        if not caseops:
            raise DataError(f"--caseops-bytes {caseops_bytes} applies only to CaseOps datasets; add --caseops (or "
                            "drop --caseops-bytes).")
        require_caseops_byte_convention(caseops_bytes)
    if num_val_docs < 1:
        raise DataError(f"--num-val-docs must be at least 1 (got {num_val_docs}); the validation split cannot be empty.")
    if not 1 <= vocab_size <= SHARD_MAX_TOKEN_ID + 1:
        raise DataError(f"--vocab-size {vocab_size} does not fit the shard format, which stores token ids as uint16: "
                        f"use at most {SHARD_MAX_TOKEN_ID + 1} (the challenge uses 1024, 4096 or 8192).")
    reserved = DATA_TOOLS_RESERVED_PIECES + (len(CASEOPS_OPERATORS) if caseops else 0)
    if train_tokenizer and vocab_size <= reserved:
        raise DataError(f"--vocab-size {vocab_size} leaves no room for merges: the tokenizer reserves {reserved} "
                        "pieces (4 special, 256 byte-fallback" + (", 4 CaseOps operators" if caseops else "") +
                        "). Use 1024 or more.")


def _refuse_leftover_tokenizer(model_prefix: Path) -> None:
    for path in (Path(f"{model_prefix}.model"), Path(f"{model_prefix}.vocab")):
        if path.exists():
            raise DataError(f"{path} already exists; refusing to overwrite a tokenizer. Pass it with --tokenizer "
                            f"{model_prefix}.model to export with it, or delete it (and its .model/.vocab twin) to "
                            "train a new one.")


def _check_given_tokenizer(sp, tokenizer_path, vocab_size: int, caseops: bool) -> None:
    check_tokenizer_vocab(sp, vocab_size, tokenizer_path)
    if caseops:
        build_caseops_piece_bytes(sp)  # DataError unless it has the operator pieces
    elif is_caseops_tokenizer(sp):
        raise DataError(f"{tokenizer_path} is a CaseOps tokenizer (it has the case operator pieces); add --caseops so "
                        "the documents are transformed and the validation byte sidecars written.")


def build_dataset(
    documents: Callable[[], Iterator[str]],
    vocab_size: int,
    out_root: str | os.PathLike,
    *,
    name: str = "dataset",
    tokenizer_path: str | os.PathLike | None = None,
    num_val_docs: int = DATA_TOOLS_DEFAULT_NUM_VAL_DOCS,
    num_workers: int = 1,
    caseops: bool = False,
    caseops_bytes: str | None = None,
) -> dict:
    """Train (unless given) a tokenizer and export ``documents()`` as shards under ``out_root``.

    ``documents`` is called once per pass over the corpus. Every argument, the input text (UTF-8) and
    the output locations are checked before the tokenizer is trained; a tokenizer trained by a build
    that then fails is removed, so the same command can simply be run again. A trained tokenizer is
    named after the dataset (:func:`trained_tokenizer_prefix`), never like the official one. With
    ``caseops`` the documents are CaseOps-transformed (SPEC 5.10) for the tokenizer and the shards, and
    the validation shards get byte sidecars counted by ``caseops_bytes`` (``decoded`` when None, the
    challenge's convention; ``original`` for the raw documents' exact bytes). Returns counts, paths and per-phase
    timings (``tokenizer_seconds`` is 0 when a tokenizer was given).
    """
    out_root = Path(out_root)
    train_tokenizer = tokenizer_path is None
    check_build_arguments(vocab_size, num_val_docs, caseops=caseops, train_tokenizer=train_tokenizer,
                          caseops_bytes=caseops_bytes, name=name)
    caseops_bytes = caseops_bytes or CASEOPS_DEFAULT_BYTE_CONVENTION
    data_dir = out_root / "datasets" / _dataset_dir_name(name, vocab_size, caseops)
    refuse_existing_export(data_dir)
    model_prefix = trained_tokenizer_prefix(out_root, name, vocab_size, caseops)
    if train_tokenizer:
        _refuse_leftover_tokenizer(model_prefix)
    else:
        _check_given_tokenizer(load_sentencepiece(tokenizer_path), tokenizer_path, vocab_size, caseops)
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
    trained: list[Path] = []
    try:
        if train_tokenizer:
            model_prefix.parent.mkdir(parents=True, exist_ok=True)
            trained = [Path(f"{model_prefix}.model"), Path(f"{model_prefix}.vocab")]
            texts = (encode_caseops(text) for text in documents()) if caseops else documents()
            tokenizer_path = train_sentencepiece_tokenizer(texts, vocab_size, model_prefix,
                                                           overrides=CASEOPS_TRAINER_OVERRIDES if caseops else None)
        tokenizer_seconds = time.perf_counter() - started if train_tokenizer else 0.0
        sp = load_sentencepiece(tokenizer_path)
        if train_tokenizer and sp.vocab_size() != vocab_size:
            raise DataError(f"the documents hold too little distinct text for --vocab-size {vocab_size}: SentencePiece "
                            f"made {sp.vocab_size()} pieces. Use --vocab-size {sp.vocab_size()} or give more text.")
        check_tokenizer_vocab(sp, vocab_size, tokenizer_path)
        started = time.perf_counter()
        manifest = export_documents_to_shards(documents(), sp, data_dir, num_val_docs=num_val_docs,
                                              tokenizer_path=tokenizer_path, num_workers=num_workers, caseops=caseops,
                                              caseops_bytes=caseops_bytes)
    except BaseException:
        for path in trained:  # only a tokenizer this call trained; the export removes its own files
            path.unlink(missing_ok=True)
        raise
    export_seconds = time.perf_counter() - started
    return {"data_dir": str(data_dir), "tokenizer_path": str(tokenizer_path), "num_docs": num_docs,
            "text_bytes": text_bytes, "stats": manifest["datasets"][0]["stats"], "count_seconds": count_seconds,
            "tokenizer_seconds": tokenizer_seconds, "export_seconds": export_seconds, "caseops": caseops,
            "val_bytes_convention": caseops_bytes if caseops else None}


# --------------------------------------------------------------------------- streaming shards


def iter_shard_chunks(tokens: np.ndarray, chunk_tokens: int) -> Iterator[np.ndarray]:
    """Consecutive in-memory copies of at most ``chunk_tokens`` tokens of a (memory-mapped) shard."""
    for start in range(0, len(tokens), chunk_tokens):
        yield np.array(tokens[start : start + chunk_tokens], dtype=np.int64)


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
    """Counts of one split. ``target_bytes``: the targets' bytes by the tokenizer's byte tables (None
    without a tokenizer): the bytes of the text the tokens spell, which for CaseOps is the transformed
    text. ``original_bytes``: the targets' bytes by the byte sidecars (None without sidecars)."""

    shards: int = 0
    tokens: int = 0
    documents: int = 0
    target_bytes: int | None = None
    original_bytes: int | None = None
    # The tokens spell transformed text (a CaseOps tokenizer): without sidecars the original bytes are unknown.
    transformed: bool = False

    def as_dict(self) -> dict:
        targets = max(self.tokens - 1, 0)  # the split's first token is never a scored target
        denominator = self.original_bytes if self.original_bytes is not None or self.transformed else self.target_bytes
        per_token = denominator / targets if denominator is not None and targets else None
        source = (TARGET_BYTES_FROM_SIDECARS if self.original_bytes is not None else
                  TARGET_BYTES_FROM_TABLES if denominator is not None else None)
        return {"shards": self.shards, "tokens": self.tokens, "documents": self.documents,
                "target_tokens": targets, "bytes": denominator, "bytes_source": source,
                "bytes_per_target_token": per_token,
                "transformed_bytes": self.target_bytes if self.original_bytes is not None or self.transformed else None}


def dataset_stats(data_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, *,
                  chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> dict:
    """Per-split stats of the shards in ``data_dir``; bytes are the BPB denominator (SPEC 2.8):
    targets are ``tokens[1:]`` of the split's whole stream with ``prev = tokens[:-1]``; with byte
    sidecars (CaseOps) the denominator is their sum and the byte tables' count is reported beside it
    as the transformed text's bytes; ``val_bytes_convention`` names the sidecars' byte convention
    (None without sidecars) and ``val_bytes_convention_named`` whether the manifest names it (else
    it is taken as ``decoded``, the record's)."""
    data_dir, tokenizer_path, tables, bos_id, caseops = _stats_inputs(data_dir, tokenizer_path)
    _require_some_shards(data_dir)
    splits = {split: _split_stats(list_split_shards(data_dir, split), tables, bos_id, chunk_tokens, tokenizer_path,
                                  caseops) for split in DATA_TOOLS_SPLITS}
    convention, named = dataset_byte_convention(data_dir) if list_byte_sidecars(data_dir) else (None, False)
    return {"data_dir": str(data_dir), "tokenizer": str(tokenizer_path) if tokenizer_path else None,
            "bos_id": bos_id, "val_bytes_convention": convention, "val_bytes_convention_named": named,
            "splits": {split: stats.as_dict() for split, stats in splits.items()}}


def dataset_split_stats(data_dir: str | os.PathLike, split: str, tokenizer_path: str | os.PathLike | None = None, *,
                        chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> dict:
    """:func:`dataset_stats` of one split only (``SplitStats.as_dict`` keys)."""
    data_dir, tokenizer_path, tables, bos_id, caseops = _stats_inputs(data_dir, tokenizer_path)
    files = list_split_shards(data_dir, split)
    return _split_stats(files, tables, bos_id, chunk_tokens, tokenizer_path, caseops).as_dict()


def _require_some_shards(data_dir: Path) -> None:
    """Stats of a folder without a single shard would be a table of zeros that looks like an empty
    dataset: more likely the wrong folder, so it is refused (one missing split is shown as zero shards)."""
    if not any(list_split_shards(data_dir, split) for split in DATA_TOOLS_SPLITS):
        globs = " or ".join(SHARD_GLOBS[split] for split in DATA_TOOLS_SPLITS)
        raise DataError(f"the folder {data_dir} holds no shards ({globs}); give the folder that holds the .bin shards "
                        "(pgolf data build or pgolf data fineweb makes one).")


def _stats_inputs(data_dir, tokenizer_path):
    """The folder, the tokenizer (given or found from the manifest), its byte tables, BOS id, and whether
    it is a CaseOps tokenizer."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; give the folder holding the .bin shards.")
    manifest = read_dataset_manifest(data_dir)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else find_dataset_tokenizer(data_dir, manifest)
    tables, bos_id = None, int(_manifest_dataset(manifest).get("bos_id", DATA_TOOLS_DEFAULT_BOS_ID))
    caseops = False
    if tokenizer_path is not None:
        sp = load_sentencepiece(tokenizer_path)
        tables, bos_id, caseops = build_byte_tables(sp, sp.vocab_size()), sp.bos_id(), is_caseops_tokenizer(sp)
    return data_dir, tokenizer_path, tables, bos_id, caseops


def _split_stats(files: list[Path], tables, bos_id: int, chunk_tokens: int, tokenizer_path=None,
                 caseops: bool = False) -> SplitStats:
    """Stream the split's shards (and sidecars) once. Ids beyond the tokenizer's vocabulary are refused:
    they have no bytes, so counting them would silently shrink the denominator."""
    stats = SplitStats(shards=len(files), target_bytes=0 if tables is not None else None, transformed=caseops)
    sidecars = find_byte_sidecars(files) if files and files[0].name.startswith(VAL_SHARD_PREFIX) else None
    vocab_size = tables.base_bytes.numel() if tables is not None else None
    previous_token = None  # the split is one stream: a shard's first target follows the last shard's end
    for path in files:
        tokens = read_shard(path)
        for offset, chunk in zip(range(0, len(tokens), chunk_tokens), iter_shard_chunks(tokens, chunk_tokens)):
            stats.tokens += len(chunk)
            stats.documents += int(np.count_nonzero(chunk == bos_id))
            if tables is not None:
                if int(chunk.max()) >= vocab_size:
                    position = int(np.argmax(chunk >= vocab_size))
                    raise DataError(f"{path}: token id {int(chunk[position])} at position {offset + position} is out "
                                    f"of range for the tokenizer {tokenizer_path} ({vocab_size} pieces): these shards "
                                    "were not made with it, and ids it does not have count no bytes. Pass the "
                                    "tokenizer the shards were exported with (--tokenizer).")
                stream = chunk if previous_token is None else np.concatenate(([previous_token], chunk))
                if len(stream) > 1:
                    ids = torch.from_numpy(stream)
                    stats.target_bytes += int(count_target_bytes(tables, ids[:-1], ids[1:]).sum())
            previous_token = int(chunk[-1])
    if sidecars is not None:
        counts = [read_shard(path) for path in sidecars]
        total = sum(int(np.sum(c, dtype=np.int64)) for c in counts)
        stats.original_bytes = total - (int(counts[0][0]) if counts else 0)  # the first token is no target
    return stats


# --------------------------------------------------------------------------- verify


@dataclass
class DatasetCheck:
    """What :func:`verify_dataset` found: ``problems`` make the dataset unusable, ``notes`` are informational."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    documents: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    # With --docs: each raw validation document that differs from its decoded text (information):
    # {"document", "raw_bytes", "decoded_bytes", "raw_minus_decoded", "how" (the first few only)}.
    raw_differences: list[dict] = field(default_factory=list)

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
                   vocab_size: int | None = None, *, docs_path: str | os.PathLike | None = None,
                   chunk_tokens: int = DATA_TOOLS_CHUNK_TOKENS) -> DatasetCheck:
    """Check every shard of ``data_dir`` and the split's integrity; collects all problems, raises nothing
    for a broken dataset (only for a missing directory or unreadable tokenizer/manifest).

    Documents are split per shard: the continuation of a document that spans two shards is not
    hashed, which can only miss a leak of such a document, never report a false one. With a tokenizer,
    it must be the one that made the shards (the manifest's fingerprint, else re-encoding sampled
    validation documents). Byte sidecars (CaseOps) are checked against their shards and against the
    rule of the byte convention the manifest names (``decoded``: each validation document's sum is the
    UTF-8 length of its decoded text; ``original``: of its raw document). With ``docs_path`` (the
    JSON-lines documents the dataset was built from) each raw document must give the shard's tokens,
    under ``original`` its bytes are the sidecar's sum, and how it differs from its decoded text is
    reported as information (``check.raw_differences``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; give the folder holding the .bin shards.")
    check = DatasetCheck()
    manifest = read_dataset_manifest(data_dir)
    dataset_entry = _manifest_dataset(manifest)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else find_dataset_tokenizer(data_dir, manifest)
    bos_id = int(dataset_entry.get("bos_id", DATA_TOOLS_DEFAULT_BOS_ID))
    sp = None
    if tokenizer_path is not None:
        sp = load_sentencepiece(tokenizer_path)
        bos_id = sp.bos_id()
        vocab_size = vocab_size or sp.vocab_size()
    vocab_size = vocab_size or dataset_entry.get("vocab_size")
    if vocab_size is None:
        check.notes.append("no --vocab-size, tokenizer or manifest: token ids were not range-checked.")
    val_digests: dict[bytes, Path] = {}
    # --docs without byte sidecars: the raw documents are compared with the tokens as they stream by (with
    # sidecars, _check_byte_sidecars compares them, together with the sidecars' counts).
    raw = (_RawDocumentMatch(iter(iter_jsonl_documents(docs_path)), sp.encode)
           if docs_path is not None and sp is not None and not list_byte_sidecars(data_dir) else None)

    def on_val_document(path: Path, document: np.ndarray) -> None:
        val_digests.setdefault(_document_digest(document), path)
        if raw is not None:
            raw.take(document)

    _scan_split(data_dir, "val", vocab_size, bos_id, check, chunk_tokens, on_val_document)
    leaks: list[tuple[Path, int, Path]] = []

    def find_leak(path: Path, document: np.ndarray) -> None:
        source = val_digests.get(_document_digest(document))
        if source is not None:
            leaks.append((path, len(document), source))

    _scan_split(data_dir, "train", vocab_size, bos_id, check, chunk_tokens, find_leak)
    if leaks:
        check.problems.append(_leak_report(leaks))
    _compare_with_manifest(data_dir, manifest, check)
    if sp is not None:
        _check_tokenizer_made_the_shards(data_dir, sp, tokenizer_path, manifest, bos_id, check)
    _check_byte_sidecars(data_dir, dataset_entry, sp, bos_id, docs_path, check, chunk_tokens)
    if raw is not None:
        _report_raw_match(Path(docs_path), raw, check.documents.get("val", 0), check)
    return check


@dataclass
class _RawDocumentMatch:
    """``--docs``: the validation documents, in order, must be the first raw documents, each
    ``[BOS] + encode(text)`` (how pgolf data build and the challenge export them; ``encode`` applies the
    CaseOps transform first for CaseOps data; None: no tokenizer, nothing to compare)."""

    documents: Iterator[str]
    encode: Callable[[str], list[int]] | None
    compared: int = 0
    exhausted: bool = False
    foreign: list[int] = field(default_factory=list)

    def take(self, tokens: np.ndarray) -> str | None:
        """The next raw document when it is the one ``tokens`` came from; None when the file has no more
        documents or this one encodes to other tokens (both recorded)."""
        text = None if self.exhausted else next(self.documents, None)
        if text is None:
            self.exhausted = True
            return None
        index, self.compared = self.compared, self.compared + 1
        if self.encode is not None and self.encode(text) != tokens[1:].tolist():
            self.foreign.append(index)
            return None
        return text

    def problems(self, docs_path: Path, documents: int, check: DatasetCheck) -> bool:
        """Whether the raw documents of ``docs_path`` are not the ``documents`` validation documents
        (recorded in ``check``): too few of them, or some that encode to other tokens."""
        if self.exhausted:
            check.problems.append(f"{docs_path} holds {self.compared} documents but the validation split has "
                                  f"{documents}; give the file the dataset was built from.")
        if self.foreign:
            check.problems.append(f"{len(self.foreign)} of {self.compared} documents of {docs_path} are not the "
                                  f"validation documents of this dataset (document {self.foreign[0]} encodes to other "
                                  "tokens); give the file the dataset was built from.")
        return bool(self.foreign)


def _report_raw_match(docs_path: Path, match: _RawDocumentMatch, val_documents: int, check: DatasetCheck) -> None:
    if match.problems(docs_path, val_documents, check):
        return
    check.notes.append(f"each of the {match.compared:,} validation documents is its raw document of {docs_path}, "
                       "encoded (no byte sidecars: the tokenizer's byte tables count its bytes).")


def _leak_report(leaks: list[tuple[Path, int, Path]]) -> str:
    """One problem for every leaked document, ``(training shard, tokens, validation shard)`` each: the
    summary and the fix first, then a few examples, so a dataset with thousands of copies still reads
    as one problem whose first line says what happened."""
    files = len({path for path, _, _ in leaks})
    documents = "1 training document" if len(leaks) == 1 else f"{len(leaks):,} training documents"
    shards = "1 training shard" if files == 1 else f"{files:,} training shards"
    lines = [f"{documents} in {shards} {'is' if len(leaks) == 1 else 'are'} identical to validation documents: "
             "validation text leaked into training, so the validation score would be too good. Remove the duplicated "
             "documents from the input (deduplicate it) and export the dataset again."]
    lines += [f"  {path}: a training document ({tokens} tokens) is identical to a validation document in {source.name}"
              for path, tokens, source in leaks[:DATA_TOOLS_LISTED_LEAKS]]
    if len(leaks) > DATA_TOOLS_LISTED_LEAKS:
        lines.append(f"  ... and {len(leaks) - DATA_TOOLS_LISTED_LEAKS:,} more")
    return "\n".join(lines)


def _check_tokenizer_made_the_shards(data_dir: Path, sp, tokenizer_path: Path, manifest, bos_id: int,
                                     check: DatasetCheck) -> None:
    """The tokenizer must be the one the manifest fingerprints, else one that re-encodes sampled documents."""
    problem = tokenizer_fingerprint_problem(tokenizer_path, manifest, data_dir)
    if problem is None and not manifest_tokenizer_entry(manifest).get("sha256"):
        files = list_split_shards(data_dir, "val")
        try:
            head = np.array(read_shard(files[0])[:TOKENIZER_SAMPLE_TOKENS], dtype=np.int64) if files else None
        except DataError:
            head = None  # already reported by the shard checks
        if head is not None:
            problem = tokenizer_reencoding_problem(sp, head, bos_id, tokenizer_path, data_dir)
    if problem is not None:
        check.problems.append(problem)


def _iter_sidecar_documents(val_files: list[Path], sidecars: list[Path], bos_id: int, check: DatasetCheck,
                            chunk_tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, counts)`` of each validation document, BOS first, across chunks and shards (tokens before
    the stream's first BOS belong to no document). A nonzero count on a BOS is a problem that ends the
    walk: the sidecar is shifted against its shard."""
    pending_ids: list[np.ndarray] = []
    pending_counts: list[np.ndarray] = []
    started = False
    for shard, sidecar in zip(val_files, sidecars):
        tokens, counts = read_shard(shard), read_shard(sidecar)
        for offset in range(0, len(tokens), chunk_tokens):
            ids = np.asarray(tokens[offset: offset + chunk_tokens], dtype=np.int64)
            values = np.asarray(counts[offset: offset + chunk_tokens], dtype=np.int64)
            starts = np.flatnonzero(ids == bos_id)
            shifted = starts[values[starts] != 0]
            if shifted.size:
                check.problems.append(f"{sidecar}: entry {offset + int(shifted[0])} is {int(values[shifted[0]])} but "
                                      "its token is a BOS (0 bytes): the sidecar does not line up with its shard. "
                                      "Re-export or fetch both files.")
                return
            cuts = [0, *starts.tolist(), len(ids)]
            for index, (begin, end) in enumerate(zip(cuts[:-1], cuts[1:])):
                if index > 0:  # a BOS at `begin`: the document before it is complete
                    if started:
                        yield np.concatenate(pending_ids), np.concatenate(pending_counts)
                    pending_ids, pending_counts, started = [], [], True
                if started and end > begin:
                    pending_ids.append(ids[begin:end])
                    pending_counts.append(values[begin:end])
    if started:
        yield np.concatenate(pending_ids), np.concatenate(pending_counts)


def _describe_normaliser_changes(raw: str, decoded: str) -> str:
    """What SentencePiece's normaliser (and the decoder) changed between a raw document and its decoded
    text, in words, with the first place they differ."""
    kinds = []
    if re.search(r"[^\S ]| {2}|^\s|\s$", raw):
        kinds.append("whitespace collapsed or stripped (newlines, tabs, runs of spaces, leading/trailing)")
    if "\ufffd" in raw:
        kinds.append("U+FFFD turned into a space (removed at an end)")
    if any(unicodedata.category(c) == "Cc" and not c.isspace() for c in raw):
        kinds.append("control characters removed")
    if unicodedata.normalize("NFKC", raw) != raw:
        rewritten = sorted({c for c in raw if unicodedata.normalize("NFKC", c) != c})
        kinds.append("NFKC rewrote " + ", ".join(f"U+{ord(c):04X}" for c in rewritten[:4])
                     + (" and more" if len(rewritten) > 4 else ""))
    if "\u2581" in raw:
        kinds.append("U+2581 decodes as a space")
    first = next((i for i, (a, b) in enumerate(zip(raw, decoded)) if a != b), min(len(raw), len(decoded)))
    where = (f"first at character {first}: raw {ascii(raw[first: first + 12])}, "
             f"decoded {ascii(decoded[first: first + 12])}")
    return "; ".join((kinds or ["other normaliser changes"]) + [where])


@dataclass
class _SidecarTally:
    """What :func:`_check_byte_sidecars` found, document by document."""

    documents: int = 0
    total: int = 0
    decoded_mismatches: list[str] = field(default_factory=list)
    raw_mismatches: list[str] = field(default_factory=list)


def _tally_raw_document(index: int, raw: str, ids: np.ndarray, count: int, decoded: str | None, convention: str,
                        tally: _SidecarTally, check: DatasetCheck) -> None:
    """One validation document and its raw text from ``--docs`` (already matched to its tokens): under
    ``original`` its bytes are the sidecar's sum; how it differs from the decoded text is recorded
    (information)."""
    raw_bytes = len(raw.encode("utf-8"))
    if convention == CASEOPS_BYTES_ORIGINAL:
        expected = raw_bytes if len(ids) > 1 else 0  # a document with no token has nowhere to put its bytes
        if count != expected:
            tally.raw_mismatches.append(f"validation document {index}: its sidecar counts {count} bytes, the raw "
                                        f"document has {expected}")
    if decoded is not None and raw != decoded:
        decoded_bytes = len(decoded.encode("utf-8"))
        listed = len(check.raw_differences) < DATA_TOOLS_LISTED_DIFFERENCES
        check.raw_differences.append({"document": index, "raw_bytes": raw_bytes, "decoded_bytes": decoded_bytes,
                                      "raw_minus_decoded": raw_bytes - decoded_bytes,
                                      "how": _describe_normaliser_changes(raw, decoded) if listed else None})


def _check_byte_sidecars(data_dir: Path, dataset_entry: dict, sp, bos_id: int, docs_path, check: DatasetCheck,
                         chunk_tokens: int) -> None:
    """Byte sidecars: one per validation shard with its token count, 0 on every BOS, each document's sum
    by the rule of the dataset's byte convention (``decoded``: the UTF-8 bytes of its decoded text, with
    a tokenizer; ``original``: those of the raw document from ``docs_path``), and the total against the
    manifest's ``val_original_bytes``. With ``docs_path`` each raw document must be the one its tokens
    came from, and how it differs from the decoded text is reported (``check.raw_differences``)."""
    val_files = list_split_shards(data_dir, "val")
    declared = bool(dataset_entry.get("val_bytes_glob"))
    if not list_byte_sidecars(data_dir):
        if declared:
            check.problems.append(f"{data_dir}: the manifest lists byte sidecars (val_bytes_glob) but there are none "
                                  f"(expected {byte_sidecar_path(val_files[0]).name if val_files else 'some'}). Fetch "
                                  "or re-export them; without them the dataset cannot be scored.")
        elif sp is not None and is_caseops_tokenizer(sp):
            check.problems.append(f"{data_dir}: the tokenizer is a CaseOps tokenizer but the validation shards have no "
                                  "byte sidecars; bits per byte cannot be computed. Re-export with --caseops.")
        if docs_path is not None and sp is None:
            check.notes.append("--docs needs a tokenizer (--tokenizer, or the manifest's) to compare the documents "
                               "with the shards; they were not compared.")
        return
    try:
        sidecars = find_byte_sidecars(val_files)
        convention, named = dataset_byte_convention(data_dir)
    except DataError as error:
        check.problems.append(str(error))
        return
    problems_before = len(check.problems)
    tally = _SidecarTally()
    raw_match = (_RawDocumentMatch(iter(iter_jsonl_documents(docs_path)),
                                   (lambda text: sp.encode(encode_caseops(text))) if sp is not None else None)
                 if docs_path is not None else None)
    for index, (ids, counts) in enumerate(_iter_sidecar_documents(val_files, sidecars, bos_id, check, chunk_tokens)):
        count = int(counts.sum())
        tally.documents, tally.total = tally.documents + 1, tally.total + count
        decoded = caseops_decoded_text(ids[1:], sp) if sp is not None else None
        if convention == CASEOPS_BYTES_DECODED and decoded is not None and count != len(decoded.encode("utf-8")):
            tally.decoded_mismatches.append(f"validation document {index}: its sidecar counts {count} bytes, its "
                                            f"decoded text has {len(decoded.encode('utf-8'))}")
        raw = raw_match.take(ids) if raw_match is not None else None
        if raw is not None:
            _tally_raw_document(index, raw, ids, count, decoded, convention, tally, check)
    if len(check.problems) > problems_before or not tally.documents:
        return
    source = "named by the manifest" if named else "the manifest names none: taken as the challenge's, as the record's"
    check.notes.append(f"byte sidecars: {len(sidecars)} file(s), {tally.documents:,} validation documents, "
                       f"{tally.total:,} bytes (the BPB denominator); byte convention {convention!r} ({source}): "
                       f"{CASEOPS_CONVENTION_MEANINGS[convention]}.")
    recorded = (dataset_entry.get("stats") or {}).get("val_original_bytes")
    if recorded is not None and int(recorded) != tally.total:
        check.problems.append(f"{data_dir / EXPORT_MANIFEST_NAME}: says the validation documents hold {recorded} "
                              f"bytes but the sidecars sum to {tally.total}; the sidecars were altered. "
                              "Re-export them.")
    _report_sidecar_rule(convention, named, sp, docs_path, tally, check)
    if raw_match is not None:
        _report_raw_documents(Path(docs_path), convention, sp, tally, raw_match, check)


def _report_sidecar_rule(convention: str, named: bool, sp, docs_path, tally: _SidecarTally,
                         check: DatasetCheck) -> None:
    """The per-document rule of the convention: checked (decoded text, raw documents) or said why not."""
    if convention == CASEOPS_BYTES_DECODED:
        if sp is None:
            check.notes.append("no tokenizer: the sidecar sums were not checked against the decoded text (the "
                               "'decoded' rule); pass --tokenizer.")
        elif tally.decoded_mismatches:
            hint = "" if named else (" A dataset built by pgolf before --caseops-bytes existed counted the raw "
                                     "documents: rebuild it (pgolf data build --caseops), or mark it with "
                                     '"val_bytes_convention": "original" in its manifest.')
            check.problems.append(f"{len(tally.decoded_mismatches)} of {tally.documents} validation documents: the "
                                  "sidecar does not sum to the UTF-8 bytes of the decoded text, "
                                  "decode_caseops(sp.decode(ids)), which the 'decoded' convention counts ("
                                  + "; ".join(tally.decoded_mismatches[:3]) + "). Re-export." + hint)
        else:
            check.notes.append(f"byte sidecars sum to the UTF-8 bytes of the decoded text of each of the "
                               f"{tally.documents:,} validation documents (the 'decoded' rule).")
    elif docs_path is None:
        check.notes.append("the 'original' convention counts the raw documents, which are not here: the sidecar "
                           "sums were checked only against the manifest; pass --docs FILE.jsonl (the documents the "
                           "dataset was built from) to check each document.")


def _report_raw_documents(docs_path: Path, convention: str, sp, tally: _SidecarTally, raw_match: _RawDocumentMatch,
                          check: DatasetCheck) -> None:
    """What comparing the validation documents with the raw documents of ``docs_path`` found."""
    if raw_match.problems(docs_path, tally.documents, check):
        return
    if convention == CASEOPS_BYTES_ORIGINAL:
        if tally.raw_mismatches:
            check.problems.append(f"{len(tally.raw_mismatches)} of {raw_match.compared} validation documents: the "
                                  f"sidecar does not sum to the raw document's bytes in {docs_path} ("
                                  + "; ".join(tally.raw_mismatches[:3]) + "). Re-export.")
        else:
            check.notes.append(f"byte sidecars sum to the UTF-8 bytes of each of the {raw_match.compared:,} raw "
                               f"documents of {docs_path} (the 'original' rule).")
    if sp is None:
        check.notes.append(f"no tokenizer: the raw documents of {docs_path} were not compared with the decoded text.")
        return
    differences = check.raw_differences
    if not differences:
        check.notes.append(f"each of the {raw_match.compared:,} raw documents of {docs_path} equals its decoded text: "
                           "both conventions count the same bytes.")
        return
    counted = "the decoded text, as the challenge does" if convention == CASEOPS_BYTES_DECODED else "the raw documents"
    check.notes.append(f"{len(differences):,} of {raw_match.compared:,} raw documents of {docs_path} differ from their "
                       f"decoded text (SentencePiece's normaliser changed them), by "
                       f"{sum(d['raw_minus_decoded'] for d in differences):+,} bytes in all (raw minus decoded); "
                       f"information, not a problem: the {convention!r} convention counts {counted}.")
    for difference in differences[:DATA_TOOLS_LISTED_DIFFERENCES]:
        check.notes.append(f"document {difference['document']}: raw {difference['raw_bytes']:,} bytes, decoded "
                           f"{difference['decoded_bytes']:,} ({difference['raw_minus_decoded']:+,}): "
                           f"{difference['how']}")
    if len(differences) > DATA_TOOLS_LISTED_DIFFERENCES:
        check.notes.append(f"... and {len(differences) - DATA_TOOLS_LISTED_DIFFERENCES:,} more documents that differ.")


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
