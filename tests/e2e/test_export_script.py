"""The exported one-file train_gpt.py reproduces the package: same config and seed, same losses, same scores.

For every preset, shrunk to CPU size with all its features (as tests/e2e/test_presets_tiny.py shrinks
them, on the embedded default data; the CaseOps presets, which require byte sidecars, on the same
documents built as CaseOps data), the script is exported for that configuration and run in a fresh
interpreter, in an empty folder, with a ``pgolf`` on ``PYTHONPATH`` that refuses to be imported: the
script cannot lean on the package. The package runs the same configuration and seed in this process.
Both run single-threaded so the float reductions happen in the same order; the training losses and
every evaluation in metrics.jsonl (validation, before quantization, the round trip, sliding window /
TTT where the preset has them) must match bit for bit, and the artifacts must be the same size. The
script writes no report.json unless it is exported with full records: one test does, and compares its
report with the package's. SEED comes from the environment over the baked configuration. One preset
also runs under ``torchrun`` with two processes (the same 8-micro-batch maths over two ranks, to 1e-5
as tests/dist requires), and a feature switched on in tiny_cpu must bring its code along and still match.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pgolf.artifact.compress import LRZIP_PROGRAM, PERGROUP_COMPRESSOR, PERGROUP_LRZIP_COMPRESSOR
from pgolf.config import apply_config_overrides, validate_config
from pgolf.data.corpus import (DEFAULT_CORPUS_NUM_VAL_DOCS, DEFAULT_CORPUS_VOCAB_SIZE, default_corpus_documents,
                               ensure_default_dataset)
from pgolf.data.dataset import build_dataset
from pgolf.export.bundle import build_exported_script, write_exported_script
from pgolf.export.minify import unwrap_script
from pgolf.presets import PRESETS, preset_config
from pgolf.run import main as run_main

pytestmark = pytest.mark.slow

SEQ, STEPS = 64, 3
SEED = "7"  # not the presets' 1337: proves the environment overrides the baked configuration
# The *_1gpu presets are their 8-GPU presets with a longer clock, which a shrunk run does not use.
PRESET_NAMES = sorted(name for name in PRESETS if not name.endswith("_1gpu"))
BLOCKER = 'raise ImportError("the exported train_gpt.py must not import pgolf")\n'


def shrink(name: str, data) -> "Config":  # noqa: F821
    """The preset with CPU sizes and every feature kept (vocabulary: the default data's tokenizer)."""
    cfg = preset_config(name)
    model = dataclasses.replace(cfg.model, vocab_size=DEFAULT_CORPUS_VOCAB_SIZE, model_dim=64, num_heads=4, num_kv_heads=2,
                                rope_train_seq_len=SEQ if cfg.model.rope_train_seq_len else 0)
    train = dataclasses.replace(cfg.train, train_seq_len=SEQ, train_batch_tokens=8 * SEQ * 2, iterations=STEPS,
                                max_wallclock_seconds=0.0, gptq_reserve_seconds=0.0,
                                warmup_steps=min(cfg.train.warmup_steps, 1), compile=False, train_log_every=1,
                                val_loss_every=0, ema_start_step=0)
    evaluation = dataclasses.replace(cfg.eval, val_max_tokens=1024, val_batch_size=8 * SEQ * 4, eval_stride=32,
                                     eval_batch_windows=8)
    ttt = dataclasses.replace(cfg.ttt, ttt_chunk_tokens=256, ttt_epochs=1, ttt_batch_seqs=4, ttt_phase_prefix_docs=4,
                              ttt_lora_chunk_tokens=min(cfg.ttt.ttt_lora_chunk_tokens, SEQ), ttt_lora_batch_docs=4,
                              ttt_lora_rank=4)
    quant = dataclasses.replace(cfg.quant, gptq_calibration_batches=2)
    paths = dataclasses.replace(cfg.data, data_path=str(data.data_path), tokenizer_path=str(data.tokenizer_path))
    artifact = cfg.artifact
    if artifact.compressor == PERGROUP_LRZIP_COMPRESSOR and shutil.which(LRZIP_PROGRAM) is None:
        # Without the external lrzip program (a system package), the same layout with pgolf's own
        # compressors: the script still carries every other feature of the preset. lrzip itself is
        # tested in tests/unit/test_pergroup.py where it is installed.
        artifact = dataclasses.replace(artifact, compressor=PERGROUP_COMPRESSOR)
    return validate_config(dataclasses.replace(cfg, model=model, train=train, eval=evaluation, ttt=ttt, quant=quant,
                                               data=paths, artifact=artifact))


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory):
    """The default data's documents as a CaseOps dataset (validation byte sidecars), for the presets that
    say BYTE_SIDECARS=on: their exported script must read the sidecars as the package does."""
    texts = [text for _, text in default_corpus_documents()]
    built = build_dataset(lambda: iter(texts), DEFAULT_CORPUS_VOCAB_SIZE, tmp_path_factory.mktemp("caseops"),
                          name="default", num_val_docs=DEFAULT_CORPUS_NUM_VAL_DOCS, caseops=True)
    return SimpleNamespace(data_path=built["data_dir"], tokenizer_path=built["tokenizer_path"])


@pytest.fixture(scope="module")
def blocker(tmp_path_factory):
    """A folder whose ``pgolf`` package raises on import: put first on the script's PYTHONPATH."""
    folder = tmp_path_factory.mktemp("no_pgolf")
    (folder / "pgolf").mkdir()
    (folder / "pgolf" / "__init__.py").write_text(BLOCKER)
    return folder


def export(cfg, name: str, folder: Path, full_records: bool = False):
    # verify=False: the run below is the stronger check
    script = build_exported_script(cfg, preset_name=name, verify=False, full_records=full_records)
    wrapped, _ = write_exported_script(script, folder / "train_gpt.py")
    assert wrapped.stat().st_size == script.wrapped_bytes
    return script


def run_package(cfg, name: str, runs: Path, run_id: str = "package") -> Path:
    """``cfg`` and SEED through pgolf.run.main in this process, single-threaded."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(key, raising=False)
        patch.setenv("PGOLF_DEVICE", "cpu")
        torch.set_num_threads(1)
        try:
            run_main(apply_config_overrides(cfg, {"SEED": SEED, "RUNS_DIR": str(runs), "RUN_ID": run_id},
                                            source="test"), preset_name=name, echo=False)
        finally:
            torch.set_num_threads(threads)
    return runs / run_id


def run_script(command: list[str], folder: Path, runs: Path, run_id: str, blocker: Path) -> Path:
    """Run the exported script in an empty working folder where pgolf cannot be imported."""
    work = runs.parent / f"cwd_{run_id}"
    work.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_PRESET")}
    env.update(PYTHONPATH=str(blocker), PGOLF_DEVICE="cpu", OMP_NUM_THREADS="1", RUNS_DIR=str(runs), RUN_ID=run_id,
               SEED=SEED)
    result = subprocess.run(command + [str(folder / "train_gpt.py")], cwd=work, env=env, capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs / run_id


def outcome(run_dir: Path) -> tuple[list[tuple[int, float]], dict, list[tuple], int]:
    """(step, train loss) of every logged step, the header event, (event, label or step, val_loss,
    val_bpb) of every evaluation, and the artifact's size: what every run writes."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(event["step"], event["train_loss"]) for event in events if event["event"] == "train"]
    header = next(event for event in events if event["event"] == "header")
    evaluations = [(event["event"], event.get("label", event.get("step")), event["val_loss"], event["val_bpb"])
                   for event in events if event["event"] in ("val", "eval")]
    (artifact,) = (run_dir / "artifact").glob("final_model.*.ptz")
    return losses, header, evaluations, artifact.stat().st_size


def assert_same_run(script_run: Path, package_run: Path, script) -> None:
    script_losses, header, script_evaluations, script_artifact_bytes = outcome(script_run)
    package_losses, _, package_evaluations, package_artifact_bytes = outcome(package_run)
    assert [step for step, _ in script_losses] == list(range(1, STEPS + 1))
    assert script_losses == package_losses  # bit for bit: same code, same data, same seed, one thread
    assert script_evaluations == package_evaluations and len(script_evaluations) >= 2  # prequant, round trip ...
    assert script_artifact_bytes == package_artifact_bytes
    assert header["config"]["seed"] == int(SEED) and header["code_hash"] == script.code_hash  # the baked hash
    assert (script_run / "config.json").is_file()  # what `pgolf eval` reads
    assert (script_run / "report.json").is_file() == script.full_records


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_the_exported_script_of_every_preset_reproduces_the_package(name, default_data, caseops_data, blocker,
                                                                     tmp_path):
    cfg = shrink(name, caseops_data if preset_config(name).data.byte_sidecars == "on" else default_data)
    script = export(cfg, name, tmp_path)
    source = unwrap_script((tmp_path / "train_gpt.py").read_bytes())
    assert "from pgolf" not in source and "import pgolf" not in source
    script_run = run_script([sys.executable], tmp_path, tmp_path / "runs", "script", blocker)
    assert_same_run(script_run, run_package(cfg, name, tmp_path / "runs"), script)
    header = outcome(script_run)[1]
    assert header["preset"] == name and script.preset_name == name and header["device"] == "cpu"


def test_a_feature_switched_on_brings_its_code_and_full_records_write_the_packages_report(default_data, blocker,
                                                                                         tmp_path):
    plain = shrink("tiny_cpu", default_data)
    gated = apply_config_overrides(plain, {"SMEAR_GATE_ENABLED": "1", "ATTN_OUT_GATE": "gated"}, source="test")
    off = build_exported_script(plain, preset_name="tiny_cpu", verify=False, full_records=True)
    on = export(gated, "tiny_cpu", tmp_path, full_records=True)
    for module in ("pgolf.model.features.smear_gate", "pgolf.model.features.attn_gate"):
        assert module in on.modules and module in off.dropped_modules
    assert on.wrapped_bytes > off.wrapped_bytes
    script_run = run_script([sys.executable], tmp_path, tmp_path / "runs", "script", blocker)
    package_run = run_package(gated, "tiny_cpu", tmp_path / "runs")
    assert_same_run(script_run, package_run, on)
    script_report, package_report = (json.loads((run / "report.json").read_text()) for run in (script_run, package_run))
    assert script_report.keys() == package_report.keys()  # the fields of a `pgolf train` run
    for key in ("val_bpb", "val_bpb_prequant", "val_bpb_final", "val_bpb_final_label", "artifact_bytes", "env"):
        assert script_report[key] == package_report[key], key


def test_torchrun_two_processes_train_like_one(default_data, blocker, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    cfg = shrink("tiny_cpu", default_data)
    export(cfg, "tiny_cpu", tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script_losses, header, _, _ = outcome(run_script(torchrun, tmp_path, tmp_path / "runs", "torchrun", blocker))
    package_losses, _, _, _ = outcome(run_package(cfg, "tiny_cpu", tmp_path / "runs"))
    assert header["device"] == "cpu" and [step for step, _ in script_losses] == list(range(1, STEPS + 1))
    for (_, mine), (_, theirs) in zip(script_losses, package_losses):
        assert mine == pytest.approx(theirs, rel=1e-5)
