"""``pgolf sweep``: axis parsing, ablation planning, the paired/Welch maths against float64 references
and SciPy, and one tiny end-to-end sweep whose two identical arms must pair to a difference of exactly 0."""

import argparse
import csv
import io
import json
import math

import pytest
from scipy import stats as scipy_stats

from pgolf.cli import main as cli_main
from pgolf.commands.sweep import plan_sweep
from pgolf.config import config_differences, flatten_config, validate_config
from pgolf.errors import ConfigError
from pgolf.exp.runner import compare_arm
from pgolf.exp.sweep import (FEATURE_SWITCHES, enabled_features, format_sweep_table, parse_sweep_items,
                             plan_ablation_arms, plan_axis_arms)
from pgolf.presets import PRESETS, record_sp8192, tiny_cpu

TINY = {"ITERATIONS": "2", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096", "VAL_MAX_TOKENS": "8192",
        "MAX_WALLCLOCK_SECONDS": "0"}


@pytest.fixture(autouse=True)
def single_cpu_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SEED", "RUN_ID", "PGOLF_PRESET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")


# ---- axes


def test_axes_make_the_cartesian_product_in_order_with_fixed_values_everywhere():
    items = parse_sweep_items(["MATRIX_LR=0.02,0.04", "num_layers=2", "MODEL_DIM=64,96,128"])
    assert items.fixed == ["NUM_LAYERS=2"]
    assert items.axes == [("MATRIX_LR", ["0.02", "0.04"]), ("MODEL_DIM", ["64", "96", "128"])]
    arms = plan_axis_arms(tiny_cpu(), items.axes)
    got = [(arm.cfg.optim.matrix_lr, arm.cfg.model.model_dim) for arm in arms]
    assert got == [(0.02, 64), (0.02, 96), (0.02, 128), (0.04, 64), (0.04, 96), (0.04, 128)]
    assert arms[0].label == "MATRIX_LR=0.02 MODEL_DIM=64"  # the first arm is the reference
    assert len({arm.slug for arm in arms}) == 6
    for arm in arms:  # every arm differs from the preset only in its axes
        assert set(config_differences(arm.cfg, tiny_cpu())) <= {"matrix_lr", "model_dim"}


def test_tuple_keys_separate_arms_with_a_bar():
    items = parse_sweep_items(["TTT_LORA_TARGETS=c_q,c_v|c_q,c_k,c_v,proj", "CONTROL_TENSOR_NAME_PATTERNS=a,b"])
    assert items.fixed == ["CONTROL_TENSOR_NAME_PATTERNS=a,b"]  # commas inside one tuple value: fixed
    arms = plan_axis_arms(tiny_cpu(), items.axes)
    assert [arm.cfg.ttt.ttt_lora_targets for arm in arms] == [("c_q", "c_v"), ("c_q", "c_k", "c_v", "proj")]


@pytest.mark.parametrize("items,fragments", [
    (["NUM_LAYER=2,3", "FOO=1", "MATRIX_LR=0.1"], ["NUM_LAYER", "NUM_LAYERS", "FOO"]),
    (["MATRIX_LR=0.02|0.04"], ["tuple-valued", "commas"]),
    (["MATRIX_LR=0.02,,0.04"], ["empty arm value"]),
    (["MATRIX_LR=0.02", "matrix_lr=0.04"], ["twice"]),
    (["MATRIX_LR"], ["KEY=value"]),
    (["preset=tiny_cpu,record_sp8192"], ["one preset"]),
])
def test_bad_items_are_refused_by_name(items, fragments):
    with pytest.raises(ConfigError) as error:
        parse_sweep_items(items)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_invalid_arm_no_axis_and_reserved_keys_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"arm 1 \(NUM_HEADS=3\)"):
        plan_axis_arms(tiny_cpu(), [("NUM_HEADS", ["4", "3"])])
    with pytest.raises(ConfigError, match="nothing to compare"):
        plan_axis_arms(tiny_cpu(), [])
    args = argparse.Namespace(preset="tiny_cpu", ablate=True, overrides=["MATRIX_LR=0.02,0.04"])
    with pytest.raises(ConfigError, match="--ablate makes its own arms"):
        plan_sweep(args)
    for item in ("SEED=1,2", "RUN_ID=x"):
        with pytest.raises(ConfigError, match="sets " + item.split("=")[0]):
            plan_sweep(argparse.Namespace(preset="tiny_cpu", ablate=False, overrides=[item]))


# ---- ablation planning


RECORD_FEATURES = {"depth_recurrence", "parallel_residuals", "xsa", "skip_gates", "leaky_relu", "partial_rope",
                   "ntk_rope", "ln_scale", "ortho_init", "muoneq_r", "muon_wd", "adam_wd", "embed_wd", "grad_clip",
                   "ema", "shuffled_loader", "gptq", "sdclip", "sliding_window", "ttt"}


def test_ablation_of_the_record_switches_off_one_feature_per_arm():
    reference = record_sp8192()
    arms = plan_ablation_arms(reference)
    assert arms[0].label == "reference" and flatten_config(arms[0].cfg) == flatten_config(reference)
    assert {arm.label.split(" ")[1] for arm in arms[1:]} == RECORD_FEATURES
    for arm in arms[1:]:
        feature = arm.label.split(" ")[1]
        changed = set(config_differences(arm.cfg, reference))
        switch_keys = {key.lower() for key in FEATURE_SWITCHES[feature].off}
        assert changed and changed <= switch_keys, (feature, changed)
        assert not FEATURE_SWITCHES[feature].is_on(arm.cfg)
        assert arm.slug == f"a{arms.index(arm)}_no_{feature}"
    # The spelled-out expectations for a few: the values that mean "off" in the baseline.
    by_feature = {arm.label.split(" ")[1]: arm.cfg for arm in arms[1:]}
    assert by_feature["depth_recurrence"].model.num_loops == 0
    assert by_feature["gptq"].quant.quant_method == "rtn" and by_feature["gptq"].train.gptq_reserve_seconds == 0
    assert by_feature["shuffled_loader"].train.train_loader == "sequential"
    assert by_feature["ttt"].ttt.ttt_enabled is False and by_feature["ttt"].eval.sliding_window_enabled


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_presets_ablation_plan_validates(preset):
    """`pgolf sweep --ablate --preset top_sp8192` was refused before anything trained: its "no
    parallel_residuals" arm left PARALLEL_RESIDUAL_MODE=two_lane without a start layer. Every arm of every
    preset's plan must be a valid configuration with its feature off (planned only, nothing trains)."""
    reference = PRESETS[preset]()
    if not enabled_features(reference):
        with pytest.raises(ConfigError, match="nothing to ablate"):
            plan_ablation_arms(reference)
        return
    data = ["DATA_PATH=/data/shards", "TOKENIZER_PATH=/data/t.model"]  # given: no default dataset build
    arms = plan_sweep(argparse.Namespace(preset=preset, ablate=True, overrides=data))[0]
    assert len(arms) == len(enabled_features(reference)) + 1
    for arm in arms[1:]:
        feature = arm.label.split(" ")[1]
        validate_config(arm.cfg)
        assert not FEATURE_SWITCHES[feature].is_on(arm.cfg), feature
        assert arm.changes and all(value != flatten_config(reference)[key.lower()] for key, value in arm.changes.items())


def test_ablation_needs_an_enabled_feature():
    with pytest.raises(ConfigError, match="nothing to ablate"):
        plan_ablation_arms(tiny_cpu())
    data = ["DATA_PATH=/data/shards", "TOKENIZER_PATH=/data/t.model"]  # given: no default dataset build
    args = argparse.Namespace(preset="tiny_cpu", ablate=True, overrides=["SMEAR_GATE_ENABLED=1", "XSA_LAST_N=2", *data])
    arms = plan_sweep(args)[0]
    assert [arm.label for arm in arms] == ["reference", "no xsa (XSA_LAST_N=0)",
                                           "no smear_gate (SMEAR_GATE_ENABLED=0)"]


# ---- statistics


ARM = [1.0851, 1.0874, 1.0832, 1.0869]
REF = [1.0863, 1.0880, 1.0851, 1.0875]


def test_paired_comparison_against_float64_reference_and_scipy():
    deltas = [a - r for a, r in zip(ARM, REF)]
    n = len(deltas)
    mean = sum(deltas) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    result = compare_arm(ARM, REF, paired=True)
    assert result["deltas"] == pytest.approx(deltas, abs=1e-15)
    assert result["delta_mean"] == pytest.approx(mean, rel=1e-12)
    assert result["delta_std"] == pytest.approx(std, rel=1e-10)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-9)
    reference = scipy_stats.ttest_rel(ARM, REF)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-9)
    assert result["p"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert result["df"] == n - 1


def test_welch_comparison_against_scipy():
    result = compare_arm(ARM, REF[:3], paired=False)
    va = scipy_stats.tvar(ARM) / 4
    vr = scipy_stats.tvar(REF[:3]) / 3
    df = (va + vr) ** 2 / (va ** 2 / 3 + vr ** 2 / 2)
    delta = sum(ARM) / 4 - sum(REF[:3]) / 3
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vr)
    reference = scipy_stats.ttest_ind(ARM, REF[:3], equal_var=False)
    assert result["df"] == pytest.approx(df, rel=1e-12)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-9)
    assert result["p"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((delta - half, delta + half), rel=1e-9)


def test_one_seed_and_zero_spread_have_no_interval():
    one = compare_arm([1.10], [1.12])
    assert one["delta_mean"] == pytest.approx(-0.02) and one["uncertainty"] == "n/a (1 seed)"
    assert one["ci_low"] is None and one["p"] is None
    same = compare_arm([1.1, 1.2], [1.1, 1.2])
    assert same["deltas"] == [0.0, 0.0] and same["ci_low"] == same["ci_high"] == 0.0 and same["p"] is None


# ---- end to end


def test_identical_arms_pair_to_exactly_zero_end_to_end(exp_default_data, tmp_path, monkeypatch, capsys):
    """2 arms x 2 seeds of a tiny run. The arms have the same settings, so each seed's pair must give
    exactly the same score: any drift in seed, data order or state between runs would show here.
    (The exact code size costs a full export per run; a stand-in answers it here.)"""
    monkeypatch.setattr("pgolf.exp.runner.exported_code_bytes", lambda cfg, preset_name: 1234)
    settings = {**TINY, "DATA_PATH": str(exp_default_data.data_path),
                "TOKENIZER_PATH": str(exp_default_data.tokenizer_path), "RUNS_DIR": str(tmp_path)}
    items = [f"{key}={value}" for key, value in settings.items()] + ["MATRIX_LR=0.04,0.04"]
    assert cli_main(["sweep", "--seeds", "5,6", "--name", "aa", "--json", *items]) == 0
    result = json.loads(capsys.readouterr().out)
    sweep = tmp_path / "aa"
    reference, other = result["arms"]
    assert reference["reference"] and not other["reference"]
    assert other["comparison"]["deltas"] == [0.0, 0.0] and other["comparison"]["delta_mean"] == 0.0
    for arm in result["arms"]:
        for seed, run in zip((5, 6), arm["runs"]):
            report = json.loads((sweep / f"{arm['slug']}_seed{seed}" / "report.json").read_text())
            assert run["run_dir"] == str(sweep / f"{arm['slug']}_seed{seed}")
            assert report["seed"] == seed and report["val_bpb_final"] == run["val_bpb"]
    assert reference["runs"][0]["val_bpb"] != reference["runs"][1]["val_bpb"]  # the seeds differ
    assert json.loads((sweep / "sweep.json").read_text()) == result
    rows = list(csv.DictReader(io.StringIO((sweep / "sweep.csv").read_text())))
    assert [row["arm"] for row in rows] == [reference["slug"], other["slug"]]
    assert float(rows[1]["delta_mean"]) == 0.0 and rows[0]["uncertainty"] == "reference"
    assert float(rows[0]["val_bpb_seed6"]) == reference["runs"][1]["val_bpb"]
    plan = json.loads((sweep / "plan.json").read_text())
    assert [arm["differences_from_reference"] for arm in plan["arms"]] == [[], []]
    table = "\n".join(format_sweep_table(result))
    assert "reference" in table and "no spread" in table

    assert cli_main(["sweep", "--name", "aa", *items]) == 2
    assert "already exists" in capsys.readouterr().err
