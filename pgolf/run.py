"""``main(cfg)``: build -> train -> evaluate -> quantize -> pack -> round trip -> extra phases -> report.

This is ``pgolf train``'s entry point (the exported script's is ``pgolf.submission``, the same steps,
:mod:`pgolf.steps`, without resume and checkpoints). Everything it writes goes into a fresh
``runs/<RUN_ID>/`` directory that is never overwritten. The round-trip ``val_bpb`` (the artifact loaded
into a fresh model and re-scored) is the score; sliding-window and TTT phases, when enabled, score the
same artifact again. Each step is one call into the package that owns it. A resumed run whose training
had finished starts from its final weights, at the evaluation before quantization (train/resume.py).
"""

from pgolf.artifact.compress import require_model_compressor
from pgolf.config import Config, config_to_json, validate_config
from pgolf.data.run_data import ValidationData, prepare_validation_data
from pgolf.dist import DistContext, init_distributed, shutdown_distributed
from pgolf.eval.phases import plain_evaluator
from pgolf.fsutil import write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import build_model
from pgolf.model.layers import enable_fp8_matmul
from pgolf.report import log_header
from pgolf.runtime import seed_everything
from pgolf.steps import quantize_and_score, record_run, train_prepared_model
from pgolf.train.memory import check_training_fits_memory
from pgolf.train.checkpoint_state import TrainingInterrupted
from pgolf.train.resume import (TRAINING_DONE_FILE, RunStart, record_finished_training, restore_finished_training,
                                set_aside_unfinished_outputs)
from pgolf.train.run_directory import check_runs_dir_writable, lock_run_directory, open_run_directory
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
    # Data, tokenizer and shards are checked before the run directory exists: a mistake there leaves
    # nothing behind, so the corrected command can reuse the same RUN_ID.
    if not resume:
        check_runs_dir_writable(cfg, ctx)
    data = prepare_validation_data(cfg)
    start = open_run_directory(cfg, ctx, resume)
    lock = lock_run_directory(start.run_dir, ctx)  # one writer per run directory
    logger = RunLogger(start.run_dir, enabled=ctx.is_main, echo=echo)
    try:
        report = run_pipeline(cfg, ctx, start, data, logger, preset_name=preset_name, preset_cfg=preset_cfg,
                              code_bytes=code_bytes, on_checkpoint_written=on_checkpoint_written)
    except TrainingInterrupted:  # Ctrl-C in training: a checkpoint was written, the message says how to resume
        raise
    except KeyboardInterrupt:  # Ctrl-C before or after training
        raise interrupted_outside_training(logger, start) from None
    except Exception as error:
        log_failure(logger, error)
        raise
    finally:
        logger.close()
        if lock is not None:
            lock.release()
    if not keep_process_group:
        shutdown_distributed()
    return report


def log_failure(logger: RunLogger, error: Exception) -> None:
    """The error that ends a run, kept in train.log and metrics.jsonl: the command line prints it to
    stderr only, which is gone once the terminal is."""
    logger.echo = False  # already on stderr; printing it again would show it twice
    logger.line(f"error: {error}")
    logger.event("error", error_type=type(error).__name__, message=str(error))


def interrupted_outside_training(logger: RunLogger, start: RunStart) -> TrainingInterrupted:
    """Ctrl-C outside the training loop, said in train.log too: after training, ``--resume`` quantizes
    and evaluates the final weights again; before it, a resumed run resumes again, a new one has nothing."""
    run_dir = start.run_dir
    if (run_dir / TRAINING_DONE_FILE).is_file():
        message = (f"interrupted after training; {run_dir} keeps the trained weights: `pgolf train --resume "
                   f"{run_dir}` quantizes and evaluates them again, without training")
    elif start.existing:
        message = f"interrupted before training went on; `pgolf train --resume {run_dir}` continues it"
    else:
        message = (f"interrupted before training started; nothing was trained. Start again (a new RUN_ID, or "
                   f"move {run_dir} away)")
    logger.echo = False
    logger.line(f"interrupted: {message}")
    logger.event("interrupted", message=message)
    return TrainingInterrupted(message)


def run_pipeline(cfg: Config, ctx: DistContext, start: RunStart, data: ValidationData, logger: RunLogger, *,
                 preset_name: str, preset_cfg: Config | None, code_bytes: int | None,
                 on_checkpoint_written=None) -> dict:
    run_dir = start.run_dir
    if ctx.is_main and not (run_dir / "config.json").exists():  # a resumed run keeps its own
        write_text_atomic(run_dir / "config.json", config_to_json(cfg))
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
        parts, checkpoints = prepare_training(model, cfg, ctx, data, start, logger, preset_name=preset_name,
                                              on_checkpoint_written=on_checkpoint_written)
        outcome = train_prepared_model(parts, cfg, ctx, logger, evaluate, checkpoints, diagnostics=True)
        if ctx.is_main:  # from here on, an interrupted run resumes from these weights, never trains again
            record_finished_training(model, start.run_dir, outcome, preset_name)
    scored = quantize_and_score(model, cfg, ctx, data, evaluate, run_dir, logger, code_bytes, outcome,
                                diagnostics=True)
    return record_run(cfg, preset_name, run_dir, model, outcome, header, scored, logger, ctx.is_main)
