"""Phased TTT (pgolf/eval/ttt_phased.py): global SGD on already-scored documents between LoRA batches."""

import copy
import dataclasses

import pytest
import torch
from testkit import run_gloo_ranks, small_scoring_gpt

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval.compliance import check_score_before_update
from pgolf.eval.ttt import TTTObserver
from pgolf.eval.ttt_lora import document_spans, evaluate_lora_ttt_bpb, lora_document_batches
from pgolf.eval.ttt_phased import concatenate_documents, phase_boundaries, run_global_sgd_phase
from pgolf.runtime import Runtime

VOCAB, BOS, WINDOW = 40, 1, 16
CPU = torch.device("cpu")
CFG = TTTConfig(ttt_enabled=True, ttt_mode="lora", ttt_lora_rank=4, ttt_lora_alpha=8.0, ttt_lora_chunk_tokens=8,
                ttt_lora_lr=0.05, ttt_lora_wd=0.0, ttt_lora_batch_docs=2, ttt_phases=2, ttt_phase_prefix_docs=4,
                ttt_phase_lr=0.05, ttt_chunk_tokens=2 * WINDOW, ttt_batch_seqs=2, ttt_momentum=0.9, ttt_grad_clip=1.0)


def tables() -> ByteTables:
    return ByteTables(base_bytes=torch.ones(VOCAB, dtype=torch.int16),
                      has_leading_space=torch.zeros(VOCAB, dtype=torch.bool), is_boundary=torch.zeros(VOCAB, dtype=torch.bool))


def validation_stream(lengths=(60, 55, 50, 45, 40, 35, 30, 25), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = []
    for n in lengths:
        tokens += [BOS] + torch.randint(2, VOCAB, (n,), generator=generator).tolist()
    return torch.tensor(tokens + [BOS])


def run(gpt, val, cfg=CFG, observer=None, rank=0, world_size=1):
    return evaluate_lora_ttt_bpb(gpt, val, cfg, window=WINDOW, bos_id=BOS, target_bytes=tables(), runtime=Runtime(CPU),
                                 rank=rank, world_size=world_size, observer=observer)


def test_cumulative_boundaries():
    assert phase_boundaries(3000, 2500, 3) == [833, 1666, 2500]  # the TOP record's
    assert phase_boundaries(3, 2500, 2) == [1, 3]  # fewer documents than the prefix
    assert phase_boundaries(10, 2, 3) == [1, 2]  # an empty first phase is dropped


def test_concatenated_documents_repeat_validation_targets():
    val = validation_stream((5, 7, 3))
    documents = document_spans(val, BOS)[::-1]  # queue order need not be stream order
    tokens, target_index = concatenate_documents(val, documents)
    assert target_index.numel() == tokens.numel() - 1 == sum(e - f for f, e in documents)
    for j, t in enumerate(target_index.tolist()):
        last_of_stream = t == val.numel() - 2
        assert tokens[j] == val[t] and (last_of_stream or tokens[j + 1] == val[t + 1])


def test_a_phase_is_plain_sgd_with_momentum_over_the_scored_documents():
    """Two documents, 2 chunks of 2 windows: only chunk 0 trains (lr cos(0) = TTT_PHASE_LR), one window
    per step (TTT_BATCH_SEQS=1), so two SGD steps with momentum; clipping off."""
    val = validation_stream((20, 20))
    documents = document_spans(val, BOS)
    cfg = dataclasses.replace(CFG, ttt_batch_seqs=1, ttt_grad_clip=0.0)
    gpt = small_scoring_gpt(VOCAB)
    expected = copy.deepcopy(gpt)
    params = list(gpt.parameters())
    for p in params:
        p.requires_grad_(False)
    observer = TTTObserver()
    run_global_sgd_phase(gpt, val, documents, cfg, params, window=WINDOW, runtime=Runtime(CPU), rank=0, world_size=1,
                         observer=observer)
    # The reference: tokens = BOS doc1 BOS doc2 BOS, windows [0, 16) and [16, 32) of chunk 0.
    momentum = [torch.zeros_like(p) for p in expected.parameters()]
    for start in (0, WINDOW):
        x, y = val[start: start + WINDOW][None], val[start + 1: start + WINDOW + 1][None]
        expected.zero_grad()
        expected(x, y).backward()
        with torch.no_grad():
            for p, m in zip(expected.parameters(), momentum):
                m.mul_(cfg.ttt_momentum).add_(p.grad)
                p.sub_(cfg.ttt_phase_lr * m)
    for (name, got), want in zip(gpt.named_parameters(), expected.parameters()):
        assert torch.allclose(got, want, atol=1e-6), name
    assert not any(p.requires_grad for p in params)  # frozen again for scoring
    trained = torch.cat([t for kind, t in observer.events if kind == "phase_train"])
    assert trained.tolist() == list(range(0, 2 * WINDOW))


def per_target(gpt, val, cfg):
    observer = TTTObserver(keep_losses=True)
    run(copy.deepcopy(gpt), val, cfg, observer)
    return observer


def test_phases_train_only_on_scored_documents_and_change_only_later_scores():
    gpt, val = small_scoring_gpt(VOCAB), validation_stream()
    phased = per_target(gpt, val, CFG)
    assert check_score_before_update(phased, val.numel() - 1).passed
    kinds = [kind for kind, _ in phased.events]
    assert kinds.count("phase_train") > 0
    plain = per_target(gpt, val, dataclasses.replace(CFG, ttt_phases=0)).losses
    batches = lora_document_batches(document_spans(val, BOS), CFG.ttt_lora_batch_docs)
    first_batch = [t for first, end in batches[0] for t in range(first, end)]  # scored before phase 1 (2 docs)
    later = [t for batch in batches[1:] for first, end in batch for t in range(first, end)]
    assert all(phased.losses[t] == plain[t] for t in first_batch)
    assert max(abs(phased.losses[t] - plain[t]) for t in later) > 1e-3
    zero_lr = per_target(gpt, val, dataclasses.replace(CFG, ttt_phase_lr=0.0)).losses
    assert max(abs(zero_lr[t] - plain[t]) for t in plain) < 1e-5


def test_a_phase_that_trains_on_an_unscored_document_is_caught(monkeypatch):
    def careless(queue, num_scored, boundary):
        return queue[: num_scored + 1]  # one document more than was scored

    monkeypatch.setattr("pgolf.eval.ttt_phased.phase_training_documents", careless)
    val = validation_stream()
    observer = TTTObserver()
    run(small_scoring_gpt(VOCAB), val, CFG, observer)
    result = check_score_before_update(observer, val.numel() - 1)
    assert not result.passed and "phase's global SGD step trained on" in result.details[0]


def phased_work(rank):
    return run(small_scoring_gpt(VOCAB), validation_stream(), rank=rank, world_size=2).as_dict()


def test_two_gloo_ranks_agree_with_one_process(tmp_path):
    results = run_gloo_ranks(phased_work, 2, tmp_path)
    single = run(small_scoring_gpt(VOCAB), validation_stream()).as_dict()
    for got in results:
        assert got["token_count"] == single["token_count"] and got["byte_count"] == single["byte_count"]
        assert got["loss_sum"] == pytest.approx(single["loss_sum"], rel=1e-6)
