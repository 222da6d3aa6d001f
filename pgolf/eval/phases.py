"""The evaluation phases after the artifact round trip, each timed against the evaluation budget.

The quantized model is scored by the plain evaluator (the run does that as its round trip); then,
when enabled, by sliding windows (SPEC 4.12) and by score-first TTT on a fresh copy of the artifact's
model: full-model SGD per chunk (SPEC 4.13) or batched document-level LoRA, optionally phased (SPEC 5.3).
``pgolf eval`` (``pgolf.eval.tools``) runs the same phases on a finished run. Every phase is timed with the device synchronised, and the report states the total
against ``EVAL_BUDGET_SECONDS``. The times are this machine's: ``speedup_needed_to_fit`` says how many
times faster the evaluating machine must be (1 or less: it fits here already). Divide by the measured
speed ratio between this machine and 8xH100 (``bench/``) to project the reference time.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pgolf.config import Config, evaluation_window
from pgolf.data.run_data import ValidationData
from pgolf.data.val_bytes import TargetBytes
from pgolf.dist import DistContext
from pgolf.eval.bpb import EvalSums, evaluate_bpb
from pgolf.eval.sliding import evaluate_sliding_bpb
from pgolf.eval.ttt import TTTObserver, evaluate_ttt_bpb
from pgolf.eval.ttt_lora import evaluate_lora_ttt_bpb
from pgolf.runtime import Runtime


@dataclass(frozen=True)
class EvalPhase:
    label: str
    sums: EvalSums
    seconds: float

    def log_line(self) -> str:
        return (f"{self.label} val_loss:{self.sums.val_loss:.8f} val_bpb:{self.sums.val_bpb:.8f} "
                f"eval_time:{self.seconds * 1000:.0f}ms")


def timed_phase(label: str, runtime: Runtime, score: Callable[[], EvalSums]) -> EvalPhase:
    """Run ``score`` with the device synchronised before and after, so the time is the phase's own."""
    runtime.synchronize()
    started = time.perf_counter()
    sums = score()
    runtime.synchronize()
    return EvalPhase(label, sums, time.perf_counter() - started)


def plain_evaluator(cfg: Config, ctx: DistContext, data: ValidationData) -> Callable[[torch.nn.Module], EvalSums]:
    """A function model -> EvalSums over the validation split (the challenge's plain evaluation, SPEC 2.8),
    split across ranks."""
    seq_len = evaluation_window(cfg)  # EVAL_SEQ_LEN, else TRAIN_SEQ_LEN (the records evaluate at eval_seq_len)
    batch_sequences = max(cfg.eval.val_batch_size // (ctx.world_size * ctx.grad_accum_steps) // seq_len, 1)

    def evaluate(model: torch.nn.Module) -> EvalSums:
        return evaluate_bpb(model, data.tokens, seq_len=seq_len, batch_sequences=batch_sequences,
                            target_bytes=data.target_bytes, runtime=ctx.runtime, rank=ctx.rank,
                            world_size=ctx.world_size)

    return evaluate


def extra_evaluation_phases(cfg: Config, ctx: DistContext, val_tokens: torch.Tensor, target_bytes: TargetBytes,
                            quantized_model: torch.nn.Module, fresh_quantized_model: Callable[[], torch.nn.Module],
                            observer: TTTObserver | None = None) -> list[EvalPhase]:
    """The sliding-window and TTT phases that ``cfg`` enables (possibly none); ``target_bytes`` is the
    validation data's (``ValidationData.target_bytes``), so every phase divides by the same bytes."""
    # The calls spell their arguments out (no shared **kwargs): the exporter then sees every call's values
    # and folds what the configuration fixes (observer=None drops the TTT legality hooks from a submission).
    window, stride, batch_windows = evaluation_window(cfg), cfg.eval.eval_stride, cfg.eval.eval_batch_windows
    runtime, rank, world_size = ctx.runtime, ctx.rank, ctx.world_size
    phases = []
    if cfg.eval.sliding_window_enabled:
        phases.append(timed_phase("quantized_sliding_window", runtime, lambda: evaluate_sliding_bpb(
            quantized_model, val_tokens, window=window, stride=stride, batch_windows=batch_windows,
            target_bytes=target_bytes, runtime=runtime, rank=rank, world_size=world_size)))
    if cfg.ttt.ttt_enabled:
        # TTT changes the weights it adapts: it gets its own freshly loaded copy of the artifact.
        model = fresh_quantized_model()
        if cfg.ttt.ttt_mode == "lora":
            phases.append(timed_phase("quantized_ttt_lora", runtime, lambda: evaluate_lora_ttt_bpb(
                model, val_tokens, cfg.ttt, window=window, bos_id=cfg.model.bos_token_id, target_bytes=target_bytes,
                runtime=runtime, rank=rank, world_size=world_size, observer=observer)))
        else:
            phases.append(timed_phase("quantized_ttt", runtime, lambda: evaluate_ttt_bpb(
                model, val_tokens, cfg.ttt, window=window, stride=stride, batch_windows=batch_windows,
                target_bytes=target_bytes, runtime=runtime, rank=rank, world_size=world_size, observer=observer)))
    return phases


def evaluation_budget(phases: list[EvalPhase], budget_seconds: float) -> dict:
    """Seconds per phase, their total, and whether it fits the budget on this machine."""
    total = sum(phase.seconds for phase in phases)
    return {"phases": {phase.label: round(phase.seconds, 3) for phase in phases}, "total_seconds": round(total, 3),
            "budget_seconds": budget_seconds, "fits_on_this_machine": total <= budget_seconds,
            "speedup_needed_to_fit": round(total / budget_seconds, 3) if budget_seconds > 0 else None}
