"""The one-file ``train_gpt.py`` a submission ships (tooling; never exported itself).

``pgolf export`` (pgolf/commands/export.py) writes it; ``pgolf train`` counts its size as the code bytes.
The script is a build of the package for one configuration:

1. flatten: the core modules the entry imports, in dependency order, imports hoisted
   (:mod:`pgolf.export.flatten`). The entry is ``pgolf.submission`` (the run without resume, checkpoints,
   run lock or the long header: what a submission never uses) unless the configuration asks for
   checkpoints (``CHECKPOINT_EVERY`` / ``CHECKPOINT_EVERY_SECONDS``), which only ``pgolf.run`` writes;
2. bake: the section classes' defaults become the configuration's values, so ``Config()`` in the
   script is the baked configuration; an entry calls ``main(cfg)`` (``full_records=False`` by default:
   the script leaves out report.json and the bookkeeping only pgolf's tools read). Only :data:`ENVIRONMENT_FIELDS`
   may still come from the environment (``SEED=42``); every other field is fixed;
3. specialize and shake: every read of a fixed field is replaced by its value, what that decides is
   decided, and what nothing reaches any more is dropped, whole modules included
   (:mod:`pgolf.export.specialize`, :mod:`pgolf.export.shake`); the result is checked: every name it
   reads is defined (Python's ``symtable``), and no module whose declared switch is off is left.
   Parameters no call passes by keyword become positional-only (``def f(a, b, /)``), which lets the
   minifier shorten them;
4. minify: each ``raise``/``assert`` message becomes the number of its line in the readable file
   (:mod:`pgolf.export.messages`; ``keep_messages`` keeps them), then python-minifier; the result is
   checked by running both programs (:mod:`pgolf.export.verify`);
5. wrap: LZMA2 or Brotli (the smaller; Brotli only when the program imports it) + base85 + ``exec``,
   as the records do. The wrapped file's size is the code size.

Two files are written and never overwrite anything: ``train_gpt.py`` (wrapped, submitted, counted)
and ``train_gpt.readable.py`` beside it (the specialized program before minification, one section per
module, docstrings kept; it runs the same).

Two values the script cannot compute about itself are baked in: the pgolf code hash (there is no
package to hash; the hash of the package it was exported from is logged, so exported and package runs
of the same code agree) and, when ``main`` accepts ``code_bytes``, the wrapped file's own size (found
as a fixed point: the number is part of the file it measures).
"""

import ast
import dataclasses
import hashlib
import json
import lzma
import platform
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import python_minifier

from pgolf.config import Config, config_to_json, flatten_config
from pgolf.data.corpus import resolve_cache_dir
from pgolf.errors import ConfigError, PgolfError
from pgolf.export.facts import config_facts
from pgolf.export.flatten import ExportError, FlattenedSource, flatten_core_modules
from pgolf.export.messages import terse_tree
from pgolf.export.minify import (WRAP_COMPRESS_FILTERS, WRAPPERS, minify_source, needs_source_registration,
                                 wrap_codec, wrap_source)
from pgolf.export.parameters import drop_unused_parameters, inline_single_calls, pass_by_position
from pgolf.export.program import Program, Section, is_docstring, statement_bound_names
from pgolf.export.shake import (ExternalBases, ShakeResult, check_names_resolve, check_switches, declared_switch,
                                drop_dangling_annotations, make_positional_only, shake)
from pgolf.export.specialize import bake_config_defaults, fold_program, remove_dead_stores
from pgolf.export.verify import PROBE_NAMES, PROBE_SIZE_FIELDS, verify_minified
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.provenance import pgolf_code_hash

# The entry the script calls: the submission's lean run, or pgolf.run when checkpoints are asked for
# (module -> its entry function).
SUBMISSION_ENTRY_MODULE = "pgolf.submission"
FULL_RUN_ENTRY_MODULE = "pgolf.run"
ENTRY_FUNCTIONS = {SUBMISSION_ENTRY_MODULE: "run_submission", FULL_RUN_ENTRY_MODULE: "main"}
READABLE_SUFFIX = ".readable.py"
# The fields the exported script still reads from the environment; every other field is fixed at
# export time (the script refuses a variable that would change one, naming it).
ENVIRONMENT_FIELDS = frozenset({
    "seed", "iterations", "max_wallclock_seconds", "train_log_every", "val_loss_every", "val_max_tokens",
    "data_path", "tokenizer_path", "run_id", "runs_dir", "pgolf_cache_dir", "pgolf_device"})
# The SEED a script runs without SEED= in the environment: pgolf's default, never a run's (export_ready_config).
SCRIPT_SEED = Config().train.seed
# Names the entry adds to the shared namespace (checked against the bundled modules' names).
ENTRY_NAMES = ("_EXPORT_ENVIRONMENT", "_run_exported_script", "_environment_config", "_error_text")
ENTRY_NEEDS = ("Config", "coerce_config_value", "check_run_settings", "PgolfError", "ConfigError")
# A number that appears nowhere else, replaced by the script's own size once it is known.
CODE_BYTES_PLACEHOLDER = 987654321
FIXED_POINT_TRIES = 10
# Without a fixed point, the sizes past the largest one seen that are tried as the stated size.
PADDING_SEARCH = 1024
# Bump when the exporter's output changes for the same package and configuration (cache key).
EXPORT_FORMAT_VERSION = 7
EXPORT_CACHE_FOLDER = "export"

ENTRY_TEMPLATE = '''# ---- train_gpt.py entry (written by pgolf export) ----
# Config() is the baked configuration: the section classes' defaults are its values. The environment
# may set only the fields named here (SEED=42, RUN_ID=...); every other field is fixed in this script.
_EXPORT_ENVIRONMENT = {environment!r}


def _run_exported_script() -> int:
    """The baked configuration < environment variables, then the training entry point ({entry}).
    The preset's name and this file's own wrapped size (the counted code bytes) are written in the call."""
    try:
        baked = Config()
        cfg = check_run_settings(_environment_config(baked))  # ITERATIONS=0 and the like, as pgolf train refuses them
        {function}(cfg, preset_name={preset!r}{main_arguments})
    except PgolfError as error:
        print(f"train_gpt.py: error: {{_error_text(error)}}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: the traceback follows; say where its message is
        print(f"train_gpt.py: {{_error_text(error)}}", file=sys.stderr)
        raise
    return 0


def _environment_config(baked: Config):
    """``baked`` with the environment's values of the fields it may set. A variable naming another field
    must hold that field's baked value: the program was built for it."""
    changes, fixed = {{}}, []
    for section in dataclasses.fields(baked):
        values = getattr(baked, section.name)
        for leaf in dataclasses.fields(values):
            text, default = os.environ.get(leaf.name.upper()), getattr(values, leaf.name)
            if text is None:
                continue
            value = coerce_config_value(leaf.name, text, tuple[str, ...] if type(default) is tuple else type(default))
            if leaf.name in _EXPORT_ENVIRONMENT:
                changes.setdefault(section.name, {{}})[leaf.name] = value
            elif value != default:
                fixed.append(leaf.name.upper())
    if fixed:
        raise ConfigError(f"{{', '.join(fixed)}} cannot change in this train_gpt.py: the exporter built it for "
                          "the baked value. Export again with the new value (pgolf export PRESET KEY=value).")
    return dataclasses.replace(baked, **{{name: dataclasses.replace(getattr(baked, name), **fields)
                                         for name, fields in changes.items()}})


def _error_text(error: Exception) -> str:
{error_text_body}


if __name__ == "__main__":
    sys.exit(_run_exported_script())
'''


@dataclass(frozen=True)
class ShippedModule:
    """One module's part of the script: what was kept, why, and what it costs."""

    name: str
    label: str
    kept: tuple[str, ...]  # its top-level names the script keeps
    dropped: tuple[str, ...]  # its top-level names the configuration never reaches
    switch: str  # its declared feature switch ("" = none)
    needed_by: str  # the first kept definition in another module that needed one of this module's
    readable_bytes: int  # its section of train_gpt.readable.py (minified bytes: module_costs)

    @property
    def why(self) -> str:
        if self.switch:
            return f"switch {self.switch} is on"
        return f"needed by {self.needed_by}"


@dataclass(frozen=True)
class ExportedScript:
    """An exported program in its three forms, and what went into it."""

    readable: str
    minified: str
    wrapped: bytes
    modules: tuple[str, ...]  # the modules that ship, in order
    preset_name: str
    code_hash: str
    baked_code_bytes: bool  # True when the script passes its own wrapped size to main(code_bytes=...)
    full_records: bool = False  # the script writes report.json and pgolf train's bookkeeping too
    shipped: tuple[ShippedModule, ...] = ()
    dropped_modules: tuple[str, ...] = ()  # core modules the run imports that the configuration never reaches
    fixed_fields: tuple[str, ...] = ()  # fields folded into the script (the environment cannot change them)
    program: Any = dataclasses.field(default=None, compare=False, repr=False)  # the specialized Program
    # The Program the counted script was minified from (messages as line numbers; --explain measures it).
    counted_program: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def readable_bytes(self) -> int:
        return len(self.readable.encode("utf-8"))

    @property
    def minified_bytes(self) -> int:
        return len(self.minified.encode("utf-8"))

    @property
    def wrap_codec(self) -> str:
        """The wrapper's compressor: "brotli" or "lzma"."""
        return "brotli" if self.wrapped.startswith(b"import brotli") else "lzma"

    @property
    def wrapped_bytes(self) -> int:
        """The counted code size: the wrapped file's bytes on disk."""
        return len(self.wrapped)

    def summary(self) -> dict:
        return {"readable_bytes": self.readable_bytes, "minified_bytes": self.minified_bytes,
                "wrapped_bytes": self.wrapped_bytes, "wrap_codec": self.wrap_codec, "code_hash": self.code_hash,
                "preset": self.preset_name,
                "modules": list(self.modules), "dropped_modules": list(self.dropped_modules),
                "baked_code_bytes": self.baked_code_bytes, "full_records": self.full_records}


def export_ready_config(cfg: Config) -> Config:
    """``cfg`` as the script bakes it: the run section (RUN_ID, RUNS_DIR) and SEED back to defaults, since
    each run of the script picks its own (``SEED=42 python train_gpt.py``). So every seed of one
    configuration has one script and logs one code size, which a record's single ``train_gpt.py`` needs;
    data paths must be set, since the script cannot build data."""
    if not (cfg.data.data_path and cfg.data.tokenizer_path):
        raise ConfigError("the exported script cannot build the embedded default dataset (that code is tooling); "
                          "set DATA_PATH and TOKENIZER_PATH (for the default data: the paths `pgolf export` "
                          "prints when given a preset, or a run's config.json).")
    ready = dataclasses.replace(cfg, run=type(cfg.run)(), train=dataclasses.replace(cfg.train, seed=SCRIPT_SEED))
    return dataclasses.replace(ready, **{section.name: _floats_as_floats(getattr(ready, section.name))
                                         for section in dataclasses.fields(ready)})


def _floats_as_floats(section: Any) -> Any:
    """``section`` with an int held by a float field made a float: the script reads a variable with the
    type of the baked value (MAX_WALLCLOCK_SECONDS=1.5 must work where a caller wrote 600)."""
    hints = typing.get_type_hints(type(section))
    return dataclasses.replace(section, **{leaf.name: float(getattr(section, leaf.name))
                                           for leaf in dataclasses.fields(section)
                                           if hints[leaf.name] is float and type(getattr(section, leaf.name)) is int})


def baked_config_values(cfg: Config) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from pgolf's defaults, by upper-case flat name."""
    defaults = flatten_config(Config())
    values = {name.upper(): value for name, value in flatten_config(cfg).items() if value != defaults[name]}
    if ast.literal_eval(repr(values)) != values:
        raise ExportError(f"a config value cannot be written as a Python literal: {values!r}.")
    return values


def _changed_defaults(cfg: Config) -> dict[str, dict[str, Any]]:
    """Section class -> {field: value} where ``cfg`` differs from the defaults."""
    defaults, changed = Config(), {}
    for section in dataclasses.fields(cfg):
        mine, theirs = getattr(cfg, section.name), getattr(defaults, section.name)
        changed[type(mine).__name__] = {leaf.name: getattr(mine, leaf.name) for leaf in dataclasses.fields(mine)
                                        if getattr(mine, leaf.name) != getattr(theirs, leaf.name)}
    return changed


# The entry's _error_text: with messages kept, the message itself; without, where to read it. The
# counted script's messages are line numbers of train_gpt.readable.py, followed by the values the message
# quotes (pgolf.export.messages); a caught error's message may end in the number when another message
# quotes it. Not the class name: the minifier renamed the program's own classes (the line shows it).
ERROR_TEXT_KEPT = "    return str(error)"
ERROR_TEXT_POINTER = '''    """Where the message is: this script's messages are lines of train_gpt.readable.py."""
    where = "of train_gpt.readable.py (written beside this script by pgolf export; --keep-messages keeps the messages here)"
    line, *quoted = error.args or (None,)
    # isinstance, not type(line) is int: the exporter takes type(x) of an unknown x as something that may
    # rebuild any class, and would keep every dataclass field live (about 600 bytes on record_sp8192).
    if quoted and isinstance(line, int) and not isinstance(error, OSError):
        return f"see line {line} {where}; it quotes {', '.join(repr(value) for value in quoted)}"
    text = str(error).strip("'")
    before, _, line = text.rpartition(": ")  # (the whole text when it is just the number)
    if not line.isdigit():
        return text
    return f"{before + ': ' if before else ''}see line {line} {where}"'''


def export_entry_module(cfg: Config) -> str:
    """The module whose entry function the script calls: checkpoints need pgolf.run, nothing else does."""
    wants_checkpoints = cfg.train.checkpoint_every > 0 or cfg.train.checkpoint_every_seconds > 0
    return FULL_RUN_ENTRY_MODULE if wants_checkpoints else SUBMISSION_ENTRY_MODULE


def _main_parameters(flat: FlattenedSource, entry_module: str) -> list[str]:
    entry = next(module for module in flat.modules if module.name == entry_module)
    name = ENTRY_FUNCTIONS[entry_module]
    main = next((node for node in entry.tree.body if isinstance(node, ast.FunctionDef) and node.name == name), None)
    if main is None:
        raise ExportError(f"{entry.path} has no top-level {name}(cfg, ...); the exported script calls it.")
    return [arg.arg for arg in main.args.args + main.args.kwonlyargs]


def entry_source(preset_name: str, code_bytes: int | None, *, entry_module: str = FULL_RUN_ENTRY_MODULE,
                 main_parameters: tuple[str, ...] = ("preset_cfg", "code_bytes"), keep_messages: bool = True,
                 full_records: bool = False) -> str:
    """The script's last section: what the environment may set, and the call of ``main`` with the preset's
    name, the baked configuration (when ``main`` takes ``preset_cfg``), ``code_bytes`` (when ``main``
    takes it and it is known) and ``full_records`` (when ``main`` takes it: report.json and the
    bookkeeping of ``pgolf train``), written as literals so the exporter can fold them."""
    arguments = ", preset_cfg=baked" if "preset_cfg" in main_parameters else ""
    if code_bytes is not None and "code_bytes" in main_parameters:
        arguments += f", code_bytes={code_bytes}"
    if "full_records" in main_parameters:
        arguments += f", full_records={full_records}"
    return ENTRY_TEMPLATE.format(preset=preset_name, environment=tuple(sorted(ENVIRONMENT_FIELDS)),
                                 entry=f"{entry_module}.{ENTRY_FUNCTIONS[entry_module]}",
                                 function=ENTRY_FUNCTIONS[entry_module], main_arguments=arguments,
                                 error_text_body=ERROR_TEXT_KEPT if keep_messages else ERROR_TEXT_POINTER)


def _baked_code_hash_function(code_hash: str) -> str:
    return (f"def pgolf_code_hash() -> str:\n"
            f"    # Baked by pgolf export: the hash of the package this script was exported from.\n"
            f"    return {code_hash!r}")


def _check_entry_names(flat: FlattenedSource) -> list[str]:
    """Extra imports the entry needs; refuse if its names clash with the bundle's."""
    clashes = [name for name in ENTRY_NAMES if name in flat.namespace]
    missing = [name for name in ENTRY_NEEDS if name not in flat.namespace]
    if clashes or missing:
        raise ExportError(f"the export entry cannot be added: names taken {clashes}, names missing {missing}.")
    return [f"import {name}" for name in ("dataclasses", "os", "sys") if name not in flat.namespace]


def _program(flat: FlattenedSource, entry: str) -> Program:
    """The flattened modules as a Program: the hoisted imports, one section per module, the entry."""
    imports = "\n".join(flat.import_lines + _check_entry_names(flat))
    sections = [Section("imports", "imports", ast.parse(imports).body)]
    for module, text in zip(flat.modules, flat.sections):
        body = ast.parse(text, filename=str(module.path)).body
        section = Section(module.name, module.label, body, declared_switch(module.tree, module.label))
        section.defined = [name for statement in body for name in statement_bound_names(statement)]
        sections.append(section)
    sections.append(Section("entry", "train_gpt.py entry", ast.parse(entry).body))
    return Program(sections)


@dataclass
class _Specialized:
    program: Program
    shaken: ShakeResult
    fixed_fields: tuple[str, ...]
    flat_config: dict


def specialize_for(cfg: Config, flat: FlattenedSource, entry: str) -> _Specialized:
    """The program for ``cfg`` (export-ready): baked, folded, shaken and checked."""
    program = _program(flat, entry)
    facts = config_facts(cfg, program, ENVIRONMENT_FIELDS | PROBE_SIZE_FIELDS)
    bake_config_defaults(program, facts, _changed_defaults(cfg))
    bases = ExternalBases(program)
    results: list[ShakeResult] = []
    fold_program(program, facts, after_round=lambda p: results.append(shake(p, bases)),
                 opaque=frozenset({CODE_BYTES_PLACEHOLDER}))
    drop_dangling_annotations(program)
    make_positional_only(program, bases)  # so that python-minifier may shorten parameter names too
    flat_config = flatten_config(cfg)
    check_switches(program, flat_config, results[-1])
    fixed = tuple(sorted(name for values in facts.folded.values() for name in values))
    return _Specialized(program, results[-1], fixed, flat_config)


def section_text(section: Section) -> str:
    return f"# ---- {section.label} ----\n" + "\n\n\n".join(ast.unparse(statement) for statement in section.body)


def shipped_sections(program: Program) -> list[Section]:
    """Sections with code left (a module whose code is all gone leaves nothing, docstring included)."""
    return [s for s in program.sections if any(not is_docstring(statement) for statement in s.body)]


def readable_source(program: Program, code_hash: str, preset_name: str) -> str:
    sections = shipped_sections(program)
    listing = "".join(f"#   {section.label}\n" for section in sections[1:-1])
    header = ("# train_gpt.py, readable version, written by `pgolf export` "
              f"(pgolf code hash {code_hash}, configuration {preset_name}).\n"
              "# The submitted train_gpt.py is this program minified and wrapped (lzma or brotli + base85 + exec);\n"
              "# its size on disk is the counted code size. It is the package specialized to the baked\n"
              "# configuration: what that configuration never runs is not here. Modules, in dependency order:\n"
              + listing + "\n")
    return header + "\n\n\n".join(section_text(section) for section in sections) + "\n"


def counted_program(template: str, program: Program) -> Program:
    """What the counted script minifies: the readable program (``template``, written from ``program``)
    with each message replaced by its line in the readable file (:mod:`pgolf.export.messages`), less
    what only those messages used: locals that worded them, and functions that did (dead stores are
    removed and the program is shaken again). The readable file keeps everything."""
    tree = ast.parse(template)
    terse_tree(tree)  # parsed from the readable text, so the line numbers are that file's
    sections, start = [], 0
    for section in shipped_sections(program):  # the readable file's statements, section by section
        sections.append(Section(section.name, section.label, tree.body[start:start + len(section.body)]))
        start += len(section.body)
    if start != len(tree.body):
        raise ExportError("internal: the readable program does not match the specialized one.")
    counted = Program(sections)
    remove_dead_stores(counted)
    while drop_unused_parameters(counted, keep=frozenset(PROBE_NAMES)):  # a dropped argument can leave its
        remove_dead_stores(counted)  # caller's parameter unread, and a store that computed it dead
    inline_single_calls(counted, keep=frozenset(PROBE_NAMES))
    pass_by_position(counted, keep=frozenset(PROBE_NAMES))
    make_positional_only(counted, ExternalBases(counted))  # parameters no call names any more
    shake(counted, ExternalBases(counted))
    check_names_resolve(program_source(counted))
    return counted


def counted_source(template: str, program: Program) -> str:
    return program_source(counted_program(template, program))


def program_source(program: Program) -> str:
    return "\n".join(ast.unparse(statement) for statement in program.statements()) + "\n"


def _settle_code_bytes(minified_template: str, codec: str | None = None) -> tuple[str, int, bytes]:
    """(minified source, N, wrapped bytes) where the source states N and the wrapped file is exactly N
    bytes. Iterating N <- size(N) settles in a step or two; should it cycle, the smallest N whose script
    is at most N bytes is stated and the file is padded with trailing newlines up to it."""
    marker = str(CODE_BYTES_PLACEHOLDER)  # it may have travelled into several functions (never into arithmetic)
    if not minified_template.count(marker):
        raise ExportError("internal: the code-bytes placeholder is missing from the minified script.")
    register = needs_source_registration(minified_template)
    # Chosen once (by the caller, or here): a codec that flipped with N could never settle.
    codec = codec or wrap_codec(minified_template)

    def build(n: int) -> tuple[str, bytes]:
        source = minified_template.replace(marker, str(n))
        return source, wrap_source(source, register_source=register, codec=codec)

    guess, seen = len(wrap_source(minified_template, register_source=register, codec=codec)), []
    for _ in range(FIXED_POINT_TRIES):
        source, wrapped = build(guess)
        if len(wrapped) == guess:
            return source, guess, wrapped
        seen.append(guess)
        if len(wrapped) in seen:  # a cycle: no fixed point on this path
            break
        guess = len(wrapped)
    for n in range(min(seen), max(seen) + PADDING_SEARCH):
        source, wrapped = build(n)
        if len(wrapped) <= n:
            return source, n, wrapped + b"\n" * (n - len(wrapped))
    raise ExportError("could not settle the script's own byte count; please report this.")


def _shipped_modules(program: Program, shaken: ShakeResult) -> tuple[ShippedModule, ...]:
    """Per module: what was kept and why, and its readable bytes."""
    owner = {name: section.label for section in program.sections for name in section.defined}
    shipped = []
    for section in shipped_sections(program)[1:-1]:
        kept = tuple(n for s in section.body if not is_docstring(s) for n in statement_bound_names(s))
        referrers = [shaken.needed_by.get(name, "") for name in kept]
        outside = [by for by in referrers if by and owner.get(by.split(".")[0], "entry") != section.label]
        by = outside[0] if outside else next((by for by in referrers if by), "")
        by_label = f"{by} ({owner.get(by.split('.')[0], 'entry')})" if by else "module level"
        shipped.append(ShippedModule(section.name, section.label, kept,
                                     tuple(n for n in section.defined if n not in kept), section.switch, by_label,
                                     len(section_text(section).encode("utf-8"))))
    return tuple(shipped)


SECTION_MARKER = "__pgolf_export_section__"


def _minified_segments(program: Program) -> dict[str, str]:
    """The minified text of each shipped module: the program is minified once more with a marker call
    before each module (``__pgolf_export_section__('pgolf.x')``, which python-minifier keeps in place)
    and cut at the markers. For --explain only: the shipped script has no markers."""
    sections = shipped_sections(program)
    parts = [section_text(sections[0])]
    for section in sections[1:]:
        parts.append(f"{SECTION_MARKER}({section.name!r})\n" + section_text(section))
    marked = minify_source("\n\n\n".join(parts) + "\n")
    segments = {}
    pieces = marked.split(SECTION_MARKER + "(")
    for piece in pieces[1:]:
        name, _, rest = piece.partition(")")
        segments[ast.literal_eval(name)] = rest.strip(";\n")
    return segments


def build_exported_script(cfg: Config, *, preset_name: str = "custom", package_dir: Path | None = None,
                          code_hash: str | None = None, verify: bool = True,
                          keep_messages: bool = False, wrapper: str = "auto",
                          full_records: bool = False) -> ExportedScript:
    """The exported program for ``cfg``, in memory (nothing is written). ``verify``: run the minified
    program against the readable one first (:mod:`pgolf.export.verify`). ``keep_messages``: the counted
    script keeps its error messages (by default each is the line of the readable file that holds it).
    ``wrapper``: "auto" (LZMA2, or Brotli when smaller and the program imports brotli), "lzma" or "brotli"
    (Brotli always: the script then needs the brotli package even if its compressor does not).
    ``full_records``: the script also writes report.json (the fields of a ``pgolf train`` run) and the
    bookkeeping only pgolf's tools read; by default it leaves them out (docs/export.md)."""
    if wrapper not in WRAPPERS and wrapper != "auto":
        raise ConfigError(f"unknown wrapper {wrapper!r}; use auto, lzma or brotli.")
    cfg = export_ready_config(cfg)
    baked_config_values(cfg)  # every value must be a literal
    code_hash = code_hash or pgolf_code_hash()
    entry_module = export_entry_module(cfg)
    flat = flatten_core_modules(entry_module, package_dir, baked_functions={
        "pgolf.provenance.pgolf_code_hash": _baked_code_hash_function(code_hash)})
    parameters = tuple(_main_parameters(flat, entry_module))
    with_bytes = "code_bytes" in parameters
    spec = specialize_for(cfg, flat, entry_source(preset_name, CODE_BYTES_PLACEHOLDER if with_bytes else None,
                                                  entry_module=entry_module, main_parameters=parameters,
                                                  keep_messages=keep_messages, full_records=full_records))
    template = readable_source(spec.program, code_hash, preset_name)
    check_names_resolve(template)
    counted_prog = spec.program if keep_messages else counted_program(template, spec.program)
    counted = template if keep_messages else program_source(counted_prog)
    minified = minify_source(counted)
    codec = wrap_codec(minified) if wrapper == "auto" else wrapper
    if with_bytes:
        minified, code_bytes, wrapped = _settle_code_bytes(minified, codec)
        readable = template.replace(str(CODE_BYTES_PLACEHOLDER), str(code_bytes))
        counted = counted.replace(str(CODE_BYTES_PLACEHOLDER), str(code_bytes))
    else:
        readable, wrapped = template, wrap_source(minified, codec=codec)
    if verify:  # the readable file against what ships: checks the counted program's changes and the minifier
        verify_minified(readable, minified, counted)
    sections = shipped_sections(spec.program)[1:-1]
    dropped = tuple(m.name for m in flat.modules if m.name not in {s.name for s in sections})
    return ExportedScript(readable, minified, wrapped, tuple(s.name for s in sections), preset_name, code_hash,
                          with_bytes, full_records, _shipped_modules(spec.program, spec.shaken), dropped,
                          spec.fixed_fields, spec.program, counted_prog)


def module_costs(script: ExportedScript) -> dict[str, tuple[int, int]]:
    """Per shipped module: (minified bytes, wrapped bytes the script would lose without it). The second
    is an estimate, the LZMA size of the minified program less that of the program without the module's
    text, times 5/4 (base85): modules compress together, so the parts do not add up to the whole."""
    def packed(text: str) -> int:
        return len(lzma.compress(text.encode(), format=lzma.FORMAT_RAW, filters=WRAP_COMPRESS_FILTERS)) * 5 // 4

    segments = _minified_segments(script.counted_program or script.program)
    whole = packed("".join(segments.values()))
    return {name: (len(text.encode("utf-8")),
                   whole - packed("".join(t for other, t in segments.items() if other != name)))
            for name, text in segments.items()}


def export_cache_key(cfg: Config, preset_name: str, code_hash: str, full_records: bool = False) -> str:
    """What the exported bytes depend on: the code, the configuration, the preset name, the records the
    script keeps and the tools."""
    material = json.dumps({"code_hash": code_hash, "preset": preset_name, "format": EXPORT_FORMAT_VERSION,
                           "full_records": full_records,
                           "config": json.loads(config_to_json(cfg)), "python": platform.python_version(),
                           "minifier": getattr(python_minifier, "__version__", "?")}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def exported_code_bytes(cfg: Config, *, preset_name: str = "custom", full_records: bool = False) -> int:
    """Bytes of the ``train_gpt.py`` that ``pgolf export`` would write for ``cfg`` (``--full-records``:
    ``full_records``): the exact code size.

    Cached under the pgolf cache folder (``PGOLF_CACHE_DIR``) by code hash + configuration + preset +
    records, so a run starts without exporting again; a cache that cannot be read or written is ignored."""
    code_hash = pgolf_code_hash()
    ready = export_ready_config(cfg)
    path = resolve_cache_dir(cfg.run.pgolf_cache_dir) / EXPORT_CACHE_FOLDER / \
        f"{export_cache_key(ready, preset_name, code_hash, full_records)}.json"
    try:
        return int(json.loads(path.read_text())["wrapped_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    script = build_exported_script(cfg, preset_name=preset_name, code_hash=code_hash, full_records=full_records)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"wrapped_bytes": script.wrapped_bytes, "preset": preset_name,
                                            "code_hash": code_hash, **{k: v for k, v in script.summary().items()
                                                                       if k.endswith("_bytes")}}),
                          overwrite=True)
    except (OSError, PgolfError):
        pass
    return script.wrapped_bytes


def readable_path_for(output: Path) -> Path:
    """``train_gpt.py`` -> ``train_gpt.readable.py`` in the same folder."""
    return output.with_name(output.name.removesuffix(".py") + READABLE_SUFFIX)


def refuse_existing_outputs(output: str | Path) -> tuple[Path, Path]:
    """(script path, readable path), or an error if either exists: an export never overwrites."""
    output = Path(output)
    readable = readable_path_for(output)
    for path in (output, readable):
        if path.exists():
            raise PgolfError(f"{path} already exists; pgolf export never overwrites. Move it away, or give -o "
                             "another file or folder.")
    return output, readable


def write_exported_script(script: ExportedScript, output: str | Path) -> tuple[Path, Path]:
    """Write the wrapped script to ``output`` and the readable one beside it; never overwrites."""
    output, readable = refuse_existing_outputs(output)
    write_bytes_atomic(output, script.wrapped)
    write_text_atomic(readable, script.readable)
    return output, readable
