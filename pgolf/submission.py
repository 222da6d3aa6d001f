"""``run_submission(cfg)``, the entry of the exported ``train_gpt.py``: the run of ``pgolf.run`` without
the bookkeeping a submission never uses.

A submission's every byte of code counts against the cap, and a submission is run once, from step 0,
on a machine that is handed back afterwards. So ``pgolf export`` calls this entry (when the
configuration asks for no checkpoints: ``CHECKPOINT_EVERY=0`` and ``CHECKPOINT_EVERY_SECONDS=0``) and
what only ``pgolf train`` needs stays out of the script: resuming, checkpoints (and the Ctrl-C
checkpoint), the run-directory lock, the memory estimate, the challenge-style header, and configuration
checks already made when the script was exported.

What the two entries share is the same code, called in the same order from the same seed (the
steps live in :mod:`pgolf.steps`), so the script's losses and scores are the package's bit for bit
(tests/e2e/test_export_script.py). The run writes ``config.json`` (so ``pgolf eval`` works on it), the
log, ``metrics.jsonl`` and the artifact, and refuses a non-finite score and an artifact over the cap.
``full_records`` (``pgolf export --full-records``, a constant in the script's call) adds what only
pgolf's tools read: ``report.json`` with the fields of a ``pgolf train`` run, the environment summary,
the quantization plan, the compile monitor and the time budgets.
"""

from pathlib import Path

from pgolf.config import Config, config_to_json, flatten_config
from pgolf.data.run_data import prepare_validation_data
from pgolf.dist import DistContext, init_distributed, shutdown_distributed
from pgolf.eval.phases import plain_evaluator
from pgolf.fsutil import write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import build_model, count_parameters
from pgolf.provenance import environment_summary, pgolf_code_hash
from pgolf.runtime import seed_everything
from pgolf.steps import quantize_and_score, record_run, train_prepared_model, valid_scores
from pgolf.train.run_directory import create_run_directory
from pgolf.train.setup import prepare_training_parts


def run_submission(cfg: Config, *, preset_name: str, code_bytes: int, full_records: bool = False) -> dict:
    """Train, quantize, pack and score ``cfg`` in a fresh ``RUNS_DIR/RUN_ID``; returns the report
    (``full_records``), else the scores by report key. ``code_bytes``: the script's own wrapped size (the
    counted code size)."""
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    seed_everything(cfg.train.seed)
    run_dir = create_run_directory(cfg, ctx)
    logger = RunLogger(run_dir, enabled=ctx.is_main)
    try:
        report = submission_pipeline(cfg, ctx, run_dir, logger, preset_name, code_bytes, full_records)
    finally:
        logger.close()
    shutdown_distributed()
    return report


def submission_pipeline(cfg: Config, ctx: DistContext, run_dir: Path, logger: RunLogger, preset_name: str,
                        code_bytes: int, full_records: bool) -> dict:
    if ctx.is_main:
        write_text_atomic(run_dir / "config.json", config_to_json(cfg))
    data = prepare_validation_data(cfg)  # data checks first, so a bad dataset fails before any training
    model = build_model(cfg.model, ctx.runtime)
    # The environment summary is report.json's; without it the header names the device only.
    machine = {"env": environment_summary(ctx.device)} if full_records else {"device": str(ctx.device)}
    header = {"code_hash": pgolf_code_hash(), **machine}
    params = count_parameters(model)
    logger.line(f"pgolf submission preset:{preset_name} code_hash:{header['code_hash']} "
                f"model_params:{params} seed:{cfg.train.seed} world_size:{ctx.world_size}")
    logger.event("header", preset=preset_name, config=flatten_config(cfg), model_params=params, **header)
    evaluate = plain_evaluator(cfg, ctx, data)
    parts = prepare_training_parts(model, cfg, ctx, data, logger)
    outcome = train_prepared_model(parts, cfg, ctx, logger, evaluate, None, diagnostics=full_records)
    scored = quantize_and_score(model, cfg, ctx, data, evaluate, run_dir, logger, code_bytes, outcome,
                                diagnostics=full_records)
    if full_records:
        return record_run(cfg, preset_name, run_dir, model, outcome, header, scored, logger, ctx.is_main)
    return valid_scores(scored, ctx.is_main)
