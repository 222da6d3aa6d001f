"""The no-pickle tensor container: exact layout, bit-exact round trips, every corruption rejected."""

import hashlib
import json
import pickle
import struct

import pytest
import torch

from pgolf.artifact.container import (
    CONTAINER_DTYPES,
    TENSOR_CONTAINER_MAGIC,
    TENSOR_CONTAINER_VERSION,
    container_dtype_name,
    pack_tensor_container,
    unpack_tensor_container,
)
from pgolf.errors import ArtifactError

PREFIX_BYTES = 4 + 1 + 4 + 32


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality (NaN payloads included), which == cannot express."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.contiguous().reshape(-1).view(torch.uint8).tolist() == b.contiguous().reshape(-1).view(torch.uint8).tolist()


def sample_tensor(dtype: torch.dtype, shape: tuple, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=generator, dtype=torch.int64).to(dtype)


def craft_container(header_bytes: bytes, payload: bytes, *, magic=TENSOR_CONTAINER_MAGIC, version=1) -> bytes:
    """A container with a *valid* digest around arbitrary header/payload, to reach the semantic checks."""
    digest = hashlib.sha256(header_bytes + payload).digest()
    return struct.pack("<4sBI32s", magic, version, len(header_bytes), digest) + header_bytes + payload


def craft_from_header(header: dict, payload: bytes) -> bytes:
    return craft_container(json.dumps(header).encode("utf-8"), payload)


@pytest.mark.parametrize("dtype", list(CONTAINER_DTYPES.values()), ids=list(CONTAINER_DTYPES))
def test_every_dtype_round_trips_bit_exact_including_empty_and_0d(dtype):
    tensors = {
        "matrix": sample_tensor(dtype, (7, 5), seed=1),
        "scalar": sample_tensor(dtype, (), seed=2),
        "empty": sample_tensor(dtype, (0, 3), seed=3),
        "cube": sample_tensor(dtype, (2, 3, 4), seed=4),
    }
    restored, meta = unpack_tensor_container(pack_tensor_container(tensors, {"k": [1, "x"]}))
    assert meta == {"k": [1, "x"]}
    assert list(restored) == list(tensors)
    for name, tensor in tensors.items():
        assert same_bits(restored[name], tensor), name


def test_all_bf16_and_fp16_bit_patterns_survive():
    # Every 16-bit pattern: NaNs with payloads, both infinities, -0.0, subnormals.
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    tensors = {"bf16": patterns.view(torch.bfloat16), "fp16": patterns.view(torch.float16)}
    restored, _ = unpack_tensor_container(pack_tensor_container(tensors, {}))
    assert restored["bf16"].view(torch.int16).tolist() == patterns.tolist()
    assert restored["fp16"].view(torch.int16).tolist() == patterns.tolist()


def test_fp32_special_values_and_non_contiguous_input():
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 1e-45, 3.4e38])
    weird_nan = torch.tensor([0x7FC00123], dtype=torch.int32).view(torch.float32)
    transposed = torch.arange(12.0).reshape(3, 4).t()
    tensors = {"specials": specials, "nan_payload": weird_nan, "transposed": transposed}
    restored, _ = unpack_tensor_container(pack_tensor_container(tensors, {}))
    assert same_bits(restored["specials"], specials)
    assert restored["nan_payload"].view(torch.int32).item() == 0x7FC00123
    assert torch.equal(restored["transposed"], transposed.contiguous())


def test_layout_matches_the_documented_format():
    tensors = {"a": torch.tensor([1, 2], dtype=torch.int16), "b": torch.tensor(True)}
    blob = pack_tensor_container(tensors, {"note": "hi"})
    magic, version, header_length, digest = struct.unpack_from("<4sBI32s", blob)
    assert (magic, version) == (b"PGTC", TENSOR_CONTAINER_VERSION)
    header_bytes = blob[PREFIX_BYTES:PREFIX_BYTES + header_length]
    payload = blob[PREFIX_BYTES + header_length:]
    assert digest == hashlib.sha256(header_bytes + payload).digest()
    assert b", " not in header_bytes and b": " not in header_bytes  # compact JSON
    assert json.loads(header_bytes) == {
        "tensors": [
            {"name": "a", "dtype": "int16", "shape": [2], "offset": 0, "nbytes": 4},
            {"name": "b", "dtype": "bool", "shape": [], "offset": 4, "nbytes": 1},
        ],
        "meta": {"note": "hi"},
    }
    assert payload == b"\x01\x00\x02\x00\x01"  # little-endian int16 1, 2 then True


def test_every_truncation_is_rejected():
    blob = pack_tensor_container({"w": torch.arange(6, dtype=torch.float32)}, {"m": 1})
    for length in range(len(blob)):
        with pytest.raises(ArtifactError):
            unpack_tensor_container(blob[:length])


def test_every_flipped_byte_is_rejected():
    blob = pack_tensor_container({"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor([7])}, {"m": "x"})
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(ArtifactError):
            unpack_tensor_container(bytes(damaged))


def test_trailing_bytes_are_rejected():
    blob = pack_tensor_container({"w": torch.zeros(2)}, {})
    with pytest.raises(ArtifactError):
        unpack_tensor_container(blob + b"\x00")


def test_wrong_magic_and_version_explain_themselves():
    header = json.dumps({"tensors": [], "meta": {}}).encode()
    with pytest.raises(ArtifactError, match="not a pgolf tensor container"):
        unpack_tensor_container(craft_container(header, b"", magic=b"XXXX"))
    with pytest.raises(ArtifactError, match="version 9"):
        unpack_tensor_container(craft_container(header, b"", version=9))
    assert unpack_tensor_container(craft_container(header, b"")) == ({}, {})


def test_pickle_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    with pytest.raises(ArtifactError, match="pickle"):
        unpack_tensor_container(pickle.dumps(Payload()))
    assert not marker.exists()


@pytest.mark.parametrize(
    "header_bytes, message",
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"tensors": {}, "meta": {}}', "JSON object"),
        (b'{"tensors": [], "meta": []}', "JSON object"),
    ],
)
def test_malformed_headers_are_rejected(header_bytes, message):
    with pytest.raises(ArtifactError, match=message):
        unpack_tensor_container(craft_container(header_bytes, b""))


def entry(**overrides):
    base = {"name": "w", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "entries, payload, message",
    [
        ([entry(dtype="complex64")], bytes(8), "unknown dtype"),
        ([entry(shape=[-1])], bytes(8), "invalid shape"),
        ([entry(shape="2")], bytes(8), "invalid shape"),
        ([entry(shape=[True, 2])], bytes(8), "invalid shape"),
        ([entry(nbytes=4)], bytes(4), "does not match shape"),
        ([entry(offset=4)], bytes(12), "out of range"),
        ([entry()], bytes(4), "out of range"),
        ([entry(offset="0")], bytes(8), "integer"),
        ([{"dtype": "float32"}], bytes(8), "name"),
        ([entry(), entry(offset=8)], bytes(16), "twice"),
        ([entry(dtype="bool", shape=[2], nbytes=2)], b"\x01\x02", "bool"),
    ],
)
def test_inconsistent_entries_are_rejected(entries, payload, message):
    with pytest.raises(ArtifactError, match=message):
        unpack_tensor_container(craft_from_header({"tensors": entries, "meta": {}}, payload))


def test_packing_unsupported_dtype_or_bad_meta_fails_clearly():
    with pytest.raises(ArtifactError, match="complex64"):
        pack_tensor_container({"z": torch.zeros(2, dtype=torch.complex64)}, {})
    with pytest.raises(ArtifactError, match="JSON"):
        pack_tensor_container({}, {"bad": object()})
    with pytest.raises(ArtifactError, match="JSON"):
        pack_tensor_container({}, {"nan": float("nan")})
    with pytest.raises(ArtifactError, match="dict"):
        pack_tensor_container({}, ["not", "a", "dict"])
    assert container_dtype_name(torch.bfloat16) == "bfloat16"
