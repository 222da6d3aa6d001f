"""Document-level LoRA test-time training, score-first and batched (SPEC 5.3).

Each document runs from its BOS up to and including the next BOS (so its last target is the next
document's BOS). Documents are sorted by length (longest first) and cut into batches of
``TTT_LORA_BATCH_DOCS``; every document of a batch has its own low-rank adapters (per-document ``A``
and ``B``, applied with batched matmuls), so documents never influence each other. Per batch:

1. reset: every ``B`` zeroed (the model is exactly the artifact's again), ``A`` re-drawn from a fixed
   seed (kept from the previous batch with ``TTT_LORA_WARM_START_A=1``), a fresh AdamW (no state; betas
   ``(0, TTT_BETA2)``);
2. for chunk c = 0, 1, ... of ``TTT_LORA_CHUNK_TOKENS`` targets, for the documents that have a chunk c:
   one forward of base + adapters over each chunk's context (the last ``window`` tokens of the
   document up to the chunk's end, never the previous document; rows right-padded, which causal
   attention cannot see) gives the chunk's losses, which are **scored**; then one AdamW step on the
   sum over documents that still have a later chunk of the mean loss of their chunk. AdamW is
   elementwise and each loss term reaches only its own document's adapter rows, so every document
   gets exactly the updates it would get alone (batch of 1).

Batches go to ranks round robin (deterministic; no shared queue), and the sums are all-reduced once.
Targets before the first BOS belong to no document and are scored by plain windows without adapters.
With ``TTT_PHASES > 0`` the base model is also trained between batches on already-scored documents
(``pgolf.eval.ttt_phased``). The adapters attach by module replacement, so the model's one forward
serves scoring, adaptation and the phases. ``TTT_LORA_TARGETS`` names linears inside the blocks, whole
branches (``attn``, ``mlp``) and the output ``head``; TOP's set is ``c_q,c_k,c_v,attn,mlp,head`` with
``TTT_LORA_PER_SLOT=1``: a looped block gets its own adapters for each of its visits (17 slots for the
record's 11 blocks looped 3-5 three times).
"""

import math

import torch
from torch import nn

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.data.val_bytes import TargetBytes, resolve_target_bytes
from pgolf.dist import all_reduce_sum_
from pgolf.errors import ConfigError
from pgolf.eval.bpb import EvalSums
from pgolf.eval.ttt import TTTObserver
from pgolf.eval.ttt_phased import GlobalPhases
from pgolf.log import ProgressBar
from pgolf.runtime import Runtime

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
TTT_LORA_EXPORT_SWITCH = "ttt_enabled and ttt_mode == 'lora'"

LORA_TTT_SEED = 1234


class BatchedLoRALinear(nn.Module):
    """``base(x, *rest) + (alpha / rank) * (x A^T) B^T`` with its own ``A``, ``B`` for each row (document)
    and each visit of the forward.

    ``base`` is a linear inside a block, a whole branch (attention or MLP: a d -> d adapter from the
    branch's input added to its output, TOP's O and MLP adapters) or the model's head (d -> V on the raw
    logits). ``rows`` holds the adapter slot of every row of the next input; None switches the adapters
    off (the base alone, as for the phases' global SGD). With ``visits > 1`` (per-slot adapters of a
    looped block) the n-th call of a forward uses visit ``n``: every forward calls a block's modules
    exactly once per visit, and :func:`select_lora_rows` restarts the count.
    """

    def __init__(self, base, in_features: int, out_features: int, slots: int, rank: int, alpha: float, *,
                 device: torch.device, visits: int = 1, block_index: int | None = None):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.block_index = block_index  # physical block it belongs to (None: the head)
        self.lora_A = nn.Parameter(torch.zeros(visits, slots, rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(visits, slots, out_features, rank, device=device))
        self.rows: torch.Tensor | None = None
        self.visit = 0

    def forward(self, x_BTI: torch.Tensor, *rest) -> torch.Tensor:
        out = self.base(x_BTI, *rest)
        if self.rows is None:
            return out
        visit, self.visit = self.visit, (self.visit + 1) % self.lora_A.shape[0]
        a_BRI = self.lora_A[visit, self.rows].to(x_BTI.dtype)
        b_BOR = self.lora_B[visit, self.rows].to(x_BTI.dtype)
        return out + self.scale * ((x_BTI @ a_BRI.mT) @ b_BOR.mT)


# TTT_LORA_TARGETS that name more than a linear: a whole branch of every block, and the output head.
LORA_BRANCH_TARGETS = ("attn", "mlp")
LORA_HEAD_TARGET = "head"


def _block_visits(model: nn.Module, per_slot: bool) -> list[int]:
    """Adapter visits per physical block: how often the current layer order runs it (per slot), else 1."""
    blocks = len(model.blocks)
    if not per_slot or not hasattr(model, "layer_schedule"):
        return [1] * blocks
    order = model.layer_schedule.virtual_layers
    return [max(1, order.count(index)) for index in range(blocks)]


def _linear_lora_targets(model: nn.Module, targets, make) -> tuple[list[BatchedLoRALinear], set[str]]:
    """Every linear inside ``blocks`` whose name ends with a target (``proj`` matches both output projections,
    ``attn.proj`` only attention's), replaced in place; also the targets that matched."""
    adapters, matched = [], set()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            wanted = [target for target in targets if full.endswith("." + target)]
            if full.startswith("blocks.") and wanted and isinstance(child, nn.Linear):
                adapter = make(child, child.in_features, child.out_features, int(full.split(".")[1]))
                setattr(module, child_name, adapter)
                adapters.append(adapter)
                matched.update(wanted)
    return adapters, matched


def attach_lora_adapters(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float,
                         slots: int = 1, per_slot: bool = False) -> list[BatchedLoRALinear]:
    """Attach a BatchedLoRALinear with ``slots`` documents for every target, by module replacement.

    Targets: linears inside ``blocks`` by name; ``attn`` / ``mlp`` wrap each block's whole attention / MLP
    branch (d -> d from the branch's input); ``head`` wraps the output head (d -> V, added to the raw
    logits; the tied head is a function of the model, so the model's ``head_logits`` is replaced on the
    instance). ``per_slot``: looped blocks get their own adapters for every visit (SPEC 5.3, TOP).
    Returned block by block (linears in module order, then the branches), the head last.
    """
    device = next(model.parameters()).device
    visits = _block_visits(model, per_slot)

    def make(base, in_features, out_features, block_index=None):
        return BatchedLoRALinear(base, in_features, out_features, slots, rank, alpha, device=device,
                                 visits=1 if block_index is None else visits[block_index], block_index=block_index)

    linear_targets = [t for t in targets if t not in (*LORA_BRANCH_TARGETS, LORA_HEAD_TARGET)]
    adapters, matched = _linear_lora_targets(model, linear_targets, make)
    for index, block in enumerate(model.blocks):
        for branch in (t for t in LORA_BRANCH_TARGETS if t in targets):
            dim = model.tok_emb.embedding_dim
            adapter = make(getattr(block, branch), dim, dim, index)
            setattr(block, branch, adapter)
            adapters.append(adapter)
            matched.add(branch)
    adapters.sort(key=lambda adapter: adapter.block_index)  # stable: module order inside each block
    if LORA_HEAD_TARGET in targets:
        head = make(model.head_logits, model.tok_emb.embedding_dim, model.tok_emb.num_embeddings)
        model.ttt_lora_head = head  # registered, so it moves and lists with the model
        object.__setattr__(model, "head_logits", head)  # the instance's head now adds the adapter
        adapters.append(head)
        matched.add(LORA_HEAD_TARGET)
    missing = [target for target in targets if target not in matched]
    if missing or not adapters:
        raise ConfigError(f"TTT_LORA_TARGETS {missing or list(targets)} match nothing: name linears inside "
                          f"model.blocks (c_q, c_k, c_v, proj, attn.proj, fc, ...) or "
                          f"{', '.join((*LORA_BRANCH_TARGETS, LORA_HEAD_TARGET))}")
    return adapters


def lora_draw_order(model: nn.Module, adapters: list[BatchedLoRALinear]) -> list[tuple[BatchedLoRALinear, int]]:
    """(adapter, visit) in the order their ``A`` is drawn: slot by slot in the order the forward runs them
    (with one visit each, block by block), each block's adapters in attachment order; the head last."""
    counts, order = [0] * len(model.blocks), []
    per_visit = any(adapter.lora_A.shape[0] > 1 for adapter in adapters)
    slots = model.layer_schedule.virtual_layers if per_visit else range(len(model.blocks))
    for block in slots:
        visit, counts[block] = counts[block], counts[block] + 1
        order += [(adapter, visit) for adapter in adapters
                  if adapter.block_index == block and visit < adapter.lora_A.shape[0]]
    return order + [(adapter, 0) for adapter in adapters if adapter.block_index is None]


def reset_lora_adapters(draw_order: list[tuple[BatchedLoRALinear, int]], *, redraw_a: bool) -> None:
    """B = 0 in every slot; A (when re-drawn) U(+-1/sqrt(in)) from a fixed seed in ``draw_order``
    (:func:`lora_draw_order`), the same in every document slot, so a document's start does not depend on
    its batch or slot."""
    generator = torch.Generator().manual_seed(LORA_TTT_SEED)
    with torch.no_grad():
        for adapter, visit in draw_order:
            adapter.lora_B[visit].zero_()
            if redraw_a:
                rank, width = adapter.lora_A.shape[2:]
                drawn = (torch.rand(rank, width, generator=generator) * 2 - 1) / math.sqrt(width)
                adapter.lora_A[visit].copy_(drawn.to(adapter.lora_A.device).expand_as(adapter.lora_A[visit]))


def select_lora_rows(adapters: list[BatchedLoRALinear], rows: torch.Tensor | None) -> None:
    """Which adapter slot each row of the next forward uses (None = adapters off); restarts the visits."""
    for adapter in adapters:
        adapter.rows = rows
        adapter.visit = 0


def document_spans(val_tokens: torch.Tensor, bos_id: int) -> list[tuple[int, int]]:
    """``(first, end)`` target ranges per document: from the target its BOS predicts to the one that
    predicts the next BOS (inclusive), the last document running to the end of the stream."""
    num_targets = val_tokens.numel() - 1
    starts = (val_tokens[:num_targets] == bos_id).nonzero().flatten().tolist()
    ends = starts[1:] + [num_targets]
    return [(start, end) for start, end in zip(starts, ends) if end > start]


def lora_document_batches(spans: list[tuple[int, int]], batch_docs: int) -> list[list[tuple[int, int]]]:
    """Documents sorted longest first (ties by position), cut into batches: the queue, in order."""
    queue = sorted(spans, key=lambda span: (span[0] - span[1], span[0]))
    return [queue[start: start + batch_docs] for start in range(0, len(queue), batch_docs)]


def batch_rounds(num_batches: int, world_size: int, cut_after: set[int]) -> list[list[int]]:
    """Batch indices per round (one batch per rank, round robin). A round never runs past a batch in
    ``cut_after`` (where a phase starts), so the phases see the same scored documents, and the batches
    after them the same base model, for any number of ranks."""
    rounds, start = [], 0
    for end in sorted({b for b in cut_after if b < num_batches} | {num_batches - 1}):
        rounds += [list(range(r, min(r + world_size, end + 1))) for r in range(start, end + 1, world_size)]
        start = end + 1
    return [r for r in rounds if r]


class _BatchedDocumentTTT:
    """Scores batches of documents with per-document adapters; holds the (loss, tokens, bytes) sums."""

    def __init__(self, model, val_tokens, cfg: TTTConfig, window, target_bytes: TargetBytes, runtime: Runtime, observer):
        self.model, self.val_tokens, self.cfg, self.window = model, val_tokens, cfg, window
        self.target_bytes, self.runtime, self.observer = target_bytes, runtime, observer
        self.device = runtime.device
        for p in model.parameters():
            p.requires_grad_(False)
        self.adapters = attach_lora_adapters(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, cfg.ttt_lora_alpha,
                                             slots=cfg.ttt_lora_batch_docs, per_slot=cfg.ttt_lora_per_slot)
        self.draw_order = lora_draw_order(model, self.adapters)
        self.params = [p for a in self.adapters for p in (a.lora_A, a.lora_B)]
        for p in self.params:
            p.requires_grad_(True)
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.batches_done = 0

    def score_plain(self, first: int, stop: int) -> None:
        """Targets [first, stop) with plain windows and no adapters (before the first document)."""
        select_lora_rows(self.adapters, None)
        for begin in range(first, stop, self.window):
            end = min(begin + self.window, stop)
            tokens = self.val_tokens[begin: end + 1].to(device=self.device, dtype=torch.int64)[None]
            with torch.no_grad(), self.runtime.autocast():
                losses = self.model(tokens[:, :-1], tokens[:, 1:], reduction="none").float()
            self._add(losses, torch.ones_like(losses, dtype=torch.bool), torch.arange(begin, end))

    def run_batch(self, documents: list[tuple[int, int]]) -> None:
        """Reset the adapters and optimizer, then score-and-adapt the documents chunk by chunk."""
        reset_lora_adapters(self.draw_order, redraw_a=not (self.cfg.ttt_lora_warm_start_a and self.batches_done))
        self.batches_done += 1
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.ttt_lora_lr, betas=(0.0, self.cfg.ttt_beta2),
                                           eps=1e-10, weight_decay=self.cfg.ttt_lora_wd)
        chunk = self.cfg.ttt_lora_chunk_tokens
        longest = max(end - first for first, end in documents)
        for index in range(math.ceil(longest / chunk)):
            rows = [row for row, (first, end) in enumerate(documents) if first + index * chunk < end]
            self._chunk_step(documents, rows, index * chunk)
        select_lora_rows(self.adapters, None)

    def _chunk_step(self, documents, rows: list[int], offset: int) -> None:
        """Score chunk ``offset // chunk`` of the documents in ``rows``; then one step for those that go on."""
        x, y, scored, targets, trains = self._chunk_batch(documents, rows, offset)
        select_lora_rows(self.adapters, torch.tensor(rows, device=self.device))
        with torch.set_grad_enabled(any(trains)), self.runtime.autocast():
            losses = self.model(x, y, reduction="none").float()
        self._add(losses.detach(), scored, torch.cat(targets))
        training = [i for i, goes_on in enumerate(trains) if goes_on]
        if not training:
            return
        mask = scored[training].float()
        # Sum over documents of each one's mean chunk loss: a document's adapter rows see only its term.
        loss = ((losses[training] * mask).sum(dim=1) / mask.sum(dim=1)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.observer is not None:
            self.observer.trained(torch.cat([targets[i] for i in training]))

    def _chunk_batch(self, documents, rows: list[int], offset: int):
        """Right-padded inputs/targets, the mask of scored positions, the scored target indices per row,
        and whether each row's document has a later chunk."""
        chunk, spans = self.cfg.ttt_lora_chunk_tokens, []
        for row in rows:
            first, end = documents[row]
            begin = first + offset
            stop = min(begin + chunk, end)
            spans.append((max(first, stop - self.window), begin, stop, stop < end))
        width = max(stop - context for context, _, stop, _ in spans)
        x = torch.zeros(len(rows), width, dtype=torch.int64)
        y, scored = torch.zeros_like(x), torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (context, begin, stop, _) in enumerate(spans):
            tokens = self.val_tokens[context: stop + 1].to(torch.int64)
            x[i, : stop - context], y[i, : stop - context] = tokens[:-1], tokens[1:]
            scored[i, begin - context: stop - context] = True
        targets = [torch.arange(begin, stop) for _, begin, stop, _ in spans]
        return (x.to(self.device), y.to(self.device), scored.to(self.device), targets,
                [goes_on for *_, goes_on in spans])

    def _add(self, losses, scored, targets: torch.Tensor) -> None:
        """Add the scored positions' losses, their count and the bytes of their targets (``targets``: the
        scored target indices in the mask's row-major order)."""
        num_bytes = float(self.target_bytes.sum_of(targets))
        self.sums += torch.stack((losses[scored].double().sum(), scored.sum().double(),
                                  torch.tensor(num_bytes, dtype=torch.float64, device=losses.device)))
        if self.observer is not None:
            self.observer.scored(targets, losses[scored])


def evaluate_lora_ttt_bpb(model: nn.Module, val_tokens: torch.Tensor, cfg: TTTConfig, *, window: int, bos_id: int,
                          target_bytes: ByteTables | TargetBytes, runtime: Runtime, rank: int = 0, world_size: int = 1,
                          observer: TTTObserver | None = None) -> EvalSums:
    """Document-level score-first LoRA TTT BPB over all targets. ``model`` is changed in place (adapters
    attached; with phases, base weights trained): pass a fresh copy of the artifact's model."""
    assert cfg.ttt_lora_chunk_tokens <= window, (cfg.ttt_lora_chunk_tokens, window)  # validate_config's rule
    model.eval()
    run = _BatchedDocumentTTT(model, val_tokens, cfg, window, resolve_target_bytes(target_bytes, val_tokens), runtime,
                              observer)
    spans = document_spans(val_tokens, bos_id)
    if rank == 0:
        run.score_plain(0, spans[0][0] if spans else val_tokens.numel() - 1)
    batches = lora_document_batches(spans, cfg.ttt_lora_batch_docs)
    queue = [span for batch in batches for span in batch]
    phases = GlobalPhases(model, val_tokens, cfg, queue, window=window, runtime=runtime, rank=rank,
                          world_size=world_size, observer=observer, adapter_params=run.params)
    rounds = batch_rounds(len(batches), world_size, phases.trigger_batches([len(b) for b in batches]))
    bar = ProgressBar("ttt lora", len(batches), enabled=rank == 0)
    for round_batches in rounds:
        if rank < len(round_batches):
            run.run_batch(batches[round_batches[rank]])
        # Every rank knows which documents are scored now: those of every batch up to this round's last.
        phases.after_documents_scored(sum(len(b) for b in batches[: round_batches[-1] + 1]))
        bar.update(round_batches[-1] + 1)
    bar.close()
    all_reduce_sum_(run.sums)
    loss_sum, token_count, byte_count = run.sums.tolist()
    return EvalSums(loss_sum=loss_sum, token_count=int(token_count), byte_count=int(byte_count))
