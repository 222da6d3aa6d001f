"""What a run says about itself: the log header, the evaluation lines, and ``report.json``.

``report.json`` is always valid JSON: a score that is not finite (a diverged run) is written as null and
named in ``non_finite`` (with the value it had), and the run then fails with an error saying so.
"""

import json
import math
import os
from pathlib import Path

from pgolf.artifact.size import SizeReport, check_artifact_fits
from pgolf.config import Config, config_differences, flatten_config
from pgolf.data.run_data import ValidationData
from pgolf.data.tokenizer_match import file_sha256
from pgolf.dist import DistContext
from pgolf.errors import TrainingError
from pgolf.eval.bpb import uniform_guess_bpb
from pgolf.fsutil import write_text_atomic
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
    data_record = run_data_record(cfg)
    logger.line(f"tokenizer_sha256:{data_record['tokenizer_sha256']}")
    logger.event("header", preset=preset_name, code_hash=code_hash, env=env, config=flatten_config(cfg),
                 model_params=count_parameters(model), data=data_record)
    return {"code_hash": code_hash, "env": env, "data": data_record}


def run_data_record(cfg: Config) -> dict:
    """Which data and tokenizer the run read, for the tools that later read the run (``pgolf eval``,
    ``quantize``, ``check``): the folder it was started in, so relative DATA_PATH/TOKENIZER_PATH in its
    config.json can be found from anywhere, and the tokenizer's sha256, so a model is never scored with
    another tokenizer of the same vocabulary (its token ids would name other pieces)."""
    return {"launch_dir": os.getcwd(),
            "data_path": str(Path(cfg.data.data_path).resolve()),
            "tokenizer_path": str(Path(cfg.data.tokenizer_path).resolve()),
            "tokenizer_sha256": file_sha256(cfg.data.tokenizer_path)}


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
    fields.update(extra_phase_scores(phases))
    if phases:
        fields.update(val_bpb_final=phases[-1].sums.val_bpb, val_bpb_final_label=phases[-1].label)
    return fields


def extra_phase_scores(phases: list[EvalPhase]) -> dict:
    """``val_bpb_<label>`` and ``val_loss_<label>`` of each sliding/TTT phase."""
    scores = {}
    for phase in phases:
        scores[f"val_bpb_{phase.label}"] = phase.sums.val_bpb
        scores[f"val_loss_{phase.label}"] = phase.sums.val_loss
    return scores


def phase_score_fields(prequant: EvalPhase, roundtrip: EvalPhase | None, phases: list[EvalPhase]) -> dict:
    """Every score a run measured, by its report key: before quantization, the round trip (None: the run
    stopped before quantizing) and each later phase."""
    scores = {"val_loss_prequant": prequant.sums.val_loss, "val_bpb_prequant": prequant.sums.val_bpb}
    if roundtrip is not None:
        scores.update(val_loss=roundtrip.sums.val_loss, val_bpb=roundtrip.sums.val_bpb)
    scores.update(extra_phase_scores(phases))
    return scores


def phase_is_finite(phase: EvalPhase) -> bool:
    return math.isfinite(phase.sums.val_loss) and math.isfinite(phase.sums.val_bpb)


def build_report(cfg: Config, preset_name: str, run_dir: Path, model: GPT, outcome: TrainOutcome,
                 prequant: EvalPhase, roundtrip: EvalPhase | None, size: SizeReport | None, header: dict) -> dict:
    """The fields of report.json that every run has (the caller adds the quantization and phase fields).
    ``roundtrip`` None: the run stopped before quantizing (its trained weights did not score finite)."""
    if roundtrip is None:
        report = _common_report_fields(cfg, preset_name, run_dir, model, outcome, prequant, prequant, header)
        report.update(val_loss=None, val_bpb=None, quant_gap_bpb=None, eval_seconds=None,
                      skipped="quantization, round trip and later phases (the trained weights scored non-finite)")
        return report
    report = _common_report_fields(cfg, preset_name, run_dir, model, outcome, prequant, roundtrip, header)
    if size is not None:
        report.update(artifact_bytes=size.model_bytes, code_bytes=size.code_bytes, total_bytes=size.total_bytes,
                      cap_bytes=size.cap, margin_bytes=size.margin_bytes, fits=size.fits,
                      code_bytes_note=size.code_bytes_note)
    return report


def _common_report_fields(cfg: Config, preset_name: str, run_dir: Path, model: GPT, outcome: TrainOutcome,
                          prequant: EvalPhase, roundtrip: EvalPhase, header: dict) -> dict:
    return {
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
        **phase_score_fields(prequant, roundtrip, []),
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
        "data": header.get("data"),  # None from an exported script, which does not record it
    }


def json_safe_report(report: dict) -> dict:
    """``report`` with every nan/inf number (at any depth) replaced by None, and ``non_finite`` mapping the
    key path of each to the value it had (``{"val_bpb": "nan"}``); no ``non_finite`` key when all are finite."""
    found: dict[str, str] = {}

    def clean(value, path: str):
        if isinstance(value, float) and not math.isfinite(value):
            found[path] = str(value)
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return value

    safe = clean(report, "")
    if found:
        safe["non_finite"] = found
    return safe


# Report keys that are scores (and their differences): one of them non-finite and the run has no score.
SCORE_KEY_PREFIXES = ("val_loss", "val_bpb", "quant_gap_bpb", "uniform_guess_bpb")


def refuse_non_finite_scores(report: dict, report_path: Path | None = None) -> None:
    """TrainingError when a score in the report (a top-level key, see SCORE_KEY_PREFIXES) is not a finite
    number: a diverged run has no score. ``report_path``: where the run's report is (None: a run without
    one, whose log holds what was measured)."""
    non_finite = {key: str(value) for key, value in report.items()
                  if key.startswith(SCORE_KEY_PREFIXES) and isinstance(value, float) and not math.isfinite(value)}
    if non_finite:
        raise TrainingError(no_valid_score_message(non_finite, report_path))


def no_valid_score_message(non_finite: dict[str, str], report_path: Path | None) -> str:
    """Which scores are not finite, the likely cause by the first phase that failed, and what to do."""
    values = ", ".join(f"{key}={value}" for key, value in non_finite.items())
    lower_rates = ("lower the learning rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR, EMBED_LR) or set GRAD_CLIP_NORM, "
                   "and train a new run")
    if {"val_loss_prequant", "val_bpb_prequant"} & set(non_finite):
        why = f"the trained weights do not score finite, training diverged: {lower_rates}"
    elif {"val_loss", "val_bpb"} & set(non_finite):
        why = ("the trained weights score finite but the quantized artifact does not: weights beyond what the "
               f"artifact stores (float16 holds at most 65504) usually mean training diverged: {lower_rates}")
    else:
        why = ("the artifact scores finite but a later evaluation phase does not: lower TTT_LR / TTT_LORA_LR and "
               "re-score the run with `pgolf eval`")
    recorded = (f"{report_path} records what was measured (null for each of these, listed under non_finite)"
                if report_path is not None else "train.log and metrics.jsonl record what was measured")
    return f"the run has no valid score ({values}): {why}. {recorded}."


def publish_report(report: dict, run_dir: Path, logger: RunLogger, size: SizeReport | None, is_main: bool) -> dict:
    """Write ``report.json`` (valid JSON), then fail a run without a finite score, then one over the cap:
    the report comes first, so nothing measured is lost. Returns the report as written."""
    safe = json_safe_report(report)
    report_path = run_dir / "report.json"
    if is_main:
        write_text_atomic(report_path, json.dumps(safe, indent=2, sort_keys=True, allow_nan=False))
        logger.line(f"report: {report_path}")
    refuse_non_finite_scores(report, report_path)
    if is_main and size is not None:
        check_artifact_fits(size)
    return safe
