"""Phased TTT (SPEC 5.3 phases): global SGD on the base model over documents already scored.

The first ``TTT_PHASE_PREFIX_DOCS`` documents of the LoRA queue are split into ``TTT_PHASES`` cumulative
boundaries (2500 docs, 3 phases: 833 / 1666 / 2500). When the number of scored queue documents reaches
a boundary, every rank pauses and trains the base model on the first ``boundary`` documents of the queue
(all scored, since the queue is processed in order): their tokens are concatenated in queue order and
passed once through the score-first TTT trainer of ``pgolf.eval.ttt`` (SGD ``TTT_PHASE_LR`` with
``TTT_MOMENTUM``, chunks of ``TTT_CHUNK_TOKENS`` with cosine LR across chunks, the last chunk skipped,
``TTT_BATCH_SEQS`` windows per rank step, gradients averaged over ranks, clipped to ``TTT_GRAD_CLIP``).
Then scoring resumes on unseen documents with fresh adapters.

Score-before-update: the observer receives every phase step's targets as validation target indices
(``TTTObserver.phase_trained``), so ``check_score_before_update`` proves the phases train only on
documents that were already scored.
"""

import dataclasses
import math

import torch

from pgolf.config import TTTConfig
from pgolf.eval.ttt import ChunkTrainer, TTTObserver
from pgolf.runtime import Runtime

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
TTT_PHASED_EXPORT_SWITCH = "ttt_enabled and ttt_mode == 'lora'"


def phase_boundaries(num_documents: int, prefix_docs: int, phases: int) -> list[int]:
    """Cumulative numbers of scored queue documents at which a phase runs (empty ones dropped)."""
    prefix = min(prefix_docs, num_documents)
    return [b for b in dict.fromkeys(prefix * (k + 1) // phases for k in range(phases)) if b > 0]


def phase_training_documents(queue: list[tuple[int, int]], num_scored: int, boundary: int) -> list[tuple[int, int]]:
    """The documents a phase trains on: the first ``boundary`` of the queue, every one already scored."""
    if boundary > num_scored:
        raise AssertionError(f"a phase at boundary {boundary} would train on unscored documents ({num_scored} scored)")
    return queue[:boundary]


def concatenate_documents(val_tokens: torch.Tensor, documents: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The documents' tokens (each from its BOS, up to the next document's BOS) in the given order, and
    for every target of that stream the validation target index it repeats.

    Each document contributes ``val_tokens[first:end]``; a final token closes the stream. A document's
    last target there predicts the next document's BOS, as it does in the validation stream (the one
    exception: the document that ends the validation stream, whose last token is not a BOS).
    """
    pieces = [val_tokens[first:end] for first, end in documents]
    last_end = documents[-1][1]
    tokens = torch.cat(pieces + [val_tokens[last_end: last_end + 1]])
    target_index = torch.cat([torch.arange(first, end) for first, end in documents])
    return tokens, target_index


class _PhaseTargets:
    """Hands the phase trainer's target indices (into the concatenated stream) to the observer as
    validation target indices."""

    def __init__(self, observer: TTTObserver, target_index: torch.Tensor):
        self.observer, self.target_index = observer, target_index

    def trained(self, targets: torch.Tensor) -> None:
        self.observer.phase_trained(self.target_index[targets])


def run_global_sgd_phase(model: torch.nn.Module, val_tokens: torch.Tensor, documents: list[tuple[int, int]],
                         cfg: TTTConfig, params: list[torch.nn.Parameter], *, window: int, runtime: Runtime,
                         rank: int, world_size: int, observer: TTTObserver | None) -> None:
    """One epoch of SGD on ``params`` over the concatenated documents, then ``params`` frozen again."""
    tokens, target_index = concatenate_documents(val_tokens, documents)
    phase_cfg = dataclasses.replace(cfg, ttt_lr=cfg.ttt_phase_lr, ttt_epochs=1)
    targets = None if observer is None else _PhaseTargets(observer, target_index)
    trainer = ChunkTrainer(model, tokens, phase_cfg, window, runtime, rank, world_size, targets, params=params)
    num_targets = tokens.numel() - 1
    num_chunks = max(1, math.ceil(num_targets / cfg.ttt_chunk_tokens))
    for chunk_index in range(num_chunks - 1):  # the last chunk is skipped, as in score-first TTT
        trainer.train_chunk(chunk_index, num_chunks, num_targets)
    for p in params:  # back to scoring: base weights frozen, no stale gradients
        p.requires_grad_(False)
        p.grad = None
    model.eval()


class GlobalPhases:
    """Runs the phases as documents get scored (a no-op with ``TTT_PHASES=0``)."""

    def __init__(self, model: torch.nn.Module, val_tokens: torch.Tensor, cfg: TTTConfig, queue: list[tuple[int, int]],
                 *, window: int, runtime: Runtime, rank: int, world_size: int, observer: TTTObserver | None,
                 adapter_params: list[torch.nn.Parameter]):
        self.model, self.val_tokens, self.cfg, self.queue = model, val_tokens, cfg, queue
        self.common = dict(window=window, runtime=runtime, rank=rank, world_size=world_size, observer=observer)
        adapters = {id(p) for p in adapter_params}
        self.base_params = [p for p in model.parameters() if id(p) not in adapters]
        self.boundaries = phase_boundaries(len(queue), cfg.ttt_phase_prefix_docs, cfg.ttt_phases) if cfg.ttt_phases else []
        self.completed: list[int] = []

    def trigger_batches(self, batch_sizes: list[int]) -> set[int]:
        """Indices of the batches after which a phase runs (its boundary reached)."""
        triggers, scored, boundaries = set(), 0, iter(self.boundaries)
        boundary = next(boundaries, None)
        for index, size in enumerate(batch_sizes):
            scored += size
            while boundary is not None and scored >= boundary:
                triggers.add(index)
                boundary = next(boundaries, None)
        return triggers

    def after_documents_scored(self, num_scored: int) -> None:
        """Every rank calls this after each round with the number of queue documents scored so far."""
        while len(self.completed) < len(self.boundaries) and num_scored >= self.boundaries[len(self.completed)]:
            boundary = self.boundaries[len(self.completed)]
            documents = phase_training_documents(self.queue, num_scored, boundary)
            run_global_sgd_phase(self.model, self.val_tokens, documents, self.cfg, self.base_params, **self.common)
            self.completed.append(boundary)
