"""The one-file ``train_gpt.py`` a submission ships (tooling; never exported itself).

``pgolf export`` (pgolf/commands/export.py) writes it; ``pgolf train`` counts its size as the code bytes.
The script is a build of the package for one configuration:

1. flatten: the core modules ``pgolf.run`` imports, in dependency order, imports hoisted
   (:mod:`pgolf.export.flatten`);
2. bake: the section classes' defaults become the configuration's values, so ``Config()`` in the
   script is the baked configuration; an entry calls ``main(cfg)``. Only :data:`ENVIRONMENT_FIELDS`
   may still come from the environment (``SEED=42``); every other field is fixed;
3. specialize and shake: every read of a fixed field is replaced by its value, what that decides is
   decided, and what nothing reaches any more is dropped, whole modules included
   (:mod:`pgolf.export.specialize`, :mod:`pgolf.export.shake`); the result is checked: every name it
   reads is defined (Python's ``symtable``), and no module whose declared switch is off is left.
   Parameters no call passes by keyword become positional-only (``def f(a, b, /)``), which lets the
   minifier shorten them;
4. minify (python-minifier) and check by running both programs (:mod:`pgolf.export.verify`);
5. wrap: lzma + base85 + ``exec``, as the records do. The wrapped file's size is the code size.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import python_minifier

from pgolf.config import Config, config_to_json, flatten_config
from pgolf.data.corpus import resolve_cache_dir
from pgolf.errors import ConfigError, PgolfError
from pgolf.export.flatten import ExportError, FlattenedSource, flatten_core_modules
from pgolf.export.minify import WRAP_COMPRESS_FILTERS, minify_source, needs_source_registration, wrap_source
from pgolf.export.program import Program, Section, is_docstring, statement_bound_names
from pgolf.export.shake import (ExternalBases, ShakeResult, check_names_resolve, check_switches, declared_switch,
                                drop_dangling_annotations, make_positional_only, shake)
from pgolf.export.specialize import bake_config_defaults, config_facts, fold_program
from pgolf.export.verify import PROBE_SIZE_FIELDS, verify_minified
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.provenance import pgolf_code_hash

EXPORT_ENTRY_MODULE = "pgolf.run"
READABLE_SUFFIX = ".readable.py"
# The fields the exported script still reads from the environment; every other field is fixed at
# export time (the script refuses a variable that would change one, naming it).
ENVIRONMENT_FIELDS = frozenset({
    "seed", "iterations", "max_wallclock_seconds", "train_log_every", "val_loss_every", "val_max_tokens",
    "data_path", "tokenizer_path", "run_id", "runs_dir", "pgolf_cache_dir", "pgolf_device"})
# Names the entry adds to the shared namespace (checked against the bundled modules' names).
ENTRY_NAMES = ("_EXPORT_ENVIRONMENT", "_run_exported_script")
ENTRY_NEEDS = ("Config", "apply_config_overrides", "environment_overrides", "config_differences", "main",
               "PgolfError", "ConfigError")
# A number that appears nowhere else, replaced by the script's own size once it is known.
CODE_BYTES_PLACEHOLDER = 987654321
FIXED_POINT_TRIES = 10
# Bump when the exporter's output changes for the same package and configuration (cache key).
EXPORT_FORMAT_VERSION = 2
EXPORT_CACHE_FOLDER = "export"

ENTRY_TEMPLATE = '''# ---- train_gpt.py entry (written by pgolf export) ----
# Config() is the baked configuration: the section classes' defaults are its values. The environment
# may set only the fields named here (SEED=42, RUN_ID=...); every other field is fixed in this script.
_EXPORT_ENVIRONMENT = {environment!r}


def _run_exported_script() -> int:
    """The baked configuration < environment variables, then the training entry point (pgolf.run.main).
    The preset's name and this file's own wrapped size (the counted code bytes) are written in the call."""
    try:
        baked = Config()
        cfg = apply_config_overrides(baked, environment_overrides(os.environ), source="environment")
        fixed = [name.upper() for name in config_differences(cfg, baked) if name not in _EXPORT_ENVIRONMENT]
        if fixed:
            raise ConfigError(f"{{', '.join(fixed)}} cannot change in this train_gpt.py: the exporter built it for "
                              "the baked value. Export again with the new value (pgolf export PRESET KEY=value).")
        main(cfg, preset_name={preset!r}, preset_cfg=baked{code_bytes_argument})
    except PgolfError as error:
        print(f"train_gpt.py: error: {{error}}", file=sys.stderr)
        return 2
    return 0


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
    shipped: tuple[ShippedModule, ...] = ()
    dropped_modules: tuple[str, ...] = ()  # core modules the run imports that the configuration never reaches
    fixed_fields: tuple[str, ...] = ()  # fields folded into the script (the environment cannot change them)
    program: Any = dataclasses.field(default=None, compare=False, repr=False)  # the specialized Program

    @property
    def readable_bytes(self) -> int:
        return len(self.readable.encode("utf-8"))

    @property
    def minified_bytes(self) -> int:
        return len(self.minified.encode("utf-8"))

    @property
    def wrapped_bytes(self) -> int:
        """The counted code size: the wrapped file's bytes on disk."""
        return len(self.wrapped)

    def summary(self) -> dict:
        return {"readable_bytes": self.readable_bytes, "minified_bytes": self.minified_bytes,
                "wrapped_bytes": self.wrapped_bytes, "code_hash": self.code_hash, "preset": self.preset_name,
                "modules": list(self.modules), "dropped_modules": list(self.dropped_modules),
                "baked_code_bytes": self.baked_code_bytes}


def export_ready_config(cfg: Config) -> Config:
    """``cfg`` as the script bakes it: the run section (RUN_ID, RUNS_DIR) back to defaults, since each
    run of the script picks its own; data paths must be set, since the script cannot build data."""
    if not (cfg.data.data_path and cfg.data.tokenizer_path):
        raise ConfigError("the exported script cannot build the embedded default dataset (that code is tooling); "
                          "set DATA_PATH and TOKENIZER_PATH (for the default data: the paths `pgolf export` "
                          "prints when given a preset, or a run's config.json).")
    return dataclasses.replace(cfg, run=type(cfg.run)())


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


def _main_accepts_code_bytes(flat: FlattenedSource) -> bool:
    entry = next(module for module in flat.modules if module.name == EXPORT_ENTRY_MODULE)
    main = next((node for node in entry.tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"), None)
    if main is None:
        raise ExportError(f"{entry.path} has no top-level main(cfg, ...); the exported script calls it.")
    return any(arg.arg == "code_bytes" for arg in main.args.args + main.args.kwonlyargs)


def entry_source(preset_name: str, code_bytes: int | None) -> str:
    """The script's last section: what the environment may set, and the call of ``main`` with the preset's
    name and (when ``main`` takes it) ``code_bytes``, written as literals so the exporter can fold them."""
    return ENTRY_TEMPLATE.format(
        preset=preset_name, environment=tuple(sorted(ENVIRONMENT_FIELDS)),
        code_bytes_argument="" if code_bytes is None else f", code_bytes={code_bytes}")


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
    return [f"import {name}" for name in ("os", "sys") if name not in flat.namespace]


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
              "# The submitted train_gpt.py is this program minified and wrapped (lzma + base85 + exec); its size\n"
              "# on disk is the counted code size. It is the package specialized to the baked configuration:\n"
              "# what that configuration never runs is not here. Modules, in dependency order:\n" + listing + "\n")
    return header + "\n\n\n".join(section_text(section) for section in sections) + "\n"


def _settle_code_bytes(minified_template: str) -> tuple[str, int, bytes]:
    """(minified source, N, wrapped bytes) where the source states N and the wrapped file is exactly N
    bytes. Iterating N <- size(N) settles in a step or two; should it cycle, the largest size seen is
    kept and the file is padded with trailing newlines up to it."""
    marker = str(CODE_BYTES_PLACEHOLDER)  # it may have travelled into several functions (never into arithmetic)
    if not minified_template.count(marker):
        raise ExportError("internal: the code-bytes placeholder is missing from the minified script.")
    register = needs_source_registration(minified_template)

    def build(n: int) -> tuple[str, bytes]:
        source = minified_template.replace(marker, str(n))
        return source, wrap_source(source, register_source=register)

    guess, seen = len(wrap_source(minified_template, register_source=register)), []
    for _ in range(FIXED_POINT_TRIES):
        source, wrapped = build(guess)
        if len(wrapped) == guess:
            return source, guess, wrapped
        seen.append(guess)
        guess = len(wrapped) if len(wrapped) not in seen else max(seen + [len(wrapped)])
        if guess in seen:  # a cycle: take the largest and pad
            source, wrapped = build(guess)
            if len(wrapped) <= guess:
                return source, guess, wrapped + b"\n" * (guess - len(wrapped))
            guess = len(wrapped)
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
                          code_hash: str | None = None, verify: bool = True) -> ExportedScript:
    """The exported program for ``cfg``, in memory (nothing is written). ``verify``: run the minified
    program against the readable one first (:mod:`pgolf.export.verify`)."""
    cfg = export_ready_config(cfg)
    baked_config_values(cfg)  # every value must be a literal
    code_hash = code_hash or pgolf_code_hash()
    flat = flatten_core_modules(EXPORT_ENTRY_MODULE, package_dir, baked_functions={
        "pgolf.provenance.pgolf_code_hash": _baked_code_hash_function(code_hash)})
    with_bytes = _main_accepts_code_bytes(flat)
    spec = specialize_for(cfg, flat, entry_source(preset_name, CODE_BYTES_PLACEHOLDER if with_bytes else None))
    template = readable_source(spec.program, code_hash, preset_name)
    check_names_resolve(template)
    minified = minify_source(template)
    if with_bytes:
        minified, code_bytes, wrapped = _settle_code_bytes(minified)
        readable = template.replace(str(CODE_BYTES_PLACEHOLDER), str(code_bytes))
    else:
        readable, wrapped = template, wrap_source(minified)
    if verify:
        verify_minified(readable, minified)
    sections = shipped_sections(spec.program)[1:-1]
    dropped = tuple(m.name for m in flat.modules if m.name not in {s.name for s in sections})
    return ExportedScript(readable, minified, wrapped, tuple(s.name for s in sections), preset_name, code_hash,
                          with_bytes, _shipped_modules(spec.program, spec.shaken), dropped,
                          spec.fixed_fields, spec.program)


def module_costs(script: ExportedScript) -> dict[str, tuple[int, int]]:
    """Per shipped module: (minified bytes, wrapped bytes the script would lose without it). The second
    is an estimate, the LZMA size of the minified program less that of the program without the module's
    text, times 5/4 (base85): modules compress together, so the parts do not add up to the whole."""
    def packed(text: str) -> int:
        return len(lzma.compress(text.encode(), format=lzma.FORMAT_RAW, filters=WRAP_COMPRESS_FILTERS)) * 5 // 4

    segments = _minified_segments(script.program)
    whole = packed("".join(segments.values()))
    return {name: (len(text.encode("utf-8")),
                   whole - packed("".join(t for other, t in segments.items() if other != name)))
            for name, text in segments.items()}


def export_cache_key(cfg: Config, preset_name: str, code_hash: str) -> str:
    """What the exported bytes depend on: the code, the configuration, the preset name and the tools."""
    material = json.dumps({"code_hash": code_hash, "preset": preset_name, "format": EXPORT_FORMAT_VERSION,
                           "config": json.loads(config_to_json(cfg)), "python": platform.python_version(),
                           "minifier": getattr(python_minifier, "__version__", "?")}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def exported_code_bytes(cfg: Config, *, preset_name: str = "custom") -> int:
    """Bytes of the ``train_gpt.py`` that ``pgolf export`` would write for ``cfg``: the exact code size.

    Cached under the pgolf cache folder (``PGOLF_CACHE_DIR``) by code hash + configuration + preset,
    so a run starts without exporting again; a cache that cannot be read or written is ignored."""
    code_hash = pgolf_code_hash()
    ready = export_ready_config(cfg)
    path = resolve_cache_dir(cfg.run.pgolf_cache_dir) / EXPORT_CACHE_FOLDER / \
        f"{export_cache_key(ready, preset_name, code_hash)}.json"
    try:
        return int(json.loads(path.read_text())["wrapped_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    script = build_exported_script(cfg, preset_name=preset_name, code_hash=code_hash)
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
            raise PgolfError(f"{path} already exists; pgolf export never overwrites. Move it away or use -o.")
    return output, readable


def write_exported_script(script: ExportedScript, output: str | Path) -> tuple[Path, Path]:
    """Write the wrapped script to ``output`` and the readable one beside it; never overwrites."""
    output, readable = refuse_existing_outputs(output)
    write_bytes_atomic(output, script.wrapped)
    write_text_atomic(readable, script.readable)
    return output, readable
