"""``pgolf doctor``: the JSON report's keys on this CPU machine, and the warning rules on made-up reports."""

import argparse
import copy
import json

import pytest

from pgolf.commands.doctor import doctor_warnings, expected_figures, format_doctor_report, run_doctor_command

H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "capability": "9.0", "multiprocessors": 132}
HEALTHY_H100 = {
    "python": "3.11", "torch": "2.9.1", "cuda": "12.8", "platform": "linux", "device": "cuda", "cpu_only": False,
    "gpu_count": 1, "gpus": [H100], "bf16": True, "fp8": True,
    "attention": {"fa3": True, "fa3_version": "3.0", "sdpa_flash": True, "sdpa_efficient": True, "sdpa_math": True,
                  "auto": "attention_backend:fa3"},
    "compile": {"dynamo": True, "triton": "3.5", "available": True},
    "compressors": {"zlib": "1.3", "lzma": "stdlib", "brotli": "1.1", "zstandard": "0.23"},
    "cpu_count": 26, "runs_dir": "runs", "free_disk_gib": 500.0,
    "expected": expected_figures(H100["name"]),
    "probes": {"matmul_dtype": "bfloat16", "matmul_tflops": 700.0, "copy_gbps": 2800.0},
}


def changed(**fields) -> dict:
    report = copy.deepcopy(HEALTHY_H100)
    report.update(fields)
    return report


def test_json_report_on_this_machine_says_cpu_only(capsys):
    assert run_doctor_command(argparse.Namespace(json=True, quick=True)) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("python", "torch", "cuda", "device", "cpu_only", "gpu_count", "gpus", "bf16", "fp8", "attention",
                "compile", "compressors", "cpu_count", "runs_dir", "free_disk_gib", "expected", "probes", "warnings"):
        assert key in report, key
    assert set(report["attention"]) == {"fa3", "fa3_version", "sdpa_flash", "sdpa_efficient", "sdpa_math", "auto"}
    assert set(report["compressors"]) == {"zlib", "lzma", "brotli", "zstandard"}
    assert report["probes"] is None  # --quick
    assert report["cpu_only"] and report["device"] == "cpu" and report["gpus"] == []
    assert report["attention"]["sdpa_math"] and report["attention"]["auto"].startswith("attention_backend:sdpa")
    assert "CPU only" in format_doctor_report(report)


def test_probes_run_on_cpu(capsys):
    run_doctor_command(argparse.Namespace(json=True, quick=False))
    probes = json.loads(capsys.readouterr().out)["probes"]
    assert probes["matmul_tflops"] > 0 and probes["copy_gbps"] > 0 and probes["matmul_dtype"] == "float32"


def test_a_healthy_h100_has_no_warnings():
    assert doctor_warnings(HEALTHY_H100) == []


@pytest.mark.parametrize("probes,needle", [
    ({"matmul_dtype": "bfloat16", "matmul_tflops": 300.0, "copy_gbps": 2800.0}, "16-bit matmul measured 300 TFLOP/s, 30%"),
    ({"matmul_dtype": "bfloat16", "matmul_tflops": 700.0, "copy_gbps": 1000.0}, "memory copy measured 1000 GB/s, 30%"),
])
def test_probes_below_half_the_datasheet_warn(probes, needle):
    warnings = doctor_warnings(changed(probes=probes))
    assert len(warnings) == 1 and needle in warnings[0] and "H100 SXM" in warnings[0]


def test_just_above_half_the_datasheet_is_fine():
    assert doctor_warnings(changed(probes={"matmul_dtype": "bfloat16", "matmul_tflops": 0.51 * 989,
                                           "copy_gbps": 0.51 * 3350})) == []


def test_misconfigurations_warn():
    no_fa3 = changed(attention=dict(HEALTHY_H100["attention"], fa3=False))
    assert any("flash-attn-3" in w for w in doctor_warnings(no_fa3))
    cpu_torch = changed(cuda=None, cpu_only=True, gpus=[], gpu_count=0, expected=None, probes=None)
    assert any("CPU-only torch build" in w for w in doctor_warnings(cpu_torch))
    invisible = changed(cpu_only=True, gpus=[], gpu_count=0, expected=None, probes=None)
    assert any("no GPU is visible" in w for w in doctor_warnings(invisible))
    t4 = changed(gpus=[dict(H100, name="Tesla T4", capability="7.5")], bf16=False, expected=expected_figures("Tesla T4"),
                 probes={"matmul_dtype": "float16", "matmul_tflops": 40.0, "copy_gbps": 250.0})
    assert [w for w in doctor_warnings(t4) if "--preset t4" in w] and len(doctor_warnings(t4)) == 1
    no_brotli = changed(compressors=dict(HEALTHY_H100["compressors"], brotli=None))
    assert any("brotli" in w for w in doctor_warnings(no_brotli))
    assert any("GiB free" in w for w in doctor_warnings(changed(free_disk_gib=3.0)))
    no_triton = changed(compile={"dynamo": True, "triton": None, "available": False})
    assert any("COMPILE=0" in w for w in doctor_warnings(no_triton))


@pytest.mark.parametrize("name,label", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"), ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("NVIDIA A10", "A10"),
])
def test_known_gpus_by_name(name, label):
    assert expected_figures(name)["gpu"] == label


def test_unknown_gpus_have_no_expectation():
    assert expected_figures("NVIDIA A10G") is None and expected_figures("NVIDIA GeForce RTX 4090") is None
