"""COMPRESSOR=pergroup (SPEC 5.11): role groups, greedy L1 row chains, transposition, bit-exact round
trips for every quantization scheme, damage detection, and its place in COMPRESSOR=auto."""

import os
import shutil
import struct
import sys
import zlib

import numpy as np
import pytest
import torch

from pgolf.artifact.compress import (LRZIP_COMPRESS_ARGS, auto_compress, available_model_compressor_names,
                                     choose_smallest_compression, compress_model_bytes, decompress_model_bytes,
                                     describe_compressed_blob, lrzip_available, lrzip_declared_size,
                                     require_model_compressor)
from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.artifact.pack import pack_quantized_tensors
from pgolf.quant.packing import build_model_artifact, unpack_model_artifact
from pgolf.artifact.pergroup import (PERGROUP_PERM_PREFIX, greedy_l1_row_chain, pack_pergroup_streams,
                                     split_container_by_role, unpack_pergroup_streams)
from pgolf.config import ArtifactConfig, Config, QuantConfig, RunConfig
from pgolf.errors import ArtifactError, ConfigError, PgolfError
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.run import main as run_main

LAYERS = (0, 10, 2)  # state-dict order on purpose not index order (10 must come after 2)


def reference_chain(rows: list[list[int]]) -> list[int]:
    """Greedy L1 nearest-neighbour chain from row 0, ties to the lowest index, in plain Python."""
    order, used = [0], {0}
    while len(order) < len(rows):
        current = rows[order[-1]]
        best = min((sum(abs(a - b) for a, b in zip(current, rows[j])), j) for j in range(len(rows)) if j not in used)
        order.append(best[1])
        used.add(best[1])
    return order


@pytest.mark.parametrize("seed,rows,cols,span", [(0, 40, 7, 3), (1, 90, 16, 127), (2, 33, 5, 1), (3, 2, 4, 5)])
def test_greedy_chain_matches_a_plain_python_reference(seed, rows, cols, span):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-span, span + 1, (rows, cols), generator=g, dtype=torch.int64).to(torch.int8)
    codes[rows // 2] = codes[0]  # an exact duplicate and (small span) many ties
    assert greedy_l1_row_chain(codes).tolist() == reference_chain(codes.tolist())


def test_greedy_chain_extremes_do_not_overflow():
    codes = torch.tensor([[-128] * 6, [127] * 6, [0] * 6, [-127] * 6], dtype=torch.int8)
    assert greedy_l1_row_chain(codes).tolist() == reference_chain(codes.tolist()) == [0, 3, 2, 1]
    assert greedy_l1_row_chain(codes[:1]).tolist() == [0]


@pytest.fixture(autouse=True)
def tiny_passthrough_limit(monkeypatch):
    """Quantize matrices above 64 elements (instead of 65,536), so a tiny model has every role."""
    monkeypatch.setattr("pgolf.quant.policy.QUANT_PASSTHROUGH_MAX_NUMEL", 64)


def model_state(tied: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny GPT-shaped state dict: embedding, attention and MLP matrices per layer, vectors, gates."""
    g = torch.Generator().manual_seed(seed)
    d, vocab = 16, 40
    state = {"tok_emb.weight": torch.randn(vocab, d, generator=g) * 0.05}
    for i in LAYERS:
        for name, shape in [("attn.c_q", (d, d)), ("attn.c_k", (d // 2, d)), ("attn.c_v", (d // 2, d)),
                            ("attn.proj", (d, d)), ("mlp.fc", (3 * d, d)), ("mlp.proj", (d, 3 * d))]:
            state[f"blocks.{i}.{name}.weight"] = torch.randn(*shape, generator=g) * 0.05
        state[f"blocks.{i}.attn_scale"] = torch.rand(d, generator=g)
        state[f"blocks.{i}.attn.attn_gate_w"] = torch.randn(4, 20, generator=g)
    if not tied:
        state["lm_head.weight"] = torch.randn(vocab, d, generator=g) * 0.05
    return state


SCHEMES = {
    "rtn int8": dict(),
    "rtn int6 sdclip": dict(matrix_bits=6, clip_method="sdclip"),
    "gptq int6 sdclip": dict(quant_method="gptq", matrix_bits=6, clip_method="sdclip", embed_bits=7),
    "gptq int6 +lqer asym": dict(quant_method="gptq", matrix_bits=6, clip_method="sdclip", lqer_enabled=True, lqer_asym=True),
    "rtn int5 +lqer sym": dict(matrix_bits=5, clip_method="sdclip", lqer_enabled=True, lqer_asym=False),
}


def hessians_for(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out = {}
    for name, w in state.items():
        if w.ndim == 2 and ("blocks." in name and ".attn_gate" not in name or name == "tok_emb.weight"):
            x = torch.randn(64, w.shape[1], generator=g)
            out[name] = x.T @ x / 64
    return out


def quantized(scheme: str, tied: bool):
    state = model_state(tied)
    cfg = QuantConfig(int8_keep_float_fp32_name_patterns=(), **SCHEMES[scheme])
    return quantize_for_artifact(state, cfg, hessians_for(state) if cfg.quant_method == "gptq" else None)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_round_trip_is_bit_exact_for_every_scheme(scheme, tied):
    tensors, meta = quantized(scheme, tied)
    extra = {"looping": True}
    blob = pack_quantized_tensors(tensors, meta, "pergroup", 2, extra)
    assert describe_compressed_blob(blob) == ("pergroup", 2)
    # decompression gives back the very container bytes (and so the same sha256) ...
    assert decompress_model_bytes(blob) == pack_tensor_container(tensors, {"quant": meta, "extra": extra})
    # ... so loading gives exactly what every other compressor gives
    restored, restored_meta = unpack_model_artifact(blob)
    reference, _ = unpack_model_artifact(pack_quantized_tensors(tensors, meta, "zlib", 0, extra))
    assert list(restored) == list(reference)
    for name in reference:
        assert restored[name].dtype == reference[name].dtype and torch.equal(restored[name], reference[name]), name
    assert (restored_meta["compressor"], restored_meta["extra"]) == ("pergroup", extra)


def numpy_chain(codes: torch.Tensor) -> list[int]:
    """The greedy chain again, written independently with numpy (full rows, a used mask)."""
    rows = codes.numpy().astype(np.int64)
    order, used = [0], np.zeros(len(rows), dtype=bool)
    used[0] = True
    for _ in range(len(rows) - 1):
        distance = np.abs(rows - rows[order[-1]]).sum(axis=1)
        distance[used] = np.iinfo(np.int64).max
        order.append(int(np.argmin(distance)))  # first minimum: the lowest index
        used[order[-1]] = True
    return order


def expected_role_stream(tensors, names: list[str], reorder: bool) -> bytes:
    """Reference of one role stream: rows in chain order (if asked), then column by column."""
    out = bytearray()
    for name in names:
        rows = tensors[name].numpy()
        order = numpy_chain(tensors[name]) if reorder else list(range(len(rows)))
        out += rows[order].T.astype(np.int8).tobytes()
    return bytes(out)


def test_streams_are_role_groups_in_layer_order_reordered_and_transposed():
    tensors, meta = quantized("rtn int6 sdclip", tied=False)
    container = pack_tensor_container(tensors, {"quant": meta})
    streams = split_container_by_role(container)
    residual, residual_meta = unpack_tensor_container(streams[0])
    manifest = residual_meta["pergroup"]
    roles = [group["role"] for group in manifest["groups"]]
    assert roles == ["tok_emb", "c_k", "c_q", "c_v", "attn_proj", "fc", "mlp_proj", "lm_head"]
    layer_names = {"c_k": "attn.c_k", "c_q": "attn.c_q", "c_v": "attn.c_v", "attn_proj": "attn.proj",
                   "fc": "mlp.fc", "mlp_proj": "mlp.proj"}
    for role, stream, group in zip(roles, streams[1:], manifest["groups"]):
        names = ([f"{role}.weight.q"] if role in ("tok_emb", "lm_head") else
                 [f"blocks.{i}.{layer_names[role]}.weight.q" for i in sorted(LAYERS)])
        assert [entry[0] for entry in group["tensors"]] == names
        assert stream == expected_role_stream(tensors, names, reorder=role in ("tok_emb", "c_q", "fc", "lm_head")), role
    # everything else (scales, vectors, int8 gates) stays in the residual; permutations are uint16
    grouped = {entry[0] for group in manifest["groups"] for entry in group["tensors"]}
    assert {name for name in residual if not name.startswith(PERGROUP_PERM_PREFIX)} == set(tensors) - grouped
    assert "blocks.0.attn.attn_gate_w.q" in residual and "blocks.0.attn.c_q.weight.scale" in residual
    perm = residual[PERGROUP_PERM_PREFIX + "tok_emb.weight.q"]
    assert perm.dtype == torch.int16 and perm.numpy().view("uint16").tolist() == numpy_chain(tensors["tok_emb.weight.q"])
    assert PERGROUP_PERM_PREFIX + "blocks.0.attn.c_k.weight.q" not in residual  # c_k keeps its row order


@pytest.fixture
def small_blob():
    tensors, meta = quantized("rtn int6 sdclip", tied=True)
    blob = pack_quantized_tensors(tensors, meta, "pergroup", 2)
    assert len(unpack_pergroup_streams(blob[5:])) == 8  # residual + seven roles
    return blob


def test_truncated_blobs_are_rejected_with_a_clear_error(small_blob):
    for length in [0, 3, 5, 8, 9, 12, 20, len(small_blob) // 3, len(small_blob) // 2, len(small_blob) - 1]:
        with pytest.raises(ArtifactError, match="truncated|corrupt|damaged|not a"):
            decompress_model_bytes(small_blob[:length])


def test_flipped_bytes_anywhere_are_rejected(small_blob):
    positions = sorted(set(range(0, 40)) | set(range(40, len(small_blob), max(1, len(small_blob) // 150))))
    for position in positions:
        damaged = bytearray(small_blob)
        damaged[position] ^= 0x5A
        with pytest.raises(ArtifactError):
            decompress_model_bytes(bytes(damaged))


def test_frame_errors_name_the_problem(small_blob):
    streams = unpack_pergroup_streams(small_blob[5:])
    assert pack_pergroup_streams(streams) == small_blob[5:]
    with pytest.raises(ArtifactError, match="not a pergroup frame"):
        decompress_model_bytes(small_blob[:5] + b"XXXX" + small_blob[9:])
    frame = small_blob[5:]
    with pytest.raises(ArtifactError, match="streams add up"):  # count 1, but the table holds more lengths
        decompress_model_bytes(small_blob[:5] + frame[:5] + struct.pack("<I", 1) + frame[9:])
    with pytest.raises(ArtifactError, match="too short"):
        decompress_model_bytes(small_blob[:5] + frame[:5] + struct.pack("<I", 10**6) + frame[9:])
    assert numpy_chain(torch.tensor([[0, 0], [5, 5], [1, 1]], dtype=torch.int8)) == [0, 2, 1]
    swapped = small_blob[:5] + pack_pergroup_streams([streams[1], streams[0], *streams[2:]])
    with pytest.raises(ArtifactError):
        decompress_model_bytes(swapped)
    nested = small_blob[:5] + pack_pergroup_streams([small_blob, *streams[1:]])
    with pytest.raises(ArtifactError, match="damaged frame"):
        decompress_model_bytes(nested)
    missing_group = small_blob[:5] + pack_pergroup_streams(streams[:-1])
    with pytest.raises(ArtifactError, match="groups"):
        decompress_model_bytes(missing_group)


def test_pergroup_needs_a_tensor_container():
    with pytest.raises(ConfigError, match="tensor containers"):
        compress_model_bytes(b"plain bytes, not a container", "pergroup")
    with pytest.raises(ConfigError, match="pergroup"):
        compress_model_bytes(b"abc", "gzip")


def test_auto_keeps_pergroup_only_when_it_is_smaller(monkeypatch):
    monkeypatch.setattr("pgolf.artifact.compress.lrzip_available", lambda: False)  # as on a machine without lrzip
    tensors, meta = quantized("rtn int6 sdclip", tied=True)
    container = pack_tensor_container(tensors, {"quant": meta})
    plain = choose_smallest_compression(container, strides=(0, 2))[0]
    pergroup = compress_model_bytes(container, "pergroup", 2)
    chosen = auto_compress(container, 0)
    assert len(chosen) == min(len(plain), len(pergroup))
    assert describe_compressed_blob(chosen)[0] == ("pergroup" if len(pergroup) < len(plain) else
                                                   describe_compressed_blob(plain)[0])
    # a container with nothing to group: pergroup is not even tried
    lone = pack_tensor_container({"w": torch.zeros(4)}, {})
    assert auto_compress(lone, 0) == choose_smallest_compression(lone, strides=(0, 2))[0]


def test_fit_to_cap_with_pergroup_prunes_and_round_trips():
    state = model_state(tied=True)
    cfg = QuantConfig(matrix_bits=6, clip_method="sdclip", fit_to_cap=True)
    packing = ArtifactConfig(compressor="pergroup", byte_shuffle_stride=2)
    plain = build_model_artifact(state, cfg, packing)
    cap = 1_000 + len(plain.blob) - 40
    fitted = build_model_artifact(state, cfg, packing, code_bytes=1_000, cap=cap)
    assert fitted.prune is not None and fitted.prune.pruned > 0 and 1_000 + len(fitted.blob) <= cap
    assert fitted.prune.size_bytes == 1_000 + len(fitted.blob) and fitted.compressor == "pergroup"
    restored, _ = unpack_model_artifact(fitted.blob)
    assert set(restored) == set(state)


def test_malformed_manifest_is_an_artifact_error(small_blob):
    frames = unpack_pergroup_streams(small_blob[5:])
    tensors, meta = unpack_tensor_container(decompress_model_bytes(frames[0]))
    meta["pergroup"]["groups"][0]["tensors"][0] = ["tok_emb.weight.q", "x"]  # not [name, rows, cols, perm]
    residual = compress_model_bytes(pack_tensor_container(tensors, meta), "brotli", 2)
    with pytest.raises(ArtifactError, match="malformed"):
        decompress_model_bytes(small_blob[:5] + pack_pergroup_streams([residual, *frames[1:]]))
    meta["pergroup"]["sha256"] = "0" * 64
    del meta["pergroup"]["groups"][0]
    residual = compress_model_bytes(pack_tensor_container(tensors, meta), "brotli", 2)
    with pytest.raises(ArtifactError, match="groups"):
        decompress_model_bytes(small_blob[:5] + pack_pergroup_streams([residual, *frames[1:]]))


# ---- COMPRESSOR=pergroup_lrzip: role streams through the external lrzip program (TOP, SPEC 5.11).

# lrzip's header (magic, version 0.6, uint64 size), with an impossible minor version to tell the stand-in apart.
STAND_IN_MAGIC = b"LRZI\x00\xee"
STAND_IN_LRZIP = f"""#!{sys.executable}
# A stand-in for lrzip on machines without it: the same command line and header, zlib inside, calls logged.
import os, sys, zlib
args = sys.argv[1:]
with open(os.path.join(os.path.dirname(__file__), "calls.log"), "a") as log:
    log.write(" ".join(args[:-3]) + " LRZIP=" + os.environ.get("LRZIP", "") + "\\n")
out, source = args[args.index("-o") + 1], args[-1]
data = open(source, "rb").read()
if "-d" in args:
    if not data.startswith({STAND_IN_MAGIC!r}):
        sys.exit("not an lrzip file")
    try:
        data = zlib.decompress(data[14:])
    except zlib.error as error:
        sys.exit(str(error))
else:
    data = {STAND_IN_MAGIC!r} + len(data).to_bytes(8, "little") + zlib.compress(data, 9)
open(out, "wb").write(data)
"""


@pytest.fixture
def stand_in_lrzip(tmp_path, monkeypatch):
    """PATH holding only a fake ``lrzip`` (so the plumbing is tested where the real one is absent, as in CI)."""
    program = tmp_path / "lrzip"
    program.write_text(STAND_IN_LRZIP)
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


def lrzip_container():
    tensors, meta = quantized("gptq int6 +lqer asym", tied=True)
    return pack_tensor_container(tensors, {"quant": meta})


def test_pergroup_lrzip_sends_every_role_stream_through_the_program(stand_in_lrzip):
    container = lrzip_container()
    blob = compress_model_bytes(container, "pergroup_lrzip", 2)
    assert describe_compressed_blob(blob) == ("pergroup_lrzip", 2)
    frames = unpack_pergroup_streams(blob[5:])
    assert describe_compressed_blob(frames[0]) == ("brotli", 2)  # the residual, as in pergroup
    assert len(frames) == 8 and all(frame.startswith(STAND_IN_MAGIC) for frame in frames[1:])
    roles = split_container_by_role(container)[1:]
    assert [zlib.decompress(frame[14:]) for frame in frames[1:]] == roles
    assert [lrzip_declared_size(frame) for frame in frames[1:]] == [len(role) for role in roles]
    assert decompress_model_bytes(blob) == container
    calls = (stand_in_lrzip / "calls.log").read_text().splitlines()
    assert calls[:7] == [" ".join(LRZIP_COMPRESS_ARGS) + " -q -f LRZIP=NOCONFIG"] * 7  # -z -L 9, no lrzip.conf
    assert calls[7:] == ["-d -q -f LRZIP=NOCONFIG"] * 7
    assert "pergroup_lrzip" in available_model_compressor_names()


def test_pergroup_lrzip_damaged_stream_is_an_artifact_error(stand_in_lrzip):
    blob = compress_model_bytes(lrzip_container(), "pergroup_lrzip", 2)
    frames = unpack_pergroup_streams(blob[5:])
    damaged = bytearray(frames[3])
    damaged[len(damaged) // 2] ^= 0x5A
    with pytest.raises(ArtifactError, match="lrzip could not decompress"):
        decompress_model_bytes(blob[:5] + pack_pergroup_streams([*frames[:3], bytes(damaged), *frames[4:]]))
    # a stream that declares another size than the manifest's (a bomb, say) is refused before lrzip runs
    calls = (stand_in_lrzip / "calls.log").read_text()
    oversized = frames[3][:6] + (10**12).to_bytes(8, "little") + frames[3][14:]
    with pytest.raises(ArtifactError, match="declares 1000000000000 bytes where the manifest says"):
        decompress_model_bytes(blob[:5] + pack_pergroup_streams([*frames[:3], oversized, *frames[4:]]))
    assert (stand_in_lrzip / "calls.log").read_text().count("-d") == calls.count("-d") + 2  # streams 1 and 2 only


def test_pergroup_lrzip_without_the_program_is_a_clear_error(stand_in_lrzip, tmp_path_factory, monkeypatch):
    container = lrzip_container()
    blob = compress_model_bytes(container, "pergroup_lrzip", 2)
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("no_lrzip_here")))
    assert not lrzip_available() and "pergroup_lrzip" not in available_model_compressor_names()
    with pytest.raises(PgolfError, match="apt-get install lrzip") as raised:
        compress_model_bytes(container, "pergroup_lrzip", 2)
    assert "COMPRESSOR=pergroup_lrzip" in str(raised.value) and "'lrzip' package" in str(raised.value)
    with pytest.raises(PgolfError, match="decompressing this artifact .*apt-get install lrzip"):
        decompress_model_bytes(blob)
    # auto never needs it: without the program it chooses among the others only
    assert describe_compressed_blob(auto_compress(container, 2))[0] != "pergroup_lrzip"


def test_auto_tries_pergroup_lrzip_only_where_the_program_is(stand_in_lrzip, monkeypatch):
    container = lrzip_container()
    with_program = auto_compress(container, 2)
    candidates = [choose_smallest_compression(container, strides=(0, 2))[0],
                  compress_model_bytes(container, "pergroup", 2), compress_model_bytes(container, "pergroup_lrzip", 2)]
    assert with_program == min(candidates, key=len)  # ties keep the earlier
    monkeypatch.setattr("pgolf.artifact.compress.lrzip_available", lambda: False)
    assert auto_compress(container, 2) == min(candidates[:2], key=len)


needs_lrzip = pytest.mark.skipif(shutil.which("lrzip") is None, reason="the lrzip program is not installed "
                                 "(Debian/Ubuntu package lrzip)")


@needs_lrzip
def test_real_lrzip_round_trips_bit_exactly():
    container = lrzip_container()
    blob = compress_model_bytes(container, "pergroup_lrzip", 2)
    assert decompress_model_bytes(blob) == container
    assert blob == compress_model_bytes(container, "pergroup_lrzip", 2)  # deterministic
    restored, meta = unpack_model_artifact(blob)
    assert meta["compressor"] == "pergroup_lrzip" and set(restored) == set(model_state(tied=True))
    frames = unpack_pergroup_streams(blob[5:])
    roles = split_container_by_role(container)[1:]
    assert [lrzip_declared_size(frame) for frame in frames[1:]] == [len(role) for role in roles]  # lrzip's header
    damaged = bytearray(frames[1])
    damaged[-8] ^= 0x5A
    with pytest.raises(ArtifactError):
        decompress_model_bytes(blob[:5] + pack_pergroup_streams([frames[0], bytes(damaged), *frames[2:]]))
    assert os.environ.get("LRZIP") is None  # pgolf sets it for the child only


def test_a_run_asking_for_lrzip_on_a_machine_without_it_is_refused_before_training(monkeypatch, tmp_path):
    """The preflight in run.main: the missing program is named before any step, not after training."""
    monkeypatch.setattr("pgolf.artifact.compress.shutil.which", lambda name: None)
    with pytest.raises(PgolfError, match="apt-get install lrzip"):
        require_model_compressor("pergroup_lrzip")
    require_model_compressor("zlib")
    cfg = Config(artifact=ArtifactConfig(compressor="pergroup_lrzip"), run=RunConfig(runs_dir=str(tmp_path)))
    with pytest.raises(PgolfError, match="lrzip"):
        run_main(cfg, echo=False)
    assert not any(tmp_path.iterdir())  # no run directory was made
