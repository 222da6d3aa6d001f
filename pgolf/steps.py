"""The steps both entries run, in the same order: ``pgolf.run.main`` (``pgolf train``) and the exported
script's ``pgolf.submission.run_submission``. Sharing them is what makes an exported run reproduce the
package's bit for bit: train the prepared model, then quantize, pack, round-trip and score it, then
record the run and refuse it when it has no valid score or its artifact is over the cap.

Each step takes ``diagnostics``: True (``pgolf train``, and a script exported with ``--full-records``)
adds the bookkeeping only pgolf's own tools read: ``report.json``, the quantization plan, the
compile monitor, the time budgets. The exported script passes a constant, so the exporter drops the
branches it never takes (docs/export.md, "Running the exported script")."""

from dataclasses import dataclass, field
from pathlib import Path

from pgolf.artifact.size import SizeReport, check_artifact_fits
from pgolf.config import Config
from pgolf.data.run_data import ValidationData
from pgolf.dist import DistContext, broadcast_object_from_main
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases, timed_phase
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.quant.calibration import calibration_budget_fields, collect_gptq_hessians
from pgolf.quant.model_artifact import load_round_trip_model, write_artifact
from pgolf.quant.packing import artifact_file_name
from pgolf.report import (build_report, final_evaluation_fields, log_eval, log_evaluation_budget, log_extra_phase,
                          phase_is_finite, phase_score_fields, publish_report, refuse_non_finite_scores)
from pgolf.train.checkpoint import CheckpointManager
from pgolf.train.loop import TrainingParts, TrainOutcome, train_model


def train_prepared_model(parts: TrainingParts, cfg: Config, ctx: DistContext, logger: RunLogger, evaluate,
                         checkpoints: CheckpointManager | None, *, diagnostics: bool) -> TrainOutcome:
    """Train ``parts.model`` (from step 0 or the checkpoints' resume point) and log how it went."""
    model = parts.model
    logger.line(ctx.runtime.describe(parts.loss_scaler))

    def validate_during_training(step: int) -> None:  # off the training clock (the loop pauses it)
        phase = timed_phase("val", ctx.runtime, lambda: evaluate(model))
        logger.line(f"step:{step}/{cfg.train.iterations} val_loss:{phase.sums.val_loss:.4f} "
                    f"val_bpb:{phase.sums.val_bpb:.4f}")
        logger.event("val", step=step, seconds=phase.seconds, **phase.sums.as_dict())

    # With EMA_DECAY > 0 the model comes back holding the EMA weights: everything after uses them.
    outcome = train_model(parts, cfg.train, cfg.optim, ctx, logger, validate_during_training, checkpoints,
                          diagnostics=diagnostics)
    if parts.qat is not None:
        parts.qat.remove()  # plain linears for evaluation, calibration, export and TTT
    logger.line(f"train_done steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms "
                f"tokens_per_s:{outcome.tokens_per_second:.0f} stopped_by:{outcome.stopped_by}")
    return outcome


@dataclass
class ScoredModel:
    """What quantize_and_score measured. ``roundtrip`` and ``size`` are None when the trained weights did
    not score finite (nothing was quantized); ``phases`` are the sliding/TTT phases; ``fields`` are the
    report's quantization and phase fields (empty without diagnostics)."""

    prequant: EvalPhase
    roundtrip: EvalPhase | None = None
    size: SizeReport | None = None
    fields: dict = field(default_factory=dict)
    phases: list[EvalPhase] = field(default_factory=list)


def quantize_and_score(model: GPT, cfg: Config, ctx: DistContext, data: ValidationData, evaluate,
                       run_dir: Path, logger: RunLogger, code_bytes: int | None,
                       outcome: TrainOutcome, *, diagnostics: bool) -> ScoredModel:
    """Evaluate the trained weights, quantize and pack them (GPTQ calibration on training data), score the
    artifact loaded into a fresh model (the round trip: the score), then the extra phases."""
    prequant = timed_phase("final_prequant", ctx.runtime, lambda: evaluate(model))
    log_eval(logger, prequant)
    if not phase_is_finite(prequant):  # diverged weights: nothing to quantize; the report says so
        return ScoredModel(prequant)
    hessians, calibration_seconds = collect_gptq_hessians(model, cfg, ctx, data.train_files, logger)
    fields = {}
    if diagnostics:
        fields = calibration_budget_fields(cfg, outcome.train_seconds, calibration_seconds, logger)
    artifact_path, size = None, None
    if ctx.is_main:
        artifact_path, size, artifact_fields = write_artifact(model, cfg, run_dir, logger, hessians, code_bytes,
                                                              diagnostics=diagnostics)
        fields.update(artifact_fields)
    artifact_path = broadcast_object_from_main(artifact_path)

    roundtrip_model = load_round_trip_model(artifact_path, cfg, ctx.runtime)  # the configured format only
    what = artifact_file_name(cfg.quant).split(".")[1]  # int8, int6, gptq_int6 ...
    roundtrip = timed_phase(f"final_{what}_{cfg.artifact.compressor}_roundtrip", ctx.runtime,
                            lambda: evaluate(roundtrip_model))
    log_eval(logger, roundtrip)
    phases = extra_evaluation_phases(cfg, ctx, data.tokens, data.target_bytes, roundtrip_model,
                                     lambda: load_round_trip_model(artifact_path, cfg, ctx.runtime))
    for phase in phases:
        log_extra_phase(logger, phase)
    if diagnostics:
        fields.update(evaluation_budget_fields(cfg, logger, roundtrip, phases))
    return ScoredModel(prequant, roundtrip, size, fields, phases)


def evaluation_budget_fields(cfg: Config, logger: RunLogger, roundtrip: EvalPhase, phases: list[EvalPhase]) -> dict:
    """The evaluation phases' seconds against EVAL_BUDGET_SECONDS (logged), and the report's phase fields."""
    budget = evaluation_budget([EvalPhase("quantized", roundtrip.sums, roundtrip.seconds), *phases],
                               cfg.eval.eval_budget_seconds)
    log_evaluation_budget(logger, budget)
    return final_evaluation_fields(phases, budget, roundtrip)


def record_run(cfg: Config, preset_name: str, run_dir: Path, model: GPT, outcome: TrainOutcome, header: dict,
               scored: ScoredModel, logger: RunLogger, is_main: bool) -> dict:
    """Write ``report.json`` (the report every run has, plus the quantization and phase fields), then
    refuse a run without a finite score or over the cap; returns the report as written."""
    report = build_report(cfg, preset_name, run_dir, model, outcome, scored.prequant, scored.roundtrip, scored.size,
                          header)
    report.update(scored.fields)
    return publish_report(report, run_dir, logger, scored.size, is_main)


def valid_scores(scored: ScoredModel, is_main: bool) -> dict:
    """A run without ``report.json``: its scores by report key, once it is known to have a finite score
    and an artifact within the cap (the refusals of ``record_run``, from the scores themselves)."""
    scores = phase_score_fields(scored.prequant, scored.roundtrip, scored.phases)
    refuse_non_finite_scores(scores)
    if is_main and scored.size is not None:
        check_artifact_fits(scored.size)
    return scores
