"""``pgolf eval RUN_DIR [KEY=value ...] [--json]``: re-run a finished run's evaluation (tooling).

The run's artifact is loaded into a fresh model and evaluated by the phases ``pgolf train`` runs after
its round trip, as the run's configuration (with the given overrides) enables them: the plain
quantized evaluation, then sliding windows (``SLIDING_WINDOW_ENABLED=1``) and score-first TTT
(``TTT_ENABLED=1``, ``TTT_MODE=full|lora``, phases with ``TTT_PHASES``), each timed, with the
``eval_budget`` block. Only evaluation and TTT settings may change (plus where the data lives): the
model and its quantization are what the artifact holds.

One line per phase is printed (or the whole result with ``--json``), and the result is saved as
``RUN_DIR/evals/<timestamp>.json`` (``<timestamp>_2.json``, ... when taken: nothing is overwritten).
"""

import argparse
import json
import time
from pathlib import Path

from pgolf.commands.configuration import load_run_dir_config, locate_run_data, require_run_config
from pgolf.commands.quantize import find_run_artifact
from pgolf.config import Config, config_field_index, parse_cli_overrides, validate_config
from pgolf.dist import DistContext, init_distributed, shutdown_distributed
from pgolf.errors import ConfigError
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases, plain_evaluator, timed_phase
from pgolf.fsutil import require_writable_directory, write_text_atomic
from pgolf.data.run_data import prepare_validation_data
from pgolf.quant.model_artifact import load_artifact_into_fresh_model

EVAL_OVERRIDE_SECTIONS = ("eval", "ttt")
EVAL_EXTRA_KEYS = ("data_path", "tokenizer_path")


def check_eval_overrides(overrides: dict[str, str]) -> None:
    """Only evaluation/TTT keys and DATA_PATH/TOKENIZER_PATH: the artifact fixes the model and its quantization."""
    index = config_field_index()
    for raw_key in overrides:
        key = raw_key.strip().lower()
        if key in index and index[key][0] not in EVAL_OVERRIDE_SECTIONS and key not in EVAL_EXTRA_KEYS:
            raise ConfigError(
                f"{raw_key.upper()} is a {index[key][0]} setting; `pgolf eval` scores the artifact the run wrote and "
                "accepts only evaluation and test-time-training keys (EVAL_*, VAL_*, SLIDING_WINDOW_ENABLED, TTT_*) "
                "and DATA_PATH/TOKENIZER_PATH. Use `pgolf quantize` to change quantization, `pgolf train` for the rest.")


def load_eval_config(run_dir: Path, items: list[str]) -> tuple[Config, dict[str, str]]:
    """The run's config.json with the checked overrides applied (its data located, its tokenizer checked),
    and the overrides."""
    require_run_config(run_dir)  # before the overrides: a wrong RUN_DIR is the first thing to say
    overrides = parse_cli_overrides(items)
    check_eval_overrides(overrides)
    cfg = validate_config(load_run_dir_config(run_dir, overrides))
    return locate_run_data(cfg, run_dir, overrides), overrides


def evaluate_run(run_dir: Path, cfg: Config, ctx: DistContext) -> tuple[list[EvalPhase], Path]:
    """The quantized evaluation and the phases ``cfg`` enables, on the run's artifact."""
    data = prepare_validation_data(cfg, training=False)  # evaluation reads no training data
    artifact = find_run_artifact(run_dir)
    model = load_artifact_into_fresh_model(artifact, cfg.model, ctx.runtime)
    evaluate = plain_evaluator(cfg, ctx, data)
    plain = timed_phase("quantized", ctx.runtime, lambda: evaluate(model))
    extra = extra_evaluation_phases(cfg, ctx, data.tokens, data.target_bytes, model,
                                    lambda: load_artifact_into_fresh_model(artifact, cfg.model, ctx.runtime))
    return [plain, *extra], artifact


def eval_result(run_dir: Path, artifact: Path, cfg: Config, overrides: dict[str, str], phases: list[EvalPhase]) -> dict:
    """The saved/printed result: the quantized scores at the top level (as before), every phase, the budget."""
    budget = evaluation_budget(phases, cfg.eval.eval_budget_seconds)
    return {"run_dir": str(run_dir), "artifact": str(artifact), "evaluated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "overrides": {key.upper(): value for key, value in overrides.items()},
            "val_max_tokens": cfg.eval.val_max_tokens, **phases[0].sums.as_dict(),
            "phases": [{"label": p.label, "seconds": p.seconds, **p.sums.as_dict()} for p in phases],
            "eval_budget": budget, "val_bpb_final": phases[-1].sums.val_bpb, "val_bpb_final_label": phases[-1].label}


def write_eval_result(run_dir: Path, result: dict) -> Path:
    """``RUN_DIR/evals/<timestamp>.json``, or the first free ``<timestamp>_<n>.json``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = run_dir / "evals" / f"{stamp}.json", 2
    while path.exists():
        path, n = run_dir / "evals" / f"{stamp}_{n}.json", n + 1
    return write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def print_eval_result(result: dict, path: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**result, "result_path": str(path)}, indent=2))
        return
    for phase in result["phases"]:
        print(f"{phase['label']} val_loss:{phase['val_loss']:.8f} val_bpb:{phase['val_bpb']:.8f} "
              f"eval_time:{phase['seconds'] * 1000:.0f}ms tokens:{phase['token_count']} bytes:{phase['byte_count']}")
    budget = result["eval_budget"]
    print(f"eval_budget: total {budget['total_seconds']:.1f}s of {budget['budget_seconds']:.0f}s on this machine "
          f"(speedup needed to fit: {budget['speedup_needed_to_fit']})")
    print(f"result: {path}")


def run_eval_command(args: argparse.Namespace) -> int:
    """``pgolf eval``: evaluate, print, save under ``RUN_DIR/evals/``."""
    run_dir = Path(args.run_dir)
    cfg, overrides = load_eval_config(run_dir, args.overrides)
    require_writable_directory(run_dir / "evals", "the evaluation result")  # before the evaluation
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    phases, artifact = evaluate_run(run_dir, cfg, ctx)
    if ctx.is_main:
        result = eval_result(run_dir, artifact, cfg, overrides, phases)
        print_eval_result(result, write_eval_result(run_dir, result), args.json)
    shutdown_distributed()
    return 0
