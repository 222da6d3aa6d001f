"""Shared parts of ``pgolf seeds`` and ``pgolf sweep`` (tooling): seed lists, output folders that are
agreed across ranks and never reused, one in-process training run, and the t-interval of a mean.

Runs go through :func:`pgolf.run.main` one after the other in this process, each into its own run
directory, with the exact code size ``pgolf export`` would count. Under ``torchrun`` every rank runs
the same loop (each run is a distributed run); only rank 0 writes summaries and prints.
"""

import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.config import Config, apply_config_overrides, config_to_json, flatten_config
from pgolf.dist import broadcast_object_from_main, init_distributed, is_main_process, shutdown_distributed
from pgolf.errors import ConfigError, PgolfError, TrainingError
from pgolf.exp.stats import student_t_upper_tail
from pgolf.export.bundle import exported_code_bytes
from pgolf.fsutil import write_text_atomic
from pgolf.run import main as run_main
from pgolf.train.run_directory import new_run_id

# The sweep/seed tools own these keys: SEED comes from --seeds, RUN_ID from the folder layout.
RESERVED_KEYS = ("SEED", "RUN_ID")
CONFIDENCE = 0.95


def print_main(text: str = "", *, err: bool = False) -> None:
    """Print on rank 0 (or in a single process): the one that prints and writes summaries."""
    if is_main_process():
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def parse_seed_list(text: str) -> list[int]:
    """``"42,314,999"`` -> ``[42, 314, 999]``; empty items, non-integers and repeats are errors."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part for part in parts):
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 42,314,999.")
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: every seed must be an integer, e.g. --seeds 42,314,999.") from None
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text!r} repeats {', '.join(map(str, repeated))}; each seed runs once.")
    return seeds


def refuse_reserved_keys(items: list[str], command: str) -> None:
    """SEED and RUN_ID on the command line would fight with what the command sets per run."""
    for item in items:
        key = item.partition("=")[0].strip().upper()
        if key in RESERVED_KEYS:
            how = "give the seeds with --seeds" if key == "SEED" else "name the folder with --name"
            raise ConfigError(f"`pgolf {command}` sets {key} for every run itself; remove {item!r} and {how}.")


def claim_output_dir(cfg: Config, name: str | None, prefix: str) -> Path:
    """Create the new folder ``RUNS_DIR/NAME`` (default ``PREFIX_<date>_<time>_<hex>``), the same on
    every rank. An existing folder is an error: a seed group or sweep is never added to or overwritten."""
    init_distributed(cfg.run.pgolf_device)  # under torchrun the ranks must agree on the (random) default name
    runs_dir = cfg.run.runs_dir
    chosen = broadcast_object_from_main(name or f"{prefix}_{new_run_id()}")
    path = Path(runs_dir) / chosen
    problem = None
    if is_main_process():
        if path.exists():
            problem = (f"{path} already exists; pgolf never adds to or overwrites a {prefix} folder. "
                       "Choose another --name (or leave it out for a fresh one).")
        else:
            path.mkdir(parents=True)
    problem = broadcast_object_from_main(problem)
    if problem:
        raise ConfigError(problem)
    return path


def write_json_once(path: Path, payload: dict) -> None:
    """Rank 0 writes ``payload`` atomically; an existing file is an error (never overwritten)."""
    if is_main_process():
        write_text_atomic(path, json.dumps(payload, indent=2, default=list) + "\n")


def describe_config(cfg: Config, preset: Config, preset_name: str) -> dict:
    """What a group/sweep file records about a configuration: preset, changes from it, every value."""
    preset_values = flatten_config(preset)
    changes = {key.upper(): value for key, value in flatten_config(cfg).items()
               if value != preset_values[key] and key not in ("run_id", "seed")}
    return {"preset": preset_name, "changes_from_preset": changes, "config": json.loads(config_to_json(cfg))}


@contextlib.contextmanager
def one_process_group_for_all_runs():
    """Under torchrun, one process group for all the runs, closed once after the last: every run is
    started with ``keep_process_group=True`` (see :func:`run_training`), because opening the group again
    in the same processes hangs when the ranks get there at different times (a second rendezvous on
    torchrun's store). After a failure the group is left alone (another rank may not be there)."""
    yield
    shutdown_distributed()


def run_training(cfg: Config, *, preset_name: str, preset_cfg: Config, out_dir: Path, run_id: str, seed: int,
                 echo: bool) -> dict:
    """One full training run (train, quantize, pack, round trip) into ``out_dir/run_id``; its report, with
    the exact code bytes ``pgolf export`` would write for its configuration (as ``pgolf train`` counts)."""
    cfg = apply_config_overrides(cfg, {"seed": seed, "run_id": run_id, "runs_dir": str(out_dir)}, source="runner")
    return run_main(cfg, preset_name=preset_name, preset_cfg=preset_cfg, echo=echo,
                    code_bytes=exported_code_bytes(cfg, preset_name=preset_name), keep_process_group=True)


def run_or_explain(what: str, finished: list[str], fn, *args, **kwargs) -> dict:
    """``fn(...)``, or an error naming the failed run and the ones that finished (they stay on disk)."""
    try:
        return fn(*args, **kwargs)
    except PgolfError as error:
        kept = f"; finished runs kept: {', '.join(finished)}" if finished else ""
        raise TrainingError(f"{what} failed: {error}{kept}") from error
    except Exception:
        # A bug or a crash (CUDA OOM, ...): keep the traceback, but say which run it was first.
        print_main(f"{what} failed (finished runs kept: {', '.join(finished) or 'none'})", err=True)
        raise


def final_score(report: dict) -> tuple[float, str]:
    """The score a run reports: its last evaluation phase (TTT, sliding window), else the round trip."""
    return float(report.get("val_bpb_final", report["val_bpb"])), str(report.get("val_bpb_final_label", "quantized"))


def run_summary(seed: int, report: dict) -> dict:
    """The per-run fields the seed and sweep tables show."""
    bpb, label = final_score(report)
    return {"seed": seed, "val_bpb": bpb, "score_label": label, "val_bpb_roundtrip": report["val_bpb"],
            "steps": report.get("steps"), "train_seconds": report.get("train_seconds"),
            "total_bytes": report.get("total_bytes"), "run_dir": report.get("run_dir")}


def student_t_critical(confidence: float, df: float) -> float:
    """The two-sided critical value: P(|T| <= t) = ``confidence`` for Student's t with ``df`` d.o.f.
    Found by bisection on the tail function of :mod:`pgolf.exp.stats` (monotone; 200 halvings)."""
    target = (1.0 - confidence) / 2.0
    low, high = 0.0, 1.0
    while student_t_upper_tail(high, df) > target:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_upper_tail(middle, df) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def two_sided_p(t: float, df: float) -> float:
    return min(1.0, 2.0 * student_t_upper_tail(abs(t), df))


@dataclass(frozen=True)
class MeanInterval:
    """Mean of n values, their sample std and the t-interval of the mean (None below two values)."""
    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci_low": self.low, "ci_high": self.high,
                "confidence": self.confidence}


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> MeanInterval:
    """mean +- t_{n-1} x std / sqrt(n): the one-sample t-interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return MeanInterval(len(values), mean, None, None, None, confidence)
    std = statistics.stdev(values)
    half = student_t_critical(confidence, len(values) - 1) * std / math.sqrt(len(values))
    return MeanInterval(len(values), mean, std, mean - half, mean + half, confidence)


def compare_arm(scores: list[float], reference: list[float], *, paired: bool = True,
                confidence: float = CONFIDENCE) -> dict:
    """An arm's scores against the reference's, seed by seed (paired t) or as two sets (Welch).

    delta = arm - reference (negative = the arm scores better). Fields: test, n, deltas (paired),
    delta_mean, delta_std (paired: std of the per-seed differences), delta_se (standard error of
    delta_mean), ci_low, ci_high, df, t, p (two-sided), uncertainty (why there is no interval)."""
    if paired:
        return paired_comparison(scores, reference, confidence)
    return welch_comparison(scores, reference, confidence)


def _with_interval(result: dict, delta: float, standard_error: float, df: float, confidence: float) -> dict:
    """Add the t-interval and the two-sided p-value of ``delta`` (undefined without spread)."""
    result = {**result, "delta_se": standard_error}
    if standard_error == 0.0:
        return {**result, "ci_low": delta, "ci_high": delta, "df": df, "t": None, "p": None,
                "uncertainty": "no spread: every seed gives the same difference"}
    half = student_t_critical(confidence, df) * standard_error
    t = delta / standard_error
    return {**result, "ci_low": delta - half, "ci_high": delta + half, "df": df, "t": t, "p": two_sided_p(t, df),
            "uncertainty": None}


def paired_comparison(scores: list[float], reference: list[float], confidence: float = CONFIDENCE) -> dict:
    """Paired t on the per-seed differences (the same seed and data order in both runs of a pair)."""
    if len(scores) != len(reference):
        raise ValueError(f"a paired comparison needs one score per seed on both sides, got {len(scores)} "
                         f"and {len(reference)}")
    deltas = [score - ref for score, ref in zip(scores, reference)]
    result = {"test": "paired", "n": len(deltas), "deltas": deltas, "delta_mean": statistics.fmean(deltas)}
    if len(deltas) < 2:
        return {**result, "delta_std": None, "delta_se": None, "ci_low": None, "ci_high": None, "df": None,
                "t": None, "p": None, "uncertainty": "n/a (1 seed)"}
    std = statistics.stdev(deltas)
    result["delta_std"] = std
    return _with_interval(result, result["delta_mean"], std / math.sqrt(len(deltas)), len(deltas) - 1, confidence)


def welch_comparison(scores: list[float], reference: list[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's t on two independent sets (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    delta = statistics.fmean(scores) - statistics.fmean(reference)
    result = {"test": "welch", "n": len(scores), "delta_mean": delta, "delta_std": None}
    if min(len(scores), len(reference)) < 2:
        return {**result, "delta_se": None, "ci_low": None, "ci_high": None, "df": None, "t": None, "p": None,
                "uncertainty": "n/a (1 seed)"}
    var_arm = statistics.variance(scores) / len(scores)
    var_ref = statistics.variance(reference) / len(reference)
    standard_error = math.sqrt(var_arm + var_ref)
    if standard_error == 0.0:
        return _with_interval(result, delta, 0.0, len(scores) + len(reference) - 2, confidence)
    df = (var_arm + var_ref) ** 2 / (var_arm ** 2 / (len(scores) - 1) + var_ref ** 2 / (len(reference) - 1))
    return _with_interval(result, delta, standard_error, df, confidence)


def describe_comparison(comparison: dict) -> str:
    """``[low, high] p=...`` or the reason there is no interval."""
    if comparison["ci_low"] is None or comparison["p"] is None:
        return comparison["uncertainty"]
    return f"[{comparison['ci_low']:+.6f}, {comparison['ci_high']:+.6f}] p={comparison['p']:.4g}"


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
