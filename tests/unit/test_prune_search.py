"""The fit-to-cap search: the estimate-guided binary search returns the plain (old) search's result from
fewer real compressions, whatever the estimate does; parallel look-ahead changes nothing but time."""

import math
import zlib
from collections import Counter

import pytest
import torch

import pgolf.artifact.pack as artifact_bytes
import pgolf.quant.packing as pack
from pgolf.artifact.container import pack_tensor_container
from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.quant.prune import code_entropy_bytes, prune_codes_to_fit
from pgolf.quant.prune_search import SizeMemo, estimated_fewest_fitting, predicted_path


def quantised_state(seed=1):
    g = torch.Generator().manual_seed(seed)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(300, 256, generator=g) * torch.linspace(0.01, 0.1, 300)[:, None]
             for i in range(2)}
    return quantize_for_artifact(state, QuantConfig(matrix_bits=6, clip_method="sdclip"))


def old_binary_search(size_of_count, total, budget):
    """The search as it was before the estimates (plain code, real sizes only): (count, size, calls)."""
    calls = Counter()

    def size(count):
        calls[count] += 1
        return size_of_count(count)

    if size(total) > budget:
        raise ArtifactError("hopeless")
    too_few, enough = 0, total
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if size(middle) <= budget:
            enough = middle
        else:
            too_few = middle
    return enough, size(enough), sum(calls.values())


def cheapest_first(tensors, meta):
    """Every +-1 code as (name, row, col), cheapest (row scale squared) first, ties in state-dict order,
    by plain loops."""
    candidates = []
    for name in meta["entries"]:
        codes, scales = tensors[name + ".q"], tensors[name + ".scale"].float()
        candidates += [(scales[r].item() ** 2, len(candidates), name, r, c)
                       for r, c in (codes.abs() == 1).nonzero().tolist()]
    return [(name, r, c) for _, _, name, r, c in sorted(candidates)]


def pruned_to(tensors, order, count):
    """``tensors`` with the first ``count`` codes of ``order`` set to 0."""
    out = {key: value.clone() for key, value in tensors.items()}
    for name, r, c in order[:count]:
        out[name + ".q"][r, c] = 0
    return out


@pytest.fixture(scope="module")
def zlib_case():
    tensors, meta = quantised_state()

    def real(t):
        return len(zlib.compress(pack_tensor_container(t, {"quant": meta}), 9))
    return tensors, meta, real


def test_results_equal_the_old_search_with_real_compressed_sizes(zlib_case):
    """zlib-9 sizes jitter by bytes from count to count (so a smarter bracket could land elsewhere); the
    estimate-guided search still returns exactly the old binary search's count and bytes."""
    tensors, meta, real = zlib_case
    base = real(tensors)
    measured_new = measured_old = 0
    for cut in (30, 400, 1500, 4000):
        fitted, result = prune_codes_to_fit(tensors, meta, real, base - cut)
        plain, reference = prune_codes_to_fit(tensors, meta, real, base - cut, plain_bisection=True)
        assert (result.pruned, result.size_bytes, result.per_tensor) == (reference.pruned, reference.size_bytes,
                                                                          reference.per_tensor), cut
        assert all(torch.equal(fitted[key], plain[key]) for key in plain)
        measured_new += result.measured_sizes
        measured_old += reference.measured_sizes
    assert measured_new < measured_old


def test_plain_bisection_is_the_old_search(zlib_case):
    tensors, meta, real = zlib_case
    budget = real(tensors) - 700
    order = cheapest_first(tensors, meta)
    count, size, _ = old_binary_search(lambda n: real(pruned_to(tensors, order, n)), len(order), budget)
    fitted, result = prune_codes_to_fit(tensors, meta, real, budget, plain_bisection=True)
    assert (result.pruned, result.size_bytes, result.candidates) == (count, size, len(order))
    expected = pruned_to(tensors, order, count)
    assert all(torch.equal(fitted[key], expected[key]) for key in expected)
    assert real(pruned_to(tensors, order, count - 1)) > budget  # the crossing is measured on both sides


def monotone_size(count):
    return 50_000 - 3 * count  # strictly falling: every search must find the same smallest count


@pytest.mark.parametrize("estimate", [
    lambda n: 10_000 - 0.7 * n,  # a good estimate
    lambda n: 10_000 + 5 * math.sin(n / 7) - 0.01 * n,  # noisy and barely moving
    lambda n: 1_000 + 2 * n,  # backwards
    lambda n: 0.0,  # useless
], ids=["good", "noisy", "backwards", "constant"])
@pytest.mark.parametrize("budget", [49_999, 45_001, 30_000, 20_002])
def test_any_estimate_gives_the_exhaustive_answer_on_a_monotone_size(estimate, budget):
    total = 10_000
    exhaustive = next(n for n in range(total + 1) if monotone_size(n) <= budget)
    real = SizeMemo(monotone_size, {0: monotone_size(0)})
    assert estimated_fewest_fitting(real, SizeMemo(estimate), total, budget) == exhaustive
    assert real.sizes[exhaustive] <= budget < real.sizes[exhaustive - 1]


def test_a_good_estimate_saves_measurements():
    total, budget = 1_000_000, 50_000 - 3 * 123_457
    real = SizeMemo(monotone_size, {0: monotone_size(0)})
    assert estimated_fewest_fitting(real, SizeMemo(lambda n: 20_000 - 2.9 * n), total, budget) == 123_457
    plain_steps = math.ceil(math.log2(total)) + 1  # 21
    # far steps are decided by the estimate; the ~21 counts within the 64-byte jitter floor are measured
    assert real.measured <= 12 < plain_steps


def test_hopeless_budget_still_raises_with_the_margin():
    real = SizeMemo(monotone_size, {0: monotone_size(0)})
    with pytest.raises(ArtifactError, match="even zeroing all 100"):
        estimated_fewest_fitting(real, SizeMemo(lambda n: 1.0 * n), 100, monotone_size(100) - 1)


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("estimate", [lambda n: 20_000 - 2.9 * n, lambda n: 0.0], ids=["good", "constant"])
def test_parallel_measurements_change_nothing_but_the_rounds(workers, estimate):
    total, budget = 5_000, 50_000 - 3 * 1_234 - 1
    memo = SizeMemo(monotone_size, {0: monotone_size(0)}, workers=workers)
    assert estimated_fewest_fitting(memo, SizeMemo(estimate), total, budget) == 1_235
    assert memo.rounds <= memo.measured and (workers == 1) == (memo.rounds == memo.measured)


def test_predicted_path_follows_the_estimate_and_the_measurements():
    budget = monotone_size(5)  # counts >= 5 fit
    real = SizeMemo(monotone_size, {0: monotone_size(0)})
    good = SizeMemo(lambda n: 1_000 - 3.0 * n)  # beyond count 0, byte for byte: exactly the real sizes
    assert predicted_path(real, good, 0, 16, budget) == [8, 4, 6, 5]
    backwards = SizeMemo(lambda n: 1_000 + 3.0 * n)  # says no count fits
    assert predicted_path(real, backwards, 0, 16, budget) == [8, 12, 14, 15]
    real(12)  # a measurement overrides the lean, and anchors the mapping (affine: exact again below it)
    assert predicted_path(real, backwards, 8, 16, budget) == [12, 10, 9]
    assert real.measured == 1 and set(real.sizes) == {0, 12}


def test_code_entropy_matches_a_plain_reference():
    g = torch.Generator().manual_seed(3)
    tensors = {"a.q": torch.randint(-3, 4, (30, 20), generator=g).to(torch.int8),
               "b.q": torch.tensor([[-128, 127, 0, 0]], dtype=torch.int8)}

    def reference(values):
        counts = Counter(values)
        return sum(c * math.log2(len(values) / c) for c in counts.values()) / 8

    expected = reference(tensors["a.q"].reshape(-1).tolist()) + reference(tensors["b.q"].reshape(-1).tolist())
    assert code_entropy_bytes(tensors, ["a.q", "b.q"]) == pytest.approx(expected, rel=1e-12)


def test_fit_to_cap_reuses_measured_blobs(monkeypatch):
    tensors, meta = quantised_state(seed=2)
    calls = []
    real_compress = pack.compress_model_bytes

    def counting(data, compressor, stride=0):
        calls.append(len(data))
        return real_compress(data, compressor, stride)

    monkeypatch.setattr(pack, "compress_model_bytes", counting)  # the pruning search's compressions
    monkeypatch.setattr(artifact_bytes, "compress_model_bytes", counting)  # the unpruned artifact's
    state = {name: tensors[name + ".q"].float() * tensors[name + ".scale"].float()[:, None] for name in meta["entries"]}
    cfg = QuantConfig(matrix_bits=6, clip_method="sdclip", fit_to_cap=True)
    plain = pack.build_model_artifact(state, cfg)
    calls.clear()
    fitted = pack.build_model_artifact(state, cfg, code_bytes=100, cap=100 + len(plain.blob) - 500)
    # one compression for the unpruned artifact, then exactly one per measured size: none repeated
    assert len(calls) == 1 + fitted.prune.measured_sizes
    assert fitted.prune.size_bytes == 100 + len(fitted.blob) <= 100 + len(plain.blob) - 500


def test_entropy_of_pruned_counts_from_histograms_equals_pruning_and_recounting():
    from pgolf.quant.prune import _apply_pruning, _gather_candidates, _PrunedEntropy

    tensors, meta = quantised_state(seed=4)
    cands = _gather_candidates(tensors, meta)
    fast = _PrunedEntropy(tensors, cands)
    for count in (0, 1, 777, len(cands.flat_index) // 2, len(cands.flat_index)):
        pruned = _apply_pruning(tensors, cands, count)[0]
        assert fast(count) == pytest.approx(code_entropy_bytes(pruned, cands.names), rel=1e-12, abs=1e-9)
