import dataclasses
import json
from pathlib import Path

import pytest

from pgolf.commands.configuration import machine_settings, resolve_config
from pgolf.config import (Config, ModelConfig, apply_config_overrides, config_differences, config_field_index,
                          config_from_dict, config_to_json, environment_overrides, parse_cli_overrides,
                          validate_config)
from pgolf.errors import ConfigError
from pgolf.presets import PRESETS, baseline_sp1024, preset_config
from pgolf.train.resume import resume_config_conflicts, resume_mode, resume_run_config


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
    assert cfg.artifact.compressor == "lzma"
    assert cfg.model.control_tensor_name_patterns == ("a", "b")


def test_malformed_command_line_item():
    with pytest.raises(ConfigError, match="KEY=value"):
        parse_cli_overrides(["NUM_LAYERS"])


@pytest.mark.parametrize("overrides,fragment", [
    ({"MODEL_DIM": "500"}, "divisible by NUM_HEADS"),
    ({"NUM_KV_HEADS": "3"}, "multiple of NUM_KV_HEADS"),
    ({"LOGIT_SOFTCAP": "0"}, "LOGIT_SOFTCAP"),
    ({"TRAIN_BATCH_TOKENS": "1000"}, "TRAIN_SEQ_LEN"),
    ({"WARMDOWN_FRAC": "1.5"}, "WARMDOWN_FRAC"),
    # rules the model's constructors assert rather than restate
    ({"ROPE_DIMS": "2", "ROPE_TRAIN_SEQ_LEN": "16"}, "ROPE_DIMS"),
    ({"ROPE_DIMS": "6", "MODEL_DIM": "32", "NUM_HEADS": "8", "NUM_KV_HEADS": "4"}, "ROPE_DIMS"),
    ({"MODEL_DIM": "8", "NUM_HEADS": "2", "NUM_KV_HEADS": "1", "ATTN_OUT_GATE": "sparse"}, "ATTN_OUT_GATE"),
    ({"MODEL_DIM": "8", "NUM_HEADS": "2", "NUM_KV_HEADS": "1", "SMEAR_GATE_ENABLED": "1"}, "SMEAR_GATE_ENABLED"),
    ({"BYTE_SHUFFLE_STRIDE": "256"}, "BYTE_SHUFFLE_STRIDE"),
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


def test_an_empty_tuple_value_can_be_written_as_nothing_or_as_parentheses():
    from pgolf.config import apply_config_overrides
    from pgolf.presets import tiny_cpu

    for text in ("", "()", " () "):
        cfg = apply_config_overrides(tiny_cpu(), {"INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": text}, source="test")
        assert cfg.quant.int8_keep_float_fp32_name_patterns == ()


def test_a_choice_outside_its_literal_is_rejected_even_when_built_in_python():
    cfg = dataclasses.replace(Config(), model=ModelConfig(activation="gelu", attention_backend="flash"))
    with pytest.raises(ConfigError, match="ACTIVATION='gelu' is not one of relu2, leaky_relu2") as error:
        validate_config(cfg)
    assert "ATTENTION_BACKEND='flash'" in str(error.value)


def test_compression_settings_live_in_the_artifact_section():
    cfg = apply_config_overrides(Config(), {"COMPRESSOR": "brotli", "BYTE_SHUFFLE_STRIDE": "2"}, source="test")
    assert (cfg.artifact.compressor, cfg.artifact.byte_shuffle_stride) == ("brotli", 2)
    assert not hasattr(cfg.quant, "compressor") and not hasattr(cfg.quant, "byte_shuffle_stride")


def test_a_config_json_from_before_the_artifact_section_still_loads():
    sections = json.loads(config_to_json(Config()))
    del sections["artifact"], sections["run"]["pgolf_device"], sections["run"]["pgolf_cache_dir"]
    sections["quant"].update(compressor="lzma", byte_shuffle_stride=2)  # where older pgolf wrote them
    cfg = config_from_dict(sections)
    assert (cfg.artifact.compressor, cfg.artifact.byte_shuffle_stride) == ("lzma", 2)
    assert cfg.run.pgolf_device == "" and cfg.run.pgolf_cache_dir == ""  # missing leaves keep their defaults


def test_pgolf_machine_settings_keep_their_environment_names():
    env = {"PGOLF_DEVICE": "cpu", "PGOLF_AUTO_RESUME": "1", "PGOLF_CACHE_DIR": "/cache",
           "DEVICE": "cuda", "AUTO_RESUME": "1", "CACHE_DIR": "/elsewhere"}  # generic names are not config keys
    assert set(environment_overrides(env)) == {"PGOLF_DEVICE", "PGOLF_AUTO_RESUME", "PGOLF_CACHE_DIR"}
    cfg = apply_config_overrides(Config(), environment_overrides(env), source="environment")
    assert (cfg.run.pgolf_device, cfg.run.pgolf_auto_resume, cfg.run.pgolf_cache_dir) == ("cpu", True, "/cache")
    assert Config().run.pgolf_device == "" and Config().run.pgolf_auto_resume is False


def test_a_resumed_run_takes_the_machine_settings_from_this_machine(tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    saved = apply_config_overrides(Config(), {"PGOLF_DEVICE": "cuda:3", "NUM_LAYERS": "3"}, source="test")
    (run_dir / "config.json").write_text(config_to_json(saved))
    machine = machine_settings({"PGOLF_DEVICE": "cpu", "NUM_LAYERS": "5"})  # what the CLI reads off the machine
    assert machine == {"PGOLF_DEVICE": "cpu"}
    cfg, _ = resume_run_config(run_dir, {}, machine)
    assert (cfg.run.pgolf_device, cfg.model.num_layers) == ("cpu", 3)  # the run's maths stays the run's
    assert resume_config_conflicts(json.loads(config_to_json(saved)), cfg) == []
    assert (resume_mode(False, True), resume_mode(False, False), resume_mode(True, False)) == (
        "auto", "never", "required")


def test_resume_dot_from_inside_the_run_names_the_run(tmp_path, monkeypatch):
    """`cd runs/r1 && pgolf train --resume .` took RUN_ID '' and RUNS_DIR '' ("run directory None")."""
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config_to_json(Config()))
    monkeypatch.chdir(run_dir)
    cfg, _ = resume_run_config(Path("."), {})
    assert (cfg.run.run_id, Path(cfg.run.runs_dir)) == ("r1", tmp_path.resolve())


def test_two_lane_mode_without_a_start_layer_is_refused():
    """PARALLEL_RESIDUAL_MODE=two_lane with the start at -1 (off) would silently train a plain model."""
    with pytest.raises(ConfigError, match="PARALLEL_RESIDUAL_MODE=two_lane does nothing"):
        validate_config(Config(model=ModelConfig(parallel_residual_mode="two_lane")))
    validate_config(Config(model=ModelConfig(parallel_residual_mode="two_lane", parallel_residual_start=5)))
