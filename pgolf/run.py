"""``main(cfg)``: build -> train -> evaluate -> quantize -> pack -> round trip -> extra phases -> report.

This is the entry point the one-file export calls. Everything it writes goes into a fresh
``runs/<RUN_ID>/`` directory that is never overwritten. The round-trip ``val_bpb`` (the artifact loaded
into a fresh model and re-scored) is the score; sliding-window and TTT phases, when enabled, score the
same artifact again. Each step is one call into the package that owns it.
"""

import json

from pgolf.artifact.size import check_artifact_fits
from pgolf.config import Config, config_to_json, validate_config
from pgolf.data.run_data import prepare_validation_data
from pgolf.dist import DistContext, broadcast_object_from_main, init_distributed, shutdown_distributed
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases, plain_evaluator, timed_phase
from pgolf.fsutil import write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import build_model
from pgolf.quant.calibration import calibration_budget_fields, collect_gptq_hessians
from pgolf.quant.model_artifact import load_artifact_into_fresh_model, write_artifact
from pgolf.quant.packing import artifact_file_name
from pgolf.report import (build_report, final_evaluation_fields, log_eval, log_evaluation_budget, log_extra_phase,
                          log_header)
from pgolf.runtime import seed_everything
from pgolf.train.loop import train_model
from pgolf.train.resume import RunStart, remove_unfinished_outputs
from pgolf.train.run_directory import lock_run_directory, open_run_directory
from pgolf.train.setup import prepare_training


def main(cfg: Config, *, preset_name: str = "custom", preset_cfg: Config | None = None, echo: bool = True,
         code_bytes: int | None = None, resume: bool = False, keep_process_group: bool = False) -> dict:
    """Run the whole pipeline; returns the report (also written to ``report.json``).

    ``code_bytes``: the exact counted code size (``pgolf train`` passes the size of the train_gpt.py
    ``pgolf export`` would write; the exported script passes its own); None = an upper bound.
    ``resume``: continue the run ``RUNS_DIR/RUN_ID`` from its newest complete checkpoint. Without it,
    ``PGOLF_AUTO_RESUME=1`` does the same when that directory exists (and starts it when it does not),
    which is what a worker group restarted by ``torchrun --max-restarts`` needs.
    ``keep_process_group``: several runs in the same torchrun processes (pgolf seeds / sweep) keep one
    process group, since a second rendezvous in the same processes can hang."""
    validate_config(cfg)
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    seed_everything(cfg.train.seed)
    start = open_run_directory(cfg, ctx, resume)
    lock = lock_run_directory(start.run_dir, ctx)  # one writer per run directory
    logger = RunLogger(start.run_dir, enabled=ctx.is_main, echo=echo)
    try:
        report = run_pipeline(cfg, ctx, start, logger, preset_name=preset_name, preset_cfg=preset_cfg,
                              code_bytes=code_bytes)
    finally:
        logger.close()
        if lock is not None:
            lock.release()
    if not keep_process_group:
        shutdown_distributed()
    return report


def run_pipeline(cfg: Config, ctx: DistContext, start: RunStart, logger: RunLogger, *, preset_name: str,
                 preset_cfg: Config | None, code_bytes: int | None) -> dict:
    run_dir = start.run_dir
    # Build: data checks first, so a bad dataset fails before any training.
    if ctx.is_main and not (run_dir / "config.json").exists():  # a resumed run keeps its own
        write_text_atomic(run_dir / "config.json", config_to_json(cfg))
    data = prepare_validation_data(cfg)
    model = build_model(cfg.model, ctx.runtime)
    header = log_header(logger, cfg, preset_name, preset_cfg, ctx, data, model)
    if start.existing:
        logger.line(f"resume:run_dir {run_dir} checkpoint:{start.checkpoint or 'none yet (starting from step 0)'}")
        if ctx.is_main:
            remove_unfinished_outputs(run_dir, logger)
    parts, checkpoints = prepare_training(model, cfg, ctx, data, start, logger, preset_name=preset_name)
    logger.line(ctx.runtime.describe(parts.loss_scaler))
    evaluate = plain_evaluator(cfg, ctx, data)

    def validate_during_training(step: int) -> None:  # off the training clock (the loop pauses it)
        phase = timed_phase("val", ctx.runtime, lambda: evaluate(model))
        logger.line(f"step:{step}/{cfg.train.iterations} val_loss:{phase.sums.val_loss:.4f} "
                    f"val_bpb:{phase.sums.val_bpb:.4f}")
        logger.event("val", step=step, seconds=phase.seconds, **phase.sums.as_dict())

    # Train. With EMA_DECAY > 0 the model comes back holding the EMA weights: everything below uses them.
    outcome = train_model(parts, cfg.train, cfg.optim, ctx, logger, validate_during_training, checkpoints)
    if parts.qat is not None:
        parts.qat.remove()  # plain linears for evaluation, calibration, export and TTT
    logger.line(f"train_done steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms "
                f"tokens_per_s:{outcome.tokens_per_second:.0f} stopped_by:{outcome.stopped_by}")

    # Evaluate the trained weights, then quantize and pack them (GPTQ calibration on training data).
    prequant = timed_phase("final_prequant", ctx.runtime, lambda: evaluate(model))
    log_eval(logger, prequant)
    hessians, calibration_seconds = collect_gptq_hessians(model, cfg, ctx, data.train_files, logger)
    quant_fields = calibration_budget_fields(cfg, outcome.train_seconds, calibration_seconds, logger)
    artifact_path, size = None, None
    if ctx.is_main:
        artifact_path, size, artifact_fields = write_artifact(model, cfg, run_dir, logger, hessians, code_bytes)
        quant_fields.update(artifact_fields)
    artifact_path = broadcast_object_from_main(artifact_path)

    # Round trip: the artifact loaded into a fresh model is the score; then the extra phases.
    roundtrip_model = load_artifact_into_fresh_model(artifact_path, cfg.model, ctx.runtime)
    what = artifact_file_name(cfg.quant).split(".")[1]  # int8, int6, gptq_int6 ...
    roundtrip = timed_phase(f"final_{what}_{cfg.artifact.compressor}_roundtrip", ctx.runtime,
                            lambda: evaluate(roundtrip_model))
    log_eval(logger, roundtrip)
    phases = extra_evaluation_phases(cfg, ctx, data.tokens, data.byte_tables, roundtrip_model,
                                     lambda: load_artifact_into_fresh_model(artifact_path, cfg.model, ctx.runtime))
    for phase in phases:
        log_extra_phase(logger, phase)
    budget = evaluation_budget([EvalPhase("quantized", roundtrip.sums, roundtrip.seconds), *phases],
                               cfg.eval.eval_budget_seconds)
    log_evaluation_budget(logger, budget)

    # Report, then refuse an artifact over the cap (after the report, so nothing measured is lost).
    report = build_report(cfg, preset_name, run_dir, model, outcome, prequant, roundtrip, size, header)
    report.update(final_evaluation_fields(phases, budget, roundtrip))
    report.update(quant_fields)
    if ctx.is_main:
        write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
        logger.line(f"report: {run_dir / 'report.json'}")
        check_artifact_fits(size)
    return report
