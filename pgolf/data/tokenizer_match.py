"""Does this tokenizer belong to these shards? Checked before any training or scoring.

A tokenizer with the right vocabulary size but the wrong pieces (another sp1024, or the sp8192 of
another export) trains and scores without any error, and its byte tables count the wrong bytes: the
score comes out a few percent off, usually in the flattering direction. Two checks refuse it:

* **fingerprint**: a dataset written by pgolf (``pgolf data build``, ``pgolf data fineweb``, the
  embedded default dataset) has a ``manifest.json`` beside its shards whose tokenizer entry records the
  sha256 of the ``.model`` file it was made with; ``TOKENIZER_PATH`` must have that sha256;
* **sampling**, for shards without a fingerprint (the challenge's own downloads): complete validation
  documents from the start of the stream are decoded with the tokenizer and encoded again; with the
  tokenizer that made them the ids come back (all 200 of the first FineWeb documents do, sp1024 and
  CaseOps alike), with another tokenizer almost none do. At least
  ``TOKENIZER_SAMPLE_MIN_MATCH`` of the sampled documents must come back exactly.

``BOS_TOKEN_ID`` must also be the tokenizer's BOS, since features that find documents use it.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from pgolf.errors import ConfigError, DataError

DATASET_MANIFEST_NAME = "manifest.json"
TOKENIZER_SAMPLE_DOCS = 32
TOKENIZER_SAMPLE_TOKENS = 1 << 21  # documents are sampled from the first 2M validation tokens
TOKENIZER_SAMPLE_MIN_MATCH = 0.9


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content (of a tokenizer's ``.model`` file: its fingerprint in dataset manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_dataset_manifest(data_dir: str | os.PathLike) -> dict | None:
    """``data_dir/manifest.json`` as a dict; None when there is none; DataError when it is not valid JSON."""
    path = Path(data_dir) / DATASET_MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); repair it or delete it.") from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a JSON object; repair it or delete it.")
    return manifest


def manifest_tokenizer_entry(manifest: dict | None) -> dict:
    """The tokenizer entry of the manifest's (first) dataset: by its ``tokenizer_name``, else the only one."""
    entries = [e for e in (manifest or {}).get("tokenizers") or [] if isinstance(e, dict)]
    datasets = [d for d in (manifest or {}).get("datasets") or [] if isinstance(d, dict)]
    name = datasets[0].get("tokenizer_name") if datasets else None
    named = [e for e in entries if name is not None and e.get("name") == name]
    if named:
        return named[0]
    return entries[0] if len(entries) == 1 else {}


def tokenizer_fingerprint_mismatch(tokenizer_path: str | os.PathLike, manifest: dict | None) -> tuple[str, str] | None:
    """``(actual, expected)`` sha256 when ``tokenizer_path`` is not the tokenizer the manifest names (None when
    it is, or when the manifest records no fingerprint)."""
    expected = manifest_tokenizer_entry(manifest).get("sha256")
    if not expected:
        return None
    actual = file_sha256(tokenizer_path)
    return None if actual == expected else (actual, expected)


def fingerprint_mismatch_message(tokenizer_path: str | os.PathLike, manifest: dict | None, data_dir: str | os.PathLike,
                                 actual: str, expected: str) -> str:
    recorded = manifest_tokenizer_entry(manifest).get("model_path") or "its tokenizer"
    return (f"the tokenizer {tokenizer_path} (sha256 {actual[:16]}...) is not the one the shards in {data_dir} were "
            f"made with: their {DATASET_MANIFEST_NAME} records sha256 {expected[:16]}... ({recorded}). Scoring with "
            "another tokenizer counts the wrong bytes; use the tokenizer the shards were exported with (TOKENIZER_PATH, "
            "or --tokenizer).")


def tokenizer_fingerprint_problem(tokenizer_path: str | os.PathLike, manifest: dict | None,
                                  data_dir: str | os.PathLike) -> str | None:
    """Why ``tokenizer_path`` is not the tokenizer the manifest names (None when it is, or when the
    manifest records no fingerprint)."""
    mismatch = tokenizer_fingerprint_mismatch(tokenizer_path, manifest)
    return None if mismatch is None else fingerprint_mismatch_message(tokenizer_path, manifest, data_dir, *mismatch)


def sample_documents(tokens, bos_id: int, max_docs: int = TOKENIZER_SAMPLE_DOCS,
                     max_tokens: int = TOKENIZER_SAMPLE_TOKENS) -> list[tuple[int, np.ndarray]]:
    """Up to ``max_docs`` complete documents (BOS excluded) of the first ``max_tokens`` tokens, spread
    evenly, each with the position of its BOS."""
    head = tokens[:max_tokens]
    head = head.numpy() if isinstance(head, torch.Tensor) else np.asarray(head)
    starts = np.flatnonzero(head == bos_id)
    spans = [(int(b), int(e)) for b, e in zip(starts[:-1], starts[1:]) if e > b + 1]
    if len(spans) > max_docs:
        spans = [spans[i * len(spans) // max_docs] for i in range(max_docs)]
    return [(b, np.asarray(head[b + 1: e], dtype=np.int64)) for b, e in spans]


def tokenizer_reencoding_misses(sp: spm.SentencePieceProcessor, tokens, bos_id: int) -> tuple[int, int, int] | None:
    """``(matched, sampled, first_miss)`` when too few sampled validation documents of ``tokens`` come back
    from decoding and encoding again with ``sp`` (None when enough do, or when the start of the stream
    holds no complete document to test)."""
    documents = sample_documents(tokens, bos_id)
    if not documents:
        return None
    matched, first_miss = 0, None
    for position, ids in documents:
        ids = ids.tolist()
        same = max(ids) < sp.vocab_size() and sp.encode(sp.decode(ids)) == ids
        matched += same
        if not same and first_miss is None:
            first_miss = position
    if matched >= TOKENIZER_SAMPLE_MIN_MATCH * len(documents):
        return None
    return matched, len(documents), first_miss


def reencoding_misses_message(tokenizer_path: str | os.PathLike, where: str | os.PathLike, matched: int, sampled: int,
                              first_miss: int) -> str:
    return (f"the tokenizer {tokenizer_path} did not make the validation shards in {where}: of {sampled} "
            f"validation documents decoded with it and encoded again, {matched} give back their token ids (the first "
            f"that does not starts at token {first_miss}). The shards were made with another tokenizer (another "
            "vocabulary, or one of the same size trained on other text), so its byte tables would count the wrong "
            "bytes. Use the tokenizer the shards were exported with (TOKENIZER_PATH, or --tokenizer).")


def tokenizer_reencoding_problem(sp: spm.SentencePieceProcessor, tokens, bos_id: int,
                                 tokenizer_path: str | os.PathLike, where: str | os.PathLike) -> str | None:
    """Why the tokenizer did not make these validation ``tokens`` (None when it did, or when the start
    of the stream holds no complete document to test)."""
    misses = tokenizer_reencoding_misses(sp, tokens, bos_id)
    return None if misses is None else reencoding_misses_message(tokenizer_path, where, *misses)


def check_tokenizer_matches_shards(sp: spm.SentencePieceProcessor, tokenizer_path: str | os.PathLike,
                                   data_dir: str | os.PathLike, val_tokens, bos_id: int) -> None:
    """DataError unless the tokenizer made the shards: by the manifest's fingerprint when it has one,
    else by re-encoding sampled validation documents."""
    # Found here and worded at the raise, so that `pgolf export` can move the wording out of the counted script.
    manifest = read_dataset_manifest(data_dir)
    if manifest_tokenizer_entry(manifest).get("sha256"):
        mismatch = tokenizer_fingerprint_mismatch(tokenizer_path, manifest)
        if mismatch is not None:
            raise DataError(fingerprint_mismatch_message(tokenizer_path, manifest, data_dir, *mismatch))
        return
    misses = tokenizer_reencoding_misses(sp, val_tokens, bos_id)
    if misses is not None:
        raise DataError(reencoding_misses_message(tokenizer_path, data_dir, *misses))


def check_bos_token_id(sp: spm.SentencePieceProcessor, bos_token_id: int, tokenizer_path: str | os.PathLike) -> None:
    """ConfigError unless ``BOS_TOKEN_ID`` is the tokenizer's BOS (when the tokenizer has one)."""
    tokenizer_bos = sp.bos_id()
    if tokenizer_bos >= 0 and bos_token_id != tokenizer_bos:
        raise ConfigError(f"BOS_TOKEN_ID={bos_token_id} but the tokenizer {tokenizer_path} starts every document with "
                          f"id {tokenizer_bos}: document boundaries (SmearGate, document-isolated attention, LoRA TTT) "
                          f"would be looked for at the wrong token. Set BOS_TOKEN_ID={tokenizer_bos}.")
