"""Every choice list has one source: the config field's ``Literal[...]``.

The module that owns a choice resolves its names through a table (ACTIVATIONS, COMPRESSORS, ...). The
config cannot import those modules (it is the bottom layer), so this test holds the two together: each
table resolves exactly the declared names, and every choice field is accounted for here. It also checks
the config rules that restate a model constant (the 12-channel gate windows).
"""

import pytest
import torch

from pgolf.artifact.compress import (AUTO_COMPRESSOR, COMPRESSOR_IDS, COMPRESSORS, PERGROUP_COMPRESSOR,
                                     PERGROUP_LRZIP_COMPRESSOR)
from pgolf.config import TTT_LORA_TARGET_NAMES, Config, ModelConfig, config_field_choices, validate_config
from pgolf.data.run_data import TRAIN_LOADERS
from pgolf.errors import ConfigError
from pgolf.eval.ttt_lora import LORA_BRANCH_TARGETS, LORA_HEAD_TARGET, attach_lora_adapters
from pgolf.model.attention import ATTENTION_BACKENDS, SDPA_BACKENDS
from pgolf.model.block import ACTIVATIONS
from pgolf.model.gpt import GPT
from pgolf.model.features.attn_gate import ATTN_GATE_VARIANTS, ATTN_GATE_WINDOW
from pgolf.model.features.smear_gate import SMEAR_GATE_WINDOW
from pgolf.model.kernels.fused_mlp import MLP_ACTIVATION_NEGATIVE_SLOPES
from pgolf.optim.muon import NEWTON_SCHULZ_SCHEDULES
from pgolf.quant.qat import QAT_CLIP_METHODS
from pgolf.runtime import AUTOCAST_DTYPES

# Flat field name -> the names its owning code resolves (a table's keys, plus names handled beside it).
RESOLVED_NAMES = {
    "activation": set(ACTIVATIONS),
    # CausalSelfAttention.attend: "fa3", "eager", the SDPA kernels; "auto" resolves to one of them.
    "attention_backend": {"auto", "fa3", "eager", *SDPA_BACKENDS},
    "attn_out_gate": {"none", *ATTN_GATE_VARIANTS},
    "muon_ns_coefficients": set(NEWTON_SCHULZ_SCHEDULES),
    "train_loader": set(TRAIN_LOADERS),
    "autocast_dtype": {"auto", *AUTOCAST_DTYPES},
    "compressor": {*COMPRESSORS, AUTO_COMPRESSOR, PERGROUP_COMPRESSOR, PERGROUP_LRZIP_COMPRESSOR},
}
# Choices the code decides with an ``if`` on their names, not through a table (BYTE_SIDECARS: plain tests
# the exporter can fold, in pgolf/data/run_data.py validation_target_bytes).
BRANCHED_IN_CODE = {"parallel_residual_mode", "ttt_mode", "quant_method", "clip_method", "byte_sidecars"}


def test_every_choice_field_is_accounted_for():
    assert set(config_field_choices()) == set(RESOLVED_NAMES) | BRANCHED_IN_CODE


@pytest.mark.parametrize("name", sorted(RESOLVED_NAMES))
def test_each_table_resolves_exactly_the_declared_choices(name):
    assert RESOLVED_NAMES[name] == set(config_field_choices()[name])


def test_the_other_tables_keyed_by_a_choice_agree():
    choices = config_field_choices()
    assert set(MLP_ACTIVATION_NEGATIVE_SLOPES) == set(choices["activation"])  # the fused MLP kernel
    assert set(COMPRESSOR_IDS) == set(choices["compressor"]) - {AUTO_COMPRESSOR}  # every stored kind has an id
    assert set(choices["clip_method"]) <= set(QAT_CLIP_METHODS)  # QAT fake-quantizes every configurable clip
    assert ATTENTION_BACKENDS == choices["attention_backend"]  # derived, not re-listed


def narrow_model(**changes) -> Config:
    return Config(model=ModelConfig(model_dim=ATTN_GATE_WINDOW - 4, num_heads=2, num_kv_heads=1, **changes))


@pytest.mark.parametrize("variant", sorted(ATTN_GATE_VARIANTS))
def test_the_config_rejects_narrow_models_for_exactly_the_windowed_gates(variant):
    if ATTN_GATE_VARIANTS[variant].windowed:
        with pytest.raises(ConfigError, match="ATTN_OUT_GATE"):
            validate_config(narrow_model(attn_out_gate=variant))
    else:
        validate_config(narrow_model(attn_out_gate=variant))
    validate_config(Config(model=ModelConfig(model_dim=ATTN_GATE_WINDOW, num_heads=2, num_kv_heads=1,
                                             attn_out_gate=variant)))


def test_the_config_rejects_models_narrower_than_the_smear_gate_window():
    with pytest.raises(ConfigError, match="SMEAR_GATE_ENABLED"):
        validate_config(narrow_model(smear_gate_enabled=True))
    validate_config(Config(model=ModelConfig(model_dim=SMEAR_GATE_WINDOW, num_heads=2, num_kv_heads=1,
                                             smear_gate_enabled=True)))


def lora_target_names_the_evaluator_resolves() -> set[str]:
    """What pgolf/eval/ttt_lora.py attaches adapters to: a linear inside the blocks by its name or its
    branch-qualified name (it matches name suffixes), plus its branch and head targets."""
    model = GPT(ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    names = set()
    for name, module in model.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            parts = name.split(".")[2:]  # blocks.<i>.attn.c_q -> attn, c_q
            names.update({parts[-1], ".".join(parts[-2:])})
    return names | set(LORA_BRANCH_TARGETS) | {LORA_HEAD_TARGET}


def test_the_ttt_lora_target_names_are_what_the_evaluator_resolves():
    assert set(TTT_LORA_TARGET_NAMES) == lora_target_names_the_evaluator_resolves()
    for name in TTT_LORA_TARGET_NAMES:  # each declared name attaches at least one adapter
        model = GPT(ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
        assert attach_lora_adapters(model, (name,), rank=2, alpha=4.0)

