"""Bytes of the exported train_gpt.py per preset: readable, minified, wrapped, modules shipped.

    python bench/export_size.py                              # every preset (without the *_1gpu twins)
    python bench/export_size.py record_sp8192 --explain      # ... and what each module costs
    python bench/export_size.py baseline_sp1024 --options    # python-minifier option variants, wrapped bytes
    python bench/export_size.py record_sp8192 --variants     # what each export choice saves, wrapped bytes
                                                             # (messages kept, --full-records, checkpoints, wrappers)

The wrapped size is the counted code size (the file ``pgolf export`` writes). Data paths are set to
placeholders: they are baked as strings, so they cost their length (the presets' own paths are used
where they have them). The targets of issue 15 are printed beside the presets they concern.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from unittest import mock

import torch

from pgolf.config import apply_config_overrides
from pgolf.export import messages
from pgolf.export.bundle import build_exported_script, module_costs
from pgolf.export.minify import MINIFY_OPTIONS, minify_source, wrap_source
from pgolf.presets import PRESETS

# Issue 15: wrapped bytes at most (the baseline's readable target is its own train_gpt.py, 47,686 bytes).
TARGETS = {"record_sp8192": {"wrapped": 16_000}, "top_sp8192": {"wrapped": 24_000},
           "baseline_sp1024": {"wrapped": 12_000, "readable": 47_686}}
OPTION_VARIANTS = {
    "chosen": {},
    "single line off": {"prefer_single_line": False},
    "hoist literals": {"hoist_literals": True},
    "no global renaming": {"rename_globals": False},
    "remove asserts": {"remove_asserts": True},
}


def preset_config(name: str):
    cfg = PRESETS[name]()
    paths = {key: value for key, value in (("DATA_PATH", "./data/datasets/fineweb10B_sp1024"),
                                           ("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model"))
             if not getattr(cfg.data, key.lower())}
    return apply_config_overrides(cfg, paths, source="bench")


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or 'cpu'}, Python {platform.python_version()}, torch {torch.__version__}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def print_variants(name: str, script) -> None:
    """The same preset exported with one choice changed: what that choice is worth in counted bytes."""
    cfg = preset_config(name)
    kept = build_exported_script(cfg, preset_name=name, keep_messages=True, verify=False)
    full = build_exported_script(apply_config_overrides(cfg, {"CHECKPOINT_EVERY": "100"}, source="bench"),
                                 preset_name=name, verify=False)
    records = build_exported_script(cfg, preset_name=name, full_records=True, verify=False)
    # The error pointers alone, without the values each message quotes (what naming them costs).
    with mock.patch.object(messages, "quoted_values", lambda message: []):
        unquoted = build_exported_script(cfg, preset_name=name, verify=False)
    rows = {f"chosen ({script.wrap_codec} wrapper)": script.wrapped_bytes, "messages kept": kept.wrapped_bytes,
            "pointers without quoted values": unquoted.wrapped_bytes,
            "full records (report.json)": records.wrapped_bytes,
            "full pgolf.run entry (checkpoints)": full.wrapped_bytes}
    for codec in ("lzma", "brotli"):
        rows[f"{codec} wrapper"] = len(wrap_source(script.minified, codec=codec))
    for label, wrapped in rows.items():
        print(f"    variant {label:36s} wrapped {wrapped:7,d}  ({wrapped - script.wrapped_bytes:+,d})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=sorted(n for n in PRESETS if not n.endswith("_1gpu")))
    parser.add_argument("--explain", action="store_true", help="per module: minified bytes, wrapped share")
    parser.add_argument("--options", action="store_true", help="wrapped bytes under python-minifier option variants")
    parser.add_argument("--variants", action="store_true",
                        help="wrapped bytes with the messages kept, without the values messages quote, with full records (--full-records), with "
                             "the full pgolf.run entry (CHECKPOINT_EVERY=100) and with each wrapper codec")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.presets:
        started = time.perf_counter()
        script = build_exported_script(preset_config(name), preset_name=name)
        seconds = time.perf_counter() - started
        target = TARGETS.get(name, {})
        row = {"preset": name, "readable": script.readable_bytes, "minified": script.minified_bytes,
               "wrapped": script.wrapped_bytes, "modules": len(script.modules),
               "not_shipped": len(script.dropped_modules), "seconds": round(seconds, 1), "target": target}
        rows.append(row)
        over = ", ".join(f"{kind} {row[kind] - limit:+,}" for kind, limit in target.items())
        print(f"{name:22s} readable {row['readable']:8,d}  minified {row['minified']:8,d}  wrapped {row['wrapped']:7,d}  "
              f"modules {row['modules']:2d} (+{row['not_shipped']} not shipped)  {seconds:5.1f}s"
              + (f"  vs target: {over}" if over else ""), flush=True)
        if args.explain:
            for module, (minified, wrapped) in sorted(module_costs(script).items(), key=lambda item: -item[1][1]):
                print(f"    {module:42s} minified {minified:7,d}  wrapped~ {wrapped:6,d}")
        if args.variants:
            print_variants(name, script)
        if args.options:
            for label, change in OPTION_VARIANTS.items():
                minified = minify_source(script.readable, {**MINIFY_OPTIONS, **change})
                print(f"    options {label:20s} minified {len(minified):8,d}  wrapped {len(wrap_source(minified)):7,d}")
    print(f"machine: {machine()}; commit {commit()}; {time.strftime('%Y-%m-%d')}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
