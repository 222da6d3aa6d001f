"""Time-budget planning and the summary of a GPU session (pure logic: no torch, no subprocesses).

bench/gpu_session.py runs its sections in order of value; before each one it asks ``decide`` whether the
section's estimate still fits in what is left of the budget, and with what hard timeout. The pipeline
section shrinks its training time to fit (``fit_train_seconds``). ``build_summary`` turns the section
records into the summary the session writes after every section (so a killed session still leaves one).
"""

import json
import re
from dataclasses import asdict, dataclass, field

# Seconds kept back from every decision for writing the summary and the files after the last section.
DEFAULT_MARGIN_S = 15


@dataclass(frozen=True)
class Decision:
    run: bool
    timeout_s: int  # hard limit for the section (0 when it does not run)
    reason: str


def decide(estimate_s: float, limit_s: float, left_s: float, margin_s: float = DEFAULT_MARGIN_S) -> Decision:
    """Run a section estimated at ``estimate_s`` (hard cap ``limit_s``) with ``left_s`` of the budget left?

    It runs only when the estimate fits in what is left after the margin; its timeout is its own cap,
    cut to what is left, so a hang or a slow section can never eat the budget of the summary.
    """
    usable = left_s - margin_s
    if usable < estimate_s:
        return Decision(False, 0, f"skipped for time: estimate {estimate_s:.0f}s > {max(usable, 0):.0f}s left "
                                  f"(budget left {left_s:.0f}s, margin {margin_s:.0f}s)")
    timeout = int(min(limit_s, usable))
    return Decision(True, timeout, f"estimate {estimate_s:.0f}s fits in {usable:.0f}s; timeout {timeout}s")


def fit_train_seconds(left_s: float, overhead_s: float, wanted_s: float, minimum_s: float,
                      margin_s: float = DEFAULT_MARGIN_S) -> int | None:
    """Training seconds for a pipeline whose other phases take ``overhead_s``: ``wanted_s`` when that
    fits, less when it does not, None when even ``minimum_s`` would not fit."""
    available = left_s - margin_s - overhead_s
    if available < minimum_s:
        return None
    return int(min(wanted_s, available))


# `pgolf train` log lines that end each phase of the pipeline, in the order they appear: (phase, pattern).
PIPELINE_MARKERS = (
    ("startup (data checks, model build)", r"^warmup_step:"),
    ("compile and priming (WARMUP_STEPS)", r"^step:1/"),
    ("training", r"^train_done "),
    ("prequant evaluation", r"^final_prequant "),
    ("GPTQ calibration", r"^GPTQ:collected "),
    ("quantize and compress", r"^Serialized model "),
    ("size report", r"^Total submission size "),
    ("round-trip evaluation", r"_roundtrip val_loss:"),
    ("sliding-window evaluation", r"sliding\S* val_loss:"),
)


def pipeline_phases(lines: list[tuple[float, str]], total_s: float) -> dict[str, float]:
    """Seconds of each pipeline phase from timestamped log lines: a phase runs from the previous marker
    found to its own; what follows the last marker (report, files) is "report and exit"."""
    phases, last = {}, 0.0
    for phase, pattern in PIPELINE_MARKERS:
        seen = next((t for t, line in lines if re.search(pattern, line)), None)
        if seen is not None and seen >= last:
            phases[phase] = round(seen - last, 1)
            last = seen
    phases["report and exit"] = round(max(total_s - last, 0.0), 1)
    return phases


@dataclass
class SectionRecord:
    """What one section did: ``status`` is ok, failed, timeout or skipped."""

    name: str
    item: int  # the item (1 correctness, 2 throughput, 3 pipeline, 0 environment/tests)
    status: str
    reason: str
    estimate_s: float
    timeout_s: int = 0
    seconds: float = 0.0
    returncode: int | None = None
    results: list[dict] = field(default_factory=list)


def parse_json_lines(text: str) -> list[dict]:
    """Every line of ``text`` that is a JSON object (the bench scripts print one per measurement)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def build_summary(records: list[SectionRecord], env: dict, budget_s: float, elapsed_s: float,
                  finished: bool) -> dict:
    """The session summary: environment, what ran, what was skipped and why, every number."""
    return {
        "finished": finished,  # False while sections are still running (or if the session was killed)
        "env": env,
        "budget_s": budget_s,
        "elapsed_s": round(elapsed_s, 1),
        "ran": [r.name for r in records if r.status != "skipped"],
        "skipped": {r.name: r.reason for r in records if r.status == "skipped"},
        "failed": {r.name: r.reason for r in records if r.status in ("failed", "timeout")},
        "sections": [asdict(r) for r in records],
    }


def summary_markdown(summary: dict, with_results: bool = True) -> str:
    """A short human-readable version of ``build_summary``'s dict (the table alone without results)."""
    env = summary["env"]
    lines = [f"# GPU session summary ({'finished' if summary['finished'] else 'NOT finished'})", "",
             f"device: {env.get('device', '?')}; torch {env.get('torch', '?')}; commit {env.get('commit', '?')}; "
             f"mode {env.get('mode', '?')}", f"budget {summary['budget_s']:.0f}s, elapsed {summary['elapsed_s']}s", "",
             "| section | item | status | seconds | estimate | why |", "|---|---|---|---|---|---|"]
    for s in summary["sections"]:
        lines.append(f"| {s['name']} | {s['item']} | {s['status']} | {s['seconds']:.1f} | {s['estimate_s']:.0f} "
                     f"| {s['reason']} |")
    for s in summary["sections"] if with_results else []:
        if s["results"]:
            lines += ["", f"## {s['name']}", ""]
            lines += [f"- `{json.dumps(result, sort_keys=True)}`" for result in s["results"]]
    return "\n".join(lines) + "\n"
