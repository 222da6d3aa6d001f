"""Rank, world size and device from the torchrun environment.

One code path for one CPU process, one GPU, and many GPUs under ``torchrun``: distributed iff the
environment has ``RANK`` and ``WORLD_SIZE`` (torchrun sets both). NCCL on CUDA, gloo on CPU. The
collective helpers below are no-ops in a single process, so callers never branch on it.
"""

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.config import MICRO_BATCHES_PER_STEP
from pgolf.errors import ConfigError
from pgolf.runtime import Runtime, resolve_autocast_dtype

# The challenge's reference is 8 GPUs; gradient accumulation keeps the maths identical on fewer: world
# size x accumulation steps is always the config's micro-batches per step (its batch-split check).
REFERENCE_WORLD_SIZE = MICRO_BATCHES_PER_STEP


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_distributed: bool
    # The run's autocast dtype on this device (float32 = none); set by ``with_precision``.
    autocast_dtype: torch.dtype = torch.float32

    @property
    def runtime(self) -> Runtime:
        """Device and precision as one value for the loop, evaluation, calibration and TTT."""
        return Runtime(self.device, self.autocast_dtype)

    def with_precision(self, autocast_choice: str) -> "DistContext":
        """This context with AUTOCAST_DTYPE resolved on its device."""
        return dataclasses.replace(self, autocast_dtype=resolve_autocast_dtype(autocast_choice, self.device))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_accum_steps(self) -> int:
        return REFERENCE_WORLD_SIZE // self.world_size


def _choose_device(local_rank: int, forced: str) -> torch.device:
    name = forced.strip()
    if not name:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"PGOLF_DEVICE={name!r} is not a device torch knows; use cpu, cuda, cuda:N or "
                          "leave it empty (CUDA when available, else CPU).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"PGOLF_DEVICE={name} but this torch finds no CUDA device (torch "
                          f"{torch.__version__}); use PGOLF_DEVICE=cpu or leave it empty.")
    if device.type == "cuda" and device.index is None:
        # torch.cuda.set_device needs an index; under torchrun each process takes its own GPU.
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "") -> DistContext:
    """Read torchrun's environment, set the device, and initialise the process group if needed.
    ``device`` (the config's device field; "" = CUDA when available, else CPU) forces a device."""
    is_distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size <= 0 or REFERENCE_WORLD_SIZE % world_size:
        raise ConfigError(
            f"WORLD_SIZE={world_size} must divide {REFERENCE_WORLD_SIZE} so that gradient accumulation "
            "keeps the 8-GPU maths; use 1, 2, 4 or 8 processes."
        )
    device = _choose_device(local_rank, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(rank, world_size, local_rank, device, is_distributed)


def is_main_process() -> bool:
    """True on torchrun's rank 0 (or in a single process), before or after the process group exists:
    the one place that reads the launcher's RANK for printing and writing decisions."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def shutdown_distributed() -> None:
    """Leave the process group cleanly. The barrier keeps one rank from tearing down its gloo/NCCL
    threads while another is still talking to it (which aborts the slower process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def distributed_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place (no-op in one process) and return it."""
    if distributed_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_agree_any(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank. Used for the wall-clock stop so all ranks stop together."""
    if not distributed_active():
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object_from_main(obj):
    """Rank 0's ``obj`` on every rank (for example the run id, so all ranks write to one place)."""
    if not distributed_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if distributed_active():
        dist.barrier()
