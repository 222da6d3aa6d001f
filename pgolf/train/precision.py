"""Mixed precision for training and evaluation: which autocast dtype, and loss scaling for fp16.

``AUTOCAST_DTYPE`` (CUDA only; the CPU always runs plain fp32):

* ``auto``: bf16 where the GPU computes it natively (compute capability 8.0+: A100, H100, L4 ...),
  else fp16 (T4, V100);
* ``bf16`` / ``fp16``: forced; bf16 on a GPU without it is a configuration error.

fp16 has a narrow exponent range: small gradients underflow to zero unless the loss is scaled up
before backward and the gradients scaled back down before the optimizer step. ``build_loss_scaler``
returns ``torch.amp.GradScaler`` for fp16 and a do-nothing object with the same methods otherwise,
so the training loop has one code path:

    scaler.scale(loss).backward()
    scaler.unscale_(opt)        # for each optimizer, before gradient clipping
    scaler.step(opt)            # for each optimizer; skipped when a gradient is inf/NaN
    scaler.update()
"""

from contextlib import nullcontext

import torch

from pgolf.config import TrainConfig
from pgolf.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# The CUDA autocast dtype of this process: bf16 unless the run chose fp16 (AUTOCAST_DTYPE; GPUs without
# bf16 such as the T4). Set once per process from the config (``pgolf.run.configure_precision``) so that
# training, evaluation, calibration and TTT all compute in the same precision.
CUDA_AUTOCAST_DTYPE = {"dtype": torch.bfloat16}


def set_cuda_autocast_dtype(dtype: torch.dtype) -> None:
    CUDA_AUTOCAST_DTYPE["dtype"] = dtype


def cuda_autocast_dtype() -> torch.dtype:
    return CUDA_AUTOCAST_DTYPE["dtype"]


def configure_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """Resolve AUTOCAST_DTYPE on ``device`` and make it this process's CUDA autocast dtype; returns it.
    Call before building the model (the embedding's storage dtype follows it)."""
    dtype = resolve_autocast_dtype(cfg, device)
    if device.type == "cuda":
        set_cuda_autocast_dtype(dtype)
    return dtype


def gpu_supports_bf16(device: torch.device) -> bool:
    """True when ``device`` is a CUDA GPU with native bf16 (not the emulation older GPUs offer)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype on ``device``: bf16 or fp16 on CUDA, torch.float32 (= no autocast) elsewhere."""
    if cfg.autocast_dtype not in ("auto", *AUTOCAST_DTYPES):
        raise ConfigError(f"AUTOCAST_DTYPE={cfg.autocast_dtype!r} is unknown; use auto, bf16 or fp16.")
    if device.type != "cuda":
        return torch.float32
    if cfg.autocast_dtype == "auto":
        return torch.bfloat16 if gpu_supports_bf16(device) else torch.float16
    if cfg.autocast_dtype == "bf16" and not gpu_supports_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"AUTOCAST_DTYPE=bf16 but {name} has no native bf16 (compute capability below 8.0); "
                          "use AUTOCAST_DTYPE=fp16 or auto.")
    return AUTOCAST_DTYPES[cfg.autocast_dtype]


def training_autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on CUDA; a no-op context for fp32 and on other devices."""
    if device.type != "cuda" or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def embedding_storage_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype to store the token embedding in: bf16 under bf16 autocast on CUDA (the baseline's
    choice), else fp32. Under fp16 the GradScaler must unscale its gradient, and it refuses fp16
    gradients and has no CUDA kernel for bf16 ones, so the embedding stays fp32 there."""
    return torch.bfloat16 if device.type == "cuda" and dtype == torch.bfloat16 else torch.float32


class NoLossScaling:
    """The loss-scaler interface doing nothing: bf16 and fp32 need no loss scaling."""

    def is_enabled(self) -> bool:
        return False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        pass

    def get_scale(self) -> float:
        return 1.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_loss_scaler(device: torch.device, dtype: torch.dtype):
    """``torch.amp.GradScaler`` when training in fp16 on CUDA, else ``NoLossScaling``."""
    if device.type == "cuda" and dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return NoLossScaling()


def describe_precision(device: torch.device, dtype: torch.dtype, scaler) -> str:
    """One line for the run header."""
    if dtype == torch.float32:
        return f"precision:fp32 (no autocast on {device.type})"
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return f"precision:{name} autocast loss_scaling:{'on' if scaler.is_enabled() else 'off'}"
