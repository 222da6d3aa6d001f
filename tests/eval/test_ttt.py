"""Score-first TTT (pgolf/eval/ttt.py) and the compliance checks (pgolf/eval/compliance.py)."""

import copy
import dataclasses

import pytest
import torch
from testkit import small_scoring_gpt

from pgolf.config import TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval.compliance import check_causality, check_normalization, check_score_before_update
from pgolf.eval.sliding import evaluate_sliding_bpb
from pgolf.eval.ttt import TTTObserver, assign_windows_to_chunks, evaluate_ttt_bpb, ttt_learning_rate
from pgolf.eval.sliding import sliding_windows
from pgolf.model.gpt import GPT
from pgolf.runtime import Runtime

VOCAB, WINDOW, STRIDE, CHUNK = 40, 16, 4, 32
CPU = torch.device("cpu")


def tables() -> ByteTables:
    return ByteTables(base_bytes=torch.ones(VOCAB, dtype=torch.int16),
                      has_leading_space=torch.zeros(VOCAB, dtype=torch.bool),
                      is_boundary=torch.zeros(VOCAB, dtype=torch.bool))


def fresh_model(seed: int = 0) -> GPT:
    return small_scoring_gpt(VOCAB, seed)


def repeated_text(repeats: int, period: int = 24, seed: int = 0) -> torch.Tensor:
    """A random passage repeated: a model that learns from earlier chunks predicts later ones better."""
    passage = torch.randint(0, VOCAB, (period,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([passage] * repeats + [passage[:1]])


def run_ttt(model, val, cfg, observer=None, **kwargs):
    return evaluate_ttt_bpb(model, val, cfg, window=WINDOW, stride=STRIDE, batch_windows=3, target_bytes=tables(),
                            runtime=Runtime(CPU), observer=observer, **kwargs)


CFG = TTTConfig(ttt_enabled=True, ttt_chunk_tokens=CHUNK, ttt_lr=0.05, ttt_epochs=2, ttt_batch_seqs=2)


def test_every_target_is_scored_before_any_update_that_uses_it():
    val = repeated_text(8)
    observer = TTTObserver()
    sums = run_ttt(fresh_model(), val, CFG, observer)
    assert sums.token_count == val.numel() - 1
    result = check_score_before_update(observer, val.numel() - 1)
    assert result.passed, result.details
    trained = torch.cat([t for kind, t in observer.events if kind == "train"])
    assert trained.numel() > 0
    last_chunk_start = (val.numel() - 2) // CHUNK * CHUNK
    assert int(trained.max()) < last_chunk_start  # the last chunk is never trained on


def test_the_check_catches_training_before_scoring():
    observer = TTTObserver()
    observer.trained(torch.arange(0, 16))
    observer.scored(torch.arange(0, 32))
    result = check_score_before_update(observer, 32)
    assert not result.passed and "not scored yet" in result.details[0]


def sliding_reference(model, val):
    """The sliding-window score TTT must reproduce at lr 0 (and beat when it learns)."""
    return evaluate_sliding_bpb(model, val, window=WINDOW, stride=STRIDE, batch_windows=3, target_bytes=tables(),
                                runtime=Runtime(CPU))


def test_zero_learning_rate_equals_sliding_evaluation():
    val = repeated_text(6, seed=1)
    model = fresh_model()
    sliding = sliding_reference(model, val)
    ttt = run_ttt(copy.deepcopy(model), val, dataclasses.replace(CFG, ttt_lr=0.0, ttt_momentum=0.0))
    assert ttt.token_count == sliding.token_count and ttt.byte_count == sliding.byte_count
    assert ttt.loss_sum == pytest.approx(sliding.loss_sum, rel=1e-6)


def test_ttt_learns_from_scored_chunks():
    val = repeated_text(10, seed=2)
    model = fresh_model()
    sliding = sliding_reference(model, val)
    ttt = run_ttt(copy.deepcopy(model), val, dataclasses.replace(CFG, ttt_lr=0.5, ttt_epochs=3))
    assert ttt.val_bpb < sliding.val_bpb - 0.1


def test_windows_go_to_the_chunk_of_their_first_scored_target_and_lr_is_cosine():
    windows = sliding_windows(100, WINDOW, STRIDE)
    chunks = assign_windows_to_chunks(windows, CHUNK, 100)
    assert len(chunks) == 4 and sum(map(len, chunks)) == len(windows)
    for index, group in enumerate(chunks):
        assert all(min((w.start + w.first_scored) // CHUNK, 3) == index for w in group)
    assert ttt_learning_rate(1.0, 0, 5) == 1.0 and ttt_learning_rate(1.0, 4, 5) == pytest.approx(0.0)
    assert ttt_learning_rate(1.0, 2, 5) == pytest.approx(0.5)


def test_causality_and_normalization_probes_pass_on_the_model_and_catch_a_leak():
    model = fresh_model().eval()
    tokens = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
    assert check_causality(model, tokens, cut=9).passed
    assert check_normalization(model, tokens[0, :8]).passed

    class PeekingModel(torch.nn.Module):
        """Leaks the future: adds the next token's embedding norm to every logit."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward_logits(self, x):
            future = torch.roll(x, -1, dims=1).float()[..., None]
            return self.inner.forward_logits(x) + 0.1 * future

        def forward(self, x, y, reduction="mean"):
            # An unnormalized scorer: the loss of the target's logit alone, no log-sum-exp.
            return -self.forward_logits(x).gather(-1, y[..., None])[..., 0] / 50

    leaky = PeekingModel(model)
    causal = check_causality(leaky, tokens, cut=9)
    assert not causal.passed and "changed when only later tokens changed" in causal.details[0]
    assert not check_normalization(leaky, tokens[0, :8]).passed
