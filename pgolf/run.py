"""``main(cfg)``: build -> train -> evaluate -> quantize -> pack -> round trip -> extra phases -> report.

This is the entry point the one-file export calls. Everything it writes goes into a fresh
``runs/<RUN_ID>/`` directory that is never overwritten. The round-trip ``val_bpb`` (the artifact loaded
into a fresh model and re-scored) is the score; sliding-window and TTT phases, when enabled, score the
same artifact again. Each step is one call into the package that owns it. A resumed run whose training
had finished starts from its final weights, at the evaluation before quantization (train/resume.py).
"""

from pgolf.artifact.compress import require_model_compressor
from pgolf.config import Config, config_to_json, validate_config
from pgolf.data.run_data import ValidationData, prepare_validation_data
from pgolf.dist import DistContext, broadcast_object_from_main, init_distributed, shutdown_distributed
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases, plain_evaluator, timed_phase
from pgolf.fsutil import write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT, build_model
from pgolf.model.layers import enable_fp8_matmul
from pgolf.quant.calibration import calibration_budget_fields, collect_gptq_hessians
from pgolf.quant.model_artifact import load_artifact_into_fresh_model, write_artifact
from pgolf.quant.packing import artifact_file_name
from pgolf.report import (build_report, final_evaluation_fields, log_eval, log_evaluation_budget, log_extra_phase,
                          log_header, phase_is_finite, publish_report)
from pgolf.runtime import seed_everything
from pgolf.train.loop import TrainOutcome, train_model
from pgolf.train.memory import check_training_fits_memory
from pgolf.train.resume import (RunStart, record_finished_training, restore_finished_training,
                                set_aside_unfinished_outputs)
from pgolf.train.run_directory import lock_run_directory, open_run_directory
from pgolf.train.setup import prepare_training


def main(cfg: Config, *, preset_name: str = "custom", preset_cfg: Config | None = None, echo: bool = True,
         code_bytes: int | None = None, resume: bool = False, keep_process_group: bool = False,
         on_checkpoint_written=None) -> dict:
    """Run the whole pipeline; returns the report (also written to ``report.json``).

    ``code_bytes``: the exact counted code size (``pgolf train`` passes the size of the train_gpt.py
    ``pgolf export`` would write; the exported script passes its own); None = an upper bound.
    ``resume``: continue the run ``RUNS_DIR/RUN_ID`` from its newest complete checkpoint (or from its final
    weights when its training had finished). Without it, ``PGOLF_AUTO_RESUME=1`` does the same when that
    directory exists (and starts it when it does not), which is what a worker group restarted by
    ``torchrun --max-restarts`` needs.
    ``keep_process_group``: several runs in the same torchrun processes (pgolf seeds / sweep) keep one
    process group, since a second rendezvous in the same processes can hang.
    ``on_checkpoint_written``: called on rank 0 with each complete checkpoint directory (a remote mirror)."""
    validate_config(cfg)
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    check_training_fits_memory(cfg, ctx.device)  # before anything is allocated or written
    require_model_compressor(cfg.artifact.compressor)  # not discovered only after training
    seed_everything(cfg.train.seed)
    start = open_run_directory(cfg, ctx, resume)
    lock = lock_run_directory(start.run_dir, ctx)  # one writer per run directory
    logger = RunLogger(start.run_dir, enabled=ctx.is_main, echo=echo)
    try:
        report = run_pipeline(cfg, ctx, start, logger, preset_name=preset_name, preset_cfg=preset_cfg,
                              code_bytes=code_bytes, on_checkpoint_written=on_checkpoint_written)
    finally:
        logger.close()
        if lock is not None:
            lock.release()
    if not keep_process_group:
        shutdown_distributed()
    return report


def run_pipeline(cfg: Config, ctx: DistContext, start: RunStart, logger: RunLogger, *, preset_name: str,
                 preset_cfg: Config | None, code_bytes: int | None, on_checkpoint_written=None) -> dict:
    run_dir = start.run_dir
    # Build: data checks first, so a bad dataset fails before any training.
    if ctx.is_main and not (run_dir / "config.json").exists():  # a resumed run keeps its own
        write_text_atomic(run_dir / "config.json", config_to_json(cfg))
    data = prepare_validation_data(cfg)
    model = build_model(cfg.model, ctx.runtime)
    header = log_header(logger, cfg, preset_name, preset_cfg, ctx, data, model)
    if start.existing:
        source = "final weights (training finished)" if start.training_done else start.checkpoint
        logger.line(f"resume:run_dir {run_dir} checkpoint:{source or 'none yet (starting from step 0)'}")
        if ctx.is_main:
            set_aside_unfinished_outputs(run_dir, logger, keep_final_weights=start.training_done)
    evaluate = plain_evaluator(cfg, ctx, data)  # one evaluator for validation, prequant and round trip
    if start.training_done:  # the weights are trained: quantize and evaluate them again
        outcome = restore_finished_training(model, run_dir, logger)
        if cfg.model.fp8_matmul:  # the matmuls the trained model evaluated and calibrated with
            logger.line(enable_fp8_matmul(model, ctx.device))
    else:
        outcome = train_and_keep_weights(model, cfg, ctx, start, logger, data, evaluate, preset_name,
                                         on_checkpoint_written)

    # Evaluate the trained weights, then quantize and pack them (GPTQ calibration on training data).
    prequant = timed_phase("final_prequant", ctx.runtime, lambda: evaluate(model))
    log_eval(logger, prequant)
    if not phase_is_finite(prequant):  # diverged weights: nothing to quantize; the report says so
        report = build_report(cfg, preset_name, run_dir, model, outcome, prequant, None, None, header)
        return publish_report(report, run_dir, logger, None, ctx.is_main)
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
    phases = extra_evaluation_phases(cfg, ctx, data.tokens, data.target_bytes, roundtrip_model,
                                     lambda: load_artifact_into_fresh_model(artifact_path, cfg.model, ctx.runtime))
    for phase in phases:
        log_extra_phase(logger, phase)
    budget = evaluation_budget([EvalPhase("quantized", roundtrip.sums, roundtrip.seconds), *phases],
                               cfg.eval.eval_budget_seconds)
    log_evaluation_budget(logger, budget)

    # Report (valid JSON), then refuse a non-finite score or an artifact over the cap: nothing measured is lost.
    report = build_report(cfg, preset_name, run_dir, model, outcome, prequant, roundtrip, size, header)
    report.update(final_evaluation_fields(phases, budget, roundtrip))
    report.update(quant_fields)
    return publish_report(report, run_dir, logger, size, ctx.is_main)


def train_and_keep_weights(model: GPT, cfg: Config, ctx: DistContext, start: RunStart, logger: RunLogger,
                           data: ValidationData, evaluate, preset_name: str,
                           on_checkpoint_written=None) -> TrainOutcome:
    """Train ``model`` (from step 0 or the start's checkpoint), then keep its weights and mark training done."""
    parts, checkpoints = prepare_training(model, cfg, ctx, data, start, logger, preset_name=preset_name,
                                          on_checkpoint_written=on_checkpoint_written)
    logger.line(ctx.runtime.describe(parts.loss_scaler))

    def validate_during_training(step: int) -> None:  # off the training clock (the loop pauses it)
        phase = timed_phase("val", ctx.runtime, lambda: evaluate(model))
        logger.line(f"step:{step}/{cfg.train.iterations} val_loss:{phase.sums.val_loss:.4f} "
                    f"val_bpb:{phase.sums.val_bpb:.4f}")
        logger.event("val", step=step, seconds=phase.seconds, **phase.sums.as_dict())

    # With EMA_DECAY > 0 the model comes back holding the EMA weights: everything after uses them.
    outcome = train_model(parts, cfg.train, cfg.optim, ctx, logger, validate_during_training, checkpoints)
    if parts.qat is not None:
        parts.qat.remove()  # plain linears for evaluation, calibration, export and TTT
    logger.line(f"train_done steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms "
                f"tokens_per_s:{outcome.tokens_per_second:.0f} stopped_by:{outcome.stopped_by}")
    if ctx.is_main:  # from here on, an interrupted run resumes from these weights, never trains again
        record_finished_training(model, start.run_dir, outcome, preset_name)
    return outcome
