"""Quantize a state dict and pack it into the model bytes that ship in the artifact, and back.

``pack_model_artifact``: quantisation as the QuantConfig says (:func:`pgolf.quant.artifact_quant.
quantize_for_artifact`: round to nearest or GPTQ, int-N, percentile or SDClip, optional LQER) -> the
artifact's bytes (:mod:`pgolf.artifact.pack`: tensor container -> optional byte shuffle -> compressor,
as the ArtifactConfig says). ``unpack_model_artifact`` inverts it without ever unpickling, so loading a
stranger's artifact cannot run code.

``build_model_artifact`` is the run's entry point: it also fits the artifact to the cap when
``FIT_TO_CAP=1`` (selective +-1 pruning, SPEC 5.12) and says what it did. The artifact package below
handles bytes only; everything that knows about quantization lives here.
"""

import hashlib
import os
from dataclasses import dataclass

import torch

from pgolf.artifact.compress import AUTO_COMPRESSOR, compress_model_bytes, describe_compressed_blob
from pgolf.artifact.pack import (artifact_container, pack_quantized_tensors, unpack_artifact_container,
                                 unpack_configured_artifact_container)
from pgolf.config import ArtifactConfig, QuantConfig
from pgolf.errors import ArtifactError
from pgolf.quant.artifact_quant import dequantize_from_artifact, dequantize_quant_artifact, quantize_for_artifact
from pgolf.quant.prune import PruneResult, prune_codes_to_fit


@dataclass(frozen=True)
class ModelArtifact:
    """A packed model and how it was made.

    ``compressor``/``shuffle_stride`` are the ones actually used (``COMPRESSOR=auto`` resolved).
    ``prune`` is set when FIT_TO_CAP pruned codes; ``unpruned_bytes`` is the blob size before that.
    """

    blob: bytes
    quant_meta: dict
    compressor: str
    shuffle_stride: int
    unpruned_bytes: int
    prune: PruneResult | None = None


def pack_model_artifact(
    state_dict: dict[str, torch.Tensor],
    quant_cfg: QuantConfig,
    artifact_cfg: ArtifactConfig = ArtifactConfig(),
    *,
    hessians: dict[str, torch.Tensor] | None = None,
    extra_meta: dict | None = None,
) -> bytes:
    """Quantise ``state_dict`` as ``quant_cfg`` says, pack it and compress it as ``artifact_cfg`` says;
    return the model blob.

    ``artifact_cfg.compressor="auto"`` keeps the smallest of every available compressor with shuffle
    strides 0 and 2 (plus ``byte_shuffle_stride``); the choice is recorded in the blob (read it back
    with :func:`pgolf.artifact.compress.describe_compressed_blob`). ``hessians`` are required for
    ``quant_method="gptq"``. ``extra_meta`` (JSON-able) travels along and is returned by
    :func:`unpack_model_artifact`. No fitting to the cap here: see :func:`build_model_artifact`.
    """
    return build_model_artifact(state_dict, quant_cfg, artifact_cfg, hessians=hessians, extra_meta=extra_meta).blob


def build_model_artifact(
    state_dict: dict[str, torch.Tensor],
    quant_cfg: QuantConfig,
    artifact_cfg: ArtifactConfig = ArtifactConfig(),
    *,
    hessians: dict[str, torch.Tensor] | None = None,
    extra_meta: dict | None = None,
    code_bytes: int = 0,
    cap: int | None = None,
) -> ModelArtifact:
    """Quantise (``quant_cfg``), pack and compress (``artifact_cfg``); with ``quant_cfg.fit_to_cap`` and
    ``code_bytes + blob > cap``, prune.

    Without FIT_TO_CAP an oversized artifact is returned as is (the caller reports, then fails with
    the margin). With it, the cheapest +-1 codes are zeroed until code + model bytes fit; if even
    pruning them all does not fit, ArtifactError gives the margin.
    """
    tensors, quant_meta = quantize_for_artifact(state_dict, quant_cfg, hessians)
    blob = pack_quantized_tensors(tensors, quant_meta, artifact_cfg.compressor, artifact_cfg.byte_shuffle_stride,
                                  extra_meta)
    compressor, stride = describe_compressed_blob(blob)
    artifact = ModelArtifact(blob, quant_meta, compressor, stride, unpruned_bytes=len(blob))
    if cap is None or not quant_cfg.fit_to_cap or code_bytes + len(blob) <= cap:
        return artifact
    return prune_artifact_to_fit(tensors, artifact, artifact_cfg, extra_meta=extra_meta, code_bytes=code_bytes,
                                 cap=cap)


def prune_artifact_to_fit(tensors: dict[str, torch.Tensor], artifact: ModelArtifact, artifact_cfg: ArtifactConfig, *,
                          extra_meta: dict | None, code_bytes: int, cap: int) -> ModelArtifact:
    """Zero the fewest cheapest +-1 codes so that code bytes + compressed model bytes <= ``cap``.

    Sizes are measured with the compressor and stride ``artifact`` was made with (an ``auto`` choice is
    kept fixed during the search). The search measures only the steps the codes' entropy cannot decide
    and, on a machine with spare cores, the next steps in parallel (:func:`pgolf.quant.prune.
    prune_codes_to_fit`); the unpruned size is ``artifact``'s and the final blob is one of the measured
    ones, so neither is compressed twice. ``PruneResult.size_bytes`` counts code + model bytes.
    """
    # auto's choice stays fixed; any other compressor is the configured one, which the export folds to a
    # constant, so pruning ships no compressor but it
    auto = artifact_cfg.compressor == AUTO_COMPRESSOR
    compressor = artifact.compressor if auto else artifact_cfg.compressor
    stride = artifact.shuffle_stride if auto else artifact_cfg.byte_shuffle_stride
    fitting_blobs: dict[bytes, bytes] = {}  # sha256 of the container -> its blob, for sizes that fit

    def total_bytes(candidate: dict[str, torch.Tensor]) -> int:
        container = artifact_container(candidate, artifact.quant_meta, extra_meta)
        blob = compress_model_bytes(container, compressor, stride)
        if code_bytes + len(blob) <= cap:
            fitting_blobs[hashlib.sha256(container).digest()] = blob
        return code_bytes + len(blob)

    pruned, result = prune_codes_to_fit(tensors, artifact.quant_meta, total_bytes, cap,
                                        initial_size=code_bytes + len(artifact.blob), workers=prune_workers())
    container = artifact_container(pruned, artifact.quant_meta, extra_meta)
    blob = fitting_blobs.get(hashlib.sha256(container).digest())
    if blob is None:
        blob = compress_model_bytes(container, compressor, stride)
    if code_bytes + len(blob) > cap:  # never ship an unverified size
        raise ArtifactError(f"pruned artifact is {code_bytes + len(blob):,} bytes, over the cap {cap:,}; this is a bug.")
    return ModelArtifact(blob, artifact.quant_meta, artifact.compressor, artifact.shuffle_stride,
                         unpruned_bytes=artifact.unpruned_bytes, prune=result)


# More threads measure more sizes the search never needs without saving rounds (4 already brings the
# 24 sequential compressions of a 16 MB model down to 5-8 rounds; bench/quant_gap.py --fit).
PRUNE_MAX_WORKERS = 4


def prune_workers() -> int:
    """Threads for the pruning search's parallel measurements: the CPUs this process may use, at most 4."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(available, PRUNE_MAX_WORKERS))


def describe_artifact_pruning(artifact: ModelArtifact, code_bytes: int) -> tuple[list[str], dict]:
    """Log lines and report fields of what FIT_TO_CAP pruning did (``prune`` is None when it did nothing)."""
    fields = {"artifact_bytes_unpruned": artifact.unpruned_bytes, "prune": None}
    if artifact.prune is None:
        return [], fields
    p = artifact.prune
    lines = [f"fit_to_cap: pruned {p.pruned} of {p.candidates} +-1 codes in {len(p.per_tensor)} tensors; total "
             f"{code_bytes + artifact.unpruned_bytes} -> {p.size_bytes} bytes (cap {p.budget_bytes}; "
             f"{p.measured_sizes} trial compressions in {p.measurement_rounds} rounds, {p.estimated_sizes} entropy "
             "estimates)"]
    lines += [f"fit_to_cap:   {name}: {count} codes zeroed" for name, count in p.per_tensor.items()]
    fields["prune"] = {**p.as_dict(), "total_bytes_before": code_bytes + artifact.unpruned_bytes,
                       "total_bytes_after": p.size_bytes}
    return lines, fields


def unpack_model_artifact(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Decompress, parse and dequantise any model blob, by what it records; return (state dict, meta).

    The meta has ``extra`` (what the packer passed), ``quant`` (per-tensor schemes), ``compressor`` and
    ``shuffle_stride``. Anything that is not a pgolf blob (a pickle, a torch.save zip, a damaged file)
    raises ArtifactError before any of its content is interpreted. Tooling reads artifacts with it; the
    pipeline reads its own back with :func:`unpack_configured_model_artifact`.
    """
    tensors, meta = unpack_artifact_container(blob)
    return dequantize_from_artifact(tensors, meta["quant"]), meta


def unpack_configured_model_artifact(blob: bytes, artifact_cfg: ArtifactConfig,
                                     quant_cfg: QuantConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """:func:`unpack_model_artifact` of a blob the configuration itself wrote: its compressor and shuffle
    stride, the quantisation format :func:`quantize_for_artifact` writes, LQER only with LQER_ENABLED=1.
    Anything else is an ArtifactError naming what the blob holds and what the configuration writes.
    Reading only what it writes keeps every other decoder out of train_gpt.py."""
    tensors, meta = unpack_configured_artifact_container(blob, artifact_cfg.compressor,
                                                         artifact_cfg.byte_shuffle_stride)
    return dequantize_quant_artifact(tensors, meta["quant"], lqer=quant_cfg.lqer_enabled), meta


def artifact_file_name(quant_cfg: QuantConfig) -> str:
    """``final_model.<what>.ptz``: ``int8`` for the baseline's int8 RTN, else the matrix bits and method
    (``int6``: RTN int6, ``gptq_int6``: GPTQ int6), so the file name says what it holds."""
    what = f"int{quant_cfg.matrix_bits}"
    if quant_cfg.quant_method != "rtn":
        what = f"{quant_cfg.quant_method}_{what}"
    return f"final_model.{what}.ptz"
