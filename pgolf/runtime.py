"""Where and in what precision this process computes: device, autocast, loss scaling, synchronization.

One value, :class:`Runtime`, is resolved once per run (``resolve_runtime``) and passed down to the
training loop, evaluation, calibration and test-time training, so they all compute in the same
precision. It is never a global: two runtimes in one process (a test, ``pgolf eval`` beside a run)
do not disturb each other.

``AUTOCAST_DTYPE`` (CUDA only; the CPU always runs plain fp32):

* ``auto``: bf16 where the GPU computes it natively (compute capability 8.0+: A100, H100, L4 ...),
  else fp16 (T4, V100);
* ``bf16`` / ``fp16``: forced; bf16 on a GPU without it is a configuration error.

fp16 has a narrow exponent range: small gradients underflow to zero unless the loss is scaled up
before backward and the gradients scaled back down before the optimizer step.
``Runtime.loss_scaler()`` returns ``torch.amp.GradScaler`` for fp16 and a do-nothing object with the
same methods otherwise, so the training loop has one code path:

    scaler.scale(loss).backward()
    scaler.unscale_(opt)        # for each optimizer, before gradient clipping
    scaler.step(opt)            # for each optimizer; skipped when a gradient is inf/NaN
    scaler.update()
"""

import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """A device and the autocast dtype used on it (``torch.float32`` = no autocast)."""

    device: torch.device
    autocast_dtype: torch.dtype = torch.float32

    def autocast(self):
        """Autocast to the run's dtype on CUDA; a no-op context for fp32 and on other devices."""
        if self.device.type != "cuda" or self.autocast_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    def synchronize(self) -> None:
        """Wait for the device's queued work, so a timer measures it (a no-op off CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def embedding_dtype(self) -> torch.dtype:
        """The dtype to store the token embedding in: bf16 under bf16 autocast on CUDA (the baseline's
        choice), else fp32. Under fp16 the GradScaler must unscale its gradient, and it refuses fp16
        gradients and has no CUDA kernel for bf16 ones, so the embedding stays fp32 there."""
        return torch.bfloat16 if self.device.type == "cuda" and self.autocast_dtype == torch.bfloat16 else torch.float32

    def loss_scaler(self):
        """``torch.amp.GradScaler`` when training in fp16 on CUDA, else ``NoLossScaling``."""
        if self.device.type == "cuda" and self.autocast_dtype == torch.float16:
            return torch.amp.GradScaler("cuda")
        return NoLossScaling()

    def describe(self, scaler) -> str:
        """One line for the run header."""
        if self.autocast_dtype == torch.float32:
            return f"precision:fp32 (no autocast on {self.device.type})"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return f"precision:{name} autocast loss_scaling:{'on' if scaler.is_enabled() else 'off'}"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: the run's initial weights follow from SEED."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gpu_supports_bf16(device: torch.device) -> bool:
    """True when ``device`` is a CUDA GPU with native bf16 (not the emulation older GPUs offer)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_autocast_dtype(choice: str, device: torch.device) -> torch.dtype:
    """AUTOCAST_DTYPE on ``device``: bf16 or fp16 on CUDA, torch.float32 (= no autocast) elsewhere."""
    if choice not in ("auto", *AUTOCAST_DTYPES):
        raise ConfigError(f"AUTOCAST_DTYPE={choice!r} is unknown; use auto, bf16 or fp16.")
    if device.type != "cuda":
        return torch.float32
    if choice == "auto":
        return torch.bfloat16 if gpu_supports_bf16(device) else torch.float16
    if choice == "bf16" and not gpu_supports_bf16(device):
        raise ConfigError(f"AUTOCAST_DTYPE=bf16 but {torch.cuda.get_device_name(device)} has no native bf16 (compute capability below 8.0); "
                          "use AUTOCAST_DTYPE=fp16 or auto.")
    return AUTOCAST_DTYPES[choice]


def resolve_runtime(device: torch.device, autocast_choice: str = "auto") -> Runtime:
    """The runtime of a run on ``device`` with AUTOCAST_DTYPE=``autocast_choice``."""
    return Runtime(device, resolve_autocast_dtype(autocast_choice, device))


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
