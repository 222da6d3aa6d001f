"""``pgolf data fineweb|build|stats|verify``: fetch, make, describe and check token shard datasets (tooling).

The handlers read the parsed arguments and print; the work is done by :mod:`pgolf.data.dataset`
(build, stats, verify) and :mod:`pgolf.commands.data_fineweb` (the hub download).
"""

import argparse
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from pgolf.commands.data_fineweb import (FINEWEB_DEFAULT_PREFIX, FINEWEB_PREFIX_ENV, FINEWEB_REPO_ENV, HubClient,
                                         download_fineweb, fineweb_default_repo)
from pgolf.data.dataset import (CASEOPS_CONVENTION_MEANINGS, DATA_TOOLS_SPLITS, DatasetCheck, build_dataset,
                                dataset_stats, iter_jsonl_documents, iter_text_file_documents, verify_dataset)
from pgolf.data.val_bytes import TARGET_BYTES_FROM_SIDECARS
from pgolf.errors import DataError

# --------------------------------------------------------------------------- fineweb


def fineweb_client(args: argparse.Namespace) -> HubClient:
    """The hub client ``--repo-id``/``--prefix`` ask for; without them, the challenge's download
    script's environment variables, then the defaults (the repository that holds the variant:
    ``sp8192_caseops`` is in romeerp/parameter-golf-caseops-v1)."""
    repo_id = args.repo_id or os.environ.get(FINEWEB_REPO_ENV) or fineweb_default_repo(args.variant)
    prefix = args.prefix if args.prefix is not None else os.environ.get(FINEWEB_PREFIX_ENV, FINEWEB_DEFAULT_PREFIX)
    return HubClient(repo_id, prefix=prefix, endpoint=args.endpoint, cache_dir=args.cache_dir, revision=args.revision)


def command_data_fineweb(args: argparse.Namespace) -> int:
    """``pgolf data fineweb``: download, then print the counts and the command that trains on it."""
    client = fineweb_client(args)
    result = download_fineweb(args.variant, args.train_shards, args.out, client, skip_manifest=args.skip_manifest)
    val = result.val_summary
    print(f"fineweb {args.variant} from {client.repo_id}: fetched {len(result.fetched)} files "
          f"({result.fetched_bytes / 1e6:,.1f} MB), {len(result.already_present)} already present, "
          f"{result.seconds:.1f}s")
    source = " from the byte sidecars" if val.get("bytes_source") == TARGET_BYTES_FROM_SIDECARS else ""
    bytes_text = f", {val['bytes']:,} bytes{source} (the BPB denominator)" if val["bytes"] is not None else ""
    print(f"validation: {val['tokens']:,} tokens, {val['documents']:,} documents{bytes_text}")
    print(f"dataset:   {result.dataset_path}")
    print(f"tokenizer: {result.tokenizer_path}")
    print(f"train on it: pgolf train DATA_PATH={result.dataset_path} TOKENIZER_PATH={result.tokenizer_path} "
          f"VOCAB_SIZE={result.vocab_size or '<V>'}")
    return 0


# --------------------------------------------------------------------------- build


def document_source(docs_path, text_paths) -> tuple[Callable[[], Iterator[str]], str]:
    """A function giving a fresh iterator over the documents (the corpus is read more than once) and a name."""
    for path in ([docs_path] if docs_path else []) + list(text_paths or []):
        if not Path(path).is_file():
            raise DataError(f"input file {path} does not exist; check the --docs/--text argument.")
    if docs_path:
        return (lambda: iter_jsonl_documents(docs_path)), Path(docs_path).stem
    if text_paths:
        return (lambda: iter_text_file_documents(text_paths)), Path(text_paths[0]).stem
    raise DataError("no input documents: give --docs FILE.jsonl or --text FILE [FILE ...].")


def command_data_build(args: argparse.Namespace) -> int:
    """``pgolf data build``: print what was written."""
    documents, default_name = document_source(args.docs, args.text)
    given_tokenizer = args.tokenizer is not None
    result = build_dataset(documents, args.vocab_size, args.out, name=args.name or default_name,
                           tokenizer_path=args.tokenizer, num_val_docs=args.num_val_docs, num_workers=args.workers,
                           caseops=args.caseops, caseops_bytes=args.caseops_bytes)
    stats = result["stats"]
    print(f"tokenizer: {result['tokenizer_path']}" + (" (given)" if given_tokenizer else
                                                       f" (trained in {result['tokenizer_seconds']:.1f}s)"))
    print(f"dataset:   {result['data_dir']} (exported in {result['export_seconds']:.1f}s)")
    for split in DATA_TOOLS_SPLITS:
        print(f"  {split:<5} docs {stats['docs_' + split]:>10,}  tokens {stats['tokens_' + split]:>14,}  "
              f"shards {stats['files_' + split]}")
    if "val_original_bytes" in stats:
        convention = result["val_bytes_convention"]
        print(f"  byte sidecars: fineweb_val_bytes_*.bin, {stats['val_original_bytes']:,} bytes of validation text "
              f"(CaseOps), byte convention {convention!r}: {CASEOPS_CONVENTION_MEANINGS[convention]}")
    return 0


# --------------------------------------------------------------------------- stats


def format_dataset_stats(stats: dict) -> str:
    """Human-readable table of :func:`pgolf.data.dataset.dataset_stats`."""
    lines = [f"dataset:   {stats['data_dir']}", f"tokenizer: {stats['tokenizer'] or '(none found: tokens only)'}"]
    for split, row in stats["splits"].items():
        text = f"  {split:<5} shards {row['shards']:>5}  tokens {row['tokens']:>14,}  documents {row['documents']:>10,}"
        if row["bytes"] is not None:
            per_token = row["bytes_per_target_token"] or 0.0
            text += f"  bytes {row['bytes']:>15,}  bytes/token {per_token:.4f}"
        if row["transformed_bytes"] is not None:
            original = ("case transform undone" if row["bytes"] is not None else
                        "no byte sidecars: the bytes with the case transform undone are unknown")
            text += f"  ({original}; the transformed text has {row['transformed_bytes']:,} bytes)"
        lines.append(text)
    convention = stats.get("val_bytes_convention")
    if convention is not None:
        source = "" if stats.get("val_bytes_convention_named") else " (the manifest names none: taken as the record's)"
        lines.append(f"byte sidecars: convention {convention!r}{source}: {CASEOPS_CONVENTION_MEANINGS[convention]}")
    return "\n".join(lines)


def command_data_stats(args: argparse.Namespace) -> int:
    """``pgolf data stats``."""
    stats = dataset_stats(args.data_dir, args.tokenizer)
    print(json.dumps(stats, indent=2) if args.json else format_dataset_stats(stats))
    return 0


# --------------------------------------------------------------------------- verify


def format_dataset_check(check: DatasetCheck, data_dir) -> str:
    """Report of :func:`pgolf.data.dataset.verify_dataset`: problems first, then notes, then the verdict."""
    lines = [f"problem: {text}" for text in check.problems] + [f"note: {text}" for text in check.notes]
    counts = ", ".join(f"{split} {check.documents.get(split, 0):,} docs / {check.tokens.get(split, 0):,} tokens"
                       for split in DATA_TOOLS_SPLITS)
    verdict = "OK" if check.ok else f"FAILED: {len(check.problems)} problem(s)"
    return "\n".join(lines + [f"{data_dir}: {counts}", verdict])


def command_data_verify(args: argparse.Namespace) -> int:
    """``pgolf data verify``: exit status 1 when any problem was found."""
    check = verify_dataset(args.data_dir, args.tokenizer, args.vocab_size, docs_path=args.docs)
    print(format_dataset_check(check, args.data_dir))
    return 0 if check.ok else 1


DATA_COMMANDS = {"fineweb": command_data_fineweb, "build": command_data_build, "stats": command_data_stats,
                 "verify": command_data_verify}


def run_data_command(args: argparse.Namespace) -> int:
    """Dispatch ``pgolf data <subcommand>`` to its handler."""
    return DATA_COMMANDS[args.data_command](args)
