"""``pgolf doctor [--json] [--quick]``: is this machine ready for a run, and is it as fast as it should be?

Reports versions (Python, torch, CUDA), the GPUs (model, count, memory, compute capability), bf16 and
FP8 support, which attention kernels work (FlashAttention 3, SDPA flash / memory-efficient / math) and
which one ``ATTENTION_BACKEND=auto`` picks, Triton and torch.compile, the artifact compressors, CPU
count and free disk in RUNS_DIR. Unless ``--quick``, two probes time the device: a 16-bit matmul
(TFLOP/s) and a large copy (GB/s), compared with the vendor datasheet figures of known GPUs. A slow pod
(USERS.md: 70 ms instead of 44 ms per step) or a missing piece (no FA3 on Hopper, a CPU-only torch, no
brotli) becomes a warning before a paid run starts. Works on a CPU-only machine ("CPU only").
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.artifact.compress import LRZIP_PROGRAM
from pgolf.commands.configuration import configured_runs_dir
from pgolf.config import ModelConfig
from pgolf.model.attention import describe_attention_backend, load_flash_attn_3

# Vendor datasheet figures (dense 16-bit tensor-core TFLOP/s, memory GB/s), first match wins. These are
# peaks from the vendors' datasheets, not measurements: the probes reach a fraction of them.
KNOWN_GPUS = (
    (r"H200 NVL", "H200 NVL", 835.0, 4800.0),
    (r"H200", "H200 SXM", 989.0, 4800.0),
    (r"H100 PCIe", "H100 PCIe", 756.0, 2000.0),
    (r"H100 NVL", "H100 NVL", 835.0, 3900.0),
    (r"H100", "H100 SXM", 989.0, 3350.0),
    (r"A100.*80GB", "A100 80GB", 312.0, 2039.0),
    (r"A100", "A100 40GB", 312.0, 1555.0),
    (r"L40S", "L40S", 362.0, 864.0),
    (r"\bL4\b", "L4", 121.0, 300.0),
    (r"\bA10\b", "A10", 125.0, 600.0),
    (r"V100", "V100", 125.0, 900.0),
    (r"\bT4\b", "T4", 65.0, 320.0),
)
# A probe below this fraction of the datasheet figure is a warning.
SLOW_FRACTION = 0.5
LOW_DISK_GIB = 20.0
COMPRESSOR_MODULES = ("zlib", "lzma", "brotli", "zstandard")


def package_version(*names: str) -> str | None:
    """The installed version of the first distribution of ``names`` that is installed, else None."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpu_facts() -> list[dict]:
    """One dict per visible CUDA GPU."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count})
    return gpus


def precision_support(device: torch.device) -> dict:
    """Native bf16 (compute capability 8.0+) and FP8 matmuls (8.9+ with torch._scaled_mm)."""
    if device.type != "cuda":
        return {"bf16": False, "fp8": False}
    capability = torch.cuda.get_device_capability(device)
    fp8_in_torch = hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")
    return {"bf16": capability >= (8, 0), "fp8": fp8_in_torch and capability >= (8, 9)}


def sdpa_kernel_works(kernel: SDPBackend, device: torch.device) -> bool:
    """Whether SDPA forced to ``kernel`` runs a small causal attention on ``device``."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 2, 64, 64, device=device, dtype=dtype)
    try:
        with sdpa_kernel(kernel):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        return False
    return True


def attention_support(device: torch.device) -> dict:
    """Which attention kernels work here, and what ATTENTION_BACKEND=auto chooses."""
    return {
        "fa3": load_flash_attn_3() is not None,
        "fa3_version": package_version("flash_attn_3", "flash-attn-3"),
        "sdpa_flash": sdpa_kernel_works(SDPBackend.FLASH_ATTENTION, device),
        "sdpa_efficient": sdpa_kernel_works(SDPBackend.EFFICIENT_ATTENTION, device),
        "sdpa_math": sdpa_kernel_works(SDPBackend.MATH, device),
        "auto": describe_attention_backend(ModelConfig(), device),
    }


def compile_support(device: torch.device) -> dict:
    """torch.compile's pieces: TorchDynamo on this Python, and Triton for GPU code generation."""
    try:
        dynamo = importlib.import_module("torch._dynamo").is_dynamo_supported()
    except Exception:  # an unsupported Python raises from inside torch
        dynamo = False
    triton = package_version("triton", "pytorch-triton")
    return {"dynamo": dynamo, "triton": triton, "available": dynamo and (device.type != "cuda" or triton is not None)}


def compressor_support() -> dict:
    """Each compressor module's version (stdlib ones: "stdlib"), None when it cannot be imported."""
    found = {}
    for name in COMPRESSOR_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[name] = None
            continue
        # zlib's __version__ is its Python module's; the C library's version is what matters.
        found[name] = (getattr(module, "ZLIB_RUNTIME_VERSION", None) or getattr(module, "__version__", None)
                       or package_version(name) or "stdlib")
    return found


def free_disk_gib(path: str) -> float:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    return round(shutil.disk_usage(probe).free / 2**30, 1)


def expected_figures(gpu_name: str) -> dict | None:
    """Datasheet figures of the first KNOWN_GPUS entry matching ``gpu_name``."""
    for pattern, label, tflops, gbps in KNOWN_GPUS:
        if re.search(pattern, gpu_name):
            return {"gpu": label, "matmul_tflops": tflops, "copy_gbps": gbps}
    return None


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` after two warm-up calls (device-synchronised)."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def matmul_probe(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """TFLOP/s of a square (size x size) matmul on random data: 2 size^3 flops per call."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _timed(lambda: torch.mm(a, b), device, repeats)
    return 2 * size**3 / seconds / 1e12


def copy_probe(device: torch.device, num_bytes: int, repeats: int) -> float:
    """GB/s of a device-to-device copy, counting the bytes read plus the bytes written."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _timed(lambda: dst.copy_(src), device, repeats)
    return 2 * num_bytes / seconds / 1e9


def run_probes(device: torch.device, bf16: bool) -> dict:
    """The timing probes: large on a GPU, small (a few seconds at most) on a CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if bf16 else torch.float16
        return {"matmul_dtype": str(dtype).removeprefix("torch."),
                "matmul_tflops": round(matmul_probe(device, dtype, 8192, 50), 1),
                "copy_gbps": round(copy_probe(device, 2**30, 20), 1)}
    return {"matmul_dtype": "float32", "matmul_tflops": round(matmul_probe(device, torch.float32, 512, 10), 4),
            "copy_gbps": round(copy_probe(device, 2**26, 5), 1)}


def collect_doctor_report(*, quick: bool, runs_dir: str) -> dict:
    """Everything ``pgolf doctor`` prints, as one JSON-ready dict (``warnings`` included)."""
    gpus = gpu_facts()
    device = torch.device("cuda", 0) if gpus else torch.device("cpu")
    support = precision_support(device)
    report = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "platform": platform.platform(), "device": "cuda" if gpus else "cpu", "cpu_only": not gpus,
        "gpu_count": len(gpus), "gpus": gpus, "bf16": support["bf16"], "fp8": support["fp8"],
        "attention": attention_support(device), "compile": compile_support(device),
        "compressors": compressor_support(), "lrzip": shutil.which(LRZIP_PROGRAM), "cpu_count": os.cpu_count(),
        "runs_dir": runs_dir, "free_disk_gib": free_disk_gib(runs_dir),
        "expected": expected_figures(gpus[0]["name"]) if gpus else None,
        "probes": None if quick else run_probes(device, support["bf16"]),
    }
    report["warnings"] = doctor_warnings(report)
    return report


def _setup_warnings(report: dict) -> list[str]:
    """Missing or misconfigured pieces."""
    warnings = []
    if report["cuda"] is None:
        warnings.append("CPU-only torch build (torch.version.cuda is None): install a CUDA build of PyTorch to train on a GPU.")
    elif report["cpu_only"]:
        warnings.append("torch has CUDA but no GPU is visible: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES.")
    hopper = any(gpu["capability"].startswith("9.") for gpu in report["gpus"])
    if hopper and not report["attention"]["fa3"]:
        warnings.append("Hopper GPU without FlashAttention 3 (flash_attn_interface): ATTENTION_BACKEND=auto falls back to "
                        "PyTorch SDPA, slower than the records' FA3. pip install flash-attn-3 (docs/gpu.md).")
    if report["gpus"] and not report["bf16"]:
        warnings.append("this GPU has no native bf16: use --preset t4 or AUTOCAST_DTYPE=fp16 (fp16 with loss scaling).")
    if report["gpus"] and not report["compile"]["available"]:
        warnings.append("torch.compile cannot generate GPU code here (no Triton or no TorchDynamo): run with COMPILE=0.")
    missing = [name for name, version in report["compressors"].items() if version is None]
    if missing:
        warnings.append(f"compressor module(s) missing: {', '.join(missing)}; presets that pack with them fail at the "
                        "end of training. pip install brotli zstandard.")
    if report["free_disk_gib"] < LOW_DISK_GIB:
        warnings.append(f"only {report['free_disk_gib']} GiB free for RUNS_DIR={report['runs_dir']}: datasets, "
                        "checkpoints and artifacts may not fit.")
    return warnings


def _speed_warnings(report: dict) -> list[str]:
    """Probes below SLOW_FRACTION of the datasheet figure of this GPU."""
    probes, expected = report.get("probes"), report.get("expected")
    if not probes or not expected:
        return []
    warnings = []
    for key, unit, what in (("matmul_tflops", "TFLOP/s", "16-bit matmul"), ("copy_gbps", "GB/s", "memory copy")):
        fraction = probes[key] / expected[key]
        if fraction < SLOW_FRACTION:
            warnings.append(f"{what} measured {probes[key]:g} {unit}, {fraction:.0%} of the {expected['gpu']} datasheet "
                            f"{expected[key]:g} {unit} (below {SLOW_FRACTION:.0%}): a slow or shared GPU, throttling, "
                            "or another process on it. Expect fewer steps in the budget.")
    return warnings


def doctor_warnings(report: dict) -> list[str]:
    """Every warning for a doctor report (a pure function of the report, so it can be tested)."""
    return _setup_warnings(report) + _speed_warnings(report)


def format_doctor_report(report: dict) -> str:
    """The human-readable summary."""
    att, comp = report["attention"], report["compile"]
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    lines = ["pgolf doctor",
             f"  python {report['python']}  torch {report['torch']}  CUDA {report['cuda'] or 'none'}"]
    if report["cpu_only"]:
        lines.append("  device: CPU only (no CUDA GPU)")
    for gpu in report["gpus"]:
        lines.append(f"  gpu {gpu['index']}: {gpu['name']}  {gpu['memory_gib']} GiB  capability {gpu['capability']}")
    lines.append(f"  bf16: {yes(report['bf16'])}  fp8: {yes(report['fp8'])}")
    lines.append(f"  attention: fa3 {yes(att['fa3'])}  sdpa_flash {yes(att['sdpa_flash'])}  sdpa_efficient "
                 f"{yes(att['sdpa_efficient'])}  sdpa_math {yes(att['sdpa_math'])}  -> {att['auto']}")
    lines.append(f"  compile: dynamo {yes(comp['dynamo'])}  triton {comp['triton'] or 'no'}")
    lines.append("  compressors: " + "  ".join(f"{name} {version or 'MISSING'}" for name, version in report["compressors"].items())
                 + f"  lrzip program (COMPRESSOR=pergroup_lrzip): {report['lrzip'] or 'not installed'}")
    lines.append(f"  cpus: {report['cpu_count']}  free disk for {report['runs_dir']}: {report['free_disk_gib']} GiB")
    probes, expected = report["probes"], report["expected"]
    if probes:
        against = (f" (datasheet {expected['gpu']}: {expected['matmul_tflops']:g} TFLOP/s, {expected['copy_gbps']:g} GB/s)"
                   if expected else "")
        lines.append(f"  probes: matmul {probes['matmul_tflops']:g} TFLOP/s ({probes['matmul_dtype']}), "
                     f"copy {probes['copy_gbps']:g} GB/s{against}")
    lines += ["  warnings:", *(f"    - {w}" for w in report["warnings"])] if report["warnings"] else ["  no warnings"]
    return "\n".join(lines)


def run_doctor_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf doctor``."""
    report = collect_doctor_report(quick=args.quick, runs_dir=configured_runs_dir())
    print(json.dumps(report, indent=2) if args.json else format_doctor_report(report))
    return 0
