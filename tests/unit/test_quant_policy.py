"""The quantisation policy table (SPEC 2.9, 4.10, 5.1, 5.5): first match wins, k per group, plan lines."""

import dataclasses

import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.quant.policy import (QUANT_PASSTHROUGH_MAX_NUMEL, QuantRule, QuantScheme, build_quant_policy,
                                describe_quant_plan, format_quant_plan, quant_clip_sigmas, resolve_quant_scheme)

BIG = (300, 256)  # 76,800 elements: above the passthrough limit


def state_dict_of_every_kind() -> dict[str, torch.Tensor]:
    return {
        "tok_emb.weight": torch.zeros(BIG),
        "blocks.0.attn.c_q.weight": torch.zeros(BIG),
        "blocks.0.attn.c_k.weight": torch.zeros(BIG),
        "blocks.10.attn.c_v.weight": torch.zeros(BIG),
        "blocks.0.attn.proj.weight": torch.zeros(BIG),
        "blocks.3.mlp.fc.weight": torch.zeros(BIG),
        "blocks.3.mlp.proj.weight": torch.zeros(BIG),
        "lm_head.weight": torch.zeros(BIG),
        "blocks.0.attn.attn_gate_w": torch.zeros(8, 12),
        "blocks.0.attn.attn_gate_bias": torch.zeros(8),
        "blocks.0.attn_scale": torch.zeros(256),
        "blocks.0.attn.q_gain": torch.zeros(8),
        "small_matrix": torch.zeros(64, 64),
        "bigram.table": torch.zeros(4, 130, 130),
        "step": torch.tensor(3),
        "big_ids": torch.zeros(100_000, dtype=torch.int32),
    }


# (name, kind, group, bits, clip, k) under the config of test_resolution_table.
EXPECTED = [
    ("tok_emb.weight", "int8_per_row", "embed", 7, "sdclip", 15.0),
    ("blocks.0.attn.c_q.weight", "int8_per_row", "attn", 6, "sdclip", 13.0),
    ("blocks.0.attn.c_k.weight", "int8_per_row", "attn", 6, "sdclip", 13.0),
    ("blocks.10.attn.c_v.weight", "int8_per_row", "attn", 6, "sdclip", 13.0),
    ("blocks.0.attn.proj.weight", "int8_per_row", "attn", 6, "sdclip", 13.0),
    ("blocks.3.mlp.fc.weight", "int8_per_row", "mlp", 6, "sdclip", 12.0),
    ("blocks.3.mlp.proj.weight", "int8_per_row", "mlp", 6, "sdclip", 12.0),
    ("lm_head.weight", "int8_per_row", "matrix", 6, "sdclip", 12.85),
    ("blocks.0.attn.attn_gate_w", "int8_per_row", "gate", 8, "absmax", None),
    ("blocks.0.attn.attn_gate_bias", "passthrough", "keep_fp32", None, None, None),
    ("blocks.0.attn_scale", "passthrough", "keep_fp32", None, None, None),
    ("blocks.0.attn.q_gain", "passthrough", "keep_fp32", None, None, None),
    ("small_matrix", "passthrough", "small", None, None, None),
    ("bigram.table", "int8_per_tensor", "tensor", 8, "percentile", None),
    ("step", "passthrough", "nonfloat", None, None, None),
    ("big_ids", "passthrough", "nonfloat", None, None, None),
]


def test_resolution_table():
    cfg = QuantConfig(matrix_bits=6, embed_bits=7, clip_method="sdclip", mlp_clip_sigmas=12.0,
                      attn_clip_sigmas=13.0, embed_clip_sigmas=15.0)
    plan = describe_quant_plan(state_dict_of_every_kind(), cfg)
    got = [(row["name"], row["scheme"], row["group"], row["bits"], row["clip"], row["k"]) for row in plan]
    assert got == EXPECTED
    stored = {row["name"]: row["stored"] for row in plan}
    assert stored["small_matrix"] == "float16" and stored["blocks.0.attn_scale"] == "float32"
    assert stored["big_ids"] == "int32" and stored["tok_emb.weight"] == "int8"


def test_defaults_route_like_the_baseline():
    plan = {row["name"]: row for row in describe_quant_plan(state_dict_of_every_kind(), QuantConfig())}
    for name in ("tok_emb.weight", "blocks.3.mlp.fc.weight", "lm_head.weight"):
        assert (plan[name]["scheme"], plan[name]["bits"], plan[name]["clip"]) == ("int8_per_row", 8, "percentile")
    assert plan["bigram.table"]["scheme"] == "int8_per_tensor"


def test_passthrough_limit_is_inclusive():
    rules = build_quant_policy(QuantConfig())
    at_limit = resolve_quant_scheme("w", torch.zeros(QUANT_PASSTHROUGH_MAX_NUMEL), rules)
    above = resolve_quant_scheme("w", torch.zeros(QUANT_PASSTHROUGH_MAX_NUMEL + 1), rules)
    assert at_limit.kind == "passthrough" and above.kind == "int8_per_tensor"


def test_keep_float_patterns_are_substrings_and_can_be_empty():
    cfg = dataclasses.replace(QuantConfig(), int8_keep_float_fp32_name_patterns=("q_gain",))
    rules = build_quant_policy(cfg)
    assert resolve_quant_scheme("blocks.0.attn.q_gain", torch.zeros(8), rules).store_dtype == "float32"
    assert resolve_quant_scheme("blocks.0.attn_scale", torch.zeros(8), rules).store_dtype == "float16"
    no_patterns = build_quant_policy(dataclasses.replace(QuantConfig(), int8_keep_float_fp32_name_patterns=()))
    assert resolve_quant_scheme("blocks.0.attn.q_gain", torch.zeros(8), no_patterns).store_dtype == "float16"


def test_group_names_need_the_block_path():
    rules = build_quant_policy(QuantConfig(clip_method="sdclip", mlp_clip_sigmas=11.5))
    assert resolve_quant_scheme("mlp.fc.weight", torch.zeros(BIG), rules).group == "matrix"
    assert resolve_quant_scheme("blocks.1.mlp.fc.weight_extra", torch.zeros(BIG), rules).group == "matrix"
    assert resolve_quant_scheme("blocks.1.mlp.fc.weight", torch.zeros(BIG), rules).k == 11.5


def test_zero_group_sigmas_fall_back_to_matrix():
    k = quant_clip_sigmas(QuantConfig(matrix_clip_sigmas=10.0))
    assert k == {"embed": 20.0, "attn": 10.0, "mlp": 10.0, "matrix": 10.0}


def test_first_match_wins_and_unmatched_raises():
    a = QuantRule("a", QuantScheme("passthrough", "a"), name_regex="w")
    b = QuantRule("b", QuantScheme("passthrough", "b"))
    assert resolve_quant_scheme("w", torch.zeros(2), [a, b]).group == "a"
    assert resolve_quant_scheme("v", torch.zeros(2), [a, b]).group == "b"
    with pytest.raises(ValueError, match="no quantisation rule"):
        resolve_quant_scheme("v", torch.zeros(2), [a])


def test_plan_lines():
    cfg = QuantConfig(matrix_bits=6, clip_method="sdclip")
    lines = format_quant_plan(describe_quant_plan({"blocks.0.mlp.fc.weight": torch.zeros(BIG), "s": torch.zeros(())}, cfg))
    assert lines == [
        "quant_plan: blocks.0.mlp.fc.weight 300x256 int8_per_row (mlp) stored:int8 bits:6 clip:sdclip k:12.85",
        "quant_plan: s scalar passthrough (small) stored:float16",
    ]
