"""Where every command gets its configuration (tooling: never exported).

The one place that reads ``PGOLF_PRESET`` and turns a preset, the environment and ``KEY=value`` items
into a :class:`~pgolf.config.Config`:

* a new run: preset defaults < environment variables < ``KEY=value`` (:func:`resolve_config`), with
  empty data paths pointed at the embedded default dataset (:func:`fill_default_data`);
* a finished run: its ``config.json`` < ``KEY=value`` (:func:`load_run_dir_config`), or for
  ``--resume`` the checkpoint's rules (:func:`resolve_resumed_config`, its data located as below);
* a single setting a tool needs without a whole run (:func:`configured_runs_dir`);
* the data a finished run read, for the commands that read it again (:func:`locate_run_data`): relative
  paths found from the folder the run was started in, and its tokenizer's fingerprint checked.

Commands (``pgolf.commands``), experiments (``pgolf.exp``) and benchmarks use these; the exported
script resolves its baked configuration itself.
"""

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pgolf.config import (Config, apply_config_overrides, environment_overrides,
                          parse_cli_overrides, validate_config)
from pgolf.data.corpus import DEFAULT_CORPUS_VOCAB_SIZE, ensure_default_dataset
from pgolf.data.tokenizer_match import file_sha256
from pgolf.dist import is_main_process
from pgolf.errors import ConfigError, DataError, PgolfError
from pgolf.exp.logs import read_metrics_events
from pgolf.presets import DEFAULT_PRESET, PRESETS, preset_config
from pgolf.train.resume import MACHINE_FIELDS, read_config_file, read_json_file, resume_run_config

RUN_DATA_KEYS = ("data_path", "tokenizer_path")

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
    dataset = ensure_default_dataset(cfg.run.pgolf_cache_dir, log=note_on_main_process)
    return apply_config_overrides(cfg, {"data_path": str(dataset.data_path),
                                        "tokenizer_path": str(dataset.tokenizer_path)}, source="default data")


def print_on_main_process(text: str) -> None:
    """Print on torchrun's rank 0 only (every rank resolves the configuration; one reports it)."""
    if is_main_process():
        print(text, flush=True)


def note_on_main_process(text: str) -> None:
    """A status line on rank 0's stderr: stdout stays the command's result (``--json`` prints only JSON)."""
    if is_main_process():
        print(text, file=sys.stderr, flush=True)


def resolve_resumed_config(run_dir: Path, cli_items: list[str]) -> tuple[Config, Config | None, str]:
    """(config, preset config or None, preset name) of the run ``--resume RUN_DIR`` continues: its own
    configuration with the adjustable ``KEY=value`` items (see :func:`pgolf.train.resume.resume_run_config`)."""
    overrides = parse_cli_overrides(cli_items)
    cfg, name = resume_run_config(Path(run_dir), overrides, machine_settings())
    return locate_run_data(cfg, Path(run_dir), overrides), (preset_config(name) if name in PRESETS else None), name


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


def recorded_run_data(run_dir: Path) -> dict:
    """What the run recorded of its data (``pgolf.report.run_data_record``): report.json's ``data``, else the
    last ``header`` event of metrics.jsonl (a run stopped before its report). Empty for runs that recorded
    none (exported scripts, and pgolf before 2026-12-07)."""
    report_path, metrics_path = Path(run_dir) / "report.json", Path(run_dir) / "metrics.jsonl"
    if report_path.is_file():
        recorded = read_json_file(report_path, "restore it from a copy of the run").get("data")
        if isinstance(recorded, dict):
            return recorded
    headers = [event["data"] for event in (read_metrics_events(metrics_path) if metrics_path.is_file() else [])
               if event.get("event") == "header" and isinstance(event.get("data"), dict)]
    return headers[-1] if headers else {}


def locate_run_data(cfg: Config, run_dir: Path, overrides: Mapping[str, str]) -> Config:
    """``cfg`` (a finished run's configuration) with its data found and its tokenizer checked, before any
    data is read. A relative DATA_PATH/TOKENIZER_PATH of the run's config.json (not given again as an
    override) means the folder the run was started in: it is used from there when it exists there.
    A tokenizer whose sha256 is not the one the run trained with is refused."""
    recorded = recorded_run_data(run_dir)
    given = {key.strip().lower() for key in overrides}
    located = {key: _path_from_launch_dir(getattr(cfg.data, key), recorded.get("launch_dir"))
               for key in RUN_DATA_KEYS if key not in given}
    for key, path in located.items():
        if not Path(path).exists():
            raise DataError(_missing_run_data_message(key, getattr(cfg.data, key), run_dir, recorded))
    cfg = apply_config_overrides(cfg, located, source=f"{Path(run_dir) / 'config.json'}")
    check_run_tokenizer(cfg.data.tokenizer_path, run_dir, recorded)
    return cfg


def _path_from_launch_dir(path: str, launch_dir: str | None) -> str:
    """A relative ``path`` as seen from ``launch_dir`` when it exists there (the run was started there);
    otherwise unchanged (the run directory came from another machine: the path may hold from here)."""
    if launch_dir and path and not Path(path).is_absolute() and (Path(launch_dir) / path).exists():
        return str(Path(launch_dir) / path)
    return path


def _missing_run_data_message(key: str, path: str, run_dir: Path, recorded: dict) -> str:
    started = f" (the run was started in {recorded['launch_dir']})" if recorded.get("launch_dir") else ""
    return (f"{key.upper()}={path!r}, from {Path(run_dir) / 'config.json'}{started}, does not exist here. Give "
            f"the data's place on this machine: {key.upper()}=PATH after the run directory (both DATA_PATH and "
            "TOKENIZER_PATH when the data moved).")


def check_run_tokenizer(tokenizer_path: str, run_dir: Path, recorded: dict) -> None:
    """A DataError when ``tokenizer_path`` is not the tokenizer the run trained with (by sha256; runs that
    recorded none are not checked): the model's token ids would be read as another tokenizer's pieces,
    and their bytes counted with its tables, so the score would mean nothing."""
    expected = recorded.get("tokenizer_sha256")
    if not expected or not Path(tokenizer_path).is_file():
        return  # not recorded; or missing, which the data checks report with its fix
    actual = file_sha256(tokenizer_path)
    if actual != expected:
        raise DataError(f"TOKENIZER_PATH={tokenizer_path} (sha256 {actual[:16]}...) is not the tokenizer the run in "
                        f"{run_dir} was trained with ({recorded.get('tokenizer_path', 'its tokenizer')}, sha256 "
                        f"{expected[:16]}...): the model's token ids would name other pieces and the score would "
                        "mean nothing. Give that tokenizer (TOKENIZER_PATH=...) with data made by it (DATA_PATH=...).")
