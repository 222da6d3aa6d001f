"""One GPU session's measurements (issue 19), in order of value, inside a time budget.

Sections (``--list`` prints them with their estimates):
  env                 device, driver, torch, Triton, FA3, commit; `pgolf doctor`'s matmul/copy probes
  parity_baseline     bench/gpu_parity.py on baseline_sp1024: forward, eval, step, attention     (item 1)
  parity_record       the same on record_sp8192 (looping off/on, document isolation)              (item 1)
  kernels             fused CE / MLP Triton kernels vs eager                                       (item 1)
  throughput_baseline bench/gpu_throughput.py baseline_sp1024, compiled                            (item 2)
  throughput_record   record_sp8192_1gpu, looping off and on                                       (item 2)
  pipeline            `pgolf train --preset record_sp8192_1gpu` (GPTQ, brotli, round trip, sliding) (item 3)
  gpu_tests           a few GPU-relevant test files, only with time to spare                       (checks)

Before each section ``session_plan.decide`` compares its estimate with what is left of the budget; a
section that does not fit is skipped (and said so), one that runs gets a hard timeout (its process group
is killed after it), so a hang costs at most that. The pipeline's training time shrinks to fit. After
every section the summary is rewritten, so a session killed from outside still leaves one.

Files under --out (the device tool returns at most 8): session.log (every line, timestamped),
results.jsonl (every measurement, tagged with its section), summary.json, summary.md, and from the
pipeline pipeline_train.log and pipeline_report.json.

    bench/gpu_session.sh                          # on the GPU (see bench/README.md for the device call)
    GPU_SESSION_DRY_RUN=1 bench/gpu_session.sh    # here: the same sections on the CPU, tiny shapes
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from session_plan import (  # noqa: E402
    SectionRecord, build_summary, decide, fit_train_seconds, parse_json_lines, pipeline_phases, summary_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
DEV = ".devcache"
SP1024_VAL = f"{DEV}/fineweb_sp1024/fineweb_val_000000.bin"
SP8192_DATA = f"{DEV}/sp8192/datasets/fineweb_sp8192"
TOK1024, TOK8192 = f"{DEV}/tokenizers/fineweb_1024_bpe.model", f"{DEV}/tokenizers/fineweb_8192_bpe.model"
PY = sys.executable

# Tiny shapes for the CPU dry run: the record's features (loop, XSA, parallel residuals) on 4 thin layers.
TINY = ["NUM_LAYERS=4", "MODEL_DIM=64", "NUM_HEADS=2", "NUM_KV_HEADS=1", "TRAIN_SEQ_LEN=128"]
TINY_RECORD = [*TINY, "LOOP_START=1", "LOOP_END=2", "PARALLEL_RESIDUAL_START=3", "XSA_LAST_N=4",
               "ROPE_TRAIN_SEQ_LEN=128"]
# The pipeline: fixed costs besides training (compile and priming, evaluations, GPTQ, brotli, export
# size) and the training time it aims for; GPTQ on 8 batches (the 8-GPU run's 64 are 8 per rank).
PIPELINE_OVERHEAD_S = {"gpu": 110, "dry": 45}
PIPELINE_TRAIN_S = {"gpu": (90, 20), "dry": (12, 4)}  # (wanted, minimum)
GPU_TEST_FILES = ["tests/model/test_kernels.py", "tests/model/test_attention_backends.py", "tests/model/test_varlen.py"]


@dataclass
class Section:
    name: str
    item: int
    estimate_s: float
    limit_s: float
    argv: Callable[[float], list[str] | None]  # from the seconds left; None = cannot fit (skipped)


def parity(preset: str, tokens: str, tokenizer: str, dry: bool) -> Callable[[float], list[str]]:
    extra = ["--device", "cpu", "--no-compile", "--eval-tokens", "2048", "--set",
             *(TINY_RECORD if "record" in preset else TINY)] if dry else []
    return lambda left: [PY, "bench/gpu_parity.py", "--preset", preset, "--tokens", tokens, "--tokenizer", tokenizer,
                         "--sections", "forward,eval,step,attention", "--eval-tokens", "16384", *extra]


def throughput(preset: str, dry: bool) -> Callable[[float], list[str]]:
    tiny = ["--device", "cpu", *(TINY_RECORD if "record" in preset else TINY), "TRAIN_BATCH_TOKENS=8192", "COMPILE=0"]
    steps = ["--steps", "1", "--warmup", "1"] if dry else (["--steps", "10", "--warmup", "3"] if "baseline" in preset
                                                          else ["--steps", "5", "--warmup", "3"])
    return lambda left: [PY, "bench/gpu_throughput.py", "--presets", preset, "--looping", "both", *steps,
                         *(tiny if dry else [])]


def pipeline_argv(mode: str, runs_dir: str) -> Callable[[float], list[str] | None]:
    def build(left: float) -> list[str] | None:
        wanted, minimum = PIPELINE_TRAIN_S[mode]
        train_s = fit_train_seconds(left, PIPELINE_OVERHEAD_S[mode], wanted, minimum)
        if train_s is None:
            return None
        reserve = 12 if mode == "gpu" else 2
        argv = [PY, "-m", "pgolf", "train", "--preset", "record_sp8192_1gpu", f"DATA_PATH={SP8192_DATA}",
                f"TOKENIZER_PATH={TOK8192}", f"RUNS_DIR={runs_dir}", "RUN_ID=gpu_pipeline",
                f"MAX_WALLCLOCK_SECONDS={train_s + reserve}", f"GPTQ_RESERVE_SECONDS={reserve}",
                "GPTQ_CALIBRATION_BATCHES=8", "TTT_ENABLED=0", "VAL_LOSS_EVERY=0", "TRAIN_LOG_EVERY=25",
                # 3 priming steps per graph (looping off, on) compile both; the preset's 20 would cost ~30 s more.
                "WARMUP_STEPS=3"]
        if mode == "dry":
            argv += [*TINY_RECORD, "TRAIN_BATCH_TOKENS=8192", "COMPILE=0", "PGOLF_DEVICE=cpu", "WARMUP_STEPS=1",
                     "VAL_MAX_TOKENS=4096", "VAL_BATCH_SIZE=8192", "EVAL_BATCH_WINDOWS=8", "TRAIN_LOG_EVERY=2"]
        return argv
    return build


def sections(mode: str, runs_dir: str) -> list[Section]:
    dry = mode == "dry"
    env_argv = [PY, "bench/gpu_session_env.py"] + (["--quick"] if dry else [])
    tests = [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--timeout", "120",
             *(GPU_TEST_FILES[2:] if dry else GPU_TEST_FILES)]
    kernels = [PY, "bench/gpu_parity.py", "--sections", "kernels"] + (["--device", "cpu", "--kernel-rows", "64"] if dry else [])
    s = lambda name, item, est, limit, argv: Section(name, item, est, limit, argv)  # noqa: E731
    if dry:
        estimates = {"env": 10, "parity_baseline": 30, "parity_record": 45, "kernels": 5, "throughput_baseline": 25,
                     "throughput_record": 40, "gpu_tests": 20}
    else:
        estimates = {"env": 30, "parity_baseline": 60, "parity_record": 80, "kernels": 45, "throughput_baseline": 60,
                     "throughput_record": 120, "gpu_tests": 45}
    limit = lambda name: 2.5 * estimates[name]  # noqa: E731 - room for a slow section, not for a hang
    wanted, minimum = PIPELINE_TRAIN_S[mode]
    return [
        s("env", 0, estimates["env"], limit("env"), lambda left: env_argv),
        s("parity_baseline", 1, estimates["parity_baseline"], limit("parity_baseline"),
          parity("baseline_sp1024", SP1024_VAL, TOK1024, dry)),
        s("parity_record", 1, estimates["parity_record"], limit("parity_record"),
          parity("record_sp8192", f"{SP8192_DATA}/fineweb_val_000000.bin", TOK8192, dry)),
        s("kernels", 1, estimates["kernels"], limit("kernels"), lambda left: kernels),
        s("throughput_baseline", 2, estimates["throughput_baseline"], limit("throughput_baseline"),
          throughput("baseline_sp1024", dry)),
        s("throughput_record", 2, estimates["throughput_record"], limit("throughput_record"),
          throughput("record_sp8192_1gpu", dry)),
        Section("pipeline", 3, PIPELINE_OVERHEAD_S[mode] + minimum, 2 * PIPELINE_OVERHEAD_S[mode] + wanted,
                pipeline_argv(mode, runs_dir)),
        s("gpu_tests", 0, estimates["gpu_tests"], limit("gpu_tests"), lambda left: tests),
    ]


class Session:
    """The budget clock, the output files and the records of the sections run so far."""

    def __init__(self, out: Path, budget_s: float, mode: str):
        self.out, self.budget_s, self.mode = out, budget_s, mode
        self.started = time.monotonic()
        self.records: list[SectionRecord] = []
        self.env: dict = {"mode": mode}
        self.log = open(out / "session.log", "a", buffering=1)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def write_summary(self, finished: bool) -> None:
        summary = build_summary(self.records, self.env, self.budget_s, time.monotonic() - self.started, finished)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(summary))

    def add_results(self, record: SectionRecord) -> None:
        with open(self.out / "results.jsonl", "a") as results:
            for result in record.results:
                results.write(json.dumps({"section": record.name, **result}) + "\n")


def stream(proc: subprocess.Popen, session: Session, lines: list[tuple[float, str]], began: float) -> None:
    """Copy the section's output into the log line by line, each with the seconds since it began."""
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        seconds = time.monotonic() - began
        lines.append((seconds, line))
        session.log.write(f"    {seconds:7.1f}s | {line}\n")


def run_process(argv: list[str], timeout_s: int, session: Session) -> tuple[int | None, bool, list]:
    """(return code, timed out, timestamped lines); on timeout the whole process group is killed."""
    lines: list[tuple[float, str]] = []
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader = threading.Thread(target=stream, args=(proc, session, lines, began), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
    reader.join(timeout=5)
    return proc.returncode, timed_out, lines


def run_section(section: Section, session: Session, runs_dir: Path) -> SectionRecord:
    left = session.left()
    decision = decide(section.estimate_s, section.limit_s, left)
    argv = section.argv(left) if decision.run else None
    record = SectionRecord(section.name, section.item, "skipped", decision.reason, section.estimate_s)
    if decision.run and argv is None:
        record.reason = f"skipped for time: too little left ({left:.0f}s) for even its shortest form"
    if argv is None:
        session.say(f"== {section.name}: {record.reason}")
        return record
    session.say(f"== {section.name} (item {section.item}): {decision.reason}\n   $ {' '.join(argv)}")
    began = time.monotonic()
    code, timed_out, lines = run_process(argv, decision.timeout_s, session)
    record.seconds, record.returncode, record.timeout_s = round(time.monotonic() - began, 1), code, decision.timeout_s
    record.results = parse_json_lines("\n".join(line for _, line in lines))
    record.status = "timeout" if timed_out else ("ok" if code == 0 else "failed")
    record.reason = {"timeout": f"killed at its timeout of {decision.timeout_s}s", "ok": decision.reason,
                     "failed": f"exit code {code}: {lines[-1][1][:300] if lines else 'no output'}"}[record.status]
    if section.name == "pipeline":
        record.results.append({"phases_s": pipeline_phases(lines, record.seconds)})
        collect_pipeline_files(runs_dir / "gpu_pipeline", session.out, record)
    if section.name == "env":
        session.env.update(next((r for r in record.results if r.get("kind") == "env"), {}))
    session.say(f"== {section.name}: {record.status} in {record.seconds}s (estimate {section.estimate_s:.0f}s), "
                f"{len(record.results)} results")
    return record


def collect_pipeline_files(run_dir: Path, out: Path, record: SectionRecord) -> None:
    """The run's train.log and report.json into the output folder; the report's numbers into the record."""
    for name, target in (("train.log", "pipeline_train.log"), ("report.json", "pipeline_report.json")):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out / target)
    if (run_dir / "report.json").exists():
        report = json.loads((run_dir / "report.json").read_text())
        keep = ("steps", "train_seconds", "tokens_per_second", "looping_enabled_step", "val_bpb_prequant", "val_bpb",
                "quant_gap_bpb", "val_bpb_final", "val_bpb_final_label", "artifact_bytes", "code_bytes", "total_bytes",
                "eval_seconds", "val_tokens", "model_params", "stopped_by")
        record.results.append({"report": {k: report.get(k) for k in keep}})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/pgolf-gpu-out"))
    parser.add_argument("--budget", type=float, default=float(os.environ.get("GPU_SESSION_BUDGET_S", "480")),
                        help="seconds of command time for all sections (env GPU_SESSION_BUDGET_S)")
    parser.add_argument("--dry-run", action="store_true", default=bool(os.environ.get("GPU_SESSION_DRY_RUN")),
                        help="the CPU plumbing run, tiny shapes (env GPU_SESSION_DRY_RUN=1)")
    parser.add_argument("--sections", default=os.environ.get("GPU_SESSION_SECTIONS", ""),
                        help="comma-separated subset, in the usual order (env GPU_SESSION_SECTIONS); default all")
    parser.add_argument("--list", action="store_true", help="print the sections and their estimates, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "dry" if args.dry_run else "gpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(os.environ.get("GPU_SESSION_RUNS_DIR", "/tmp/pgolf-gpu-runs")) / str(os.getpid())
    plan = sections(mode, str(runs_dir))
    chosen = set(filter(None, args.sections.split(","))) or {s.name for s in plan}
    unknown = chosen - {s.name for s in plan}
    if unknown:
        print(f"unknown sections {sorted(unknown)}; choose from {[s.name for s in plan]}", file=sys.stderr)
        return 2
    session = Session(out, args.budget, mode)
    session.say(f"mode {mode}, budget {args.budget:.0f}s, out {out}; sections (estimate / hard cap):")
    for s in plan:
        session.say(f"   {s.name:20s} item {s.item}  {s.estimate_s:5.0f}s / {s.limit_s:5.0f}s"
                    + ("" if s.name in chosen else "  (not chosen)"))
    if args.list:
        return 0
    for section in plan:
        if section.name not in chosen:
            session.records.append(SectionRecord(section.name, section.item, "skipped",
                                                 "not chosen (GPU_SESSION_SECTIONS)", section.estimate_s))
            continue
        session.records.append(run_section(section, session, runs_dir))
        session.add_results(session.records[-1])
        session.write_summary(finished=False)
    session.write_summary(finished=True)
    session.say(f"done: {sum(r.status == 'ok' for r in session.records)} ok, "
                f"{sum(r.status == 'skipped' for r in session.records)} skipped, "
                f"{sum(r.status in ('failed', 'timeout') for r in session.records)} failed; see {out}/summary.md")
    summary = json.loads((out / "summary.json").read_text())
    print(summary_markdown(summary, with_results=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
