"""Batched document-level score-first LoRA TTT (pgolf/eval/ttt_lora.py).

The reference is the plain one-document-at-a-time algorithm of SPEC 5.3, written here with its own
adapter class and its own AdamW per document: the batched implementation must give every target the
loss the reference gives it, whatever the batch size.
"""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from testkit import small_scoring_gpt
from torch import nn

from pgolf.config import Config, EvalConfig, ModelConfig, TrainConfig, TTTConfig, validate_config
from pgolf.data.tokenizer import ByteTables
from pgolf.errors import ConfigError
from pgolf.eval.compliance import check_score_before_update
from pgolf.eval.ttt import TTTObserver
from pgolf.eval.ttt_lora import (BatchedLoRALinear, attach_lora_adapters, batch_rounds, document_spans,
                                 evaluate_lora_ttt_bpb, lora_document_batches)
from pgolf.model.gpt import GPT
from pgolf.runtime import Runtime

VOCAB, BOS, WINDOW = 40, 1, 32
CPU = torch.device("cpu")
CFG = TTTConfig(ttt_enabled=True, ttt_mode="lora", ttt_lora_rank=4, ttt_lora_alpha=8.0, ttt_lora_chunk_tokens=8,
                ttt_lora_lr=0.05, ttt_lora_wd=0.1, ttt_lora_batch_docs=1)


def tables() -> ByteTables:
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[BOS] = True
    return ByteTables(base_bytes=torch.ones(VOCAB, dtype=torch.int16), has_leading_space=torch.zeros(VOCAB, dtype=torch.bool),
                      is_boundary=boundary)


def model() -> GPT:
    return small_scoring_gpt(VOCAB)


def stream(*documents: list[int], head: list[int] = ()) -> torch.Tensor:
    return torch.tensor([*head] + [t for doc in documents for t in [BOS, *doc]] + [BOS])


def doc(length: int, seed: int) -> list[int]:
    return torch.randint(2, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(gpt, val, cfg=CFG, observer=None):
    return evaluate_lora_ttt_bpb(gpt, val, cfg, window=WINDOW, bos_id=BOS, target_bytes=tables(), runtime=Runtime(CPU),
                                 observer=observer)


def per_target_losses(gpt, val, cfg) -> dict[int, float]:
    observer = TTTObserver(keep_losses=True)
    run(copy.deepcopy(gpt), val, cfg, observer)
    return observer.losses


class ReferenceLoRA(nn.Module):
    def __init__(self, base, rank, alpha, generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        bound = 1 / math.sqrt(base.in_features)
        self.A = nn.Parameter((torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


class ReferenceBranchLoRA(nn.Module):
    """TOP's O and MLP adapters: ``branch(x) + scale * (x A^T) B^T``, d -> d from the branch's input."""

    def __init__(self, branch, width, rank, alpha, generator):
        super().__init__()
        self.branch, self.scale = branch, alpha / rank
        self.A = nn.Parameter((torch.rand(rank, width, generator=generator) * 2 - 1) / math.sqrt(width))
        self.B = nn.Parameter(torch.zeros(width, rank))

    def forward(self, x, *rest):
        return self.branch(x, *rest) + self.scale * (x @ self.A.T) @ self.B.T


def attach_default_targets(gpt, cfg, generator) -> list:
    adapters = []
    for block in gpt.blocks:  # the default targets, in module order: c_q, c_k, c_v, attn.proj, mlp.proj
        for parent, name in [(block.attn, "c_q"), (block.attn, "c_k"), (block.attn, "c_v"), (block.attn, "proj"),
                             (block.mlp, "proj")]:
            adapters.append(ReferenceLoRA(getattr(parent, name), cfg.ttt_lora_rank, cfg.ttt_lora_alpha, generator))
            setattr(parent, name, adapters[-1])
    return adapters


def attach_top_targets(gpt, cfg, generator) -> list:
    """SPEC 5.3's TOP set, block by block: Q, K, V, then O and MLP (from the branch inputs); the head last."""
    adapters, width = [], gpt.tok_emb.embedding_dim
    for block in gpt.blocks:
        for name in ("c_q", "c_k", "c_v"):
            adapters.append(ReferenceLoRA(getattr(block.attn, name), cfg.ttt_lora_rank, cfg.ttt_lora_alpha, generator))
            setattr(block.attn, name, adapters[-1])
        for name in ("attn", "mlp"):
            adapters.append(ReferenceBranchLoRA(getattr(block, name), width, cfg.ttt_lora_rank, cfg.ttt_lora_alpha,
                                                generator))
            setattr(block, name, adapters[-1])
    head = nn.Module()
    head.scale = cfg.ttt_lora_alpha / cfg.ttt_lora_rank
    head.A = nn.Parameter((torch.rand(cfg.ttt_lora_rank, width, generator=generator) * 2 - 1) / math.sqrt(width))
    head.B = nn.Parameter(torch.zeros(gpt.tok_emb.num_embeddings, cfg.ttt_lora_rank))
    plain_head = gpt.head_logits
    gpt.head_logits = lambda h: plain_head(h) + head.scale * (h @ head.A.T) @ head.B.T
    return adapters + [head]


def reference_document(gpt, val, first, end, cfg, attach=attach_default_targets) -> dict[int, float]:
    """SPEC 5.3 for one document, alone: fresh adapters, chunks scored then one AdamW step."""
    gpt = copy.deepcopy(gpt)
    for p in gpt.parameters():
        p.requires_grad_(False)
    adapters = attach(gpt, cfg, torch.Generator().manual_seed(1234))
    params = [p for a in adapters for p in (a.A, a.B)]
    opt = torch.optim.AdamW(params, lr=cfg.ttt_lora_lr, betas=(0.0, cfg.ttt_beta2), eps=1e-10, weight_decay=cfg.ttt_lora_wd)
    losses = {}
    for begin in range(first, end, cfg.ttt_lora_chunk_tokens):
        stop = min(begin + cfg.ttt_lora_chunk_tokens, end)
        context = max(first, stop - WINDOW)
        tokens = val[context: stop + 1][None]
        chunk_losses = gpt(tokens[:, :-1], tokens[:, 1:], reduction="none")[0, begin - context:]
        losses.update(zip(range(begin, stop), chunk_losses.tolist()))
        if stop < end:
            opt.zero_grad()
            chunk_losses.mean().backward()
            opt.step()
    return losses


def reference_losses(gpt, val, cfg, attach=attach_default_targets) -> dict[int, float]:
    spans = document_spans(val, BOS)
    losses = {}
    with torch.no_grad():  # the head before the first BOS: plain windows
        for begin in range(0, spans[0][0], WINDOW):
            tokens = val[begin: min(begin + WINDOW, spans[0][0]) + 1][None]
            losses.update(zip(range(begin, begin + tokens.size(1) - 1),
                              gpt(tokens[:, :-1], tokens[:, 1:], reduction="none")[0].tolist()))
    for first, end in spans:
        losses.update(reference_document(gpt, val, first, end, cfg, attach))
    return losses


def assert_same_losses(got: dict, expected: dict, tolerance: float = 1e-5):
    assert sorted(got) == sorted(expected)
    worst = max(abs(got[t] - expected[t]) for t in expected)
    assert worst < tolerance, worst


@pytest.fixture
def float64():
    """Everything built in float64: AdamW with betas (0, b2) and eps 1e-10 turns float32 rounding noise in
    near-zero gradients into full steps, so the exact comparisons of the adapters run in float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


# Lengths around the chunk (8) and window (32): one chunk, several, and longer than the window.
DOCS = [doc(n, seed) for seed, n in enumerate([5, 40, 17, 8, 26, 3, 50])]


@pytest.fixture(scope="module")
def reference():
    gpt, val = model(), stream(*DOCS, head=[7, 8, 9])
    return gpt, val, reference_losses(gpt, val, CFG)


@pytest.mark.parametrize("batch_docs", [1, 4])
def test_batched_documents_get_exactly_the_one_document_results(reference, batch_docs):
    gpt, val, expected = reference
    assert_same_losses(per_target_losses(gpt, val, dataclasses.replace(CFG, ttt_lora_batch_docs=batch_docs)),
                       expected)


def test_adaptation_moves_the_scores():
    """The equality above is not trivially true: training changes later chunks' losses."""
    gpt, val = model(), stream(*DOCS)
    frozen = per_target_losses(gpt, val, dataclasses.replace(CFG, ttt_lora_lr=0.0))
    learned = per_target_losses(gpt, val, CFG)
    first, end = document_spans(val, BOS)[1]  # the 40-token document
    assert all(learned[t] == pytest.approx(frozen[t], abs=1e-5) for t in range(first, first + 8))  # first chunk
    assert max(abs(learned[t] - frozen[t]) for t in range(first + 8, end)) > 1e-3


def test_zero_lr_is_the_document_isolated_evaluation():
    """With nothing learned, each target is scored with only its own document as context."""
    gpt, docs = model(), [doc(10, 1), doc(20, 2), doc(5, 3)]
    val = stream(*docs)
    sums = run(copy.deepcopy(gpt), val, dataclasses.replace(CFG, ttt_lora_lr=0.0, ttt_lora_batch_docs=2))
    expected = 0.0
    for d in docs:
        tokens = torch.tensor([BOS, *d, BOS])[None]
        expected += F.cross_entropy(gpt.forward_logits(tokens[:, :-1])[0].double(), tokens[0, 1:], reduction="sum").item()
    assert sums.token_count == sums.byte_count == val.numel() - 1
    assert sums.loss_sum == pytest.approx(expected, rel=1e-5)


def test_score_before_update_holds_and_training_happened():
    gpt, val = model(), stream(*DOCS)
    observer = TTTObserver()
    run(copy.deepcopy(gpt), val, dataclasses.replace(CFG, ttt_lora_batch_docs=3), observer)
    assert check_score_before_update(observer, val.numel() - 1).passed
    assert sum(t.numel() for kind, t in observer.events if kind == "train") > 50


def test_documents_sorted_longest_first_and_batches_go_round_robin():
    val = torch.tensor([5, BOS, 6, 7, BOS, 8, BOS])
    assert document_spans(val, BOS) == [(1, 4), (4, 6)]
    spans = [(0, 3), (3, 10), (10, 12), (12, 17), (17, 20)]
    assert lora_document_batches(spans, 2) == [[(3, 10), (12, 17)], [(0, 3), (17, 20)], [(10, 12)]]
    assert batch_rounds(5, 2, set()) == [[0, 1], [2, 3], [4]]
    assert batch_rounds(5, 2, {0, 3}) == [[0], [1, 2], [3], [4]]  # rounds end where a phase starts


def test_warm_start_keeps_a_across_batches():
    gpt, val = model(), stream(doc(30, 1), doc(20, 2))
    cold = per_target_losses(gpt, val, CFG)
    warm = per_target_losses(gpt, val, dataclasses.replace(CFG, ttt_lora_warm_start_a=True))
    first_batch, second_batch = lora_document_batches(document_spans(val, BOS), 1)
    (f1, e1), (f2, e2) = first_batch[0], second_batch[0]
    assert all(warm[t] == cold[t] for t in range(f1, e1))  # the first batch draws A as usual
    assert any(abs(warm[t] - cold[t]) > 1e-6 for t in range(f2 + 8, e2))


def test_lora_ttt_learns_inside_a_long_repetitive_document():
    gpt = model()
    val = stream(doc(6, 6) * 16)
    cfg = dataclasses.replace(CFG, ttt_lora_chunk_tokens=4, ttt_lora_rank=8, ttt_lora_wd=0.0)
    flat = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.0))
    learned = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.02))
    assert learned.val_bpb < flat.val_bpb - 0.08  # measured: 5.343 -> 5.208


def test_adapters_attach_by_module_replacement_and_start_as_identity():
    gpt = model()
    x = torch.randint(0, VOCAB, (3, 12))
    before = gpt.forward_logits(x)
    assert len(attach_lora_adapters(copy.deepcopy(gpt), ("proj",), rank=4, alpha=8.0)) == 4  # attention + MLP
    adapters = attach_lora_adapters(gpt, ("c_q", "attn.proj"), rank=4, alpha=8.0, slots=3)
    assert len(adapters) == 4 and all(isinstance(a, BatchedLoRALinear) for a in adapters)
    assert isinstance(gpt.blocks[0].attn.c_q, BatchedLoRALinear) and not isinstance(gpt.blocks[0].attn.c_k, BatchedLoRALinear)
    for a in adapters:
        a.rows = torch.tensor([2, 0, 1])
    assert torch.equal(gpt.forward_logits(x), before)  # B = 0
    with pytest.raises(ConfigError, match="TTT_LORA_TARGETS"):
        attach_lora_adapters(model(), ("nope",), rank=4, alpha=8.0)


def test_a_chunk_longer_than_the_window_is_refused_before_anything_runs():
    too_long = Config(train=TrainConfig(train_seq_len=WINDOW), eval=EvalConfig(eval_stride=WINDOW),
                      ttt=dataclasses.replace(CFG, ttt_enabled=True, ttt_mode="lora", ttt_lora_chunk_tokens=WINDOW + 1))
    validate_config(dataclasses.replace(too_long, ttt=dataclasses.replace(too_long.ttt, ttt_enabled=False)))  # unused
    with pytest.raises(ConfigError, match="TTT_LORA_CHUNK_TOKENS"):
        validate_config(too_long)
    with pytest.raises(AssertionError):
        run(model(), stream(doc(10, 1)), dataclasses.replace(CFG, ttt_lora_chunk_tokens=WINDOW + 1))


def test_ttt_beta2_reaches_the_adapters_adamw(reference):
    gpt, val, expected = reference
    cfg = dataclasses.replace(CFG, ttt_beta2=0.9)
    got = per_target_losses(gpt, val, cfg)
    assert_same_losses(got, reference_losses(gpt, val, cfg))
    assert max(abs(got[t] - expected[t]) for t in expected) > 1e-4  # beta2 matters here


TOP_TARGETS = ("c_q", "c_k", "c_v", "attn", "mlp", "head")


@pytest.mark.parametrize("batch_docs", [1, 3])
def test_branch_and_head_adapters_match_the_one_document_reference(batch_docs, float64):
    gpt, val = model(), stream(*DOCS[:5])
    cfg = dataclasses.replace(CFG, ttt_lora_targets=TOP_TARGETS)
    expected = reference_losses(gpt, val, cfg, attach_top_targets)
    got = per_target_losses(gpt, val, dataclasses.replace(cfg, ttt_lora_batch_docs=batch_docs))
    assert_same_losses(got, expected, tolerance=1e-12)
    plain = per_target_losses(gpt, val, CFG)
    assert max(abs(plain[t] - expected[t]) for t in expected) > 1e-4  # the extra adapters change the scores


def test_the_head_adapter_alone_learns_and_starts_as_identity():
    gpt, val = model(), stream(doc(6, 6) * 8)
    cfg = dataclasses.replace(CFG, ttt_lora_targets=("head",), ttt_lora_chunk_tokens=4, ttt_lora_wd=0.0)
    flat = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.0))
    learned = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.05))
    plain = run(copy.deepcopy(gpt), val, dataclasses.replace(CFG, ttt_lora_lr=0.0, ttt_lora_chunk_tokens=4))
    assert flat.loss_sum == pytest.approx(plain.loss_sum, rel=1e-6)  # B = 0: the head is the model's
    assert learned.val_bpb < flat.val_bpb - 0.05


LOOPED = ModelConfig(vocab_size=VOCAB, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, num_loops=1,
                     loop_start=1, loop_end=2)


def looped_and_unrolled() -> tuple[GPT, GPT]:
    """A looped model (blocks 1-2 twice: order 0,1,2,1,2,3) and the same computation as a plain 6-block model
    whose block v is a copy of the looped model's block order[v]."""
    torch.manual_seed(3)
    looped = GPT(LOOPED)
    with torch.no_grad():
        for module in looped.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    looped.set_looping(True)
    order = looped.layer_schedule.virtual_layers
    assert order == (0, 1, 2, 1, 2, 3)
    unrolled = GPT(dataclasses.replace(LOOPED, num_layers=len(order), num_loops=0, loop_start=0, loop_end=0))
    state = {k: v for k, v in looped.state_dict().items() if not k.startswith("blocks.")}
    for v, physical in enumerate(order):
        state.update({f"blocks.{v}.{k}": t for k, t in looped.blocks[physical].state_dict().items()})
    unrolled.load_state_dict(state)
    return looped.eval(), unrolled.eval()


def test_per_slot_adapters_equal_one_adapter_per_visit_of_an_unrolled_model(float64):
    looped, unrolled = looped_and_unrolled()
    val = stream(*DOCS[:5])
    tokens = val[None, :40]
    assert torch.allclose(looped.forward_logits(tokens), unrolled.forward_logits(tokens), atol=1e-12)
    cfg = dataclasses.replace(CFG, ttt_lora_targets=TOP_TARGETS, ttt_lora_batch_docs=2)
    expected = reference_losses(unrolled, val, cfg, attach_top_targets)
    per_slot = per_target_losses(looped, val, dataclasses.replace(cfg, ttt_lora_per_slot=True))
    assert_same_losses(per_slot, expected, tolerance=1e-12)
    shared = per_target_losses(looped, val, cfg)  # one adapter per physical block, shared by its visits
    assert max(abs(shared[t] - expected[t]) for t in expected) > 1e-4


def test_per_slot_adapter_shapes_and_unknown_targets():
    looped, _ = looped_and_unrolled()
    adapters = attach_lora_adapters(looped, TOP_TARGETS, rank=4, alpha=8.0, slots=2, per_slot=True)
    visits = {(a.block_index, tuple(a.lora_A.shape)) for a in adapters}
    assert (1, (2, 2, 4, 32)) in visits and (0, (1, 2, 4, 32)) in visits and (None, (1, 2, 4, 32)) in visits
    assert [tuple(a.lora_B.shape) for a in adapters if a.block_index is None] == [(1, 2, VOCAB, 4)]
    assert sum(a.lora_A.shape[0] for a in adapters if a.block_index is not None) == 6 * 5  # 6 slots x 5 targets
    with pytest.raises(ConfigError, match="nope"):
        attach_lora_adapters(model(), ("c_q", "nope"), rank=4, alpha=8.0)


def test_new_lora_settings_are_off_by_default_and_checked():
    assert (TTTConfig().ttt_beta2, TTTConfig().ttt_lora_per_slot) == (0.999, False)
    with pytest.raises(ConfigError, match="TTT_BETA2"):
        validate_config(Config(ttt=TTTConfig(ttt_beta2=1.0)))


def test_top_adapters_per_slot_with_phases_score_before_update():
    """TOP's TTT: every adapter kind, per slot, with global SGD phases on the base model in between."""
    looped, _ = looped_and_unrolled()
    val = stream(*DOCS)
    cfg = dataclasses.replace(CFG, ttt_lora_targets=TOP_TARGETS, ttt_lora_per_slot=True, ttt_lora_batch_docs=2,
                              ttt_phases=2, ttt_phase_prefix_docs=4, ttt_phase_lr=0.05, ttt_chunk_tokens=2 * WINDOW,
                              ttt_batch_seqs=2)
    observer = TTTObserver()
    base_before = {name: p.detach().clone() for name, p in looped.named_parameters()}
    sums = run(looped, val, cfg, observer)
    assert check_score_before_update(observer, val.numel() - 1).passed
    assert any(kind == "phase_train" for kind, _ in observer.events)
    assert math.isfinite(sums.val_bpb) and sums.token_count == val.numel() - 1
    changed = [name for name, p in looped.named_parameters() if name in base_before and not torch.equal(p, base_before[name])]
    assert changed and not any("lora" in name for name in changed)  # the phases trained the base model only
