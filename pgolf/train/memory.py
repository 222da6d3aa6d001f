"""How much memory training a model needs, estimated before anything is allocated.

The parameters are counted on PyTorch's ``meta`` device (shapes only, no storage), so even a model far
too large for the machine is measured in milliseconds. The estimate is a floor: fp32 weights, fp32
gradients and the optimizers' state (Adam keeps two tensors per parameter, Muon one: two is counted),
plus the EMA copy when it is on. Activations come on top, so a model over this floor cannot train here.
"""

import os

import torch

from pgolf.config import Config, ModelConfig
from pgolf.errors import ConfigError
from pgolf.model.gpt import GPT, count_parameters

# fp32 weight + fp32 gradient + two fp32 optimizer state tensors.
TRAINING_BYTES_PER_PARAMETER = 4 * (1 + 1 + 2)
EMA_BYTES_PER_PARAMETER = 4
GIB = 1 << 30


def count_parameters_without_allocating(model_cfg: ModelConfig) -> int:
    """The parameter count of ``GPT(model_cfg)``, built on the meta device (no memory for the weights)."""
    with torch.device("meta"):
        return count_parameters(GPT(model_cfg))


def training_memory_bytes(cfg: Config, params: int) -> int:
    """The floor of what training ``params`` parameters holds in memory (see the module docstring)."""
    per_parameter = TRAINING_BYTES_PER_PARAMETER + (EMA_BYTES_PER_PARAMETER if cfg.train.ema_decay > 0 else 0)
    return params * per_parameter


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: the GPU's free bytes, or the host's available RAM; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def format_memory_bytes(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB else f"{count / (1 << 20):.1f} MiB"


def describe_training_memory(cfg: Config, params: int) -> str:
    return (f"{params:,} parameters: training holds at least {format_memory_bytes(training_memory_bytes(cfg, params))} "
            "(fp32 weights, gradients, optimizer state" + (", EMA" if cfg.train.ema_decay > 0 else "") + ")")


def check_training_fits_memory(cfg: Config, device: torch.device) -> None:
    """ConfigError with the estimate when training ``cfg``'s model cannot fit in ``device``'s free memory."""
    params = count_parameters_without_allocating(cfg.model)
    available = available_memory_bytes(device)
    if available is not None and training_memory_bytes(cfg, params) > available:
        raise ConfigError(f"the model is too large for this machine: {describe_training_memory(cfg, params)}, but "
                          f"only {format_memory_bytes(available)} is free on {device}. Make it smaller (NUM_LAYERS, "
                          "MODEL_DIM, MLP_MULT, VOCAB_SIZE) or use a device with more memory.")
