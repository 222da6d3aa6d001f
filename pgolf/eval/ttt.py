"""Legal score-first test-time training (SPEC 4.13).

The validation targets are cut into chunks of ``TTT_CHUNK_TOKENS``. For each chunk, in order:

1. **score**: the sliding windows assigned to the chunk (by their first scored target) are evaluated
   under no-grad and added to the sums. No update has used any of these targets yet;
2. **train** (never after the last chunk): the chunk's tokens, cut into whole windows aligned at the
   chunk start, are trained on for ``TTT_EPOCHS`` epochs of SGD with momentum, the LR following a
   cosine over chunks, gradients averaged over ranks and clipped.

A target in chunk c is scored by a window whose first scored target is at or before it, so that window
belongs to chunk c or earlier: every target is scored before the first update whose batch contains
it. ``TTTObserver`` sees every scored and every trained target index, which is how
``pgolf.eval.compliance`` proves it on the real code path.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.data.val_bytes import TargetBytes, resolve_target_bytes
from pgolf.dist import all_reduce_sum_
from pgolf.eval.bpb import EvalSums, rank_sequence_range
from pgolf.eval.sliding import ScoringWindow, iter_window_batches, score_windows, sliding_windows
from pgolf.log import ProgressBar
from pgolf.runtime import Runtime

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
TTT_EXPORT_SWITCH = "ttt_enabled"


@dataclass
class TTTObserver:
    """Records, in order, what TTT scored and what each optimizer step trained on (target indices)."""

    events: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    # With keep_losses, scorers that pass per-target losses have them kept: {target index: nats}.
    keep_losses: bool = False
    losses: dict[int, float] = field(default_factory=dict)

    def scored(self, targets: torch.Tensor, losses: torch.Tensor | None = None) -> None:
        self.events.append(("score", targets))
        if self.keep_losses and losses is not None:
            self.losses.update(zip(targets.tolist(), losses.detach().double().cpu().tolist()))

    def trained(self, targets: torch.Tensor) -> None:
        self.events.append(("train", targets))

    def phase_trained(self, targets: torch.Tensor) -> None:
        """A step of phased TTT's global SGD on the base model (targets as validation indices)."""
        self.events.append(("phase_train", targets))


def assign_windows_to_chunks(windows: list[ScoringWindow], chunk_tokens: int, num_targets: int) -> list[list[ScoringWindow]]:
    """Windows grouped by the chunk holding their first scored target."""
    num_chunks = max(1, math.ceil(num_targets / chunk_tokens))
    chunks: list[list[ScoringWindow]] = [[] for _ in range(num_chunks)]
    for w in windows:
        chunks[min((w.start + w.first_scored) // chunk_tokens, num_chunks - 1)].append(w)
    return chunks


def ttt_learning_rate(base_lr: float, chunk_index: int, num_chunks: int) -> float:
    """Cosine from ``base_lr`` at the first chunk to 0 at the last."""
    if num_chunks <= 1:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * chunk_index / (num_chunks - 1)))


def _targets_of(windows: list[ScoringWindow]) -> torch.Tensor:
    return torch.tensor([t for w in windows for t in w.scored_targets], dtype=torch.int64)


def _chunk_training_starts(chunk_index: int, chunk_tokens: int, num_targets: int, window: int) -> list[int]:
    """First target index of each whole window inside the chunk, aligned at the chunk start."""
    begin = chunk_index * chunk_tokens
    end = min(begin + chunk_tokens, num_targets)
    return [begin + k * window for k in range((end - begin) // window)]


def _average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (each rank's loss is already divided by the global token count)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


@dataclass
class ChunkTrainer:
    """SGD on whole windows of one chunk at a time, split over ranks (score-first TTT's training half;
    the phases of ``pgolf.eval.ttt_phased`` reuse it on concatenated scored documents)."""

    model: torch.nn.Module
    val_tokens: torch.Tensor
    cfg: TTTConfig
    window: int
    runtime: Runtime
    rank: int
    world_size: int
    observer: TTTObserver | None
    # The parameters to adapt; None = every parameter of the model.
    params: list[torch.nn.Parameter] | None = None

    def __post_init__(self):
        self.params = list(self.model.parameters()) if self.params is None else list(self.params)
        for p in self.params:
            p.requires_grad_(True)
            # Zero (not None) gradients: a rank without windows in a batch still joins the all-reduce.
            p.grad = torch.zeros_like(p)
        self.optimizer = torch.optim.SGD(self.params, lr=self.cfg.ttt_lr, momentum=self.cfg.ttt_momentum)

    def train_chunk(self, chunk_index: int, num_chunks: int, num_targets: int) -> None:
        """``ttt_epochs`` passes over the chunk's whole windows, split contiguously over ranks."""
        for group in self.optimizer.param_groups:
            group["lr"] = ttt_learning_rate(self.cfg.ttt_lr, chunk_index, num_chunks)
        starts = _chunk_training_starts(chunk_index, self.cfg.ttt_chunk_tokens, num_targets, self.window)
        shares = [starts[slice(*rank_sequence_range(len(starts), r, self.world_size))] for r in range(self.world_size)]
        batch = self.cfg.ttt_batch_seqs
        num_batches = math.ceil(max(len(share) for share in shares) / batch) if starts else 0
        self.model.train()
        for _ in range(self.cfg.ttt_epochs):
            for b in range(num_batches):
                global_tokens = sum(len(share[b * batch:(b + 1) * batch]) for share in shares) * self.window
                self._step(shares[self.rank][b * batch:(b + 1) * batch], global_tokens)
        self.model.eval()

    def _step(self, starts: list[int], global_tokens: int) -> None:
        """One SGD step on this rank's windows; every rank steps, even with no windows of its own."""
        self.optimizer.zero_grad(set_to_none=False)
        if starts:
            index = torch.tensor(starts)[:, None] + torch.arange(self.window + 1)[None, :]
            tokens = self.val_tokens[index].to(device=self.runtime.device, dtype=torch.int64)
            with self.runtime.autocast():
                loss_sum = self.model(tokens[:, :-1], tokens[:, 1:], reduction="sum")
            (loss_sum / global_tokens).backward()
            if self.observer is not None:
                self.observer.trained(index[:, :-1].reshape(-1))
        _average_gradients(self.params)
        if self.cfg.ttt_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.ttt_grad_clip)
        self.optimizer.step()


def evaluate_ttt_bpb(model: torch.nn.Module, val_tokens: torch.Tensor, cfg: TTTConfig, *, window: int, stride: int,
                     batch_windows: int, target_bytes: ByteTables | TargetBytes, runtime: Runtime, rank: int = 0,
                     world_size: int = 1, observer: TTTObserver | None = None) -> EvalSums:
    """Score-first TTT BPB over all ``val_tokens.numel() - 1`` targets. ``model`` is trained in place:
    pass a fresh copy of the artifact's model. Bytes of the scored targets from ``target_bytes``
    (``pgolf.data.val_bytes``)."""
    num_targets = val_tokens.numel() - 1
    chunks = assign_windows_to_chunks(sliding_windows(num_targets, window, stride), cfg.ttt_chunk_tokens, num_targets)
    run = ChunkTrainer(model, val_tokens, cfg, window, runtime, rank, world_size, observer)
    sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)
    target_bytes = resolve_target_bytes(target_bytes, val_tokens)
    model.eval()
    bar = ProgressBar("ttt", len(chunks), enabled=rank == 0)
    for chunk_index, chunk_windows in enumerate(chunks):
        mine = chunk_windows[slice(*rank_sequence_range(len(chunk_windows), rank, world_size))]
        for batch in iter_window_batches(mine, batch_windows):
            sums += score_windows(model, val_tokens, batch, window=window, target_bytes=target_bytes, runtime=runtime)
            if observer is not None:
                observer.scored(_targets_of(batch))
        if chunk_index < len(chunks) - 1:
            run.train_chunk(chunk_index, len(chunks), num_targets)
        bar.update(chunk_index + 1)
    bar.close()
    all_reduce_sum_(sums)
    loss_sum, token_count, byte_count = sums.tolist()
    return EvalSums(loss_sum=loss_sum, token_count=int(token_count), byte_count=int(byte_count))
