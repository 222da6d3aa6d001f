"""``main(cfg)``: train -> evaluate -> quantize -> pack -> round-trip evaluate -> report.

This is the entry point the one-file export will call. Everything it writes goes into a fresh
``runs/<RUN_ID>/`` directory that is never overwritten. The round-trip ``val_bpb`` (the artifact loaded
into a fresh model and re-scored) is the score.
"""

import json
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf.artifact.container import pack_tensor_container
from pgolf.artifact.pack import (artifact_file_name, build_model_artifact, describe_artifact_pruning,
                                 load_artifact_file, save_artifact, unpack_model_artifact)
from pgolf.artifact.size import (ARTIFACT_CAP_BYTES, SizeReport, check_artifact_fits, loaded_pgolf_modules,
                                 source_bytes_of_modules)
from pgolf.config import Config, config_differences, config_to_json, flatten_config, validate_config
from pgolf.data.loader import DistributedTokenLoader, assert_disjoint_splits, load_validation_tokens
from pgolf.data.shards import find_shards
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.data.tokenizer import ByteTables, build_byte_tables, check_tokenizer_vocab, load_sentencepiece
from pgolf.dist import DistContext, barrier, broadcast_object_from_main, init_distributed, shutdown_distributed
from pgolf.errors import ArtifactError, ConfigError
from pgolf.eval.bpb import EvalSums, evaluate_bpb, uniform_guess_bpb
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases
from pgolf.fsutil import write_bytes_atomic, write_text_atomic
from pgolf.log import RunLogger
from pgolf.model.attention import describe_attention_backend
from pgolf.model.gpt import GPT, build_model, count_parameters
from pgolf.model.kernels.fused_mlp import load_fused_mlp_kernels
from pgolf.model.kernels.softcap_ce import load_softcap_ce_kernels
from pgolf.model.layers import enable_fp8_matmul
from pgolf.optim.build import build_optimizers
from pgolf.optim.grad_sync import broadcast_parameters_from_rank0_
from pgolf.optim.sharded import ShardedMuon
from pgolf.quant.qat import attach_qat, describe_qat
from pgolf.provenance import environment_summary, pgolf_code_hash
from pgolf.quant.artifact_quant import format_quantized_weights
from pgolf.quant.calibration import collect_hessians, training_calibration_batches
from pgolf.quant.policy import describe_quant_plan, format_quant_plan
from pgolf.train.checkpoint import CheckpointManager, check_room_for_run
from pgolf.train.clock import synchronize_device
from pgolf.train.loop import TrainingBatches, TrainingParts, train_model
from pgolf.train.precision import build_loss_scaler, configure_precision, describe_precision
from pgolf.train.resume import RunStart, remove_unfinished_outputs, resume_decision, resume_mode

# TRAIN_LOADER -> training loader class (same constructor and interface).
TRAIN_LOADERS = {"sequential": DistributedTokenLoader, "shuffled": ShuffledSequenceLoader}


@dataclass
class ValidationData:
    tokens: torch.Tensor
    byte_tables: ByteTables
    train_files: list[Path]
    val_files: list[Path]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"


def open_run_directory(cfg: Config, ctx: DistContext, resume: bool = False) -> RunStart:
    """The run's directory, agreed across ranks: a fresh one, or the existing run being resumed."""
    mode = resume_mode(resume)
    if mode == "never":
        return RunStart(create_run_directory(cfg, ctx))
    start, problem = broadcast_object_from_main(resume_decision(cfg, mode) if ctx.is_main else None)
    if problem:
        raise ConfigError(problem)
    return start if start is not None else RunStart(create_run_directory(cfg, ctx))


def create_run_directory(cfg: Config, ctx: DistContext) -> Path:
    """A fresh directory for this run, agreed across ranks. An existing one is never reused."""
    run_id = broadcast_object_from_main(cfg.run.run_id or new_run_id())
    run_dir = Path(cfg.run.runs_dir) / run_id
    if ctx.is_main:
        if run_dir.exists():
            raise ConfigError(f"run directory {run_dir} already exists; pgolf never overwrites a run. "
                              "Choose another RUN_ID (or leave it empty for a fresh one, or resume it: "
                              "pgolf train --resume).")
        try:
            run_dir.mkdir(parents=True)
        except OSError as error:
            raise ConfigError(f"cannot create the run directory {run_dir}: {error.strerror}. Set RUNS_DIR to a "
                              "writable place.") from None
    barrier()
    return run_dir


def prepare_validation_data(cfg: Config) -> ValidationData:
    """Shards, tokenizer and byte tables, with every consistency check before any training starts."""
    train_files = find_shards(cfg.data.data_path, "train")
    val_files = find_shards(cfg.data.data_path, "val")
    assert_disjoint_splits(train_files, val_files)
    sp = load_sentencepiece(cfg.data.tokenizer_path)
    check_tokenizer_vocab(sp, cfg.model.vocab_size, cfg.data.tokenizer_path)
    tokens = load_validation_tokens(val_files, cfg.train.train_seq_len)
    if cfg.eval.val_max_tokens > 0:
        keep = max(cfg.eval.val_max_tokens // cfg.train.train_seq_len, 1) * cfg.train.train_seq_len + 1
        tokens = tokens[:keep]
    return ValidationData(tokens, build_byte_tables(sp, cfg.model.vocab_size), train_files, val_files)


def make_evaluator(cfg: Config, ctx: DistContext, data: ValidationData):
    """A function model -> EvalSums over the validation split, split across ranks."""
    seq_len = cfg.train.train_seq_len
    batch_sequences = max(cfg.eval.val_batch_size // (ctx.world_size * ctx.grad_accum_steps) // seq_len, 1)

    def evaluate(model: torch.nn.Module) -> EvalSums:
        return evaluate_bpb(model, data.tokens, seq_len=seq_len, batch_sequences=batch_sequences,
                            byte_tables=data.byte_tables, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)

    return evaluate


def log_header(logger: RunLogger, cfg: Config, preset_name: str, preset_cfg: Config | None, ctx: DistContext,
               data: ValidationData, model: GPT) -> dict:
    env = environment_summary(ctx.device)
    code_hash = pgolf_code_hash()
    logger.line(f"pgolf run preset:{preset_name} code_hash:{code_hash}")
    for key, value in env.items():
        logger.line(f"env:{key}={value}")
    if preset_cfg is not None:
        for name, (before, after) in config_differences(cfg, preset_cfg).items():
            logger.line(f"override:{name.upper()}={after!r} (preset {before!r})")
    logger.line(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={cfg.data.tokenizer_path}")
    logger.line(f"train_loader:dataset:{Path(cfg.data.data_path).name} train_shards:{len(data.train_files)}")
    logger.line(f"val_loader:shards pattern={Path(cfg.data.data_path) / 'fineweb_val_*.bin'} tokens:{data.tokens.numel()}")
    logger.line(f"model_params:{count_parameters(model)}")
    logger.line(f"world_size:{ctx.world_size} grad_accum_steps:{ctx.grad_accum_steps}")
    m, o, t = cfg.model, cfg.optim, cfg.train
    logger.line(f"attention_mode:gqa num_heads:{m.num_heads} num_kv_heads:{m.num_kv_heads}")
    logger.line(describe_attention_backend(m, ctx.device))
    logger.line(f"tie_embeddings:{m.tie_embeddings} embed_lr:{o.embed_lr} head_lr:{o.head_lr} "
                f"matrix_lr:{o.matrix_lr} scalar_lr:{o.scalar_lr}")
    logger.line(f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} iterations:{t.iterations} "
                f"warmup_steps:{t.warmup_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f}")
    logger.line(f"muon_row_normalize:{o.muon_row_normalize} muon_ns_coefficients:{o.muon_ns_coefficients} "
                f"muon_wd:{o.muon_wd} adam_wd:{o.adam_wd} embed_wd:{o.embed_wd} grad_clip_norm:{o.grad_clip_norm}")
    logger.line(f"loader:{t.train_loader} warmdown_frac:{t.warmdown_frac} min_lr:{t.min_lr} "
                f"enable_looping_at:{t.enable_looping_at} ema_decay:{t.ema_decay} ema_start_step:{t.ema_start_step} "
                f"gptq_reserve_seconds:{t.gptq_reserve_seconds}")
    logger.line(f"seed:{t.seed}")
    logger.event("header", preset=preset_name, code_hash=code_hash, env=env, config=flatten_config(cfg),
                 model_params=count_parameters(model))
    return {"code_hash": code_hash, "env": env}


def build_train_loader(cfg: Config, ctx: DistContext, train_files: list[Path]) -> TrainingBatches:
    """The loader TRAIN_LOADER names: the baseline's sequential stream or the record's shuffled sequences."""
    loader_class = TRAIN_LOADERS[cfg.train.train_loader]
    return loader_class(train_files, ctx.rank, ctx.world_size, ctx.device, vocab_size=cfg.model.vocab_size)


def wrap_for_training(model: GPT, cfg: Config, ctx: DistContext, *, sharded_muon: bool = False) -> torch.nn.Module:
    """Compile (COMPILE=1) and, with several ranks, DDP-wrap the model. With sharded Muon the optimizers
    synchronise the gradients themselves (pgolf.optim.grad_sync), so no DDP: rank 0's initial weights
    are broadcast instead, as DDP would."""
    forward_model: torch.nn.Module = model
    if cfg.train.compile:
        load_kernels_for_compile(cfg)
        forward_model = torch.compile(model, dynamic=False, fullgraph=True)
    if ctx.is_distributed and sharded_muon:
        broadcast_parameters_from_rank0_(model)
    elif ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward_model = DistributedDataParallel(forward_model, device_ids=device_ids, broadcast_buffers=False)
    return forward_model


def load_kernels_for_compile(cfg: Config) -> None:
    """A compiled graph cannot load the Triton kernels itself: load the ones the run uses first."""
    if cfg.model.fused_cross_entropy:
        load_softcap_ce_kernels()
    if cfg.model.fused_mlp:
        load_fused_mlp_kernels()


def uses_sharded_muon(optimizers: list[torch.optim.Optimizer]) -> bool:
    return any(isinstance(opt, ShardedMuon) for opt in optimizers)


def log_eval(logger: RunLogger, label: str, sums: EvalSums, seconds: float) -> None:
    logger.line(f"{label} val_loss:{sums.val_loss:.4f} val_bpb:{sums.val_bpb:.4f} eval_time:{seconds * 1000:.0f}ms")
    logger.line(f"{label}_exact val_loss:{sums.val_loss:.8f} val_bpb:{sums.val_bpb:.8f}")
    logger.event("eval", label=label, seconds=seconds, **sums.as_dict())


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def collect_gptq_hessians(model: GPT, cfg: Config, ctx: DistContext, train_files: list[Path],
                          logger: RunLogger) -> tuple[dict[str, torch.Tensor] | None, float]:
    """GPTQ Hessians (None with QUANT_METHOD=rtn) and the seconds they took, on every rank.

    The batches come from a FRESH training loader (the sequences the run started with, SPEC 4.10):
    training data only, never validation. ``model`` must be the bare model, not its compiled/DDP wrapper.
    Reading training data is training, so these seconds belong inside MAX_WALLCLOCK_SECONDS (the reserve).
    """
    if cfg.quant.quant_method != "gptq":
        return None, 0.0
    logger.line("GPTQ:collecting Hessians from calibration data...")
    synchronize_device(ctx.device)
    start = time.perf_counter()
    loader = build_train_loader(cfg, ctx, train_files)
    batches = training_calibration_batches(loader, cfg.quant.gptq_calibration_batches,
                                           global_tokens=cfg.train.train_batch_tokens, seq_len=cfg.train.train_seq_len,
                                           grad_accum_steps=ctx.grad_accum_steps)
    hessians = collect_hessians(model, batches)
    synchronize_device(ctx.device)
    seconds = time.perf_counter() - start
    logger.line(f"GPTQ:collected {len(hessians)} Hessians in {seconds:.1f}s")
    return hessians, seconds


def calibration_budget_fields(cfg: Config, train_seconds: float, calibration_seconds: float,
                              logger: RunLogger) -> dict:
    """Training + calibration seconds against MAX_WALLCLOCK_SECONDS (report fields; logged with GPTQ)."""
    cap = cfg.train.max_wallclock_seconds
    total = train_seconds + calibration_seconds
    fits = total <= cap if cap > 0 else None
    if cfg.quant.quant_method == "gptq":
        verdict = "no cap" if fits is None else (f"fits, {cap - total:.1f}s to spare" if fits else
                                                 f"OVER by {total - cap:.1f}s: raise GPTQ_RESERVE_SECONDS")
        logger.line(f"GPTQ:train_time {train_seconds:.1f}s + calibration {calibration_seconds:.1f}s = {total:.1f}s "
                    f"of MAX_WALLCLOCK_SECONDS={cap:g} ({verdict})")
    return {"calibration_seconds": calibration_seconds, "train_plus_calibration_seconds": total,
            "wallclock_cap_seconds": cap, "train_plus_calibration_fits": fits}


EXACT_CODE_BYTES_NOTE = "exact: the wrapped train_gpt.py that `pgolf export` writes for this configuration"
UPPER_BOUND_CODE_BYTES_NOTE = ("upper bound: total source bytes of the pgolf modules this run imported "
                               "(`pgolf export` measures the real wrapped train_gpt.py)")


def write_artifact(model: GPT, cfg: Config, run_dir: Path, logger: RunLogger,
                   hessians: dict[str, torch.Tensor] | None = None,
                   code_bytes: int | None = None) -> tuple[Path, SizeReport, dict]:
    """Keep the full-precision weights (for ``pgolf quantize``), then write the quantized artifact."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    # The looping state travels with the weights: a looped model is evaluated looped (SPEC 4.11).
    looping = bool(getattr(model, "looping", False))
    write_bytes_atomic(run_dir / "final_weights.pgtc",
                       pack_tensor_container(state, {"kind": "full_precision", "looping": looping}))
    return write_quantized_artifact(state, cfg, run_dir / "artifact", logger, hessians=hessians, looping=looping,
                                    code_bytes=code_bytes)


def write_quantized_artifact(state: dict[str, torch.Tensor], cfg: Config, out_dir: Path, logger: RunLogger, *,
                             hessians: dict[str, torch.Tensor] | None, looping: bool,
                             code_bytes: int | None = None) -> tuple[Path, SizeReport, dict]:
    """Quantize, compress (pruning to the cap with FIT_TO_CAP=1) and save into ``out_dir``, logging the
    per-tensor plan and the result. ``code_bytes``: the exact size of the exported train_gpt.py when the
    caller knows it; None = an upper bound, the sources this process imported.
    Returns (artifact path, size, report fields)."""
    for line in format_quant_plan(describe_quant_plan(state, cfg.quant)):
        logger.line(line)
    code_bytes_note = EXACT_CODE_BYTES_NOTE
    if code_bytes is None:
        code_bytes = source_bytes_of_modules(loaded_pgolf_modules())
        code_bytes_note = UPPER_BOUND_CODE_BYTES_NOTE
    artifact, quantize_seconds = timed(lambda: build_model_artifact(
        state, cfg.quant, hessians=hessians, extra_meta={"looping": looping}, code_bytes=code_bytes,
        cap=ARTIFACT_CAP_BYTES))
    for line in format_quantized_weights(artifact.quant_meta):
        logger.line(line)
    artifact_path = save_artifact(out_dir / artifact_file_name(cfg.quant), artifact.blob)
    size = SizeReport(code_bytes=code_bytes, model_bytes=len(artifact.blob), cap=ARTIFACT_CAP_BYTES,
                      code_bytes_note=code_bytes_note)
    what = f"{artifact_path.name.split('.')[1]}+{artifact.compressor}"
    logger.line(f"Serialized model {what}: {len(artifact.blob)} bytes (quantize+compress {quantize_seconds:.1f}s)")
    logger.line(f"Code size: {code_bytes} bytes ({size.code_bytes_note})")
    prune_lines, prune_fields = describe_artifact_pruning(artifact, code_bytes)
    for line in prune_lines:
        logger.line(line)
    logger.line(f"Total submission size {what}: {size.total_bytes} bytes (cap {size.cap}, margin {size.margin_bytes})")
    fields = {"artifact_file": artifact_path.name, "artifact_path": str(artifact_path),
              "artifact_compressor": artifact.compressor,
              "artifact_shuffle_stride": artifact.shuffle_stride, "quant_method": cfg.quant.quant_method,
              "quantize_seconds": quantize_seconds, **prune_fields}
    logger.event("artifact", path=str(artifact_path), **size.as_dict(), **fields)
    return artifact_path, size, fields


def load_artifact_into_fresh_model(path: Path, cfg: Config, device: torch.device) -> GPT:
    """A new model holding the artifact's weights, in the layer schedule it was trained in last."""
    try:
        state, meta = unpack_model_artifact(load_artifact_file(path))
    except ArtifactError as error:
        message = str(error) if str(path) in str(error) else f"artifact {path}: {error}"
        raise ArtifactError(message) from None
    model = build_model(cfg.model, device)
    model.load_state_dict(state, strict=True)
    if meta["extra"].get("looping"):
        model.set_looping(True)
    return model


def main(cfg: Config, *, preset_name: str = "custom", preset_cfg: Config | None = None, echo: bool = True,
         code_bytes: int | None = None, resume: bool = False, keep_process_group: bool = False) -> dict:
    """Run the whole pipeline; returns the report (also written to ``report.json``).

    ``code_bytes``: the exact counted code size (``pgolf train`` passes the size of the train_gpt.py
    ``pgolf export`` would write; the exported script passes its own); None = an upper bound.
    ``resume``: continue the run ``RUNS_DIR/RUN_ID`` from its newest complete checkpoint. Without it,
    ``PGOLF_AUTO_RESUME=1`` does the same when that directory exists (and starts it when it does not),
    which is what a worker group restarted by ``torchrun --max-restarts`` needs."""
    validate_config(cfg)
    ctx = init_distributed()
    seed_everything(cfg.train.seed)
    start = open_run_directory(cfg, ctx, resume)
    logger = RunLogger(start.run_dir, enabled=ctx.is_main, echo=echo)
    try:
        report = _run_pipeline(cfg, preset_name, preset_cfg, ctx, start, logger, code_bytes)
    finally:
        logger.close()
    # Several runs in the same torchrun processes (pgolf seeds / sweep) keep one process group: a second
    # rendezvous in the same processes can hang when the ranks reach it at different times.
    if not keep_process_group:
        shutdown_distributed()
    return report


def _run_pipeline(cfg: Config, preset_name: str, preset_cfg: Config | None, ctx: DistContext, start: RunStart,
                  logger: RunLogger, code_bytes: int | None) -> dict:
    run_dir = start.run_dir
    if ctx.is_main and not (run_dir / "config.json").exists():  # a resumed run keeps its own
        write_text_atomic(run_dir / "config.json", config_to_json(cfg))
    data = prepare_validation_data(cfg)
    autocast_dtype = configure_precision(cfg.train, ctx.device)
    loss_scaler = build_loss_scaler(ctx.device, autocast_dtype)
    model = build_model(cfg.model, ctx.device)
    header = log_header(logger, cfg, preset_name, preset_cfg, ctx, data, model)
    logger.line(describe_precision(ctx.device, autocast_dtype, loss_scaler))
    if cfg.model.fp8_matmul:  # before QAT and compile, on the bare model
        logger.line(enable_fp8_matmul(model, ctx.device))
    if start.existing:
        logger.line(f"resume:run_dir {run_dir} checkpoint:{start.checkpoint or 'none yet (starting from step 0)'}")
        if ctx.is_main:
            remove_unfinished_outputs(run_dir, logger)
    evaluate = make_evaluator(cfg, ctx, data)
    loader = build_train_loader(cfg, ctx, data.train_files)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns,
                                  rank=ctx.rank, world_size=ctx.world_size)
    # QAT attaches by module replacement before compile/DDP wrap the model; removed after training.
    qat = attach_qat(model, cfg.quant)
    if qat is not None:
        for line in describe_qat(qat):
            logger.line(line)
    elif cfg.quant.qat_start_frac > 0:
        logger.line("qat:off (no per-row block matrices to fake-quantize)")
    sharded = uses_sharded_muon(optimizers)
    if sharded and autocast_dtype == torch.float16:
        raise ConfigError("MUON_SHARDED=1 with fp16 training (AUTOCAST_DTYPE) is not supported: the loss scaler's "
                          "overflow check would differ across ranks. Use MUON_SHARDED=0 or bf16.")
    parts = TrainingParts(model, wrap_for_training(model, cfg, ctx, sharded_muon=sharded), optimizers, loader, qat,
                          loss_scaler, sharded_gradients=sharded)
    check_room_for_run(run_dir, cfg, ctx, model, optimizers)
    checkpoints = CheckpointManager(run_dir, cfg, ctx, logger, resume_from=start.checkpoint,
                                    run_info={"preset": preset_name}, loss_scaler=loss_scaler)

    def validate_during_training(step: int) -> None:
        sums, seconds = timed(evaluate, model)
        logger.line(f"step:{step}/{cfg.train.iterations} val_loss:{sums.val_loss:.4f} val_bpb:{sums.val_bpb:.4f}")
        logger.event("val", step=step, seconds=seconds, **sums.as_dict())

    # With EMA_DECAY > 0 the model comes back holding the EMA weights: everything below uses them.
    outcome = train_model(parts, cfg.train, cfg.optim, ctx, logger, validate_during_training, checkpoints)
    if qat is not None:
        qat.remove()  # plain linears for evaluation, calibration, export and TTT
    logger.line(f"train_done steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms "
                f"tokens_per_s:{outcome.tokens_per_second:.0f} stopped_by:{outcome.stopped_by}")
    prequant, prequant_seconds = timed(evaluate, model)
    log_eval(logger, "final_prequant", prequant, prequant_seconds)

    hessians, calibration_seconds = collect_gptq_hessians(model, cfg, ctx, data.train_files, logger)
    quant_fields = calibration_budget_fields(cfg, outcome.train_seconds, calibration_seconds, logger)
    artifact_path, size = (None, None)
    if ctx.is_main:
        artifact_path, size, artifact_fields = write_artifact(model, cfg, run_dir, logger, hessians, code_bytes)
        quant_fields.update(artifact_fields)
    artifact_path = broadcast_object_from_main(artifact_path)
    roundtrip_model = load_artifact_into_fresh_model(artifact_path, cfg, ctx.device)
    roundtrip, roundtrip_seconds = timed(evaluate, roundtrip_model)
    what = artifact_file_name(cfg.quant).split(".")[1]  # int8, int6, gptq_int6 ...
    log_eval(logger, f"final_{what}_{cfg.quant.compressor}_roundtrip", roundtrip, roundtrip_seconds)
    phases = extra_evaluation_phases(cfg, ctx, data.tokens, data.byte_tables, roundtrip_model,
                                     lambda: load_artifact_into_fresh_model(artifact_path, cfg, ctx.device))
    for phase in phases:
        logger.line(phase.log_line())
        logger.event("eval", label=phase.label, seconds=phase.seconds, **phase.sums.as_dict())
    budget = evaluation_budget([EvalPhase("quantized", roundtrip, roundtrip_seconds), *phases],
                               cfg.eval.eval_budget_seconds)
    logger.line(f"eval_budget: total {budget['total_seconds']:.1f}s of {budget['budget_seconds']:.0f}s "
                f"on this machine (speedup needed to fit: {budget['speedup_needed_to_fit']})")

    report = build_report(cfg, preset_name, run_dir, model, outcome, prequant, roundtrip, roundtrip_seconds, size, header)
    report.update(final_evaluation_fields(phases, budget, roundtrip))
    report.update(quant_fields)
    if ctx.is_main:
        write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
        logger.line(f"report: {run_dir / 'report.json'}")
        check_artifact_fits(size)
    return report


def final_evaluation_fields(phases: list[EvalPhase], budget: dict, roundtrip: EvalSums) -> dict:
    """Report fields of the sliding/TTT phases. ``val_bpb_final`` is the last phase's score (what the
    records report), the round trip's when no extra phase ran."""
    fields: dict = {"eval_budget": budget, "val_bpb_final": roundtrip.val_bpb, "val_bpb_final_label": "quantized"}
    for phase in phases:
        fields[f"val_bpb_{phase.label}"] = phase.sums.val_bpb
        fields[f"val_loss_{phase.label}"] = phase.sums.val_loss
    if phases:
        fields.update(val_bpb_final=phases[-1].sums.val_bpb, val_bpb_final_label=phases[-1].label)
    return fields


def build_report(cfg, preset_name, run_dir, model, outcome, prequant, roundtrip, eval_seconds, size, header) -> dict:
    report = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "preset": preset_name,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "tokens_per_second": outcome.tokens_per_second,
        "stopped_by": outcome.stopped_by,
        "looping_enabled_step": outcome.looping_enabled_step,
        "ema_applied": outcome.ema_applied,
        "qat_enabled_step": outcome.qat_enabled_step,
        "val_loss": roundtrip.val_loss,
        "val_bpb": roundtrip.val_bpb,
        "val_loss_prequant": prequant.val_loss,
        "val_bpb_prequant": prequant.val_bpb,
        "quant_gap_bpb": roundtrip.val_bpb - prequant.val_bpb,
        "uniform_guess_bpb": uniform_guess_bpb(cfg.model.vocab_size, roundtrip),
        "val_tokens": roundtrip.token_count,
        "val_bytes": roundtrip.byte_count,
        "val_subset": cfg.eval.val_max_tokens > 0,
        "eval_seconds": eval_seconds,
        "model_params": count_parameters(model),
        "seed": cfg.train.seed,
        "code_hash": header["code_hash"],
        "env": header["env"],
    }
    if size is not None:
        report.update(artifact_bytes=size.model_bytes, code_bytes=size.code_bytes, total_bytes=size.total_bytes,
                      cap_bytes=size.cap, margin_bytes=size.margin_bytes, fits=size.fits,
                      code_bytes_note=size.code_bytes_note)
    return report
