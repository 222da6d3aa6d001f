"""State dict <-> model blob: round trips with the int8 bound, no unpickling, damage rejected."""

import io
import pickle
import zlib

import pytest
import torch
from torch import nn

from pgolf.artifact.compress import COMPRESSORS, compress_model_bytes, describe_compressed_blob
from pgolf.artifact.pack import load_artifact_file, pack_model_artifact, save_artifact, unpack_model_artifact
from pgolf.errors import ArtifactError
from pgolf.quant.rtn import INT8_CLIP_QUANTILE

KEEP_FLOAT = ("attn_scale", "q_gain")


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
    blob = pack_model_artifact(state, keep_float_patterns=KEEP_FLOAT, extra_meta={"run_id": "t1", "step": 5})
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
    reference, _ = unpack_model_artifact(pack_model_artifact(state, keep_float_patterns=KEEP_FLOAT))
    blob = pack_model_artifact(state, keep_float_patterns=KEEP_FLOAT, compressor=compressor, shuffle_stride=stride)
    restored, meta = unpack_model_artifact(blob)
    if compressor != "auto":
        assert (meta["compressor"], meta["shuffle_stride"]) == (compressor, stride)
    assert (meta["compressor"], meta["shuffle_stride"]) == describe_compressed_blob(blob)
    for name in state:
        assert torch.equal(restored[name], reference[name]), name


def test_auto_is_no_larger_than_any_single_choice():
    state = tiny_state_dict()
    auto_size = len(pack_model_artifact(state, keep_float_patterns=KEEP_FLOAT, compressor="auto"))
    for compressor in COMPRESSORS:
        assert auto_size <= len(pack_model_artifact(state, keep_float_patterns=KEEP_FLOAT, compressor=compressor))


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
    return pack_model_artifact(state, keep_float_patterns=(), compressor=compressor, shuffle_stride=2)


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
    blob = pack_model_artifact(tiny_state_dict(), keep_float_patterns=KEEP_FLOAT, compressor="brotli")
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
