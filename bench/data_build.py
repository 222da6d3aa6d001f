"""Speed of `pgolf data build`: tokenizer training and shard export, timed separately; one JSON line.

    python bench/data_build.py                                  # FineWeb text sample if present, else default corpus
    python bench/data_build.py --docs FILE.jsonl --vocab-size 1024 --num-val-docs 100 --workers 1,2

The corpus is ``shared/data/fineweb-text-sample/fineweb_val_sample_decoded.jsonl`` (5.6 MB of real
FineWeb text) when the repository sits beside ``shared/``, else the embedded default corpus (Python's
own documentation). Rates are documents and UTF-8 text megabytes (10**6 bytes) per second over the
whole corpus for each phase. `data stats` and `data verify` of the result are timed as well.
One JSON line per worker count (tokenizer-training threads = encoding processes = workers).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.data.corpus import default_corpus_documents  # noqa: E402
from pgolf.data.dataset import build_dataset, dataset_stats, iter_jsonl_documents, verify_dataset  # noqa: E402
from pgolf.provenance import environment_summary  # noqa: E402

SHARED_SAMPLE = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fineweb-text-sample"
                 / "fineweb_val_sample_decoded.jsonl")


def load_corpus(docs_path: str | None) -> tuple[list[str], str]:
    path = Path(docs_path) if docs_path else SHARED_SAMPLE
    if docs_path or path.is_file():
        return list(iter_jsonl_documents(path)), str(path)
    return [text for _, text in default_corpus_documents()], "pgolf.data.corpus.default_corpus_documents()"


def rates(num_docs: int, text_bytes: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "docs_per_s": round(num_docs / seconds, 1),
            "mb_per_s": round(text_bytes / 1e6 / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", help="JSONL corpus (default: the FineWeb sample, else the default corpus)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--num-val-docs", type=int, default=100)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                        help="comma-separated worker counts to time (default: 1 and all cores)")
    args = parser.parse_args()
    docs, source = load_corpus(args.docs)
    for workers in sorted({int(part) for part in args.workers.split(",")}):
        bench_one(docs, source, args, workers)


def bench_one(docs: list[str], source: str, args: argparse.Namespace, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = build_dataset(lambda: iter(docs), args.vocab_size, tmp, name="bench",
                               num_val_docs=args.num_val_docs, num_workers=workers)
        started = time.perf_counter()
        stats = dataset_stats(result["data_dir"])
        stats_seconds = time.perf_counter() - started
        started = time.perf_counter()
        check = verify_dataset(result["data_dir"])
        verify_seconds = time.perf_counter() - started
    num_docs, text_bytes = result["num_docs"], result["text_bytes"]
    tokens = stats["splits"]["val"]["tokens"] + stats["splits"]["train"]["tokens"]
    print(json.dumps({
        "bench": "data_build", "corpus": source, "docs": num_docs, "text_bytes": text_bytes, "tokens": tokens,
        "vocab_size": args.vocab_size, "workers": workers,
        "tokenizer_training": rates(num_docs, text_bytes, result["tokenizer_seconds"]),
        "export": rates(num_docs, text_bytes, result["export_seconds"]),
        "stats_seconds": round(stats_seconds, 3), "verify_seconds": round(verify_seconds, 3), "verify_ok": check.ok,
        "val_bytes_per_token": round(stats["splits"]["val"]["bytes_per_target_token"], 4),
        "environment": environment_summary(torch.device("cpu")),
    }))


if __name__ == "__main__":
    main()
