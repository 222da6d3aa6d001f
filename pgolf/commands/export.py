"""``pgolf export RUN_DIR|PRESET [KEY=value ...] [-o train_gpt.py] [--json] [--explain] [--keep-messages]
[--wrapper auto|lzma|brotli] [--full-records]``
(tooling: never exported).

Writes the one-file ``train_gpt.py`` (``-o FILE``, or ``-o FOLDER/`` for ``FOLDER/train_gpt.py``; specialized to the configuration, minified, wrapped: its size is
the code size) and ``train_gpt.readable.py`` beside it; how the script is built is in
:mod:`pgolf.export.bundle`. ``--explain`` lists what ships and why. The script writes config.json,
train.log, metrics.jsonl and the artifact; ``--full-records`` makes it write ``report.json`` and the
bookkeeping of a ``pgolf train`` run too (at a cost in code bytes, docs/export.md).
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from pgolf.commands.configuration import fill_default_data, load_run_dir_config, require_run_config, resolve_config
from pgolf.config import Config, parse_cli_overrides
from pgolf.errors import ConfigError
from pgolf.fsutil import require_writable_directory
from pgolf.export.bundle import (SCRIPT_SEED, ExportedScript, build_exported_script, module_costs,
                                 refuse_existing_outputs, write_exported_script)
from pgolf.presets import PRESETS

DEFAULT_SCRIPT_NAME = "train_gpt.py"  # the name of the script inside an -o folder


def run_dir_preset(run_dir: Path) -> str:
    """The preset a run was started from (its report, else its log header), or ``custom``."""
    report = run_dir / "report.json"
    if report.is_file():
        return json.loads(report.read_text()).get("preset", "custom")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        first = metrics.read_text().splitlines()[:1]
        if first and json.loads(first[0]).get("event") == "header":
            return json.loads(first[0]).get("preset", "custom")
    return "custom"


def export_target_config(target: str, overrides: list[str]) -> tuple[Config, str]:
    """(config, preset name) for ``pgolf export TARGET``: a run directory's config.json plus ``KEY=value``
    overrides, or a preset resolved as ``pgolf train`` does (preset < environment < ``KEY=value``),
    with empty data paths pointed at the embedded default dataset's cache."""
    path = Path(target)
    if target in PRESETS:  # a bare preset name is the preset; a folder of that name is written ./NAME
        if path.is_dir():
            print(f"note: exporting the preset {target}; for the folder of that name write ./{target}", file=sys.stderr)
        cfg, _, name = resolve_config(target, overrides)
        return fill_default_data(cfg), name
    if path.is_dir():
        require_run_config(path)  # before the overrides: a wrong RUN_DIR is the first thing to say
        return load_run_dir_config(path, parse_cli_overrides(overrides)), run_dir_preset(path)
    raise ConfigError(f"{target!r} is neither a run directory nor a preset; presets: {', '.join(sorted(PRESETS))}.")


def explanation(script: ExportedScript) -> dict:
    """What ships and why: per module, what pulled it in and its bytes; what the configuration dropped."""
    costs = module_costs(script)
    modules = [{"module": m.label, "why": m.why, "switch": m.switch or None, "kept": len(m.kept),
                "dropped": len(m.dropped), "readable_bytes": m.readable_bytes,
                "minified_bytes": costs.get(m.name, (0, 0))[0], "wrapped_bytes_estimate": costs.get(m.name, (0, 0))[1]}
               for m in script.shipped]
    return {"modules": modules, "dropped_modules": list(script.dropped_modules),
            "fixed_fields": len(script.fixed_fields), "full_records": script.full_records}


def print_explanation(script: ExportedScript, explained: dict) -> None:
    print(f"{'module':40s} {'readable':>9s} {'minified':>9s} {'wrapped~':>9s}  why (names kept/dropped)")
    for row in explained["modules"]:
        print(f"{row['module']:40s} {row['readable_bytes']:9,d} {row['minified_bytes']:9,d} "
              f"{row['wrapped_bytes_estimate']:9,d}  {row['why']} ({row['kept']}/{row['dropped']})")
    dropped = ", ".join(name.removeprefix("pgolf.") for name in explained["dropped_modules"]) or "none"
    print(f"not shipped (this configuration never runs them): {dropped}")
    print("records: " + ("full (report.json and the bookkeeping of `pgolf train`)" if explained["full_records"] else
                         "lean (no report.json: --full-records adds it and the bookkeeping of `pgolf train`)"))
    print("wrapped~: bytes the script would lose without the module (LZMA compresses the modules together, so "
          "these do not add up to the total)")


def export_output_paths(output: str) -> tuple[Path, Path]:
    """(script, readable) paths for ``-o OUTPUT``: a folder (an existing one, or a path ending in ``/``)
    means ``OUTPUT/train_gpt.py``, with the readable file beside it. Refused if either exists."""
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        path = path / DEFAULT_SCRIPT_NAME
    return refuse_existing_outputs(path)


def run_export_command(args: argparse.Namespace) -> int:
    """``pgolf export``: write train_gpt.py and train_gpt.readable.py, report the byte counts. With
    ``--json`` stdout holds only the JSON: what the export prints on the way (the default dataset being
    built or reused) goes to stderr."""
    output, _ = export_output_paths(args.output)  # before the work, not after it
    require_writable_directory(output.parent, "the exported script")
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        cfg, preset_name = export_target_config(args.target, args.overrides)
        script = build_exported_script(cfg, preset_name=preset_name,
                                       keep_messages=getattr(args, "keep_messages", False),
                                       wrapper=getattr(args, "wrapper", "auto"),
                                       full_records=getattr(args, "full_records", False))
    output, readable = write_exported_script(script, output)
    explained = explanation(script) if getattr(args, "explain", False) else None
    if args.json:
        print(json.dumps({"output": str(output), "readable": str(readable), **script.summary(),
                          **({"explain": explained} if explained else {})}, indent=2))
        return 0
    if explained:
        print_explanation(script, explained)
    print(f"wrote {output}: {script.wrapped_bytes:,} bytes (wrapped: {script.wrap_codec} + base85 + exec; "
          "the counted code size)")
    print(f"wrote {readable}: {script.readable_bytes:,} bytes (the specialized program, for reviewers)")
    print(f"bytes: readable {script.readable_bytes:,} -> minified {script.minified_bytes:,} -> "
          f"wrapped {script.wrapped_bytes:,}; {len(script.modules)} modules ({len(script.dropped_modules)} not "
          f"needed by this configuration); preset {preset_name}; code hash {script.code_hash}")
    print(f"data: DATA_PATH={cfg.data.data_path} TOKENIZER_PATH={cfg.data.tokenizer_path} "
          "(baked; override with the environment variables)")
    if cfg.train.seed != SCRIPT_SEED:
        print(f"seed: SEED is never baked; run with SEED={cfg.train.seed} for this configuration's seed "
              f"(without it the script runs {SCRIPT_SEED})")
    return 0
