"""Named presets: plain functions that return a :class:`~pgolf.config.Config`.

Presets derive from one another with ``dataclasses.replace`` so each one states only what it changes.
``PRESETS`` is the explicit table the command line resolves names through.
"""

from dataclasses import replace
from typing import Callable

from pgolf.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig
from pgolf.errors import ConfigError


def baseline_sp1024() -> Config:
    """The challenge's naive baseline (SPEC 2.1): 9x512, sp1024, int8 + zlib, 600 s on 8xH100."""
    return Config(
        data=DataConfig(
            data_path="./data/datasets/fineweb10B_sp1024",
            tokenizer_path="./data/tokenizers/fineweb_1024_bpe.model",
        ),
        train=TrainConfig(compile=True),
    )


def tiny_cpu() -> Config:
    """A few-minute run on a 2-core CPU over the embedded default data (Python's own documentation).

    Same architecture family and optimizers as the baseline, shrunk: 4 layers of width 128, sequences
    of 256, a 2-minute training budget. It exists to check the whole pipeline, not to set records.
    """
    base = baseline_sp1024()
    return replace(
        base,
        data=DataConfig(),
        model=replace(base.model, num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2),
        train=replace(
            base.train,
            train_batch_tokens=16_384,
            train_seq_len=256,
            max_wallclock_seconds=120.0,
            warmdown_frac=0.3,
            warmup_steps=0,
            train_log_every=10,
            val_loss_every=0,
            compile=False,
        ),
        eval=EvalConfig(val_batch_size=32_768),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny_cpu": tiny_cpu,
    "baseline_sp1024": baseline_sp1024,
}

DEFAULT_PRESET = "tiny_cpu"


def preset_config(name: str) -> Config:
    """The preset called ``name``; an unknown name is an error listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]()
