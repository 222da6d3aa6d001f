"""DOC_ISOLATED_ATTENTION (SPEC 5.2): no token attends across a BOS boundary.

Segment ids, masks and varlen boundaries against plain loops; then the whole model: each document of a
packed row scores as if it ran alone, a changed earlier document leaves later logits bit-identical,
gradients never cross a boundary, and with the flag off nothing changes (where leakage then shows,
which proves the isolation checks can fail).
"""

import dataclasses

import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.features.doc_isolation import (document_causal_mask, document_segment_ids, varlen_cu_seqlens,
                                                varlen_segment_capacity)
from pgolf.model.gpt import GPT

BOS = 1
# GQA 3:1, partial RoPE, XSA on every layer, output gate, SmearGate (looks back one token), skip gates.
CFG = ModelConfig(vocab_size=50, num_layers=3, model_dim=48, num_heads=6, num_kv_heads=2, mlp_mult=2, rope_dims=4,
                  xsa_last_n=3, attn_out_gate="sparse", smear_gate_enabled=True, skip_gates_enabled=True,
                  doc_isolated_attention=True)
BACKENDS = ("sdpa", "sdpa_math", "eager")


def plain_segments(row: list[int]) -> list[int]:
    seen, out = 0, []
    for token in row:
        seen += token == BOS
        out.append(seen)
    return out


def random_model(seed: int = 0, **changes) -> GPT:
    """Zero-init projections and gates get random values so every path carries signal."""
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(CFG, **changes))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gate" in name or "smear" in name or "skip" in name or getattr(param, "ndim", 0) == 2 and param.abs().sum() == 0:
                param.normal_(0, 0.3)
    return model.eval()


def packed_rows(seed: int = 0):
    """Two rows: (tokens before the first BOS) + 2 documents, and 3 documents starting at position 0."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, CFG.vocab_size, (2, 24), generator=gen)
    ids[0, 5] = ids[0, 14] = BOS
    ids[1, 0] = ids[1, 9] = ids[1, 17] = BOS
    return ids


def document_spans(row: torch.Tensor) -> list[tuple[int, int]]:
    starts = sorted({0, *(row == BOS).nonzero().flatten().tolist()})
    return list(zip(starts, starts[1:] + [row.numel()]))


# ---------------------------------------------------------------- segments, masks, boundaries


def assert_documents_score_alone(model: GPT, ids: torch.Tensor) -> None:
    """Every document of every packed row gets the logits it gets when it runs alone."""
    with torch.no_grad():
        packed = model.forward_logits(ids)
        for b, row in enumerate(ids):
            for start, stop in document_spans(row):
                alone = model.forward_logits(row[start:stop][None])[0]
                # RoPE positions stay absolute in the row; scores depend on offsets only (up to rounding).
                torch.testing.assert_close(packed[b, start:stop], alone, rtol=0, atol=2e-4)


def test_segment_ids_count_bos_tokens_so_far():
    ids = packed_rows()
    assert document_segment_ids(ids, BOS).tolist() == [plain_segments(row) for row in ids.tolist()]


def test_mask_allows_exactly_earlier_tokens_of_the_same_document():
    segments = document_segment_ids(packed_rows(), BOS)
    mask = document_causal_mask(segments)
    assert mask.shape == (2, 1, 24, 24)
    for b in range(2):
        for i in range(24):
            for j in range(24):
                assert mask[b, 0, i, j] == (j <= i and segments[b, i] == segments[b, j])


@pytest.mark.parametrize("static_shape", [False, True])
def test_cu_seqlens_list_every_segment_start_then_pad_with_the_total(static_shape):
    ids = packed_rows()
    cu = varlen_cu_seqlens(document_segment_ids(ids, BOS), static_shape=static_shape)
    starts = [b * 24 + start for b, row in enumerate(ids) for start, _ in document_spans(row)]
    assert cu.dtype == torch.int32 and cu.numel() % 64 == 0
    assert cu[:len(starts)].tolist() == starts and set(cu[len(starts):].tolist()) == {48}
    if static_shape:
        assert cu.numel() == varlen_segment_capacity(2, 24)


def test_static_capacity_overflow_is_an_error_not_a_silent_merge():
    every_token_a_document = torch.arange(1, 257)[None].repeat(2, 1)  # 512 one-token segments
    assert varlen_segment_capacity(2, 256) < 512
    with pytest.raises(RuntimeError):
        varlen_cu_seqlens(every_token_a_document, static_shape=True)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_document_scores_as_if_it_ran_alone(backend):
    assert_documents_score_alone(random_model(attention_backend=backend), packed_rows())


@pytest.mark.parametrize("backend", BACKENDS)
def test_changing_an_earlier_document_leaves_later_logits_bit_identical(backend):
    model = random_model(attention_backend=backend)
    ids = packed_rows()
    changed = ids.clone()
    changed[0, 6:14] = torch.randint(2, CFG.vocab_size, (8,))  # document 1 of row 0; BOS at 14 stays
    changed[1, 1:9] = torch.randint(2, CFG.vocab_size, (8,))   # document 1 of row 1; BOS at 9 stays
    with torch.no_grad():
        before, after = model.forward_logits(ids), model.forward_logits(changed)
    assert torch.equal(before[0, 14:], after[0, 14:]) and torch.equal(before[1, 9:], after[1, 9:])
    assert not torch.equal(before[0, 6:14], after[0, 6:14])


def test_without_isolation_the_same_change_leaks_into_later_documents():
    model = random_model(doc_isolated_attention=False)
    ids = packed_rows()
    changed = ids.clone()
    changed[0, 6:14] = torch.randint(2, CFG.vocab_size, (8,))
    with torch.no_grad():
        assert (model.forward_logits(ids)[0, 14:] - model.forward_logits(changed)[0, 14:]).abs().max() > 1e-3


def test_gradients_never_cross_a_document_boundary():
    torch.manual_seed(0)
    attn = CausalSelfAttention(CFG, 2)
    with torch.no_grad():
        attn.proj.weight.normal_(0, 0.2)
    x = torch.randn(1, 24, CFG.model_dim, requires_grad=True)
    segments = document_segment_ids(packed_rows()[:1], BOS)  # segments 0..4, 5..13, 14..23
    attn(x, segments)[:, 5:14].pow(2).sum().backward()
    assert torch.equal(x.grad[0, :5], torch.zeros(5, CFG.model_dim))
    assert torch.equal(x.grad[0, 14:], torch.zeros(10, CFG.model_dim))
    assert (x.grad[0, 5:14].abs().sum(-1) > 0).all()


def test_every_parameter_gets_a_gradient_with_isolation_on():
    model = random_model().train()
    ids = packed_rows()
    model(ids, ids.roll(-1, 1)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_isolation_on_without_any_bos_is_plain_causal_attention():
    ids = torch.randint(2, CFG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    on, off = random_model(), random_model(doc_isolated_attention=False)
    with torch.no_grad():
        torch.testing.assert_close(on.forward_logits(ids), off.forward_logits(ids), rtol=0, atol=1e-5)


def test_two_lane_decoder_keeps_documents_isolated_too():
    model = random_model(parallel_residual_start=1, parallel_residual_mode="two_lane")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "parallel" in name:
                param.normal_(0.5, 0.3)
    assert_documents_score_alone(model, packed_rows())
