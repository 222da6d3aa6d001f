"""The README.md of a records folder written by ``pgolf record`` (tooling).

Sections: summary, per-seed results, how to reproduce (the torchrun line), the configuration's changes
from its preset, bytes, timings, environment, files, and warnings. Everything comes from the runs'
``report.json``/``config.json`` and the exported script; nothing is typed by hand.
"""

from pgolf.config import Config, config_differences
from pgolf.export.bundle import ENVIRONMENT_FIELDS, SCRIPT_SEED
from pgolf.presets import PRESETS, preset_config

README_HIDDEN_KEYS = ("seed", "run_id", "runs_dir")


def _results_section(submission: dict) -> list[str]:
    lines = ["## Results", "",
             "| seed | val_bpb | val_loss | steps | train s | eval s | artifact bytes | code bytes | total bytes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in submission["seeds"]:
        lines.append(f"| {e['seed']} | {e['val_bpb']:.8f} | {e['val_loss']:.8f} | {e['steps']} | "
                     f"{e['train_seconds']:.1f} | {e['eval_seconds']:.1f} | {e['artifact_bytes']:,} | "
                     f"{e['code_bytes']:,} | {e['total_bytes']:,} |")
    std, count = submission["val_bpb_std"], len(submission["seeds"])
    spread = f", sample std {std:.8f} over {count} seeds." if std is not None else " (one seed)."
    lines += ["", f"**Mean val_bpb {submission['val_bpb']:.8f}**{spread}",
              f"The score is each run's `{submission['score_label']}` evaluation (its last evaluation phase), "
              "of the artifact loaded back into a fresh model.", ""]
    return lines


def _reproduce_section(runs) -> list[str]:
    cfg = runs[0].cfg
    settable = ", ".join(f"`{name.upper()}`" for name in sorted(ENVIRONMENT_FIELDS))
    lines = ["## Reproduce", "", "```bash"]
    lines += [f"SEED={run.seed} torchrun --standalone --nproc_per_node={run.world_size} train_gpt.py" for run in runs]
    lines += ["```", "",
              "`train_gpt.py` is the whole program (written by `pgolf export`; the configuration below is baked "
              f"in, except SEED: each run gives its own, as above; without `SEED=` it runs pgolf's default "
              f"{SCRIPT_SEED}). The environment may set only "
              f"{settable}; the script stops with an error naming any other variable that would change a baked "
              "value (export again to change one). It reads the data from the paths baked at export time; "
              "move them with:", "",
              f"`DATA_PATH={cfg.data.data_path} TOKENIZER_PATH={cfg.data.tokenizer_path}`", ""]
    return lines


def _config_section(runs) -> list[str]:
    preset_name = runs[0].report.get("preset", "custom")
    reference = preset_config(preset_name) if preset_name in PRESETS else Config()
    what = f"preset `{preset_name}`" if preset_name in PRESETS else "pgolf's defaults"
    differences = {k: v for k, v in config_differences(runs[0].cfg, reference).items() if k not in README_HIDDEN_KEYS}
    lines = ["## Configuration", "", f"Starting point: {what}. Changes (SEED, RUN_ID and RUNS_DIR vary per run):", ""]
    if not differences:
        return lines + ["(none)", ""]
    lines += ["| key | value | preset |", "|---|---|---|"]
    lines += [f"| `{key.upper()}` | `{after!r}` | `{before!r}` |"
              for key, (before, after) in sorted(differences.items())]
    return lines + [""]


def _bytes_section(script, submission: dict) -> list[str]:
    cap = submission["cap_bytes"]
    return ["## Bytes", "",
            f"- `train_gpt.py`: **{script.wrapped_bytes:,} bytes** on disk: the counted code (minified "
            f"{script.minified_bytes:,} bytes, wrapped with {script.wrap_codec} + base85 + exec). "
            f"`train_gpt.readable.py` ({script.readable_bytes:,} bytes) is the same program with its docstrings "
            "and error messages, for reviewers; not counted. The counted script's errors name the line of "
            "`train_gpt.readable.py` that holds their message.",
            f"- Largest total (artifact + code): **{submission['bytes_total']:,}** of {cap:,} bytes "
            f"(margin {cap - submission['bytes_total']:,}).", ""]


def _timings_section(runs) -> list[str]:
    cap = runs[0].cfg.train.max_wallclock_seconds
    lines = ["## Timings", "", f"Training budget `MAX_WALLCLOCK_SECONDS={cap:g}`.", "",
             "| seed | train s | + GPTQ calibration s | stopped by | eval phases (s) |", "|---:|---:|---:|---|---|"]
    for run in runs:
        report = run.report
        phases = (report.get("eval_budget") or {}).get("phases", {"quantized": report.get("eval_seconds", 0.0)})
        listing = ", ".join(f"{label} {seconds:.1f}" for label, seconds in phases.items())
        lines.append(f"| {run.seed} | {report['train_seconds']:.1f} | {report.get('calibration_seconds', 0.0):.1f} | "
                     f"{report.get('stopped_by', '?')} | {listing} |")
    return lines + [""]


def _environment_section(runs, submission: dict) -> list[str]:
    env = runs[0].report.get("env", {})
    return ["## Environment", "",
            f"- torch {submission['torch_version']}, CUDA {submission['cuda_version']}, Python {env.get('python')}",
            f"- GPU: {submission['gpu']}; platform {env.get('platform')}",
            f"- pgolf code hash `{submission['code_hash']}` (every seed's log and train_gpt.py carry it)", ""]


def record_readme(runs, script, submission: dict, warnings: list[str]) -> str:
    """The whole README.md text."""
    author = submission["author"] or "unknown"
    if submission["github_id"]:
        author += f" (@{submission['github_id']})"
    lines = [f"# {submission['name']}", "",
             f"**val_bpb {submission['val_bpb']:.8f}** (mean of {len(submission['seeds'])} seed(s)); "
             f"{submission['bytes_total']:,} bytes at most; track `{submission['track']}`; {submission['date']}; "
             f"by {author}.", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in warnings] + [""]
    lines += _results_section(submission) + _reproduce_section(runs) + _config_section(runs)
    lines += _bytes_section(script, submission) + _timings_section(runs) + _environment_section(runs, submission)
    lines += ["## Files", "", "`train_gpt.py` (counted), `train_gpt.readable.py`, "
              + ", ".join(f"`train_seed{run.seed}.log`" for run in runs)
              + ", `submission.json`, this README. Written by `pgolf record`; verify with `pgolf record-check`.", ""]
    return "\n".join(lines)
