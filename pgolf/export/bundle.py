"""The one-file ``train_gpt.py`` a submission ships (tooling; never exported itself).

``pgolf export`` (pgolf/commands/export.py) writes it; ``pgolf train`` counts its size as the code bytes.
The script is built in four steps:

1. flatten: the core modules ``pgolf.run`` needs, in dependency order, imports hoisted
   (:mod:`pgolf.export.flatten`);
2. bake: the configuration becomes a literal (the fields that differ from pgolf's defaults), and an
   entry calls ``main(cfg)`` with baked config < environment variables (``SEED=42`` still works);
3. minify: docstrings, comments, blank lines and needless spaces go (:mod:`pgolf.export.minify`);
4. wrap: lzma + base85 + ``exec``, as the records do. The wrapped file's size is the code size.

Two files are written and never overwrite anything: ``train_gpt.py`` (wrapped, submitted, counted)
and ``train_gpt.readable.py`` beside it (flattened, commented, for reviewers; runs the same program).

Two values the script cannot compute about itself are baked in: the pgolf code hash (there is no
package to hash; the hash of the package it was exported from is logged, so exported and package runs
of the same code agree) and, when ``main`` accepts ``code_bytes``, the wrapped file's own size (found
as a fixed point: the number is part of the file it measures).
"""

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.config import Config, flatten_config
from pgolf.errors import ConfigError, PgolfError
from pgolf.export.flatten import ExportError, FlattenedSource, flatten_core_modules
from pgolf.export.minify import minify_source, wrap_source
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.provenance import pgolf_code_hash

EXPORT_ENTRY_MODULE = "pgolf.run"
READABLE_SUFFIX = ".readable.py"
# Names the entry adds to the shared namespace (checked against the bundled modules' names).
ENTRY_NAMES = ("_EXPORT_PRESET", "_EXPORT_CONFIG", "_EXPORT_CODE_BYTES", "_run_exported_script")
ENTRY_NEEDS = ("Config", "apply_config_overrides", "environment_overrides", "main", "PgolfError")
CODE_BYTES_PLACEHOLDER = 0
FIXED_POINT_TRIES = 10

ENTRY_TEMPLATE = '''# ---- train_gpt.py entry (written by pgolf export) ----
# The configuration baked in at export time: the fields that differ from pgolf's defaults. Environment
# variables with the same flat names (SEED=42, RUN_ID=..., DATA_PATH=...) override them.
_EXPORT_PRESET = {preset!r}
_EXPORT_CONFIG = {{
{config_items}}}
{code_bytes_line}

def _run_exported_script() -> int:
    """Baked configuration < environment variables, then the training entry point (pgolf.run.main)."""
    try:
        baked = apply_config_overrides(Config(), _EXPORT_CONFIG, source="the configuration baked into train_gpt.py")
        cfg = apply_config_overrides(baked, environment_overrides(os.environ), source="environment")
        main(cfg, preset_name=_EXPORT_PRESET, preset_cfg=baked{code_bytes_argument})
    except PgolfError as error:
        print(f"train_gpt.py: error: {{error}}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_run_exported_script())
'''


@dataclass(frozen=True)
class ExportedScript:
    """An exported program in its three forms, and what went into it."""

    readable: str
    minified: str
    wrapped: bytes
    modules: tuple[str, ...]
    preset_name: str
    code_hash: str
    baked_code_bytes: bool  # True when the script passes its own wrapped size to main(code_bytes=...)

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
                "modules": list(self.modules), "baked_code_bytes": self.baked_code_bytes}


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


def _main_accepts_code_bytes(flat: FlattenedSource) -> bool:
    entry = next(module for module in flat.modules if module.name == EXPORT_ENTRY_MODULE)
    main = next((node for node in entry.tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"), None)
    if main is None:
        raise ExportError(f"{entry.path} has no top-level main(cfg, ...); the exported script calls it.")
    return any(arg.arg == "code_bytes" for arg in main.args.args + main.args.kwonlyargs)


def entry_source(preset_name: str, values: dict[str, Any], code_bytes: int | None) -> str:
    """The script's last section: baked values and the call of ``main``."""
    items = "".join(f"    {name!r}: {value!r},\n" for name, value in values.items())
    with_bytes = code_bytes is not None
    return ENTRY_TEMPLATE.format(
        preset=preset_name, config_items=items,
        code_bytes_line=(f"_EXPORT_CODE_BYTES = {code_bytes}  # this file's wrapped size (the counted code bytes)\n"
                         if with_bytes else ""),
        code_bytes_argument=", code_bytes=_EXPORT_CODE_BYTES" if with_bytes else "")


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


def _readable_source(flat: FlattenedSource, entry: str, code_hash: str) -> str:
    extra_imports = _check_entry_names(flat)
    listing = "".join(f"#   {module.label}\n" for module in flat.modules)
    header = ("# train_gpt.py, readable version, written by `pgolf export` "
              f"(pgolf code hash {code_hash}).\n"
              "# The submitted train_gpt.py is this program minified and wrapped (lzma + base85 + exec);\n"
              "# its size on disk is the counted code size. Modules, in dependency order:\n" + listing + "\n")
    imports = "\n".join(flat.import_lines + extra_imports)
    return header + imports + "\n\n\n" + "\n\n\n".join(flat.sections) + "\n\n\n" + entry


def _settle_code_bytes(minified_template: str) -> tuple[str, int, bytes]:
    """(minified source, N, wrapped bytes) where the source says ``_EXPORT_CODE_BYTES=N`` and the
    wrapped file is exactly N bytes. Iterating N <- size(N) settles in a step or two; should it cycle,
    the largest size seen is kept and the file is padded with trailing newlines up to it."""
    marker = f"\n_EXPORT_CODE_BYTES={CODE_BYTES_PLACEHOLDER}\n"
    if minified_template.count(marker) != 1:
        raise ExportError("internal: the code-bytes placeholder is missing from the minified script.")

    def build(n: int) -> tuple[str, bytes]:
        source = minified_template.replace(marker, f"\n_EXPORT_CODE_BYTES={n}\n")
        return source, wrap_source(source)

    guess, seen = len(wrap_source(minified_template)), []
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


def build_exported_script(cfg: Config, *, preset_name: str = "custom", package_dir: Path | None = None,
                          code_hash: str | None = None) -> ExportedScript:
    """The exported program for ``cfg``, in memory (nothing is written)."""
    values = baked_config_values(export_ready_config(cfg))
    code_hash = code_hash or pgolf_code_hash()
    flat = flatten_core_modules(EXPORT_ENTRY_MODULE, package_dir, baked_functions={
        "pgolf.provenance.pgolf_code_hash": _baked_code_hash_function(code_hash)})
    with_bytes = _main_accepts_code_bytes(flat)
    placeholder = CODE_BYTES_PLACEHOLDER if with_bytes else None
    minified = minify_source(_readable_source(flat, entry_source(preset_name, values, placeholder), code_hash))
    if with_bytes:
        minified, code_bytes, wrapped = _settle_code_bytes(minified)
    else:
        code_bytes, wrapped = None, wrap_source(minified)
    readable = _readable_source(flat, entry_source(preset_name, values, code_bytes), code_hash)
    return ExportedScript(readable, minified, wrapped, tuple(m.name for m in flat.modules), preset_name,
                          code_hash, with_bytes)


def exported_code_bytes(cfg: Config, *, preset_name: str = "custom") -> int:
    """Bytes of the ``train_gpt.py`` that ``pgolf export`` would write for ``cfg``: the exact code size."""
    return build_exported_script(cfg, preset_name=preset_name).wrapped_bytes


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
