import dataclasses
import json

import pytest

from pgolf.cli import resolve_config
from pgolf.config import (Config, apply_config_overrides, config_differences, config_field_index, config_from_dict,
                          config_to_json, parse_cli_overrides, validate_config)
from pgolf.errors import ConfigError
from pgolf.presets import PRESETS, baseline_sp1024, preset_config


def test_leaf_names_are_unique_and_flat_names_resolve():
    index = config_field_index()
    assert {"num_layers", "matrix_lr", "seed", "run_id", "data_path", "tokenizer_path",
            "max_wallclock_seconds"} <= set(index)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    validate_config(preset_config(name))


def test_precedence_defaults_preset_environment_command_line():
    env = {"NUM_LAYERS": "6", "MATRIX_LR": "0.02", "UNRELATED_VAR": "x"}
    cfg, preset, name = resolve_config("baseline_sp1024", ["num_layers=7"], environ=env)
    assert name == "baseline_sp1024"
    assert cfg.model.num_layers == 7  # command line beats environment
    assert cfg.optim.matrix_lr == 0.02  # environment beats preset
    assert cfg.model.model_dim == 512  # preset value kept
    assert preset.model.num_layers == 9
    assert config_differences(cfg, preset) == {"num_layers": (9, 7), "matrix_lr": (0.04, 0.02)}


def test_preset_name_from_environment():
    cfg, _, name = resolve_config(None, [], environ={"PGOLF_PRESET": "baseline_sp1024"})
    assert name == "baseline_sp1024" and cfg.model.num_layers == 9


def test_unknown_key_names_closest_matches():
    with pytest.raises(ConfigError, match="NUM_LAYERS"):
        apply_config_overrides(Config(), {"NUM_LAYER": "3"}, source="command line")


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="tiny_cpu"):
        preset_config("tiny_gpu")


@pytest.mark.parametrize("key,value", [("NUM_LAYERS", "six"), ("MATRIX_LR", "fast"), ("TIE_EMBEDDINGS", "maybe"),
                                       ("COMPRESSOR", "rar"), ("SEED", "1.5")])
def test_wrong_type_is_a_clear_error(key, value):
    with pytest.raises(ConfigError, match=key):
        apply_config_overrides(Config(), {key: value}, source="command line")


def test_values_are_coerced_from_annotations():
    cfg = apply_config_overrides(Config(), {"TIE_EMBEDDINGS": "0", "TRAIN_BATCH_TOKENS": "524_288",
                                            "LOGIT_SOFTCAP": "15", "COMPRESSOR": "lzma",
                                            "CONTROL_TENSOR_NAME_PATTERNS": "a, b"}, source="test")
    assert cfg.model.tie_embeddings is False
    assert cfg.train.train_batch_tokens == 524288
    assert cfg.model.logit_softcap == 15.0 and isinstance(cfg.model.logit_softcap, float)
    assert cfg.quant.compressor == "lzma"
    assert cfg.model.control_tensor_name_patterns == ("a", "b")


def test_malformed_command_line_item():
    with pytest.raises(ConfigError, match="KEY=value"):
        parse_cli_overrides(["NUM_LAYERS"])


@pytest.mark.parametrize("overrides,fragment", [
    ({"MODEL_DIM": "500"}, "divisible by NUM_HEADS"),
    ({"NUM_KV_HEADS": "3"}, "multiple of NUM_KV_HEADS"),
    ({"LOGIT_SOFTCAP": "0"}, "LOGIT_SOFTCAP"),
    ({"TRAIN_BATCH_TOKENS": "1000"}, "multiple of TRAIN_SEQ_LEN"),
    ({"WARMDOWN_FRAC": "1.5"}, "WARMDOWN_FRAC"),
])
def test_inconsistent_values_rejected(overrides, fragment):
    cfg = apply_config_overrides(baseline_sp1024(), overrides, source="test")
    with pytest.raises(ConfigError, match=fragment):
        validate_config(cfg)


def test_json_round_trip():
    cfg = apply_config_overrides(baseline_sp1024(), {"NUM_LAYERS": "3", "COMPRESSOR": "zstd"}, source="test")
    rebuilt = config_from_dict(json.loads(config_to_json(cfg)))
    assert rebuilt == cfg


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().model.num_layers = 3


def test_preset_can_be_named_among_the_overrides():
    cfg, _, name = resolve_config(None, ["preset=seq4096", "SEED=3"], environ={})
    assert name == "seq4096" and cfg.train.train_seq_len == 4096 and cfg.train.seed == 3
    with pytest.raises(ConfigError, match="two presets"):
        resolve_config("tiny_cpu", ["PRESET=seq4096"], environ={})


def test_one_gpu_presets_keep_the_step_and_stretch_the_clock():
    for name in ("baseline_sp1024", "record_sp8192"):
        eight, one = preset_config(name), preset_config(f"{name}_1gpu")
        assert one.train.max_wallclock_seconds == 8 * eight.train.max_wallclock_seconds
        assert one.train.gptq_reserve_seconds == 8 * eight.train.gptq_reserve_seconds
        assert config_differences(one, eight).keys() <= {"max_wallclock_seconds", "gptq_reserve_seconds"}


def test_an_empty_tuple_value_can_be_written_as_nothing_or_as_parentheses():
    from pgolf.config import apply_config_overrides
    from pgolf.presets import tiny_cpu

    for text in ("", "()", " () "):
        cfg = apply_config_overrides(tiny_cpu(), {"INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": text}, source="test")
        assert cfg.quant.int8_keep_float_fp32_name_patterns == ()
