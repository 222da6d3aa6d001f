"""Everything the training loop is handed: optimizers, QAT, the compiled/DDP-wrapped model, the loader
and (for ``pgolf train``) the checkpoint manager, built in the order they depend on each other."""

import torch

from pgolf.config import Config
from pgolf.data.run_data import ValidationData, build_train_loader
from pgolf.dist import DistContext
from pgolf.errors import ConfigError
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.model.layers import enable_fp8_matmul
from pgolf.optim.build import build_optimizers
from pgolf.quant.qat import QATController, attach_qat, describe_qat
from pgolf.train.checkpoint import CheckpointManager, check_room_for_run
from pgolf.train.loop import TrainingParts
from pgolf.train.resume import RunStart
from pgolf.train.wrap import uses_sharded_muon, wrap_for_training


def prepare_training(model: GPT, cfg: Config, ctx: DistContext, data: ValidationData, start: RunStart,
                     logger: RunLogger, *, preset_name: str,
                     on_checkpoint_written=None) -> tuple[TrainingParts, CheckpointManager]:
    """The loop's parts and checkpoint manager for ``model`` (the bare model, on its device)."""
    parts = prepare_training_parts(model, cfg, ctx, data, logger)
    check_room_for_run(start.run_dir, cfg, ctx, model, parts.optimizers)
    checkpoints = CheckpointManager(start.run_dir, cfg, ctx, logger, resume_from=start.checkpoint,
                                    run_info={"preset": preset_name}, loss_scaler=parts.loss_scaler,
                                    on_checkpoint_written=on_checkpoint_written)
    return parts, checkpoints


def prepare_training_parts(model: GPT, cfg: Config, ctx: DistContext, data: ValidationData,
                           logger: RunLogger) -> TrainingParts:
    """The loop's parts for ``model`` (the bare model, on its device), without checkpoints: what the
    exported submission trains with (pgolf/submission.py)."""
    if cfg.model.fp8_matmul:  # before QAT and compile, on the bare model
        logger.line(enable_fp8_matmul(model, ctx.device))
    loader = build_train_loader(cfg.train.train_loader, cfg.model.vocab_size, ctx, data.train_files)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns,
                                  rank=ctx.rank, world_size=ctx.world_size)
    qat = attach_and_describe_qat(model, cfg, logger)
    sharded = uses_sharded_muon(optimizers)
    if sharded and ctx.autocast_dtype == torch.float16:
        raise ConfigError("MUON_SHARDED=1 with fp16 training (AUTOCAST_DTYPE) is not supported: the loss scaler's "
                          "overflow check would differ across ranks. Use MUON_SHARDED=0 or bf16.")
    loss_scaler = ctx.runtime.loss_scaler()
    forward_model = wrap_for_training(model, cfg.model, cfg.train.compile, ctx, sharded_muon=sharded)
    return TrainingParts(model, forward_model, optimizers, loader, qat, loss_scaler, sharded_gradients=sharded)


def attach_and_describe_qat(model: GPT, cfg: Config, logger: RunLogger) -> QATController | None:
    """QAT attaches by module replacement before compile/DDP wrap the model; removed after training."""
    qat = attach_qat(model, cfg.quant)
    if qat is not None:
        for line in describe_qat(qat):
            logger.line(line)
    elif cfg.quant.qat_start_frac > 0:
        logger.line("qat:off (no per-row block matrices to fake-quantize)")
    return qat
