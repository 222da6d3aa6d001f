"""Paired sweeps and ablations: the work behind ``pgolf sweep`` (tooling; the command is pgolf/commands/sweep.py).

    pgolf sweep [--preset P] [--seeds 1,2] [--ablate] [--unpaired] [--name N] [--json] KEY=v1,v2 ...

Arms are the cartesian product of the axes (``KEY=v1,v2``; a single value is fixed for every arm); the
first arm (every axis at its first value) is the reference. ``--ablate`` instead makes one arm per
feature the configuration enables, with that feature switched off (:data:`FEATURE_SWITCHES`), after the
reference. Every arm runs every seed with the same seed and the same training data order (the
loaders' order does not depend on the arm), so the per-seed differences from the reference are
paired: the table shows each arm's mean score and the mean paired difference with its t-interval and
two-sided p-value (``--unpaired``: Welch's test on the two sets instead).

Tuple-valued keys (``TTT_LORA_TARGETS``, ``CONTROL_TENSOR_NAME_PATTERNS``, ...) use commas inside one
value, so their arms are separated by ``|``: ``TTT_LORA_TARGETS='c_q,c_v|c_q,c_k,c_v,proj'``.

Layout: ``RUNS_DIR/<sweep>/plan.json`` (first), ``<arm-slug>_seed<SEED>/`` per run, and
``sweep.json`` + ``sweep.csv`` (last); nothing is ever overwritten. A sweep stopped by a failure or
Ctrl-C writes ``sweep.partial.json`` + ``sweep.partial.csv`` (the complete pairs, marked partial; a
later stop replaces them) and is continued with ``--resume``.
"""

import csv
import dataclasses
import io
import itertools
import json
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pgolf.config import (Config, apply_config_overrides, closest_config_keys, config_differences,
                          config_field_index, flatten_config, validate_config)
from pgolf.errors import ConfigError
from pgolf.exp.runner import (CONFIDENCE, PlannedRun, compare_arm, describe_comparison, describe_config, mean_interval,
                              earlier_partial_holds_more, now_text, partial_fields,
                              print_stop, reusable_reports, run_planned, write_partial_summary)

TUPLE_ARM_SEPARATOR = "|"


@dataclass(frozen=True)
class FeatureSwitch:
    """How to tell that a configuration has a feature on, and the settings that turn it off (the
    baseline's values)."""
    is_on: Callable[[Config], bool]
    off: dict[str, Any]


# Feature -> switch, for ``--ablate``. Only features that can change the score are listed; kernels
# that compute the same maths (fused MLP/CE, sharded Muon) and size-only settings are not.
FEATURE_SWITCHES: dict[str, FeatureSwitch] = {
    "depth_recurrence": FeatureSwitch(lambda c: c.model.num_loops > 0, {"NUM_LOOPS": 0}),
    # The two-lane mode is a kind of parallel residual: without a start layer it is refused, so "off" is
    # the single-lane default too.
    "parallel_residuals": FeatureSwitch(lambda c: c.model.parallel_residual_start >= 0,
                                        {"PARALLEL_RESIDUAL_START": -1, "PARALLEL_RESIDUAL_MODE": "single"}),
    "xsa": FeatureSwitch(lambda c: c.model.xsa_last_n > 0, {"XSA_LAST_N": 0}),
    "smear_gate": FeatureSwitch(lambda c: c.model.smear_gate_enabled, {"SMEAR_GATE_ENABLED": False}),
    "attn_out_gate": FeatureSwitch(lambda c: c.model.attn_out_gate != "none", {"ATTN_OUT_GATE": "none"}),
    "skip_gates": FeatureSwitch(lambda c: c.model.skip_gates_enabled, {"SKIP_GATES_ENABLED": False}),
    "leaky_relu": FeatureSwitch(lambda c: c.model.activation == "leaky_relu2", {"ACTIVATION": "relu2"}),
    "partial_rope": FeatureSwitch(lambda c: c.model.rope_dims > 0, {"ROPE_DIMS": 0}),
    "ntk_rope": FeatureSwitch(lambda c: c.model.rope_train_seq_len > 0, {"ROPE_TRAIN_SEQ_LEN": 0}),
    "ln_scale": FeatureSwitch(lambda c: c.model.ln_scale, {"LN_SCALE": False}),
    "ortho_init": FeatureSwitch(lambda c: c.model.ortho_init, {"ORTHO_INIT": False}),
    "doc_isolated_attention": FeatureSwitch(lambda c: c.model.doc_isolated_attention,
                                            {"DOC_ISOLATED_ATTENTION": False}),
    "fp8_matmul": FeatureSwitch(lambda c: c.model.fp8_matmul, {"FP8_MATMUL": False}),
    "muoneq_r": FeatureSwitch(lambda c: c.optim.muon_row_normalize, {"MUON_ROW_NORMALIZE": False}),
    "polar_express": FeatureSwitch(lambda c: c.optim.muon_ns_coefficients == "polar_express",
                                   {"MUON_NS_COEFFICIENTS": "quintic"}),
    "muon_wd": FeatureSwitch(lambda c: c.optim.muon_wd > 0, {"MUON_WD": 0.0}),
    "adam_wd": FeatureSwitch(lambda c: c.optim.adam_wd > 0, {"ADAM_WD": 0.0}),
    "embed_wd": FeatureSwitch(lambda c: c.optim.embed_wd > 0, {"EMBED_WD": 0.0}),
    "grad_clip": FeatureSwitch(lambda c: c.optim.grad_clip_norm > 0, {"GRAD_CLIP_NORM": 0.0}),
    "min_lr": FeatureSwitch(lambda c: c.train.min_lr > 0, {"MIN_LR": 0.0}),
    "ema": FeatureSwitch(lambda c: c.train.ema_decay > 0, {"EMA_DECAY": 0.0}),
    "shuffled_loader": FeatureSwitch(lambda c: c.train.train_loader == "shuffled", {"TRAIN_LOADER": "sequential"}),
    "qat": FeatureSwitch(lambda c: c.quant.qat_start_frac > 0, {"QAT_START_FRAC": 0.0}),
    # Without GPTQ there is no calibration to reserve time for: those seconds go back to training.
    "gptq": FeatureSwitch(lambda c: c.quant.quant_method == "gptq",
                          {"QUANT_METHOD": "rtn", "GPTQ_RESERVE_SECONDS": 0.0}),
    "sdclip": FeatureSwitch(lambda c: c.quant.clip_method == "sdclip", {"CLIP_METHOD": "percentile"}),
    "lqer": FeatureSwitch(lambda c: c.quant.lqer_enabled, {"LQER_ENABLED": False}),
    "sliding_window": FeatureSwitch(lambda c: c.eval.sliding_window_enabled, {"SLIDING_WINDOW_ENABLED": False}),
    "ttt": FeatureSwitch(lambda c: c.ttt.ttt_enabled, {"TTT_ENABLED": False}),
    "phased_ttt": FeatureSwitch(lambda c: c.ttt.ttt_enabled and c.ttt.ttt_phases > 0, {"TTT_PHASES": 0}),
}


@dataclass(frozen=True)
class Arm:
    """One configuration of a sweep: its folder slug, a readable label, its changes and the config."""
    slug: str
    label: str
    changes: dict[str, Any]
    cfg: Config = field(repr=False)


@dataclass(frozen=True)
class SweepItems:
    """The command line's KEY=value items split into fixed values (every arm) and axes (in order)."""
    fixed: list[str]
    axes: list[tuple[str, list[str]]]


def tuple_valued_keys() -> set[str]:
    """Upper-case names of the tuple-typed config fields (their values hold commas)."""
    sections = {section.name: section.default_factory for section in dataclasses.fields(Config)}
    return {name.upper() for name, (section, _) in config_field_index().items()
            if typing.get_origin(typing.get_type_hints(sections[section])[name]) is tuple}


def refuse_unknown_keys(keys: list[str]) -> None:
    """One error naming every unknown key (with the closest valid names), before anything runs."""
    known = {name.upper() for name in config_field_index()} | {"PRESET"}
    unknown = [key for key in keys if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = closest_config_keys(key)
            hints.append(f"{key} (did you mean {', '.join(close)}?)" if close else key)
        raise ConfigError(f"unknown config key(s) in the sweep: {'; '.join(hints)}. "
                          "Run `pgolf describe` to list every key.")


def split_axis_values(key: str, raw: str, tuple_keys: set[str]) -> list[str]:
    """The arm values of one item: ``|``-separated for tuple keys, ``,``-separated for the others."""
    if key in tuple_keys:
        return raw.split(TUPLE_ARM_SEPARATOR)
    if TUPLE_ARM_SEPARATOR in raw:
        raise ConfigError(f"{key}={raw!r}: '|' separates arms only for tuple-valued keys "
                          f"({', '.join(sorted(tuple_keys))}); separate {key}'s arm values with commas.")
    return raw.split(",")


def parse_sweep_items(items: list[str]) -> SweepItems:
    """Split ``KEY=v1,v2`` axes from ``KEY=value`` fixed items; unknown, repeated or empty values are errors."""
    tuple_keys = tuple_valued_keys()
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().upper()
        if not sep or not key:
            raise ConfigError(f"expected KEY=value or KEY=v1,v2 in the sweep, got {item!r} "
                              "(example: MATRIX_LR=0.02,0.04).")
        if key in parsed:
            raise ConfigError(f"{key} is given twice in the sweep; give one item with all its values (KEY=v1,v2).")
        parsed[key] = raw
    refuse_unknown_keys(list(parsed))
    fixed, axes = [], []
    for key, raw in parsed.items():
        values = [raw] if key == "PRESET" else split_axis_values(key, raw, tuple_keys)
        if len(values) > 1 and any(not value.strip() for value in values):
            raise ConfigError(f"{key}={raw!r} has an empty arm value; list values like {key}=v1,v2.")
        if key == "PRESET" and "," in raw:
            raise ConfigError(f"preset={raw!r}: one sweep runs one preset; sweep over keys, not presets.")
        if len(values) == 1:
            fixed.append(f"{key}={raw}")
        elif key == "RUNS_DIR":
            raise ConfigError("RUNS_DIR cannot be an axis: every run of a sweep goes into RUNS_DIR/<sweep>/.")
        else:
            axes.append((key, [value.strip() for value in values]))
    return SweepItems(fixed, axes)


def slugify(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")[:limit] or "arm"


def build_arm(index: int, base: Config, changes: dict[str, Any], label: str, name: str) -> Arm:
    """Apply ``changes`` to ``base`` and validate; the error names the arm."""
    try:
        cfg = validate_config(apply_config_overrides(base, changes, source=f"sweep arm {label}"))
    except ConfigError as error:
        raise ConfigError(f"sweep arm {index} ({label}) is not a valid configuration: {error}") from None
    return Arm(f"a{index}_{slugify(name)}", label, dict(changes), cfg)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def plan_axis_arms(base: Config, axes: list[tuple[str, list[str]]]) -> list[Arm]:
    """The cartesian product of the axes, in the order given (first arm = every first value)."""
    if not axes:
        raise ConfigError("nothing to compare: give at least one axis KEY=v1,v2 (or --ablate). "
                          "For one configuration under several seeds use `pgolf seeds`.")
    keys = [key for key, _ in axes]
    arms = []
    for index, values in enumerate(itertools.product(*(values for _, values in axes))):
        changes = dict(zip(keys, values))
        label = " ".join(f"{key}={value}" for key, value in changes.items())
        name = "_".join(f"{key.lower()}-{value}" for key, value in changes.items())
        arms.append(build_arm(index, base, changes, label, name))
    return arms


def enabled_features(cfg: Config) -> list[str]:
    return [name for name, switch in FEATURE_SWITCHES.items() if switch.is_on(cfg)]


def plan_ablation_arms(reference: Config) -> list[Arm]:
    """The reference, then one arm per enabled feature with only that feature's switch turned off."""
    features = enabled_features(reference)
    if not features:
        raise ConfigError("the configuration enables none of the features --ablate knows "
                          f"({', '.join(FEATURE_SWITCHES)}); nothing to ablate.")
    arms = [Arm("a0_reference", "reference", {}, validate_config(reference))]
    values = flatten_config(reference)
    for index, feature in enumerate(features, start=1):
        # Only the settings that change: the label and plan.json then say what the arm really changes.
        off = {key: value for key, value in FEATURE_SWITCHES[feature].off.items() if values[key.lower()] != value}
        label = f"no {feature} (" + " ".join(f"{key}={format_value(value)}" for key, value in off.items()) + ")"
        arms.append(build_arm(index, reference, off, label, f"no_{feature}"))
    return arms


SWEEP_PLAN_FILE = "plan.json"
SWEEP_SUMMARY_FILE = "sweep.json"
SWEEP_PARTIAL_FILE = "sweep.partial.json"
SWEEP_CSV = "sweep.csv"
SWEEP_PARTIAL_CSV = "sweep.partial.csv"


def planned_runs(arms: list[Arm], seeds: list[int]) -> list[PlannedRun]:
    """Every arm under every seed, seed by seed (all arms of the first seed, then the next): an
    interruption leaves complete pairs."""
    return [PlannedRun(f"arm {index} ({arm.label}) seed {seed}", arm.cfg, seed, f"{arm.slug}_seed{seed}")
            for seed in seeds for index, arm in enumerate(arms)]


def runs_by_arm(done: list[dict], arm_count: int) -> list[list[dict]]:
    """Run summaries in plan order (seed by seed) -> per arm, its runs in seed order."""
    return [done[index::arm_count] for index in range(arm_count)]


def run_arms(arms: list[Arm], seeds: list[int], sweep_dir: Path, preset: Config, preset_name: str, echo: bool, *,
             resume: bool = False, summarise: Callable[[list[list[dict]], list[int]], dict] | None = None,
             ) -> list[list[dict]]:
    """Every arm under every seed, seed by seed (complete pairs first); per arm, its runs in seed order.
    With ``resume``, finished runs are reused and a started one continued. On a failure or Ctrl-C, the
    summary of the complete pairs (``summarise(runs, seeds)``) is written to sweep.partial.json/.csv, what
    finished and what did not is printed, and the error goes on."""
    planned = planned_runs(arms, seeds)
    reuse = reusable_reports(planned, sweep_dir) if resume else None
    done: list[dict] = []
    try:
        run_planned(planned, sweep_dir, done, preset_name=preset_name, preset_cfg=preset, echo=echo, reuse=reuse,
                    banner=lambda i: f"== sweep {sweep_dir.name}: run {i + 1}/{len(planned)}: "
                                     f"{arms[i % len(arms)].label} seed {planned[i].seed} ==")
    except BaseException as stop:
        complete = len(done) // len(arms)
        written = [str(sweep_dir / SWEEP_PARTIAL_FILE)]
        if not earlier_partial_holds_more(sweep_dir / SWEEP_PARTIAL_FILE, len(done)):
            written = write_partial_sweep(sweep_dir, planned, done, stop, arms, seeds, summarise)
        pairs = (f"complete pairs: seed(s) {', '.join(map(str, seeds[:complete]))} (every arm)" if complete else
                 "no seed has finished every arm yet: no complete pair")
        print_stop("sweep", sweep_dir, planned, done, stop, written, pairs)
        raise
    return runs_by_arm(done, len(arms))


def write_partial_sweep(sweep_dir: Path, planned: list[PlannedRun], done: list[dict], stop: BaseException,
                        arms: list[Arm], seeds: list[int], summarise) -> list[str]:
    """The partial summary of the complete pairs (rank 0); returns the files written."""
    complete = len(done) // len(arms)
    by_arm = runs_by_arm(done[:complete * len(arms)], len(arms))
    result = summarise(by_arm, seeds[:complete]) if summarise is not None and complete else {"arms": []}
    payload = {**partial_fields(stop, planned, done, sweep_dir), **result, "planned_seeds": seeds,
               "complete_seeds": seeds[:complete],
               # finished, but their seed has not finished every arm: no pair yet
               "unpaired_runs": done[complete * len(arms):]}
    write_partial_summary(sweep_dir / SWEEP_PARTIAL_FILE, json.dumps(payload, indent=2, default=list) + "\n")
    if not result["arms"]:  # no complete pair: no table (a later stop never has fewer pairs than an earlier)
        return [str(sweep_dir / SWEEP_PARTIAL_FILE)]
    write_partial_summary(sweep_dir / SWEEP_PARTIAL_CSV, sweep_csv_text(payload))
    return [str(sweep_dir / SWEEP_PARTIAL_FILE), str(sweep_dir / SWEEP_PARTIAL_CSV)]


def sweep_result(sweep_dir: Path, preset_name: str, arms: list[Arm], runs: list[list[dict]], seeds: list[int],
                 *, paired: bool, ablate: bool, items: SweepItems) -> dict:
    reference_scores = [run["val_bpb"] for run in runs[0]]
    arm_rows = []
    for index, (arm, arm_runs) in enumerate(zip(arms, runs)):
        scores = [run["val_bpb"] for run in arm_runs]
        comparison = None if index == 0 else compare_arm(scores, reference_scores, paired=paired)
        arm_rows.append({"slug": arm.slug, "label": arm.label, "reference": index == 0,
                         "changes": {key: format_value(value) for key, value in arm.changes.items()},
                         "runs": arm_runs, "comparison": comparison, **mean_interval(scores).as_dict()})
    return {"sweep": str(sweep_dir), "preset": preset_name, "seeds": seeds, "test": "paired" if paired else "welch",
            "confidence": CONFIDENCE, "ablate": ablate, "fixed": items.fixed, "axes": dict(items.axes),
            "arms": arm_rows}


CSV_COMPARISON_FIELDS = ("test", "delta_mean", "delta_std", "delta_se", "ci_low", "ci_high", "df", "t", "p")


def sweep_csv_text(result: dict) -> str:
    """One row per arm: scores per seed, mean, and the comparison with the reference."""
    out = io.StringIO()
    writer = csv.writer(out)
    seed_columns = [f"val_bpb_seed{seed}" for seed in result["seeds"]]
    writer.writerow(["arm", "label", "reference", "n", "mean_val_bpb", "std_val_bpb", *CSV_COMPARISON_FIELDS,
                     "uncertainty", *seed_columns])
    for row in result["arms"]:
        comparison = row["comparison"] or {"uncertainty": "reference"}
        writer.writerow([row["slug"], row["label"], int(row["reference"]), row["n"], row["mean"], row["std"],
                         *[comparison.get(name, "") for name in CSV_COMPARISON_FIELDS], comparison["uncertainty"],
                         *[run["val_bpb"] for run in row["runs"]]])
    return out.getvalue()


def format_sweep_table(result: dict) -> list[str]:
    test = "paired t" if result["test"] == "paired" else "Welch t"
    lines = [f"sweep {result['sweep']} (preset {result['preset']}): {len(result['arms'])} arms x "
             f"{len(result['seeds'])} seeds {result['seeds']}, delta = arm - reference, {test}, "
             f"{result['confidence']:.0%} interval",
             f"  {'arm':<32} {'n':>2}  {'mean_bpb':>10}  {'delta':>11}  {'interval / p':<40} label"]
    for row in result["arms"]:
        what = "reference" if row["reference"] else describe_comparison(row["comparison"])
        delta = "" if row["reference"] else f"{row['comparison']['delta_mean']:+.6f}"
        lines.append(f"  {row['slug'][:32]:<32} {row['n']:>2}  {row['mean']:10.6f}  {delta:>11}  {what:<40} "
                     f"{row['label']}")
    return lines


def sweep_plan_payload(sweep_dir: Path, arms: list[Arm], preset: Config, preset_name: str, seeds: list[int],
                       items: SweepItems) -> dict:
    return {"kind": "sweep", "sweep": sweep_dir.name, "created": now_text(), "argv": sys.argv[1:], "seeds": seeds,
            "fixed": items.fixed, "axes": dict(items.axes),
            "reference": describe_config(arms[0].cfg, preset, preset_name),
            "arms": [planned_arm(arm, arms[0], sweep_dir, seeds) for arm in arms]}


def planned_arm(arm: Arm, reference: Arm, sweep_dir: Path, seeds: list[int]) -> dict:
    """An arm as plan.json records it, with the config keys where it differs from the reference."""
    return {"slug": arm.slug, "label": arm.label,
            "changes": {key: format_value(value) for key, value in arm.changes.items()},
            "differences_from_reference": sorted(key.upper() for key in config_differences(arm.cfg, reference.cfg)),
            "run_dirs": [str(sweep_dir / f"{arm.slug}_seed{seed}") for seed in seeds]}
