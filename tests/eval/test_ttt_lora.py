"""Document-level score-first LoRA TTT (pgolf/eval/ttt_lora.py)."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from testkit import small_scoring_gpt

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval.compliance import check_score_before_update
from pgolf.eval.ttt import TTTObserver
from pgolf.eval.ttt_lora import LoRALinear, attach_lora_adapters, document_spans, evaluate_lora_ttt_bpb
from pgolf.model.gpt import GPT

VOCAB, BOS, WINDOW = 40, 1, 32
CPU = torch.device("cpu")
CFG = TTTConfig(ttt_enabled=True, ttt_mode="lora", ttt_lora_rank=4, ttt_lora_alpha=8.0, ttt_lora_chunk_tokens=8,
                ttt_lora_lr=0.05, ttt_lora_wd=0.0)


def tables() -> ByteTables:
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[BOS] = True
    return ByteTables(base_bytes=torch.ones(VOCAB, dtype=torch.int16), has_leading_space=torch.zeros(VOCAB, dtype=torch.bool),
                      is_boundary=boundary)


def model() -> GPT:
    return small_scoring_gpt(VOCAB)


def stream(*documents: list[int]) -> torch.Tensor:
    return torch.tensor([t for doc in documents for t in [BOS, *doc]] + [BOS])


def doc(length: int, seed: int) -> list[int]:
    return torch.randint(2, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(gpt, val, cfg=CFG, observer=None):
    return evaluate_lora_ttt_bpb(gpt, val, cfg, window=WINDOW, bos_id=BOS, byte_tables=tables(), device=CPU,
                                 observer=observer)


def test_documents_run_from_bos_to_the_next_bos_inclusive():
    val = torch.tensor([5, BOS, 6, 7, BOS, 8, BOS])
    assert document_spans(val, BOS) == [(1, 4), (4, 6)]


def test_zero_lr_is_the_document_isolated_evaluation():
    """With nothing learned, each target is scored with only its own document as context."""
    gpt, docs = model(), [doc(10, 1), doc(20, 2), doc(5, 3)]
    val = stream(*docs)
    sums = run(copy.deepcopy(gpt), val, dataclasses.replace(CFG, ttt_lora_lr=0.0))
    expected = 0.0
    for d in docs:
        tokens = torch.tensor([BOS, *d, BOS])[None]
        expected += F.cross_entropy(gpt.forward_logits(tokens[:, :-1])[0].double(), tokens[0, 1:], reduction="sum").item()
    assert sums.token_count == val.numel() - 1
    assert sums.loss_sum == pytest.approx(expected, rel=1e-5)


def test_score_before_update_and_documents_are_independent():
    gpt, d1, d2 = model(), doc(30, 4), doc(25, 5)
    observer = TTTObserver()
    both = run(copy.deepcopy(gpt), stream(d1, d2), observer=observer)
    assert check_score_before_update(observer, stream(d1, d2).numel() - 1).passed
    assert any(kind == "train" for kind, _ in observer.events)
    alone = [run(copy.deepcopy(gpt), stream(d)) for d in (d1, d2)]
    # Adapters and optimizer reset at every document: the sum over documents run together equals the
    # sum of each run alone.
    assert both.loss_sum == pytest.approx(sum(a.loss_sum for a in alone), rel=1e-5)


def test_lora_ttt_learns_inside_a_long_repetitive_document():
    gpt = model()
    val = stream(doc(6, 6) * 16)
    cfg = dataclasses.replace(CFG, ttt_lora_chunk_tokens=4, ttt_lora_rank=8)
    flat = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.0))
    learned = run(copy.deepcopy(gpt), val, dataclasses.replace(cfg, ttt_lora_lr=0.02))
    assert learned.val_bpb < flat.val_bpb - 0.08  # measured: 5.343 -> 5.208


def test_adapters_attach_by_module_replacement_and_start_as_identity():
    gpt = model()
    x = torch.randint(0, VOCAB, (1, 12))
    before = gpt.forward_logits(x)
    assert len(attach_lora_adapters(copy.deepcopy(gpt), ("proj",), rank=4, alpha=8.0)) == 4  # attention + MLP
    adapters = attach_lora_adapters(gpt, ("c_q", "attn.proj"), rank=4, alpha=8.0)
    assert len(adapters) == 4 and all(isinstance(a, LoRALinear) for a in adapters)
    assert isinstance(gpt.blocks[0].attn.c_q, LoRALinear) and not isinstance(gpt.blocks[0].attn.c_k, LoRALinear)
    assert torch.equal(gpt.forward_logits(x), before)
    with pytest.raises(ValueError, match="TTT_LORA_TARGETS"):
        attach_lora_adapters(model(), ("nope",), rank=4, alpha=8.0)
