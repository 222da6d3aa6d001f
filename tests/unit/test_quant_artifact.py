"""quantize_for_artifact / dequantize_from_artifact: every kind of tensor, every method, container round trip."""

import dataclasses
import json

import pytest
import torch

from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError, ConfigError
from pgolf.quant.artifact_quant import dequantize_from_artifact, format_quantized_weights, quantize_for_artifact
from pgolf.quant.rtn import quantize_state_dict_int8

D = 256


def randn(shape, seed, std=0.05, dtype=torch.float32):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def every_kind() -> dict[str, torch.Tensor]:
    return {
        "tok_emb.weight": randn((400, D), 0, std=0.5, dtype=torch.bfloat16),
        "blocks.0.attn.c_q.weight": randn((260, D), 1),
        "blocks.0.attn.proj.weight": torch.zeros(260, D),  # zero-initialised output projection
        "blocks.0.mlp.fc.weight": randn((300, D), 2),
        "blocks.0.mlp.proj.weight": randn((D, 300), 3),
        "blocks.0.attn.attn_gate_w": randn((8, 12), 4, std=0.3),
        "blocks.0.attn_scale": randn((D,), 5),
        "blocks.0.resid_mix": randn((2, D), 6, dtype=torch.bfloat16),
        "skip_weights": randn((4, D), 7),
        "table": randn((2, 200, 200), 8),
        "step": torch.tensor(11, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
    }


CONFIGS = {
    "baseline": QuantConfig(),
    "int6_sdclip_lqer": QuantConfig(matrix_bits=6, embed_bits=7, clip_method="sdclip", embed_clip_sigmas=15.0,
                                    mlp_clip_sigmas=12.0, lqer_enabled=True, lqer_top_k=2),
    "int5_sym_lqer": QuantConfig(matrix_bits=5, clip_method="sdclip", lqer_enabled=True, lqer_asym=False),
}


def test_defaults_store_exactly_what_the_baseline_stores():
    state = {k: v for k, v in every_kind().items() if "attn_gate" not in k}  # the baseline has no gates
    tensors, meta = quantize_for_artifact(state, QuantConfig())
    expected, _ = quantize_state_dict_int8(state, QuantConfig().int8_keep_float_fp32_name_patterns)
    assert list(tensors) == list(expected)
    for key, value in expected.items():
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value), key
    assert all(entry.get("method", "rtn") == "rtn" for entry in meta["entries"].values())


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_round_trip_through_the_container(config_name):
    state = every_kind()
    tensors, meta = quantize_for_artifact(state, CONFIGS[config_name])
    blob = pack_tensor_container(tensors, {"quant": meta})
    loaded, container_meta = unpack_tensor_container(blob)
    assert json.loads(json.dumps(meta)) == container_meta["quant"]
    restored = dequantize_from_artifact(loaded, container_meta["quant"])
    assert list(restored) == list(state)
    for name, original in state.items():
        assert restored[name].dtype == original.dtype and restored[name].shape == original.shape, name
        if not original.is_floating_point():
            assert torch.equal(restored[name], original)
        else:
            relative = torch.linalg.norm((restored[name] - original).float()) / max(torch.linalg.norm(original.float()), 1e-9)
            assert relative < 0.25, (name, float(relative))
    assert torch.equal(restored["blocks.0.attn_scale"], state["blocks.0.attn_scale"])  # kept fp32
    assert not restored["blocks.0.attn.proj.weight"].any()  # zeros stay zeros (no 0/0 scales)


def test_sdclip_entries_and_half_step_bound():
    cfg = CONFIGS["int6_sdclip_lqer"]
    state = every_kind()
    tensors, meta = quantize_for_artifact(state, dataclasses.replace(cfg, lqer_enabled=False))
    entry = meta["entries"]["blocks.0.mlp.fc.weight"]
    assert entry == {"scheme": "int8_per_row", "dtype": "float32", "group": "mlp", "bits": 6, "clip": "sdclip",
                     "method": "rtn", "k": 12.0}
    assert meta["entries"]["tok_emb.weight"]["bits"] == 7 and meta["entries"]["tok_emb.weight"]["k"] == 15.0
    w = state["blocks.0.mlp.fc.weight"].double()
    scale = (12.0 * w.std(dim=1) / 31).to(torch.float16).double()[:, None]
    assert torch.equal(tensors["blocks.0.mlp.fc.weight.scale"].double()[:, None], scale)
    restored = dequantize_from_artifact(tensors, meta)["blocks.0.mlp.fc.weight"].double()
    inside = w.abs() <= 31 * scale
    assert bool(((w - restored).abs()[inside] <= (scale / 2 * 1.000001).expand_as(w)[inside]).all())


def correlated_hessian(columns, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1500, columns // 8, generator=g) @ torch.randn(columns // 8, columns, generator=g)
    x = x + 0.05 * torch.randn(1500, columns, generator=g)
    return x, x.T @ x / 3


def test_gptq_path_uses_hessians_and_beats_rtn_on_the_layer_output():
    state = every_kind()
    x, hessian = correlated_hessian(D, 9)
    cfg = QuantConfig(quant_method="gptq", matrix_bits=5, clip_method="sdclip")
    tensors, meta = quantize_for_artifact(state, cfg, hessians={"blocks.0.mlp.fc.weight": hessian})
    assert meta["method"] == "gptq"
    assert meta["entries"]["blocks.0.mlp.fc.weight"]["method"] == "gptq"
    assert meta["entries"]["blocks.0.attn.c_q.weight"]["method"] == "rtn"  # no Hessian: round to nearest
    rtn_tensors, rtn_meta = quantize_for_artifact(state, dataclasses.replace(cfg, quant_method="rtn"))
    assert torch.equal(tensors["blocks.0.mlp.fc.weight.scale"], rtn_tensors["blocks.0.mlp.fc.weight.scale"])
    w = state["blocks.0.mlp.fc.weight"]
    gptq_w = dequantize_from_artifact(tensors, meta)["blocks.0.mlp.fc.weight"]
    rtn_w = dequantize_from_artifact(rtn_tensors, rtn_meta)["blocks.0.mlp.fc.weight"]
    assert torch.linalg.norm(x @ (w - gptq_w).T) < 0.8 * torch.linalg.norm(x @ (w - rtn_w).T)


def test_gptq_without_hessians_is_a_config_error():
    with pytest.raises(ConfigError, match="collect_hessians"):
        quantize_for_artifact(every_kind(), QuantConfig(quant_method="gptq"))


def test_reads_the_older_rtn_format():
    state = every_kind()
    tensors, meta = quantize_state_dict_int8(state, QuantConfig().int8_keep_float_fp32_name_patterns)
    restored = dequantize_from_artifact(tensors, meta)
    assert list(restored) == list(state)


def test_corrupt_inputs_fail_clearly():
    tensors, meta = quantize_for_artifact(every_kind(), CONFIGS["int6_sdclip_lqer"])
    bad = dict(tensors)
    bad["blocks.0.mlp.fc.weight.q"] = bad["blocks.0.mlp.fc.weight.q"].clone()
    bad["blocks.0.mlp.fc.weight.q"][0, 0] = -128  # outside int6
    with pytest.raises(ArtifactError, match="6-bit range"):
        dequantize_from_artifact(bad, meta)
    corrected = next(name for name, entry in meta["entries"].items() if "lqer" in entry)
    missing = {k: v for k, v in tensors.items() if k != corrected + ".lqer_b"}
    with pytest.raises(ArtifactError, match="lqer_b"):
        dequantize_from_artifact(missing, meta)
    with pytest.raises(ArtifactError, match="format"):
        dequantize_from_artifact(tensors, {"format": "something_else", "entries": {}})
    with pytest.raises(ArtifactError, match="collides"):
        quantize_for_artifact({"w": randn((300, D), 1), "w.q": randn((3,), 2)}, QuantConfig())
    nan = randn((300, D), 1)
    nan[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        quantize_for_artifact({"w": nan}, QuantConfig())


def test_quantized_weights_summary_lines():
    _, meta = quantize_for_artifact(every_kind(), CONFIGS["int6_sdclip_lqer"])
    lines = format_quantized_weights(meta)
    assert lines[0] == "Quantized weights:"
    assert any(line.startswith("  rtn (int6, sdclip k=12 ") and "blocks.mlp.fc.weight" in line for line in lines)
    assert any("rtn (int8, absmax): blocks.attn.attn_gate_w" in line for line in lines)
