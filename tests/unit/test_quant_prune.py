"""Selective +-1 pruning (SPEC 5.12): cheapest first, the fewest that fit, the margin when nothing fits."""

import zlib

import pytest
import torch

from pgolf.artifact.container import pack_tensor_container
from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.quant.prune import prune_codes_to_fit


def quantised_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "blocks.0.mlp.fc.weight": torch.randn(300, 256, generator=g) * torch.linspace(0.01, 0.1, 300)[:, None],
        "blocks.0.attn.c_q.weight": torch.randn(260, 256, generator=g) * 0.05,
        "blocks.0.attn.attn_gate_w": torch.randn(8, 12, generator=g),  # a gate: never pruned
        "bias": torch.randn(10, generator=g),
    }
    return quantize_for_artifact(state, QuantConfig(matrix_bits=4, clip_method="sdclip", matrix_clip_sigmas=3.0))


def nonzero_codes(tensors):
    """A toy size: one byte per non-zero code. Exactly monotone, so the minimal count is checkable."""
    return sum(int(t.count_nonzero()) for key, t in tensors.items() if key.endswith(".q"))


def plus_minus_one_candidates(tensors):
    """(cost, name, row, col) of every +-1 code of the two matrices, cheapest first, by plain loops."""
    rows = []
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"):
        codes, scales = tensors[name + ".q"], tensors[name + ".scale"].float()
        for r, c in (codes.abs() == 1).nonzero().tolist():
            rows.append((scales[r].item() ** 2, name, r, c))
    return sorted(rows, key=lambda row: row[0])


def test_prunes_exactly_the_cheapest_codes_needed():
    tensors, meta = quantised_state()
    before = nonzero_codes(tensors)
    pruned, result = prune_codes_to_fit(tensors, meta, nonzero_codes, before - 500)
    assert result.pruned == 500 and result.size_bytes == before - 500 and result.budget_bytes == before - 500
    cands = plus_minus_one_candidates(tensors)
    assert result.candidates == len(cands)
    cutoff = cands[499][0]
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"):
        changed = (pruned[name + ".q"] != tensors[name + ".q"]).nonzero().tolist()
        scales = tensors[name + ".scale"].float()
        for r, c in changed:
            assert abs(int(tensors[name + ".q"][r, c])) == 1 and int(pruned[name + ".q"][r, c]) == 0
            assert scales[r].item() ** 2 <= cutoff
    assert sum(result.per_tensor.values()) == 500
    assert torch.equal(pruned["blocks.0.attn.attn_gate_w.q"], tensors["blocks.0.attn.attn_gate_w.q"])
    assert nonzero_codes(tensors) == before  # the input is untouched


def test_nothing_pruned_when_it_already_fits():
    tensors, meta = quantised_state()
    pruned, result = prune_codes_to_fit(tensors, meta, nonzero_codes, nonzero_codes(tensors))
    assert result.pruned == 0 and pruned is tensors and result.per_tensor == {}


def test_impossible_budget_reports_the_margin():
    tensors, meta = quantised_state()
    floor = nonzero_codes(tensors) - len(plus_minus_one_candidates(tensors))
    with pytest.raises(ArtifactError, match=f"{floor:,} bytes, 10 bytes over"):
        prune_codes_to_fit(tensors, meta, nonzero_codes, floor - 10)
    _, result = prune_codes_to_fit(tensors, meta, nonzero_codes, floor)  # exactly all candidates
    assert result.pruned == result.candidates


def test_fits_a_real_compressed_size():
    tensors, meta = quantised_state(seed=1)

    def compressed(t):
        return len(zlib.compress(pack_tensor_container(t, {"quant": meta}), 9))

    budget = compressed(tensors) - 2_000
    pruned, result = prune_codes_to_fit(tensors, meta, compressed, budget)
    assert compressed(pruned) <= budget and result.size_bytes == compressed(pruned)
    assert 0 < result.pruned < result.candidates
    assert set(result.as_dict()) == {"pruned", "candidates", "size_bytes", "budget_bytes", "per_tensor",
                                     "measured_sizes", "measurement_rounds", "estimated_sizes"}
