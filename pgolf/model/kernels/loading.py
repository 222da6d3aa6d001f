"""Loading a set of Triton kernels once per process (shared by the fused kernels of this package).

Triton is optional: a set that cannot be built (no Triton, no kernel source, an unsupported device)
records why under ``"error"`` and its callers take the eager reference path.
"""

import os
from typing import Callable

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
KERNEL_LOADING_EXPORT_SWITCH = "fused_mlp or fused_cross_entropy"


def load_kernel_set(kernels: dict, builds: dict, build: Callable[[bool], dict]) -> bool:
    """Fill ``kernels`` from ``build(interpreting)`` once; returns whether the set is usable.

    ``builds`` caches one build per mode (compiled, or Triton's CPU interpreter under
    ``TRITON_INTERPRET=1``), because custom ops can be registered only once per process and name.
    """
    if not kernels:
        try:
            interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
            if interpreting not in builds:
                builds[interpreting] = build(interpreting)
            kernels.update(builds[interpreting])
        except (ImportError, RuntimeError, OSError, ValueError) as error:  # no Triton, or no kernel source
            kernels["error"] = f"Triton is unusable ({type(error).__name__}: {error})"
    return "forward" in kernels
