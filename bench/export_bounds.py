"""What the exported script could at best lose by removing whole kinds of code (issue 15's size targets).

    python bench/export_bounds.py                       # record_sp8192, top_sp8192, baseline_sp1024
    python bench/export_bounds.py tiny_cpu

For each preset, the shipped (minified) program is rewritten in ways that do not run and wrapped the same
way, to bound what a kind of code costs in counted bytes:

- ``no checks``: every ``raise`` statement, every ``if ...: raise ...`` guard and every ``assert``
  removed (the messages are line numbers already; this removes the tests and the raises themselves);
- ``short names``: every identifier the program defines itself (attributes, keyword and field names
  included; not those of Python, torch, numpy or the standard library modules it imports) renamed to
  one or two letters, the most frequent first: a bound on whole-program renaming;
- ``both``.

The rewritten programs are analyses, not scripts: nothing here is exported.
"""

import argparse
import ast
import builtins
import importlib
import io
import itertools
import keyword
import string
import sys
import tokenize

import torch

from export_size import TARGETS, commit, machine, preset_config
from pgolf.export.bundle import build_exported_script
from pgolf.export.minify import minify_source, wrap_source

# Modules whose attribute names the shipped program may use: their names are not the program's own.
FOREIGN_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.distributed", "torch.optim", "torch.cuda",
                   "numpy", "os", "re", "json", "math", "dataclasses", "pathlib", "typing", "hashlib", "struct",
                   "time", "tempfile", "random", "copy", "functools", "contextlib", "secrets", "sys", "lzma",
                   "zlib", "brotli", "sentencepiece", "io", "itertools", "collections", "shutil", "signal")
FOREIGN_TYPES = (str, bytes, dict, list, tuple, set, int, float, torch.Tensor, torch.nn.Module,
                 torch.optim.Optimizer)


def without_checks(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if not _is_check(s)]
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
    return ast.unparse(tree)


def _is_check(statement: ast.stmt) -> bool:
    if isinstance(statement, (ast.Raise, ast.Assert)):
        return statement.exc is not None if isinstance(statement, ast.Raise) else True
    return (isinstance(statement, ast.If) and not statement.orelse and len(statement.body) == 1
            and isinstance(statement.body[0], ast.Raise))


def foreign_names() -> set[str]:
    names = set(dir(builtins))
    for module in FOREIGN_MODULES:
        try:
            names |= set(dir(importlib.import_module(module)))
        except ImportError:
            continue
    for kind in FOREIGN_TYPES:
        names |= set(dir(kind))
    return names


def with_short_names(source: str) -> str:
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    counts: dict[str, int] = {}
    for token in tokens:
        if token.type == tokenize.NAME and not keyword.iskeyword(token.string):
            counts[token.string] = counts.get(token.string, 0) + 1
    foreign = foreign_names()
    own = sorted((n for n in counts if len(n) > 2 and n not in foreign), key=lambda n: -counts[n])
    free = (s for size in (1, 2) for s in map("".join, itertools.product(string.ascii_letters, repeat=size))
            if s not in counts and not keyword.iskeyword(s))
    renamed = dict(zip(own, free))
    return tokenize.untokenize((t.type, renamed.get(t.string, t.string) if t.type == tokenize.NAME else t.string)
                               for t in tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["record_sp8192", "top_sp8192", "baseline_sp1024"])
    args = parser.parse_args()
    for name in args.presets:
        script = build_exported_script(preset_config(name), preset_name=name, verify=False)
        codec = script.wrap_codec
        base = script.minified
        variants = {"as shipped": base, "no checks": without_checks(base), "short names": with_short_names(base)}
        variants["both"] = with_short_names(variants["no checks"])
        target = TARGETS.get(name, {}).get("wrapped")
        print(f"{name} ({codec} wrapper)" + (f", target {target:,} wrapped bytes" if target else ""))
        for label, text in variants.items():
            text = text if text is base else minify_source(text)  # the shipped layout again
            wrapped = len(wrap_source(text, codec=codec))
            print(f"    {label:12s} minified {len(text.encode()):8,d}  wrapped {wrapped:7,d}  "
                  f"({wrapped - script.wrapped_bytes:+,d})")
    print(f"machine: {machine()}; commit {commit()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
