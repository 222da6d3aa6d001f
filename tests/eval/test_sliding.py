"""Sliding-window evaluation (pgolf/eval/sliding.py) against brute-force references."""

import math

import pytest
import torch
import torch.nn.functional as F
from testkit import small_scoring_gpt

from pgolf.data.tokenizer import ByteTables, count_target_bytes
from pgolf.eval.bpb import evaluate_bpb
from pgolf.eval.sliding import evaluate_sliding_bpb, sliding_windows
from pgolf.runtime import Runtime

VOCAB = 48


def byte_tables() -> ByteTables:
    """Arbitrary but fixed tables: id 1 is a boundary (BOS), some ids carry a leading space."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 4, (VOCAB,), generator=generator).to(torch.int16)
    space = torch.rand(VOCAB, generator=generator) < 0.4
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[1] = True
    base[1], space[1] = 0, False
    return ByteTables(base_bytes=base, has_leading_space=space, is_boundary=boundary)


@pytest.fixture(scope="module")
def model():
    return small_scoring_gpt(VOCAB)


def tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_targets,window,stride", [(100, 16, 4), (64, 16, 16), (7, 16, 4), (16, 16, 5), (50, 9, 2)])
def test_every_target_is_scored_once_with_the_most_context(num_targets, window, stride):
    windows = sliding_windows(num_targets, window, stride)
    scored = [t for w in windows for t in w.scored_targets]
    assert scored == list(range(num_targets))  # once each, in order
    for w in windows:
        assert w.length <= window
        for target in w.scored_targets:
            context = target - w.start  # tokens before the predicted one's input position
            assert context >= min(target, window - stride)


def reference_sliding_loss(model, val: torch.Tensor, window: int, stride: int) -> float:
    """For each target p: run the model on exactly the window that scores it, take position p's loss."""
    total = 0.0
    for p in range(val.numel() - 1):
        start = 0 if p < window else stride * math.ceil((p - window + 1) / stride)
        x = val[start: p + 1][None]
        logits = model.forward_logits(x)[0, -1]
        total += F.cross_entropy(logits[None].double(), val[p + 1: p + 2]).item()
    return total


@pytest.mark.parametrize("stride,batch", [(4, 3), (16, 2), (5, 64)])
def test_sliding_sums_equal_per_target_reference(model, stride, batch):
    val = tokens(61)
    sums = evaluate_sliding_bpb(model, val, window=16, stride=stride, batch_windows=batch,
                                target_bytes=byte_tables(), runtime=Runtime(torch.device("cpu")))
    assert sums.token_count == 60
    assert sums.loss_sum == pytest.approx(reference_sliding_loss(model, val, 16, stride), rel=1e-5)
    # Bytes: every target once, with its true previous token, whatever the windowing.
    assert sums.byte_count == int(count_target_bytes(byte_tables(), val[:-1], val[1:]).sum())


def test_stride_equal_to_window_is_the_plain_evaluation(model):
    val = tokens(16 * 6 + 1, seed=2)
    plain = evaluate_bpb(model, val, seq_len=16, batch_sequences=4, target_bytes=byte_tables(),
                         runtime=Runtime(torch.device("cpu")))
    sliding = evaluate_sliding_bpb(model, val, window=16, stride=16, batch_windows=4, target_bytes=byte_tables(),
                                   runtime=Runtime(torch.device("cpu")))
    assert sliding.token_count == plain.token_count and sliding.byte_count == plain.byte_count
    assert sliding.loss_sum == pytest.approx(plain.loss_sum, rel=1e-6)


def test_rank_shares_add_up_to_the_whole(model):
    val = tokens(90, seed=4)
    kwargs = dict(window=16, stride=4, batch_windows=3, target_bytes=byte_tables(), runtime=Runtime(torch.device("cpu")))
    whole = evaluate_sliding_bpb(model, val, **kwargs)
    parts = [evaluate_sliding_bpb(model, val, rank=r, world_size=3, **kwargs) for r in range(3)]
    assert sum(p.token_count for p in parts) == whole.token_count
    assert sum(p.byte_count for p in parts) == whole.byte_count
    assert sum(p.loss_sum for p in parts) == pytest.approx(whole.loss_sum, rel=1e-9)
