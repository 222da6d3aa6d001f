"""The GPU session's time-budget planner and summary (bench/session_plan.py, used by bench/gpu_session.py):
a section runs only when its estimate fits in what is left after the margin, its timeout never reaches
past the budget, the pipeline's training shrinks to fit, and the summary says what was skipped and why."""

import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "session_plan", Path(__file__).resolve().parents[2] / "bench" / "session_plan.py")
plan = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(plan)


def test_a_section_runs_only_when_its_estimate_fits_after_the_margin():
    assert plan.decide(estimate_s=60, limit_s=150, left_s=200, margin_s=15).run
    assert plan.decide(estimate_s=60, limit_s=150, left_s=75, margin_s=15).run  # exactly fits
    late = plan.decide(estimate_s=60, limit_s=150, left_s=74, margin_s=15)
    assert not late.run and late.timeout_s == 0 and "skipped for time" in late.reason


def test_the_timeout_is_the_sections_cap_cut_to_what_is_left():
    assert plan.decide(estimate_s=60, limit_s=150, left_s=400, margin_s=15).timeout_s == 150
    assert plan.decide(estimate_s=60, limit_s=150, left_s=100, margin_s=15).timeout_s == 85


def test_the_pipeline_trains_as_long_as_wanted_or_as_long_as_fits():
    assert plan.fit_train_seconds(left_s=400, overhead_s=110, wanted_s=90, minimum_s=20, margin_s=15) == 90
    assert plan.fit_train_seconds(left_s=175, overhead_s=110, wanted_s=90, minimum_s=20, margin_s=15) == 50
    assert plan.fit_train_seconds(left_s=144, overhead_s=110, wanted_s=90, minimum_s=20, margin_s=15) is None


def test_json_lines_are_picked_out_of_mixed_output():
    text = 'compiling...\n{"check": "step", "ok": true}\n{not json}\n[1, 2]\n  {"a": 1}  \n'
    assert plan.parse_json_lines(text) == [{"check": "step", "ok": True}, {"a": 1}]


def test_pipeline_phases_run_from_marker_to_marker():
    lines = [(0.5, "pgolf run preset:record_sp8192_1gpu"), (2.0, "warmup_step:1/5"), (30.0, "step:1/20000 x"),
             (121.0, "train_done steps:80"), (125.0, "final_prequant val_loss:4"), (131.0, "GPTQ:collected 67 Hessians"),
             (170.0, "Serialized model gptq_int6+brotli: 1 bytes"), (172.0, "Total submission size x"),
             (176.0, "final_gptq_int6_brotli_roundtrip val_loss:4"), (186.0, "final_sliding_window val_loss:4")]
    phases = plan.pipeline_phases(lines, total_s=190.0)
    assert phases["compile and priming (WARMUP_STEPS)"] == 28.0
    assert phases["training"] == 91.0
    assert phases["quantize and compress"] == 39.0
    assert phases["sliding-window evaluation"] == 10.0
    assert phases["report and exit"] == 4.0
    assert sum(phases.values()) == 190.0


def test_a_pipeline_stopped_early_has_only_the_phases_it_reached():
    phases = plan.pipeline_phases([(2.0, "warmup_step:1/5"), (40.0, "step:1/20000")], total_s=50.0)
    assert list(phases) == ["startup (data checks, model build)", "compile and priming (WARMUP_STEPS)", "report and exit"]


def test_the_summary_lists_what_ran_what_was_skipped_and_every_result():
    records = [plan.SectionRecord("env", 0, "ok", "fits", 30, 75, 12.0, 0, [{"kind": "env", "device": "H100"}]),
               plan.SectionRecord("kernels", 1, "timeout", "killed at its timeout of 112s", 45, 112, 112.0, -15),
               plan.SectionRecord("pipeline", 3, "skipped", "skipped for time: estimate 130s > 40s left", 130)]
    summary = plan.build_summary(records, {"device": "H100", "torch": "2.11", "commit": "abc"}, 480, 470.0, True)
    assert summary["ran"] == ["env", "kernels"]
    assert summary["skipped"] == {"pipeline": "skipped for time: estimate 130s > 40s left"}
    assert summary["failed"] == {"kernels": "killed at its timeout of 112s"}
    assert json.loads(json.dumps(summary))["sections"][0]["results"] == [{"kind": "env", "device": "H100"}]
    text = plan.summary_markdown(summary)
    assert "| pipeline | 3 | skipped |" in text and "H100" in text and "torch 2.11" in text
    assert '"device": "H100"' in text and '"device": "H100"' not in plan.summary_markdown(summary, with_results=False)
