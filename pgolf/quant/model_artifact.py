"""The run's artifact files: the full-precision weights kept for ``pgolf quantize``, the quantized and
compressed model written against the cap, and a fresh model loaded back from it: by the pipeline as what
its configuration writes (:func:`load_round_trip_model`), by tooling as whatever the blob records
(:func:`load_artifact_into_fresh_model`)."""

import time
from pathlib import Path

import torch

from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.artifact.pack import load_artifact_file, save_artifact
from pgolf.artifact.size import ARTIFACT_CAP_BYTES, SizeReport, upper_bound_code_bytes
from pgolf.config import Config, ModelConfig
from pgolf.errors import ArtifactError
from pgolf.fsutil import write_bytes_atomic
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT, build_model
from pgolf.quant.artifact_quant import format_quantized_weights
from pgolf.quant.packing import (artifact_file_name, build_model_artifact, describe_artifact_pruning,
                                 unpack_configured_model_artifact, unpack_model_artifact)
from pgolf.quant.policy import describe_quant_plan, format_quant_plan
from pgolf.runtime import Runtime

EXACT_CODE_BYTES_NOTE = "exact: the wrapped train_gpt.py that `pgolf export` writes for this configuration"
UPPER_BOUND_CODE_BYTES_NOTE = ("upper bound: total source bytes of the pgolf modules this run imported "
                               "(`pgolf export` measures the real wrapped train_gpt.py)")


# The run's full-precision weights, written when training ends (for a resumed run and `pgolf quantize`).
FINAL_WEIGHTS_FILE = "final_weights.pgtc"
FULL_PRECISION_KIND = "full_precision"


def _cpu_state_and_looping(model: GPT) -> tuple[dict[str, torch.Tensor], bool]:
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    # The looping state travels with the weights: a looped model is evaluated looped (SPEC 4.11).
    return state, bool(getattr(model, "looping", False))


def write_final_weights(model: GPT, run_dir: Path) -> Path:
    """``RUN_DIR/final_weights.pgtc``: the trained weights (uncompressed container), written atomically."""
    state, looping = _cpu_state_and_looping(model)
    return write_bytes_atomic(Path(run_dir) / FINAL_WEIGHTS_FILE,
                              pack_tensor_container(state, {"kind": FULL_PRECISION_KIND, "looping": looping}))


def load_final_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, looping) of a final-weights file; ArtifactError naming the file when it is damaged."""
    try:
        state, meta = unpack_tensor_container(Path(path).read_bytes())
    except (ArtifactError, OSError) as error:
        raise ArtifactError(f"final weights {path} cannot be read ({error}). Restore the file from a copy.") from None
    if meta.get("kind") != FULL_PRECISION_KIND:
        raise ArtifactError(f"{path} holds {meta.get('kind')!r} tensors, not a run's full-precision weights.")
    return state, bool(meta.get("looping"))


def write_artifact(model: GPT, cfg: Config, run_dir: Path, logger: RunLogger,
                   hessians: dict[str, torch.Tensor] | None = None,
                   code_bytes: int | None = None, *, diagnostics: bool = True) -> tuple[Path, SizeReport, dict]:
    """Write the quantized artifact of ``model`` into ``RUN_DIR/artifact/``. ``code_bytes``: the exact size
    of the exported train_gpt.py, or None (a caller that does not know it) for an upper bound."""
    state, looping = _cpu_state_and_looping(model)
    # In the exported script code_bytes is its own size, so this folds away with upper_bound_code_bytes.
    bounded = code_bytes is None
    return write_quantized_artifact(state, cfg, run_dir / "artifact", logger, hessians=hessians, looping=looping,
                                    code_bytes=upper_bound_code_bytes() if bounded else code_bytes,
                                    code_bytes_note=UPPER_BOUND_CODE_BYTES_NOTE if bounded else EXACT_CODE_BYTES_NOTE,
                                    diagnostics=diagnostics)


def write_quantized_artifact(state: dict[str, torch.Tensor], cfg: Config, out_dir: Path, logger: RunLogger, *,
                             hessians: dict[str, torch.Tensor] | None, looping: bool, code_bytes: int,
                             code_bytes_note: str = EXACT_CODE_BYTES_NOTE,
                             diagnostics: bool = True) -> tuple[Path, SizeReport, dict]:
    """Quantize, compress (pruning to the cap with FIT_TO_CAP=1) and save into ``out_dir``, logging the
    result. ``code_bytes``: the size of the exported train_gpt.py (exact, unless ``code_bytes_note`` says
    how else it was measured). ``diagnostics``: also log the per-tensor plan, the quantized weights and
    the pruning, and return the report fields and the metrics event (else the fields are empty).
    Returns (artifact path, size, report fields)."""
    if diagnostics:
        for line in format_quant_plan(describe_quant_plan(state, cfg.quant)):
            logger.line(line)
    started = time.perf_counter()
    artifact = build_model_artifact(state, cfg.quant, cfg.artifact, hessians=hessians, extra_meta={"looping": looping},
                                    code_bytes=code_bytes, cap=ARTIFACT_CAP_BYTES)
    quantize_seconds = time.perf_counter() - started
    if diagnostics:
        for line in format_quantized_weights(artifact.quant_meta):
            logger.line(line)
    artifact_path = save_artifact(out_dir / artifact_file_name(cfg.quant), artifact.blob)
    size = SizeReport(code_bytes=code_bytes, model_bytes=len(artifact.blob), cap=ARTIFACT_CAP_BYTES,
                      code_bytes_note=code_bytes_note)
    what = f"{artifact_path.name.split('.')[1]}+{artifact.compressor}"
    logger.line(f"Serialized model {what}: {len(artifact.blob)} bytes (quantize+compress {quantize_seconds:.1f}s)")
    logger.line(f"Code size: {code_bytes} bytes ({size.code_bytes_note})")
    if diagnostics:  # a plain branch: the export folds it away whole (prune_fields is read only below it)
        prune_lines, prune_fields = describe_artifact_pruning(artifact, code_bytes)
        for line in prune_lines:
            logger.line(line)
    logger.line(f"Total submission size {what}: {size.total_bytes} bytes (cap {size.cap}, margin {size.margin_bytes})")
    if not diagnostics:
        return artifact_path, size, {}
    fields = {"artifact_file": artifact_path.name, "artifact_path": str(artifact_path),
              "artifact_compressor": artifact.compressor,
              "artifact_shuffle_stride": artifact.shuffle_stride, "quant_method": cfg.quant.quant_method,
              "quantize_seconds": quantize_seconds, **prune_fields}
    logger.event("artifact", path=str(artifact_path), **size.as_dict(), **fields)
    return artifact_path, size, fields


def load_artifact_into_fresh_model(path: Path, model_cfg: ModelConfig, runtime: Runtime) -> GPT:
    """A new model holding the weights of any artifact (read by what its blob records: tooling), in the
    layer schedule it was trained in last."""
    try:
        state, meta = unpack_model_artifact(load_artifact_file(path))
    except ArtifactError as error:
        raise _artifact_error_naming(path, error) from None
    return _fresh_model_holding(state, meta, model_cfg, runtime)


def load_round_trip_model(path: Path, cfg: Config, runtime: Runtime) -> GPT:
    """The pipeline's round trip: a new model holding the weights of the artifact ``cfg`` wrote to ``path``.
    Only what ``cfg`` writes is read (its compressor, shuffle stride and quantization format; anything else
    is an ArtifactError naming the file and both values), so train_gpt.py ships no other decoder."""
    try:
        state, meta = unpack_configured_model_artifact(load_artifact_file(path), cfg.artifact, cfg.quant)
    except ArtifactError as error:
        raise _artifact_error_naming(path, error) from None
    return _fresh_model_holding(state, meta, cfg.model, runtime)


def _artifact_error_naming(path: Path, error: ArtifactError) -> ArtifactError:
    return ArtifactError(str(error) if str(path) in str(error) else f"artifact {path}: {error}")


def _fresh_model_holding(state: dict[str, torch.Tensor], meta: dict, model_cfg: ModelConfig, runtime: Runtime) -> GPT:
    model = build_model(model_cfg, runtime)
    model.load_state_dict(state, strict=True)
    if meta["extra"].get("looping"):
        model.set_looping(True)
    return model
