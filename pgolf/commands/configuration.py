"""Where every command gets its configuration (tooling: never exported).

The one place that reads ``PGOLF_PRESET`` and turns a preset, the environment and ``KEY=value`` items
into a :class:`~pgolf.config.Config`:

* a new run: preset defaults < environment variables < ``KEY=value`` (:func:`resolve_config`), with
  empty data paths pointed at the embedded default dataset (:func:`fill_default_data`);
* a finished run: its ``config.json`` < ``KEY=value`` (:func:`load_run_dir_config`), or for
  ``--resume`` the checkpoint's rules (:func:`resolve_resumed_config`);
* a single setting a tool needs without a whole run (:func:`configured_runs_dir`).

Commands (``pgolf.commands``), experiments (``pgolf.exp``) and benchmarks use these; the exported
script resolves its baked configuration itself.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from pgolf.config import (Config, apply_config_overrides, environment_overrides,
                          parse_cli_overrides, validate_config)
from pgolf.data.corpus import DEFAULT_CORPUS_VOCAB_SIZE, ensure_default_dataset
from pgolf.dist import is_main_process
from pgolf.errors import ConfigError, PgolfError
from pgolf.presets import DEFAULT_PRESET, PRESETS, preset_config
from pgolf.train.resume import MACHINE_FIELDS, read_config_file, resume_run_config

PRESET_ENV_VAR = "PGOLF_PRESET"


def resolve_config(preset_name: str | None, cli_items: list[str],
                   environ: Mapping[str, str] = os.environ) -> tuple[Config, Config, str]:
    """(config, preset config, preset name) after applying environment then command-line overrides.

    The preset comes from ``--preset``, else a ``preset=NAME`` item among the overrides, else
    ``$PGOLF_PRESET``, else the default.
    """
    overrides = parse_cli_overrides(cli_items)
    item_preset = next((overrides.pop(key) for key in list(overrides) if key.lower() == "preset"), None)
    if preset_name and item_preset and preset_name != item_preset:
        raise ConfigError(f"two presets given: --preset {preset_name} and preset={item_preset}; give one.")
    name = preset_name or item_preset or environ.get(PRESET_ENV_VAR) or DEFAULT_PRESET
    preset = preset_config(name)
    cfg = apply_config_overrides(preset, environment_overrides(environ), source="environment")
    cfg = apply_config_overrides(cfg, overrides, source="command line")
    return validate_config(cfg), preset, name


def fill_default_data(cfg: Config) -> Config:
    """Point an empty DATA_PATH/TOKENIZER_PATH at the embedded default dataset (built once, cached)."""
    if cfg.data.data_path or cfg.data.tokenizer_path:
        if not (cfg.data.data_path and cfg.data.tokenizer_path):
            raise ConfigError("set both DATA_PATH and TOKENIZER_PATH, or neither (to use the embedded default data).")
        return cfg
    if cfg.model.vocab_size != DEFAULT_CORPUS_VOCAB_SIZE:
        raise ConfigError(f"the embedded default dataset has a {DEFAULT_CORPUS_VOCAB_SIZE}-token vocabulary but "
                          f"VOCAB_SIZE={cfg.model.vocab_size}; set VOCAB_SIZE={DEFAULT_CORPUS_VOCAB_SIZE} or give DATA_PATH/TOKENIZER_PATH.")
    dataset = ensure_default_dataset(cfg.run.pgolf_cache_dir, log=print_on_main_process)
    return apply_config_overrides(cfg, {"data_path": str(dataset.data_path),
                                        "tokenizer_path": str(dataset.tokenizer_path)}, source="default data")


def print_on_main_process(text: str) -> None:
    """Print on torchrun's rank 0 only (every rank resolves the configuration; one reports it)."""
    if is_main_process():
        print(text, flush=True)


def resolve_resumed_config(run_dir: Path, cli_items: list[str]) -> tuple[Config, Config | None, str]:
    """(config, preset config or None, preset name) of the run ``--resume RUN_DIR`` continues: its own
    configuration with the adjustable ``KEY=value`` items (see :func:`pgolf.train.resume.resume_run_config`)."""
    cfg, name = resume_run_config(Path(run_dir), parse_cli_overrides(cli_items), machine_settings())
    return cfg, (preset_config(name) if name in PRESETS else None), name


def require_run_config(run_dir: Path) -> Path:
    """``RUN_DIR/config.json``, or an error saying RUN_DIR is not a run."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise PgolfError(f"{config_path} not found; RUN_DIR must be a directory written by `pgolf train`.")
    return config_path


def load_run_dir_config(run_dir: Path, overrides: Mapping[str, str]) -> Config:
    """A finished run's ``config.json`` with (already parsed and checked) ``KEY=value`` overrides applied.
    Not validated: the commands that run the configuration validate it themselves."""
    cfg = read_config_file(require_run_config(run_dir))
    cfg = apply_config_overrides(cfg, machine_settings(), source="environment")
    return apply_config_overrides(cfg, overrides, source="command line")


def machine_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """This machine's ``PGOLF_*`` settings (device, cache directory, auto-resume) from the environment:
    they belong to where a command runs, not to the run it reads, so they replace the run's own."""
    return {key: value for key, value in environment_overrides(environ).items() if key.lower() in MACHINE_FIELDS}


def configured_runs_dir(environ: Mapping[str, str] = os.environ) -> str:
    """RUNS_DIR from the environment, else the default: where runs go when no command line says otherwise.
    Only that one variable is read, so a tool that needs it works whatever else the environment holds."""
    runs_dir = {key: value for key, value in environment_overrides(environ).items() if key == "RUNS_DIR"}
    return apply_config_overrides(Config(), runs_dir, source="environment").run.runs_dir
