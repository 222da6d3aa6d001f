"""Document-level LoRA test-time training, score-first (SPEC 5.3, without the phases and batching).

Each document (from its BOS up to and including the next BOS, so its last target is the next
document's BOS) is processed on its own, with fresh adapters:

1. the adapters' ``B`` factors are zeroed (the model is exactly the artifact's again), ``A`` re-drawn,
   and the AdamW state cleared;
2. for every chunk of ``TTT_LORA_CHUNK_TOKENS`` targets of the document, in order: one forward of
   base + adapters over the chunk's context (the last ``window`` tokens of the document up to the
   chunk's end, never the previous document) gives the chunk's losses, which are **scored**; then, if
   the document has a later chunk, one AdamW step on the mean of those same losses.

Targets before the first BOS belong to no document and are scored by plain windows without
adaptation. The adapters attach by module replacement: each target ``CastedLinear`` of every block
becomes a ``LoRALinear`` holding it, so the model's one forward serves both scoring and training.
"""

import math

import torch
from torch import nn

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables, count_target_bytes
from pgolf.dist import all_reduce_sum_
from pgolf.eval.bpb import EvalSums, autocast_context, rank_sequence_range
from pgolf.eval.ttt import TTTObserver

LORA_TTT_SEED = 1234


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * (x A^T) B^T`` with ``B`` zero after every reset."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.reset_adapter(torch.Generator().manual_seed(0))

    def reset_adapter(self, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.base.in_features)
        with torch.no_grad():
            self.lora_A.copy_((torch.rand(self.lora_A.shape, generator=generator) * 2 - 1) * bound)
            self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_A.to(x.dtype).T) @ self.lora_B.to(x.dtype).T
        return self.base(x) + self.scale * update


def attach_lora_adapters(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[LoRALinear]:
    """Replace every linear inside ``blocks`` whose name ends with a target (``proj`` matches both output
    projections, ``attn.proj`` only attention's) by a LoRALinear."""
    adapters = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            wanted = any(full.endswith("." + target) for target in targets)
            if full.startswith("blocks.") and wanted and isinstance(child, nn.Linear):
                adapter = LoRALinear(child, rank, alpha)
                setattr(module, child_name, adapter)
                adapters.append(adapter)
    if not adapters:
        raise ValueError(f"no linear named one of {targets} inside model.blocks; check TTT_LORA_TARGETS")
    return adapters


def document_spans(val_tokens: torch.Tensor, bos_id: int) -> list[tuple[int, int]]:
    """``(first, end)`` target ranges per document: from the target its BOS predicts to the one that
    predicts the next BOS (inclusive), the last document running to the end of the stream."""
    num_targets = val_tokens.numel() - 1
    starts = (val_tokens[:num_targets] == bos_id).nonzero().flatten().tolist()
    ends = starts[1:] + [num_targets]
    return [(start, end) for start, end in zip(starts, ends) if end > start]


class _DocumentTTT:
    def __init__(self, model, val_tokens, cfg: TTTConfig, window, byte_tables, device, observer):
        self.model, self.val_tokens, self.cfg, self.window = model, val_tokens, cfg, window
        self.byte_tables, self.device, self.observer = byte_tables, device, observer
        for p in model.parameters():
            p.requires_grad_(False)
        self.adapters = attach_lora_adapters(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, cfg.ttt_lora_alpha)
        self.params = [p for a in self.adapters for p in (a.lora_A, a.lora_B)]
        for p in self.params:
            p.requires_grad_(True)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def score_span(self, first: int, stop: int, context_start: int, train: bool) -> None:
        """Score targets [first, stop) with context from ``context_start``; then maybe one step on them."""
        tokens = self.val_tokens[context_start: stop + 1].to(device=self.device, dtype=torch.int64)[None]
        x, y = tokens[:, :-1], tokens[:, 1:]
        offset = first - context_start
        with torch.enable_grad(), autocast_context(self.device):
            losses = self.model(x, y, reduction="none")[0, offset:].float()
        bytes_ = count_target_bytes(self.byte_tables, x[0, offset:], y[0, offset:])
        self.sums += torch.stack((losses.detach().double().sum(), torch.tensor(float(losses.numel()), device=self.device,
                                  dtype=torch.float64), bytes_.double().sum()))
        if self.observer is not None:
            self.observer.scored(torch.arange(first, stop))
        if train:
            self.optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            self.optimizer.step()
            if self.observer is not None:
                self.observer.trained(torch.arange(first, stop))

    def run_document(self, first: int, end: int) -> None:
        # A fresh, identical start for every document (B = 0: the artifact's model exactly), so a
        # document's scores depend on nothing outside it.
        generator = torch.Generator().manual_seed(LORA_TTT_SEED)
        for adapter in self.adapters:
            adapter.reset_adapter(generator)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.ttt_lora_lr, betas=(0.0, 0.999), eps=1e-10,
                                           weight_decay=self.cfg.ttt_lora_wd)
        chunk = self.cfg.ttt_lora_chunk_tokens
        for begin in range(first, end, chunk):
            stop = min(begin + chunk, end)
            context_start = max(first, stop - self.window)
            self.score_span(begin, stop, context_start, train=stop < end)


def evaluate_lora_ttt_bpb(model: nn.Module, val_tokens: torch.Tensor, cfg: TTTConfig, *, window: int, bos_id: int,
                          byte_tables: ByteTables, device: torch.device, rank: int = 0, world_size: int = 1,
                          observer: TTTObserver | None = None) -> EvalSums:
    """Document-level score-first LoRA TTT BPB over all targets. ``model`` is changed in place (adapters
    attached): pass a fresh copy of the artifact's model. Documents are split contiguously over ranks."""
    model.eval()
    run = _DocumentTTT(model, val_tokens, cfg, window, byte_tables.to(device), device, observer)
    spans = document_spans(val_tokens, bos_id)
    first_document = spans[0][0] if spans else val_tokens.numel() - 1
    if rank == 0:  # targets before the first BOS: plain, unadapted windows
        for begin in range(0, first_document, window):
            with torch.no_grad():
                run.score_span(begin, min(begin + window, first_document), begin, train=False)
    for first, end in spans[slice(*rank_sequence_range(len(spans), rank, world_size))]:
        run.run_document(first, end)
    all_reduce_sum_(run.sums)
    loss_sum, token_count, byte_count = run.sums.tolist()
    return EvalSums(loss_sum=loss_sum, token_count=int(token_count), byte_count=int(byte_count))
