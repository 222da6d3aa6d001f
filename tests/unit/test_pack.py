"""State dict <-> model blob: round trips (baseline int8, int6 SDClip, GPTQ), fitting to the cap,
no unpickling, damage rejected."""

import io
import pickle
import zlib

import pytest
import torch
from torch import nn

from pgolf.artifact.compress import COMPRESSORS, compress_model_bytes, decompress_model_bytes, describe_compressed_blob
from pgolf.artifact.container import unpack_tensor_container
from pgolf.artifact.pack import load_artifact_file, save_artifact
from pgolf.quant.packing import artifact_file_name, build_model_artifact, pack_model_artifact, unpack_model_artifact
from pgolf.config import ArtifactConfig, QuantConfig
from pgolf.errors import ArtifactError, ConfigError
from pgolf.quant.rtn import INT8_CLIP_QUANTILE, quantize_state_dict_int8

KEEP_FLOAT = ("attn_scale", "q_gain")


def qcfg(**changes) -> QuantConfig:
    return QuantConfig(int8_keep_float_fp32_name_patterns=KEEP_FLOAT, **changes)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(384, 256)  # 98,304 weights: per-row int8
        self.down = nn.Linear(256, 300, bias=False)  # 76,800 weights: per-row int8, kept bf16
        self.norm = nn.LayerNorm(256)
        self.attn_scale = nn.Parameter(torch.linspace(0.5, 1.5, 256))
        self.down.to(torch.bfloat16)


def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().state_dict()


def expected_row_bound(w: torch.Tensor) -> torch.Tensor:
    """Half a quantisation step per row, plus the final cast's rounding for bf16 weights."""
    w = w.float()
    clip = torch.quantile(w.abs(), INT8_CLIP_QUANTILE, dim=1)
    scale = torch.clamp(clip / 127, min=1 / 127).half().float()
    return scale[:, None] / 2 * (1 + 1e-5) + w.abs() * 2.0**-8


def test_round_trip_into_a_fresh_model_with_int8_bound():
    state = tiny_state_dict()
    blob = pack_model_artifact(state, qcfg(), extra_meta={"run_id": "t1", "step": 5})
    restored, meta = unpack_model_artifact(blob)
    assert list(restored) == list(state)
    assert meta["extra"] == {"run_id": "t1", "step": 5}
    assert (meta["compressor"], meta["shuffle_stride"]) == ("zlib", 0)
    for name, original in state.items():
        assert restored[name].dtype == original.dtype and restored[name].shape == original.shape, name
    for name in ("up.weight", "down.weight"):
        assert meta["quant"]["entries"][name]["scheme"] == "int8_per_row"
        error = (restored[name].float() - state[name].float()).abs()
        # the largest |w| per row may be clipped; every other weight is within half a step
        unclipped = state[name].float().abs() < state[name].float().abs().amax(dim=1, keepdim=True)
        assert bool((error <= expected_row_bound(state[name]))[unclipped].all()), name
    assert torch.equal(restored["attn_scale"], state["attn_scale"])  # keep-float: fp32, exact
    assert torch.equal(restored["up.bias"], state["up.bias"].half().float())
    fresh = TinyNet()
    fresh.load_state_dict(restored, strict=True)


@pytest.mark.parametrize("compressor", [*COMPRESSORS, "auto"])
@pytest.mark.parametrize("stride", [0, 2])
def test_every_compressor_round_trips(compressor, stride):
    state = tiny_state_dict()
    reference, _ = unpack_model_artifact(pack_model_artifact(state, qcfg()))
    blob = pack_model_artifact(state, qcfg(), ArtifactConfig(compressor=compressor, byte_shuffle_stride=stride))
    restored, meta = unpack_model_artifact(blob)
    if compressor != "auto":
        assert (meta["compressor"], meta["shuffle_stride"]) == (compressor, stride)
    assert (meta["compressor"], meta["shuffle_stride"]) == describe_compressed_blob(blob)
    for name in state:
        assert torch.equal(restored[name], reference[name]), name


def test_auto_is_no_larger_than_any_single_choice():
    state = tiny_state_dict()
    auto_size = len(pack_model_artifact(state, qcfg(), ArtifactConfig(compressor="auto")))
    for compressor in COMPRESSORS:
        assert auto_size <= len(pack_model_artifact(state, qcfg(), ArtifactConfig(compressor=compressor)))


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def stored_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    return unpack_tensor_container(decompress_model_bytes(blob))[0]


def test_default_config_stores_exactly_the_baseline_int8_bytes():
    """QUANT_METHOD=rtn, 8 bits, percentile clip: codes and scales are byte for byte the baseline's export."""
    state = tiny_state_dict()
    stored = stored_tensors(pack_model_artifact(state, qcfg()))
    baseline, _ = quantize_state_dict_int8(state, KEEP_FLOAT)
    assert list(stored) == list(baseline)
    for key, tensor in baseline.items():
        assert stored[key].dtype == tensor.dtype and raw_bytes(stored[key]) == raw_bytes(tensor), key


def test_int6_sdclip_round_trip_matches_a_float64_reference():
    state, k = tiny_state_dict(), 4.0
    restored, meta = unpack_model_artifact(pack_model_artifact(state, qcfg(matrix_bits=6, clip_method="sdclip",
                                                                           matrix_clip_sigmas=k)))
    for name in ("up.weight", "down.weight"):
        entry = meta["quant"]["entries"][name]
        assert (entry["scheme"], entry["bits"], entry["clip"], entry["k"], entry["method"]) == (
            "int8_per_row", 6, "sdclip", k, "rtn")
        w = state[name].double()
        scale = (k * w.std(dim=1, unbiased=True) / 31).half().double()[:, None]
        ratio = w / scale
        expected_q = torch.clamp(torch.round(ratio), -31, 31)
        got_q = restored[name].double() / scale  # bf16 "down" keeps q*s within a quarter step
        assert torch.allclose(got_q, torch.round(got_q), atol=0.25) and got_q.abs().max() <= 31
        mismatch = torch.round(got_q) != expected_q
        near_tie = ((ratio.abs() % 1) - 0.5).abs() < 1e-4  # fp32 vs fp64 division may round a tie either way
        assert bool((~mismatch | near_tie).all()), name
        assert restored[name].dtype == state[name].dtype


def test_gptq_artifact_round_trips_and_beats_round_to_nearest_on_correlated_inputs():
    torch.manual_seed(1)
    rows, cols, name = 96, 768, "blocks.0.mlp.fc.weight"  # 73,728 weights: quantised, with a Hessian
    w = torch.randn(rows, cols) * 0.02
    x = torch.randn(4096, 48) @ torch.randn(48, cols) + 0.1 * torch.randn(4096, cols)
    state = {name: w, "blocks.0.attn_scale": torch.ones(8)}
    cfg = QuantConfig(quant_method="gptq", matrix_bits=6, clip_method="sdclip", matrix_clip_sigmas=12.85)
    blob = pack_model_artifact(state, cfg, hessians={name: x.T @ x / len(x)}, extra_meta={"looping": True})
    restored, meta = unpack_model_artifact(blob)
    assert meta["quant"]["entries"][name]["method"] == "gptq" and meta["extra"] == {"looping": True}
    stored = stored_tensors(blob)
    q, s = stored[name + ".q"].double(), stored[name + ".scale"].double()
    assert q.abs().max() <= 31
    assert torch.equal(restored[name], (q * s[:, None]).float())  # loading is exactly codes x scales
    assert torch.allclose(s, (12.85 * w.double().std(dim=1) / 31).half().double(), rtol=1e-3)
    rtn = torch.clamp(torch.round(w.double() / s[:, None]), -31, 31) * s[:, None]

    def output_error(w_hat):
        return float(torch.linalg.norm(x.double() @ (w.double() - w_hat).T))

    assert output_error(restored[name].double()) < 0.7 * output_error(rtn)
    assert torch.equal(restored["blocks.0.attn_scale"], state["blocks.0.attn_scale"])
    with pytest.raises(ConfigError, match="Hessians"):
        pack_model_artifact(state, cfg)


def test_fit_to_cap_zeroes_the_cheapest_plus_minus_one_codes_until_code_plus_model_fits():
    state = tiny_state_dict()
    cfg = qcfg(matrix_bits=6, clip_method="sdclip", fit_to_cap=True)
    plain = build_model_artifact(state, cfg)  # no cap given: never pruned
    code_bytes = 5_000
    cap = code_bytes + len(plain.blob) - 300
    fitted = build_model_artifact(state, cfg, code_bytes=code_bytes, cap=cap)
    assert fitted.prune is not None and fitted.prune.pruned > 0 and fitted.unpruned_bytes == len(plain.blob)
    assert fitted.prune.size_bytes == code_bytes + len(fitted.blob) <= cap
    before, after = stored_tensors(plain.blob), stored_tensors(fitted.blob)
    changed = {key: before[key] != after[key] for key in before if key.endswith(".q")}
    assert sum(int(mask.sum()) for mask in changed.values()) == fitted.prune.pruned
    pruned_costs, kept_costs = [], []
    for key, mask in changed.items():
        assert bool((before[key][mask].abs() == 1).all() and (after[key][mask] == 0).all()), key
        cost_of_each_code = (before[key.removesuffix(".q") + ".scale"].double() ** 2)[:, None].expand_as(mask)
        pruned_costs.append(cost_of_each_code[mask])
        kept_costs.append(cost_of_each_code[after[key].abs() == 1])
    assert float(torch.cat(pruned_costs).max()) <= float(torch.cat(kept_costs).min())  # cheapest first
    assert unpack_model_artifact(fitted.blob)[1]["quant"] == unpack_model_artifact(plain.blob)[1]["quant"]

    unfitted = build_model_artifact(state, qcfg(matrix_bits=6, clip_method="sdclip"), code_bytes=code_bytes, cap=cap)
    assert unfitted.blob == plain.blob and unfitted.prune is None  # FIT_TO_CAP=0: the run fails with the margin
    with pytest.raises(ArtifactError, match="bytes over"):
        build_model_artifact(state, cfg, code_bytes=code_bytes, cap=code_bytes + 1_000)


@pytest.mark.parametrize("changes,name", [
    ({}, "final_model.int8.ptz"),
    ({"matrix_bits": 6}, "final_model.int6.ptz"),
    ({"quant_method": "gptq", "matrix_bits": 6}, "final_model.gptq_int6.ptz"),
])
def test_artifact_file_name_says_what_it_holds(changes, name):
    assert artifact_file_name(QuantConfig(**changes)) == name


class WritesMarker:
    """A pickle whose loading writes a file: what a malicious artifact would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickle_payloads_are_rejected_and_never_run(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(WritesMarker(proof)))
    assert proof.exists()  # the payload really runs when unpickled, so the check below means something

    marker = tmp_path / "marker"
    payload = pickle.dumps({"w": WritesMarker(marker)})
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    candidates = {
        "raw_pickle": payload,
        "baseline_ptz_style": zlib.compress(payload, 9),
        "torch_save_zip": buffer.getvalue(),
        "pickle_in_a_valid_pgolf_frame": compress_model_bytes(payload, "zlib"),
        "pickle_in_brotli_frame": compress_model_bytes(payload, "brotli", 2),
    }
    for label, data in candidates.items():
        path = tmp_path / f"{label}.bin"
        path.write_bytes(data)
        with pytest.raises(ArtifactError):
            unpack_model_artifact(load_artifact_file(path))
        assert not marker.exists(), label


def small_artifact(compressor: str) -> bytes:
    # one per-row int8 matrix (smooth, so it compresses to a few hundred bytes) and two passthroughs
    state = {"w": torch.linspace(-1, 1, 70_000).reshape(7, 10_000), "b": torch.ones(4), "n": torch.arange(3)}
    return pack_model_artifact(state, QuantConfig(int8_keep_float_fp32_name_patterns=()),
                               ArtifactConfig(compressor=compressor, byte_shuffle_stride=2))


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_every_truncation_and_flipped_byte_is_rejected(compressor):
    blob = small_artifact(compressor)
    unpack_model_artifact(blob)
    for length in range(len(blob)):
        with pytest.raises(ArtifactError):
            unpack_model_artifact(blob[:length])
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0xFF
        with pytest.raises(ArtifactError):
            unpack_model_artifact(bytes(damaged))


def test_large_artifact_damage_is_rejected():
    blob = pack_model_artifact(tiny_state_dict(), qcfg(), ArtifactConfig(compressor="brotli"))
    for position in (5, 100, len(blob) // 2, len(blob) - 3):
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        with pytest.raises(ArtifactError):
            unpack_model_artifact(bytes(damaged))
    with pytest.raises(ArtifactError):
        unpack_model_artifact(blob[: len(blob) // 2])


def test_save_and_load_files(tmp_path):
    blob = small_artifact("zlib")
    path = save_artifact(tmp_path / "artifact" / "model.pgz", blob)
    assert load_artifact_file(path) == blob
    assert [p.name for p in path.parent.iterdir()] == ["model.pgz"]  # no temp file left behind
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        save_artifact(path, b"other")
    assert path.read_bytes() == blob
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact_file(tmp_path / "missing.pgz")
    with pytest.raises(ArtifactError, match="not a file"):
        load_artifact_file(tmp_path)
    (tmp_path / "empty.pgz").write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        load_artifact_file(tmp_path / "empty.pgz")


def test_blob_from_another_container_meta_is_rejected():
    from pgolf.artifact.container import pack_tensor_container

    foreign = compress_model_bytes(pack_tensor_container({"w": torch.zeros(2)}, {"other": 1}), "zlib")
    with pytest.raises(ArtifactError, match="quant"):
        unpack_model_artifact(foreign)
