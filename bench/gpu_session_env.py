"""The environment section of bench/gpu_session.py: two JSON lines, ``kind`` env and doctor.

env: device, driver, torch/CUDA/Triton versions, whether FlashAttention 3 imports, the commit (git, or
.devcache/commit.txt written by bench/gpu_prepare.sh when the device copy has no .git). doctor: `pgolf
doctor`'s report (its bf16 matmul and copy probes unless --quick).

    python bench/gpu_session_env.py [--quick]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.commands.doctor import collect_doctor_report  # noqa: E402
from pgolf.model.attention import load_flash_attn_3  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def command_output(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> dict:
    """The commit and how many paths differ from it (numbers come from the working tree, not the commit)."""
    head = command_output(["git", "rev-parse", "--short", "HEAD"])
    if head:
        changed = command_output(["git", "status", "--porcelain", "--untracked-files=no"]) or ""
        return {"commit": head, "changed_paths": len(changed.splitlines()), "commit_source": "git"}
    saved = ROOT / ".devcache" / "commit.txt"
    if saved.exists():
        return {**json.loads(saved.read_text()), "commit_source": "gpu_prepare.sh"}
    return {"commit": "unknown", "commit_source": "none"}


def package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_record() -> dict:
    cuda = torch.cuda.is_available()
    return {"kind": "env", "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
            "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
            "driver": command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "triton": package("triton"), "fa3_importable": load_flash_attn_3() is not None,
            "brotli": package("brotli"), "python_minifier": package("python-minifier"), **commit()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip doctor's timing probes")
    args = parser.parse_args()
    print(json.dumps(env_record()), flush=True)
    print(json.dumps({"kind": "doctor", **collect_doctor_report(quick=args.quick, runs_dir="/tmp")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
