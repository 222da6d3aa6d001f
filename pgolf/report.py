"""What a run says about itself: the log header, the evaluation lines, and ``report.json``."""

from pathlib import Path

from pgolf.artifact.size import SizeReport
from pgolf.config import Config, config_differences, flatten_config
from pgolf.data.run_data import ValidationData
from pgolf.dist import DistContext
from pgolf.eval.bpb import uniform_guess_bpb
from pgolf.eval.phases import EvalPhase
from pgolf.log import RunLogger
from pgolf.model.attention import describe_attention_backend
from pgolf.model.gpt import GPT, count_parameters
from pgolf.provenance import environment_summary, pgolf_code_hash
from pgolf.train.loop import TrainOutcome


def log_header(logger: RunLogger, cfg: Config, preset_name: str, preset_cfg: Config | None, ctx: DistContext,
               data: ValidationData, model: GPT) -> dict:
    """The challenge-style header (every override of the preset, data, model and optimizer settings);
    returns the provenance fields the report repeats."""
    env = environment_summary(ctx.device)
    code_hash = pgolf_code_hash()
    logger.line(f"pgolf run preset:{preset_name} code_hash:{code_hash}")
    for key, value in env.items():
        logger.line(f"env:{key}={value}")
    if preset_cfg is not None:
        for name, (before, after) in config_differences(cfg, preset_cfg).items():
            logger.line(f"override:{name.upper()}={after!r} (preset {before!r})")
    for line in _setting_lines(cfg, ctx, data, model):
        logger.line(line)
    logger.event("header", preset=preset_name, code_hash=code_hash, env=env, config=flatten_config(cfg),
                 model_params=count_parameters(model))
    return {"code_hash": code_hash, "env": env}


def _setting_lines(cfg: Config, ctx: DistContext, data: ValidationData, model: GPT) -> list[str]:
    m, o, t = cfg.model, cfg.optim, cfg.train
    data_path = Path(cfg.data.data_path)
    return [
        f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={cfg.data.tokenizer_path}",
        f"train_loader:dataset:{data_path.name} train_shards:{len(data.train_files)}",
        f"val_loader:shards pattern={data_path / 'fineweb_val_*.bin'} tokens:{data.tokens.numel()}",
        f"model_params:{count_parameters(model)}",
        f"world_size:{ctx.world_size} grad_accum_steps:{ctx.grad_accum_steps}",
        f"attention_mode:gqa num_heads:{m.num_heads} num_kv_heads:{m.num_kv_heads}",
        describe_attention_backend(m, ctx.device),
        f"tie_embeddings:{m.tie_embeddings} embed_lr:{o.embed_lr} head_lr:{o.head_lr} "
        f"matrix_lr:{o.matrix_lr} scalar_lr:{o.scalar_lr}",
        f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} iterations:{t.iterations} "
        f"warmup_steps:{t.warmup_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f}",
        f"muon_row_normalize:{o.muon_row_normalize} muon_ns_coefficients:{o.muon_ns_coefficients} "
        f"muon_wd:{o.muon_wd} adam_wd:{o.adam_wd} embed_wd:{o.embed_wd} grad_clip_norm:{o.grad_clip_norm}",
        f"loader:{t.train_loader} warmdown_frac:{t.warmdown_frac} min_lr:{t.min_lr} "
        f"enable_looping_at:{t.enable_looping_at} ema_decay:{t.ema_decay} ema_start_step:{t.ema_start_step} "
        f"gptq_reserve_seconds:{t.gptq_reserve_seconds}",
        f"seed:{t.seed}",
    ]


def log_eval(logger: RunLogger, phase: EvalPhase) -> None:
    """The challenge's two lines of an evaluation (rounded, then ``_exact``) and its metrics event."""
    sums = phase.sums
    logger.line(f"{phase.label} val_loss:{sums.val_loss:.4f} val_bpb:{sums.val_bpb:.4f} "
                f"eval_time:{phase.seconds * 1000:.0f}ms")
    logger.line(f"{phase.label}_exact val_loss:{sums.val_loss:.8f} val_bpb:{sums.val_bpb:.8f}")
    logger.event("eval", label=phase.label, seconds=phase.seconds, **sums.as_dict())


def log_extra_phase(logger: RunLogger, phase: EvalPhase) -> None:
    """A sliding-window or TTT phase: one exact line and its metrics event."""
    logger.line(phase.log_line())
    logger.event("eval", label=phase.label, seconds=phase.seconds, **phase.sums.as_dict())


def log_evaluation_budget(logger: RunLogger, budget: dict) -> None:
    logger.line(f"eval_budget: total {budget['total_seconds']:.1f}s of {budget['budget_seconds']:.0f}s "
                f"on this machine (speedup needed to fit: {budget['speedup_needed_to_fit']})")


def final_evaluation_fields(phases: list[EvalPhase], budget: dict, roundtrip: EvalPhase) -> dict:
    """Report fields of the sliding/TTT phases. ``val_bpb_final`` is the last phase's score (what the
    records report), the round trip's when no extra phase ran."""
    fields: dict = {"eval_budget": budget, "val_bpb_final": roundtrip.sums.val_bpb, "val_bpb_final_label": "quantized"}
    for phase in phases:
        fields[f"val_bpb_{phase.label}"] = phase.sums.val_bpb
        fields[f"val_loss_{phase.label}"] = phase.sums.val_loss
    if phases:
        fields.update(val_bpb_final=phases[-1].sums.val_bpb, val_bpb_final_label=phases[-1].label)
    return fields


def build_report(cfg: Config, preset_name: str, run_dir: Path, model: GPT, outcome: TrainOutcome,
                 prequant: EvalPhase, roundtrip: EvalPhase, size: SizeReport | None, header: dict) -> dict:
    """The fields of report.json that every run has (the caller adds the quantization and phase fields)."""
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
        "val_loss": roundtrip.sums.val_loss,
        "val_bpb": roundtrip.sums.val_bpb,
        "val_loss_prequant": prequant.sums.val_loss,
        "val_bpb_prequant": prequant.sums.val_bpb,
        "quant_gap_bpb": roundtrip.sums.val_bpb - prequant.sums.val_bpb,
        "uniform_guess_bpb": uniform_guess_bpb(cfg.model.vocab_size, roundtrip.sums),
        "val_tokens": roundtrip.sums.token_count,
        "val_bytes": roundtrip.sums.byte_count,
        "val_subset": cfg.eval.val_max_tokens > 0,
        "eval_seconds": roundtrip.seconds,
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
