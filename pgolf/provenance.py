"""What a run needs to be reproducible from its log: versions, hardware, and a hash of the code."""

import hashlib
import os
import platform
import sys
from pathlib import Path

import torch


def pgolf_source_files() -> list[Path]:
    """Every Python source file of the installed pgolf package, sorted."""
    package_dir = Path(sys.modules["pgolf"].__path__[0])
    return sorted(package_dir.rglob("*.py"))


def pgolf_code_hash() -> str:
    """sha256 over the package's sources (relative path + bytes), first 16 hex digits."""
    package_dir = Path(sys.modules["pgolf"].__path__[0])
    digest = hashlib.sha256()
    for path in pgolf_source_files():
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment_summary(device: torch.device) -> dict:
    """Software and hardware facts for the run header and report."""
    summary = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        summary["gpu"] = props.name
        summary["gpu_count"] = torch.cuda.device_count()
        summary["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return summary
