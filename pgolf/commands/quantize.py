"""``pgolf quantize RUN_DIR [KEY=value ...] [--json] [--sweep] [--name NAME]`` (tooling, not exported).

Re-quantizes a finished run's full-precision weights (``final_weights.pgtc``) with other quantization
settings, without retraining: a new artifact goes into ``RUN_DIR/quantize/<name>/`` (the run's own
artifact is never touched), is round-tripped into a fresh model (in the looping state the run ended
in) and scored. GPTQ recalibrates on the run's TRAINING shards, exactly as a run does.

``--sweep`` is the rate-distortion view: every scheme of :data:`SWEEP_SCHEMES` is quantized and scored
once, then compressed with every available compressor; the table (scheme x compressor -> bytes,
round-trip BPB) is printed and saved as JSON and CSV, and drawn as ``sweep.png`` (one marker shape per
scheme, one colour per compressor) when matplotlib is importable.
"""

import argparse
import contextlib
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from pgolf.artifact.compress import available_model_compressor_names
from pgolf.artifact.container import unpack_tensor_container
from pgolf.artifact.pack import pack_quantized_tensors
from pgolf.quant.packing import unpack_model_artifact
from pgolf.artifact.size import ARTIFACT_CAP_BYTES
from pgolf.commands.configuration import load_run_dir_config, locate_run_data, require_run_config
from pgolf.config import (Config, apply_config_overrides, config_field_index, config_to_json, parse_cli_overrides,
                          validate_config)
from pgolf.dist import init_distributed
from pgolf.errors import ArtifactError, ConfigError, PgolfError
from pgolf.export.bundle import exported_code_bytes
from pgolf.fsutil import require_writable_directory, write_text_atomic
from pgolf.model.gpt import build_model
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.data.run_data import prepare_validation_data
from pgolf.eval.phases import plain_evaluator
from pgolf.quant.calibration import collect_gptq_hessians
from pgolf.quant.model_artifact import load_artifact_into_fresh_model, write_quantized_artifact
from pgolf.runtime import Runtime
from pgolf.train.resume import read_json_file
from pgolf.train.run_directory import new_run_id

try:  # the `plots` extra: without matplotlib the sweep still writes its table, only sweep.png is left out
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter
except ImportError:
    Figure = Line2D = FuncFormatter = None

# Besides the quant and artifact sections: where the data lives (as for `pgolf eval`), which does not change
# what is measured.
QUANTIZE_EXTRA_KEYS = ("data_path", "tokenizer_path")
# Quant-section keys that act during training, so they cannot change after it.
QUANTIZE_TRAINING_ONLY_KEYS = ("qat_start_frac",)

# Rate-distortion sweep: each scheme sets these keys on top of the run's config and the user's overrides.
SWEEP_SCHEMES: dict[str, dict[str, object]] = {
    "rtn int8 percentile": {"quant_method": "rtn", "matrix_bits": 8, "clip_method": "percentile"},
    "rtn int6 percentile": {"quant_method": "rtn", "matrix_bits": 6, "clip_method": "percentile"},
    "rtn int5 percentile": {"quant_method": "rtn", "matrix_bits": 5, "clip_method": "percentile"},
    "rtn int6 sdclip": {"quant_method": "rtn", "matrix_bits": 6, "clip_method": "sdclip"},
    "gptq int6 sdclip": {"quant_method": "gptq", "matrix_bits": 6, "clip_method": "sdclip"},
    "gptq int5 sdclip": {"quant_method": "gptq", "matrix_bits": 5, "clip_method": "sdclip"},
}


class ToolLog:
    """The ``line``/``event`` interface of RunLogger, collected for ``quantize.log`` and printed unless quiet."""

    def __init__(self, echo: bool):
        self.echo = echo
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)
        if self.echo:
            print(text, flush=True)

    def event(self, kind: str, **fields) -> None:
        pass


@dataclasses.dataclass
class QuantizeSession:
    """A run's full-precision weights, loaded and scored once, ready to be re-quantized."""

    run_dir: Path
    cfg: Config
    ctx: object
    data: object
    evaluate: object
    state: dict[str, torch.Tensor]
    looping: bool
    prequant: object


def find_run_artifact(run_dir: str | Path) -> Path:
    """The model artifact a run wrote: report.json's ``artifact_file``, else the one ``artifact/final_model.*.ptz``."""
    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if report_path.is_file():
        name = read_json_file(report_path, "restore it from a copy of the run").get("artifact_file")
        if name and (run_dir / "artifact" / name).is_file():
            return run_dir / "artifact" / name
    found = sorted((run_dir / "artifact").glob("final_model.*.ptz"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ArtifactError(f"no artifact/final_model.*.ptz in {run_dir}; RUN_DIR must be a run written by `pgolf train`.")
    raise ArtifactError(f"several artifacts in {run_dir / 'artifact'} ({', '.join(p.name for p in found)}) and "
                        "report.json does not say which one the run wrote; move the others away.")


def check_quantize_overrides(overrides: dict[str, str]) -> None:
    """Only quantization keys (and where the data lives) may change: the weights are already trained."""
    index = config_field_index()
    for raw_key in overrides:
        key = raw_key.strip().lower()
        if key in QUANTIZE_TRAINING_ONLY_KEYS or (key in index and index[key][0] not in ("quant", "artifact")
                                                  and key not in QUANTIZE_EXTRA_KEYS):
            quant_keys = ", ".join(sorted(name.upper() for name, (section, _) in index.items()
                                          if section in ("quant", "artifact")
                                          and name not in QUANTIZE_TRAINING_ONLY_KEYS))
            why = "acts during training" if key in QUANTIZE_TRAINING_ONLY_KEYS else f"is in the {index[key][0]} section"
            raise ConfigError(f"{raw_key.upper()} {why}; `pgolf quantize` re-quantizes trained "
                              f"weights and only accepts quantization keys ({quant_keys}) and DATA_PATH/TOKENIZER_PATH. "
                              "Train a new run to change anything else.")


def load_run_config(run_dir: Path, overrides: dict[str, str]) -> Config:
    """The run's config.json with the (checked) overrides applied, its data located and its tokenizer checked."""
    require_run_config(run_dir)  # before the overrides: a wrong RUN_DIR is the first thing to say
    check_quantize_overrides(overrides)
    return locate_run_data(validate_config(load_run_dir_config(run_dir, overrides)), run_dir, overrides)


def load_full_precision_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, looping) from ``final_weights.pgtc``; older runs take the looping state from their artifact."""
    path = run_dir / "final_weights.pgtc"
    if not path.is_file():
        raise PgolfError(f"{path} not found: this run kept no full-precision weights, so it cannot be "
                         "re-quantized. Runs written by `pgolf train` keep them; re-run training.")
    state, meta = unpack_tensor_container(path.read_bytes())
    if "looping" in meta:
        return state, bool(meta["looping"])
    _, artifact_meta = unpack_model_artifact(find_run_artifact(run_dir).read_bytes())
    return state, bool(artifact_meta["extra"].get("looping"))


def model_from_state(state: dict[str, torch.Tensor], cfg: Config, runtime: Runtime, looping: bool):
    model = build_model(cfg.model, runtime)
    model.load_state_dict(state, strict=True)
    if looping:
        model.set_looping(True)
    return model


def open_session(run_dir: Path, overrides: dict[str, str], log: ToolLog) -> QuantizeSession:
    """Load the run, its data and its weights, and score the full-precision model (``val_bpb_prequant``)."""
    cfg = load_run_config(run_dir, overrides)
    state, looping = load_full_precision_weights(run_dir)
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    data = prepare_validation_data(cfg)
    evaluate = plain_evaluator(cfg, ctx, data)
    prequant = evaluate(model_from_state(state, cfg, ctx.runtime, looping))
    log.line(f"quantize: {run_dir} looping:{looping} val_bpb_prequant:{prequant.val_bpb:.6f}")
    return QuantizeSession(run_dir, cfg, ctx, data, evaluate, state, looping, prequant)


def require_plain_folder_name(name: str) -> None:
    """``--name`` is one folder inside ``RUN_DIR/quantize/``: no path separator, ``..`` or absolute path,
    which would put an artifact (and a report.json that looks like a run) anywhere."""
    separators = "/\\"
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ConfigError(f"--name {name!r} is not a plain folder name; the output goes to RUN_DIR/quantize/<name>/, "
                          "so give a name without '/', '\\' or '..' (e.g. --name int5_brotli).")


def planned_output_dir(run_dir: Path, name: str | None, prefix: str = "") -> Path:
    """``RUN_DIR/quantize/<name>``, checked before any work (the pre-quantization evaluation takes minutes
    on a real model): a plain folder name that does not exist yet (nothing is ever overwritten)."""
    if name is not None:
        require_plain_folder_name(name)
    out_dir = run_dir / "quantize" / (name or prefix + new_run_id())
    if out_dir.exists():
        raise ConfigError(f"{out_dir} already exists; pgolf never overwrites. Choose another --name.")
    return out_dir


@contextlib.contextmanager
def created_output_dir(out_dir: Path):
    """Create ``out_dir`` (as late as possible) and remove it again if the command fails inside, so that the
    same --name can be retried: a folder this command created holds only its own partial output."""
    try:
        out_dir.mkdir(parents=True)
    except FileExistsError:  # appeared since planned_output_dir: someone else's, left alone
        raise ConfigError(f"{out_dir} already exists; pgolf never overwrites. Choose another --name.") from None
    try:
        yield out_dir
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def gptq_hessians_for(session: QuantizeSession, cfg: Config, log: ToolLog):
    """Hessians from the run's training shards (None unless ``cfg`` asks for GPTQ), and their seconds."""
    if cfg.quant.quant_method != "gptq":
        return None, 0.0
    model = model_from_state(session.state, cfg, session.ctx.runtime, session.looping)
    return collect_gptq_hessians(model, cfg, session.ctx, session.data.train_files, log)


def original_run_fields(run_dir: Path) -> dict:
    """The run's own figures from its report.json (``run_val_bpb`` ...), for comparison; {} without one."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        return {}
    report = read_json_file(report_path, "restore it from a copy of the run")
    keys = ("val_bpb", "val_bpb_prequant", "artifact_bytes", "code_bytes", "total_bytes", "artifact_file")
    return {f"run_{key}": report.get(key) for key in keys}


def run_preset_name(run_dir: Path) -> str:
    """The preset the run was started from (its report.json), else ``custom``."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        return "custom"
    return read_json_file(report_path, "restore it from a copy of the run").get("preset", "custom")


def code_bytes_of(run_dir: Path, cfg: Config) -> int:
    """The exact code bytes: the train_gpt.py ``pgolf export`` writes for ``cfg`` and the run's preset,
    as ``pgolf train`` counts them (quantization keys are baked into the script, so they can move it
    by a few bytes)."""
    return exported_code_bytes(cfg, preset_name=run_preset_name(run_dir))


def quantize_run(run_dir: Path, overrides: dict[str, str], *, name: str | None = None, echo: bool = True) -> dict:
    """Re-quantize a run into ``RUN_DIR/quantize/<name>/``, round-trip it and report; returns the report."""
    log = ToolLog(echo)
    require_writable_directory(run_dir / "quantize", "the new artifact")  # before any work
    out_dir = planned_output_dir(run_dir, name)
    session = open_session(run_dir, overrides, log)
    hessians, calibration_seconds = gptq_hessians_for(session, session.cfg, log)
    with created_output_dir(out_dir):
        return write_requantized(session, out_dir, overrides, hessians, calibration_seconds, log)


def write_requantized(session: QuantizeSession, out_dir: Path, overrides: dict[str, str], hessians,
                      calibration_seconds: float, log: ToolLog) -> dict:
    """Write the new artifact, its config and report into ``out_dir`` and score its round trip."""
    run_dir, cfg = session.run_dir, session.cfg
    write_text_atomic(out_dir / "config.json", config_to_json(cfg))
    path, size, fields = write_quantized_artifact(session.state, cfg, out_dir, log, hessians=hessians,
                                                  looping=session.looping, code_bytes=code_bytes_of(run_dir, cfg))
    roundtrip = session.evaluate(load_artifact_into_fresh_model(path, cfg.model, session.ctx.runtime))
    report = {"run_dir": str(run_dir), "output_dir": str(out_dir), "artifact_path": str(path),
              "overrides": {key.upper(): value for key, value in overrides.items()},
              "val_bpb_prequant": session.prequant.val_bpb, "val_loss_prequant": session.prequant.val_loss,
              "val_bpb": roundtrip.val_bpb, "val_loss": roundtrip.val_loss,
              "quant_gap_bpb": roundtrip.val_bpb - session.prequant.val_bpb, "calibration_seconds": calibration_seconds,
              "artifact_bytes": size.model_bytes, "code_bytes": size.code_bytes, "total_bytes": size.total_bytes,
              "cap_bytes": size.cap, "margin_bytes": size.margin_bytes, "fits": size.fits, **fields,
              **original_run_fields(run_dir)}
    log.line(f"val_bpb_prequant:{report['val_bpb_prequant']:.6f} val_bpb:{report['val_bpb']:.6f} "
             f"gap:{report['quant_gap_bpb']:+.6f} total_bytes:{size.total_bytes} "
             f"({'fits' if size.fits else 'OVER'} the {size.cap:,}-byte cap by {abs(size.margin_bytes):,} bytes)")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
    write_text_atomic(out_dir / "quantize.log", "\n".join(log.lines) + "\n")
    return report


def sweep_scheme_rows(session: QuantizeSession, label: str, cfg: Config, hessians, code_bytes: int,
                      compressors: list[str]) -> list[dict]:
    """Quantize once as ``cfg`` says, score the round trip once, compress with every compressor."""
    tensors, meta = quantize_for_artifact(session.state, cfg.quant, hessians if cfg.quant.quant_method == "gptq" else None)
    stride = cfg.artifact.byte_shuffle_stride
    blobs = {name: pack_quantized_tensors(tensors, meta, name, stride, {"looping": session.looping}) for name in compressors}
    restored, _ = unpack_model_artifact(blobs[compressors[0]])
    sums = session.evaluate(model_from_state(restored, cfg, session.ctx.runtime, session.looping))
    q = cfg.quant
    common = {"scheme": label, "quant_method": q.quant_method, "matrix_bits": q.matrix_bits, "embed_bits": q.embed_bits,
              "clip_method": q.clip_method, "shuffle_stride": stride, "val_bpb": sums.val_bpb,
              "quant_gap_bpb": sums.val_bpb - session.prequant.val_bpb, "code_bytes": code_bytes}
    return [{**common, "compressor": name, "model_bytes": len(blob), "total_bytes": code_bytes + len(blob),
             "fits": code_bytes + len(blob) <= ARTIFACT_CAP_BYTES} for name, blob in blobs.items()]


def format_sweep_table(rows: list[dict], prequant_bpb: float) -> list[str]:
    """One line per scheme: round-trip BPB, gap, and model bytes under each compressor."""
    compressors = list(dict.fromkeys(row["compressor"] for row in rows))
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    lines = [f"rate-distortion sweep (val_bpb_prequant {prequant_bpb:.4f}; model bytes, code bytes not included)",
             f"{'scheme':<22} {'val_bpb':>8} {'gap':>8} " + " ".join(f"{name:>11}" for name in compressors)]
    for scheme in schemes:
        mine = {row["compressor"]: row for row in rows if row["scheme"] == scheme}
        first = next(iter(mine.values()))
        sizes = " ".join(f"{mine[name]['model_bytes']:>11,}" for name in compressors)
        lines.append(f"{scheme:<22} {first['val_bpb']:>8.4f} {first['quant_gap_bpb']:>+8.4f} {sizes}")
    return lines


# Matplotlib markers per scheme, in SWEEP_SCHEMES order (a scheme past the list reuses them).
SWEEP_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
# The PNG text chunk holding the plotted points, so a reader (or a test) can check the picture.
SWEEP_PNG_POINTS_KEY = "pgolf-sweep-points"


def plot_sweep(rows: list[dict], path: Path, title: str) -> list[dict]:
    """Draw the rate-distortion plot (total bytes vs round-trip BPB): one marker shape per scheme, one
    colour per compressor. Returns the plotted points read back from the figure, also stored as JSON in
    the PNG's ``pgolf-sweep-points`` text chunk. Needs matplotlib (the ``plots`` extra).

    Drawn on a bare :class:`Figure` (no pyplot): no global backend or figure registry is touched."""
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    compressors = list(dict.fromkeys(row["compressor"] for row in rows))
    colours = {name: f"C{index % 10}" for index, name in enumerate(compressors)}
    figure = Figure(figsize=(9, 5))
    axes = figure.subplots()
    for index, scheme in enumerate(schemes):
        for compressor in compressors:
            mine = [row for row in rows if row["scheme"] == scheme and row["compressor"] == compressor]
            line, = axes.plot([row["total_bytes"] for row in mine], [row["val_bpb"] for row in mine], linestyle="none",
                              marker=SWEEP_MARKERS[index % len(SWEEP_MARKERS)], color=colours[compressor], markersize=8,
                              alpha=0.85)
            line.set_gid(json.dumps([scheme, compressor]))
    points = [{"scheme": key[0], "compressor": key[1], "total_bytes": x, "val_bpb": y}
              for line in axes.get_lines() for key in [json.loads(line.get_gid())] for x, y in line.get_xydata().tolist()]
    legends = _sweep_legends(axes, schemes, compressors, colours)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1e6:.3f}"))
    axes.set_xlabel("code + model bytes (MB, decimal)")
    axes.set_ylabel("round-trip val_bpb (lower is better)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    # bbox_inches="tight" grows the canvas to hold the legends outside the axes.
    figure.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=legends,
                   metadata={SWEEP_PNG_POINTS_KEY: json.dumps(points)})
    return points


def _sweep_legends(axes, schemes: list[str], compressors: list[str], colours: dict[str, str]) -> list:
    """Two legends: marker shape = scheme, colour = compressor; returns both."""
    shapes = [Line2D([], [], linestyle="none", marker=SWEEP_MARKERS[i % len(SWEEP_MARKERS)], color="0.3", label=scheme)
              for i, scheme in enumerate(schemes)]
    swatches = [Line2D([], [], linestyle="none", marker="o", color=colours[name], label=name) for name in compressors]
    # Outside the axes, on the right, so they never hide a point.
    first = axes.legend(handles=shapes, title="scheme", fontsize=7, title_fontsize=8, loc="upper left",
                        bbox_to_anchor=(1.02, 1.0))
    axes.add_artist(first)
    second = axes.legend(handles=swatches, title="compressor", fontsize=7, title_fontsize=8, loc="lower left",
                         bbox_to_anchor=(1.02, 0.0))
    return [first, second]


def write_sweep_files(out_dir: Path, rows: list[dict], summary: dict) -> list[str]:
    """sweep.json, sweep.csv and, when matplotlib is importable, sweep.png; returns notes for the log."""
    write_text_atomic(out_dir / "sweep.json", json.dumps({**summary, "rows": rows}, indent=2, sort_keys=True))
    with open(out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if Figure is None:
        return [f"sweep: wrote {out_dir / 'sweep.json'} and sweep.csv; no sweep.png: matplotlib is not installed "
                "(pip install 'pgolf[plots]' or pip install matplotlib)"]
    title = (f"run {Path(summary['run_dir']).name}: rate-distortion (pre-quant val_bpb "
             f"{summary['val_bpb_prequant']:.4f}; cap {summary['cap_bytes']:,} bytes)")
    plot_sweep(rows, out_dir / "sweep.png", title)
    return [f"sweep: wrote {out_dir / 'sweep.json'}, sweep.csv and sweep.png"]


def sweep_run(run_dir: Path, overrides: dict[str, str], *, name: str | None = None, echo: bool = True) -> dict:
    """The rate-distortion table of a run; saved under ``RUN_DIR/quantize/<name>/``; returns the summary."""
    log = ToolLog(echo)
    require_writable_directory(run_dir / "quantize", "the sweep's table")  # before any work
    out_dir = planned_output_dir(run_dir, name, prefix="sweep_")
    session = open_session(run_dir, overrides, log)
    compressors = available_model_compressor_names()
    configs = {label: validate_config(apply_config_overrides(session.cfg, settings, source=f"sweep scheme {label!r}"))
               for label, settings in SWEEP_SCHEMES.items()}
    gptq_cfg = next((cfg for cfg in configs.values() if cfg.quant.quant_method == "gptq"), None)
    hessians, _ = gptq_hessians_for(session, gptq_cfg, log) if gptq_cfg is not None else (None, 0.0)
    rows = []
    for label, cfg in configs.items():
        rows += sweep_scheme_rows(session, label, cfg, hessians, code_bytes_of(run_dir, cfg), compressors)
        log.line(f"sweep: {label} val_bpb:{rows[-1]['val_bpb']:.6f}")
    summary = {"run_dir": str(run_dir), "output_dir": str(out_dir), "val_bpb_prequant": session.prequant.val_bpb,
               "code_bytes": code_bytes_of(run_dir, session.cfg), "cap_bytes": ARTIFACT_CAP_BYTES,
               "compressors": compressors, "overrides": {key.upper(): value for key, value in overrides.items()}}
    with created_output_dir(out_dir):  # only now: the sweep itself writes nothing
        for line in format_sweep_table(rows, session.prequant.val_bpb) + write_sweep_files(out_dir, rows, summary):
            log.line(line)
        write_text_atomic(out_dir / "quantize.log", "\n".join(log.lines) + "\n")
    return {**summary, "rows": rows}


def run_quantize_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf quantize`` (its parser is in pgolf/cli.py)."""
    overrides = parse_cli_overrides(args.overrides)
    action = sweep_run if args.sweep else quantize_run
    result = action(Path(args.run_dir), overrides, name=args.name, echo=not args.json)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
