"""The pieces of training state a checkpoint stores, as tensors plus JSON (never pickle), and the
Ctrl-C handling that turns an interrupt into a checkpoint.

* Optimizers: ``optimizer.state_dict()`` taken apart generically: tensors (Adam moments, Muon momentum,
  step counters) go into the container as ``<prefix>/<param index>/<key>``, everything else (param
  groups, plain numbers) into JSON. Restoring merges the saved JSON-able group entries into the live
  groups, so entries that are not JSON (functions, say) keep the live optimizer's values.
* RNG states: torch (CPU, and the device's CUDA generator), NumPy's global generator and Python's
  ``random``; integer arrays as int64 tensors, the rest as JSON.
"""

import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.artifact.container import unpack_tensor_container
from pgolf.dist import all_reduce_sum_, distributed_active
from pgolf.errors import ArtifactError, ConfigError, TrainingError


def _is_json_value(value) -> bool:
    """True for what JSON stores exactly: None, bools, ints, finite floats, str, and lists/tuples of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(item) for item in value)
    return False


def optimizer_state_parts(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON meta) that :func:`load_optimizer_states` turns back into ``optimizer``'s state."""
    saved = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{index}/{key}"] = value
            elif _is_json_value(value):
                plain.setdefault(str(index), {})[key] = value
            else:
                raise TrainingError(f"optimizer {type(optimizer).__name__} keeps a {type(value).__name__} in its "
                                    f"state ({key!r}); checkpoints store only tensors and JSON values.")
    groups = [{key: value for key, value in group.items() if _is_json_value(value)} for group in saved["param_groups"]]
    return tensors, {"class": type(optimizer).__name__, "prefix": prefix, "state": plain, "param_groups": groups}


def _merged_param_groups(saved_groups: list[dict], live_groups: list[dict], where: str) -> list[dict]:
    if len(saved_groups) != len(live_groups):
        raise ConfigError(f"{where} has {len(saved_groups)} param groups but the optimizer has {len(live_groups)}; "
                          "resume with the run's own configuration.")
    merged = []
    for saved, live in zip(saved_groups, live_groups):
        if list(saved.get("params", [])) != list(live["params"]):
            raise ConfigError(f"{where}: the optimizer's parameters differ from the checkpoint's; resume with the "
                              "run's own configuration.")
        group = dict(live)
        group.update({key: tuple(value) if isinstance(live.get(key), tuple) else value for key, value in saved.items()})
        merged.append(group)
    return merged


def load_optimizer_states(optimizers: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                          metas: list[dict], source: Path) -> None:
    """Put the state saved by :func:`optimizer_state_parts` back into each optimizer, in order."""
    if len(metas) != len(optimizers):
        raise ConfigError(f"checkpoint {source} holds {len(metas)} optimizers but this run has {len(optimizers)}; "
                          "resume with the run's own configuration.")
    for optimizer, meta in zip(optimizers, metas):
        if meta["class"] != type(optimizer).__name__:
            raise ConfigError(f"checkpoint {source} holds a {meta['class']} where this run has a "
                              f"{type(optimizer).__name__}; resume with the run's own configuration.")
        state: dict[int, dict] = {}
        prefix = meta["prefix"] + "/"
        for name, tensor in tensors.items():
            if name.startswith(prefix):
                index, key = name[len(prefix):].split("/", 1)
                state.setdefault(int(index), {})[key] = tensor
        for index, entries in meta["state"].items():
            state.setdefault(int(index), {}).update(entries)
        live = optimizer.state_dict()
        groups = _merged_param_groups(meta["param_groups"], live["param_groups"], f"checkpoint {source}")
        optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng_states(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """Every random generator training may draw from: (tensors, JSON meta)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng/python"] = torch.tensor(internal, dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached_gaussian)], "python": [version, gauss_next]}
    return tensors, meta


def restore_rng_states(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> None:
    """Set the generators to what :func:`capture_rng_states` recorded."""
    torch.set_rng_state(tensors["rng/torch"])
    if device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    name, pos, has_gauss, cached_gaussian = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next))


def load_checkpoint_container(path: Path, expected_bytes: int | None) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint file's tensors and meta; a missing, truncated, damaged or foreign (pickle) file is
    an error that names it. Parsing never executes anything from the file."""
    if not path.is_file():
        raise TrainingError(f"checkpoint file {path} is missing; delete {path.parent} to resume from the "
                            "checkpoint before it.")
    data = path.read_bytes()
    if expected_bytes is not None and len(data) != expected_bytes:
        raise ArtifactError(f"checkpoint file {path} is {len(data)} bytes but its manifest says {expected_bytes} "
                            f"(truncated or replaced); delete {path.parent} to resume from the checkpoint before it.")
    try:
        return unpack_tensor_container(data)
    except ArtifactError as error:
        raise ArtifactError(f"checkpoint file {path} is damaged: {error} Delete {path.parent} to resume from "
                            "the checkpoint before it.") from None


def ranks_agree_any_of(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank, with one collective for all of them (no-op in one process)."""
    if not distributed_active():
        return list(flags)
    counts = all_reduce_sum_(torch.tensor([int(flag) for flag in flags], device=device))
    return [bool(count) for count in counts.tolist()]


# A second SIGINT this soon after the first is the same Ctrl-C (torchrun forwards the one every worker
# already got from the terminal); a later one means "stop now".
REPEATED_INTERRUPT_GRACE_SECONDS = 2.0


class InterruptRequest:
    """While active, Ctrl-C (SIGINT) only sets ``requested``: the loop finishes its step, writes a
    checkpoint and stops. Another Ctrl-C (after a short grace) interrupts at once. Inactive outside
    the main thread (signal handlers can only be set there)."""

    def __init__(self):
        self.requested = False
        self.first_at = 0.0
        self._previous = None
        self._installed = False

    def __enter__(self) -> "InterruptRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self.first_at = True, now
        elif now - self.first_at > REPEATED_INTERRUPT_GRACE_SECONDS:
            raise KeyboardInterrupt

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a checkpoint was written; the message says how to resume."""
