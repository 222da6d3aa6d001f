"""The one quantisation entry point of a run: state dict -> container tensors + meta, and back.

:func:`quantize_for_artifact` routes every tensor through the policy table (:mod:`pgolf.quant.policy`),
quantises per-row matrices by round-to-nearest or GPTQ (with percentile or SDClip scales), optionally
adds LQER corrections, and returns tensors in container dtypes:

* passthrough: the tensor under its own name (fp16, fp32, or unchanged for non-float);
* ``int8_per_row``: ``<name>.q`` int8 codes in [-R, R] and ``<name>.scale`` fp16 (one per row);
* ``int8_per_tensor``: ``<name>.q`` int8 and ``<name>.scale`` (0-d fp32);
* LQER: ``<name>.lqer_a``, ``.lqer_a_scale``, ``.lqer_b``, ``.lqer_b_scale`` (:mod:`pgolf.quant.lqer`).

The meta (JSON) has ``format``, ``method`` and per original name an entry with ``scheme``, ``dtype``
(original dtype, restored on load) and, for quantised tensors, ``bits``, ``group``, ``clip``, ``k``
(SDClip only), ``method`` ("rtn" | "gptq") and ``lqer`` (``{"rank", "asym"}``) when corrected.
With the default QuantConfig the tensors are identical to :func:`pgolf.quant.rtn.quantize_state_dict_int8`.
:func:`dequantize_from_artifact` (tooling) also reads that older meta format; the pipeline reads its own
artifact back with :func:`dequantize_quant_artifact`, which does not, so train_gpt.py ships no reader for it.
"""

import re

import torch

from pgolf.artifact.container import CONTAINER_DTYPES, container_dtype_name
from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError, ConfigError
from pgolf.log import ProgressBar
from pgolf.quant.gptq import gptq_quantize_matrix
from pgolf.quant.lqer import lqer_pack_error, lqer_select_targets, lqer_unpack
from pgolf.quant.policy import QUANT_MATRIX_GROUPS, QuantScheme, build_quant_policy, resolve_quant_scheme
from pgolf.quant.rtn import (RTN_INT8_FORMAT, check_keep_float_patterns, dequantize_stored_entry, rtn_quantize_whole_tensor,
                             require_finite_weights, store_quantized_tensor, stored_tensor_or_error, dequantize_state_dict_int8,
                             rtn_code_range, rtn_quantize_rows, rtn_row_scales)

QUANT_ARTIFACT_FORMAT = "pgolf_quant_v1"


def _quantize_matrix(name: str, w_RC: torch.Tensor, scheme: QuantScheme, cfg: QuantConfig,
                     hessians: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(codes, fp16 scales, method) of one per-row matrix; GPTQ when asked for and a Hessian exists."""
    hessian = (hessians or {}).get(name) if scheme.group in QUANT_MATRIX_GROUPS else None
    if cfg.quant_method != "gptq" or hessian is None:
        q_RC, scale_R = rtn_quantize_rows(name, w_RC, scheme.bits, scheme.clip, scheme.k)
        return q_RC, scale_R, "rtn"
    w_on_device = w_RC.to(hessian.device)
    scale_R = rtn_row_scales(w_on_device, scheme.bits, scheme.clip, scheme.k, name)  # from the ORIGINAL rows
    q_RC = gptq_quantize_matrix(w_on_device, hessian, scale_R, scheme.bits, damping=cfg.gptq_damping,
                                block_size=cfg.gptq_block_size, name=name)
    return q_RC.cpu(), scale_R.cpu(), "gptq"


def _row_entry(scheme: QuantScheme, dtype_name: str, method: str) -> dict:
    entry = {"scheme": scheme.kind, "dtype": dtype_name, "group": scheme.group, "bits": scheme.bits,
             "clip": scheme.clip, "method": method}
    if scheme.clip == "sdclip":
        entry["k"] = scheme.k
    return entry


def _check_gptq_inputs(cfg: QuantConfig, hessians) -> None:
    if cfg.quant_method == "gptq" and not hessians:
        raise ConfigError("QUANT_METHOD=gptq needs Hessians: collect them with pgolf.quant.calibration.collect_hessians "
                          "on training batches and pass them as hessians=..., or set QUANT_METHOD=rtn.")


def quantize_for_artifact(
    state_dict: dict[str, torch.Tensor],
    cfg: QuantConfig,
    hessians: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Quantise a state dict as ``cfg`` says; return (tensors to store, JSON-able meta).

    ``hessians`` (weight name -> ``X^T X / n``, from :func:`pgolf.quant.calibration.collect_hessians`) is
    required for ``quant_method="gptq"``; GPTQ runs on the Hessians' device, everything else on the CPU.
    Matrices without a Hessian fall back to round-to-nearest (their meta ``method`` says so).
    """
    _check_gptq_inputs(cfg, hessians)
    check_keep_float_patterns(cfg.int8_keep_float_fp32_name_patterns)
    rules = build_quant_policy(cfg)
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    error_norms: dict[str, float] = {}
    bar = ProgressBar("quantize", len(state_dict))  # GPTQ solves take seconds per matrix at full size
    for index, (name, tensor) in enumerate(state_dict.items()):
        bar.update(index, name)
        tensor = tensor.detach().to("cpu")
        dtype_name = container_dtype_name(tensor.dtype)
        scheme = resolve_quant_scheme(name, tensor, rules)
        if scheme.kind == "passthrough":
            store_dtype = CONTAINER_DTYPES[scheme.store_dtype] if scheme.store_dtype else tensor.dtype
            store_quantized_tensor(stored, name, tensor.to(store_dtype).contiguous())
            entries[name] = {"scheme": "passthrough", "dtype": dtype_name}
            continue
        w = tensor.to(torch.float32)
        require_finite_weights(name, w)
        if scheme.kind == "int8_per_tensor":
            q, scale = rtn_quantize_whole_tensor(w)
            entries[name] = {"scheme": scheme.kind, "dtype": dtype_name, "bits": 8}
        else:
            q, scale, method = _quantize_matrix(name, w, scheme, cfg, hessians)
            entries[name] = _row_entry(scheme, dtype_name, method)
            if scheme.group in QUANT_MATRIX_GROUPS:
                error_norms[name] = float(torch.linalg.norm(w - q.float() * scale.float()[:, None]))
        store_quantized_tensor(stored, name + ".q", q)
        store_quantized_tensor(stored, name + ".scale", scale)
    bar.close()
    if cfg.lqer_enabled:
        _add_lqer_corrections(state_dict, cfg, stored, entries, error_norms)
    return stored, {"format": QUANT_ARTIFACT_FORMAT, "method": cfg.quant_method, "entries": entries}


def _add_lqer_corrections(state_dict, cfg: QuantConfig, stored: dict, entries: dict, error_norms: dict) -> None:
    """Rank-r corrections of the LQER_TOP_K matrices with the largest quantisation error (SPEC 5.6)."""
    for name in lqer_select_targets(error_norms, cfg.lqer_top_k):
        w_hat = stored[name + ".q"].float() * stored[name + ".scale"].float()[:, None]
        error = state_dict[name].detach().to("cpu", torch.float32) - w_hat
        packed = lqer_pack_error(error, cfg.lqer_rank, cfg.lqer_asym)
        for part, tensor in packed.items():
            store_quantized_tensor(stored, f"{name}.lqer_{part}", tensor)
        entries[name]["lqer"] = {"rank": int(packed["a"].shape[1]), "asym": bool(cfg.lqer_asym)}


def _lqer_correction(tensors: dict[str, torch.Tensor], name: str, lqer: dict, shape: tuple) -> torch.Tensor:
    packed = {part: stored_tensor_or_error(tensors, f"{name}.lqer_{part}") for part in ("a", "a_scale", "b", "b_scale")}
    if not isinstance(lqer, dict) or not isinstance(lqer.get("asym"), bool):
        raise ArtifactError(f"{name}: malformed LQER meta {lqer!r}; the artifact is corrupt.")
    a_hat, b_hat = lqer_unpack(packed, lqer["asym"])
    if a_hat.shape[0] != shape[0] or b_hat.shape[1] != shape[1] or a_hat.shape[1] != b_hat.shape[0]:
        raise ArtifactError(f"{name}: LQER factors {tuple(a_hat.shape)} x {tuple(b_hat.shape)} do not fit {shape}.")
    return a_hat @ b_hat


def _dequantize_quant_entry(tensors: dict[str, torch.Tensor], name: str, entry: dict, lqer: bool) -> torch.Tensor:
    values = dequantize_stored_entry(tensors, name, entry.get("scheme"))
    if entry["scheme"] == "passthrough":
        return values
    bits, codes = entry.get("bits", 8), tensors[name + ".q"]
    widest = max(-int(codes.min()), int(codes.max())) if codes.numel() else 0  # int8 abs() would wrap -128
    if not isinstance(bits, int) or not 2 <= bits <= 8 or widest > rtn_code_range(bits):
        raise ArtifactError(f"{name}: codes exceed the declared {bits}-bit range; the artifact is corrupt.")
    if "lqer" in entry:
        if not lqer:
            raise ArtifactError(f"{name} carries LQER corrections, which this configuration does not write "
                                "(LQER_ENABLED=0); a run reads back only what it writes. Score the artifact with "
                                "`pgolf eval`, or set LQER_ENABLED=1.")
        values = values + _lqer_correction(tensors, name, entry["lqer"], tuple(values.shape))
    return values


def dequantize_from_artifact(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """Rebuild the state dict (original dtypes and order) from any quantisation meta an artifact may hold:
    :func:`quantize_for_artifact`'s, with or without LQER, and :func:`pgolf.quant.rtn.quantize_state_dict_int8`'s
    (older artifacts). Tooling reads artifacts with it; the pipeline uses :func:`dequantize_quant_artifact`.
    """
    if isinstance(meta, dict) and meta.get("format") == RTN_INT8_FORMAT:
        return dequantize_state_dict_int8(tensors, meta)
    return dequantize_quant_artifact(tensors, meta)


def quant_meta_format(meta) -> str:
    """What a quantisation meta says its format is, for the message that refuses it."""
    return meta.get("format") if isinstance(meta, dict) else type(meta).__name__


def dequantize_quant_artifact(tensors: dict[str, torch.Tensor], meta: dict,
                              lqer: bool = True) -> dict[str, torch.Tensor]:
    """Rebuild the state dict (original dtypes and order) from :func:`quantize_for_artifact` output.

    ``lqer=False`` (a configuration without LQER) refuses LQER corrections instead of applying them, so
    the export of such a configuration ships no LQER decoding; the older int8 format is not read here.
    """
    if not isinstance(meta, dict) or meta.get("format") != QUANT_ARTIFACT_FORMAT or not isinstance(meta.get("entries"), dict):
        raise ArtifactError(f"quantisation meta has format {quant_meta_format(meta)!r}, expected {QUANT_ARTIFACT_FORMAT!r} (what "
                            "pgolf writes) with an 'entries' dict.")
    state_dict: dict[str, torch.Tensor] = {}
    for name, entry in meta["entries"].items():
        if not isinstance(entry, dict) or entry.get("dtype") not in CONTAINER_DTYPES:
            raise ArtifactError(f"quantisation meta entry for {name!r} is malformed: {entry!r}.")
        values = _dequantize_quant_entry(tensors, name, entry, lqer)
        state_dict[name] = values.to(CONTAINER_DTYPES[entry["dtype"]])
    return state_dict


def format_quantized_weights(meta: dict) -> list[str]:
    """``Quantized weights:`` log lines (SPEC 4.15): per kind, the tensor names with layer indices removed."""
    kinds: dict[str, list[str]] = {}
    for name, entry in meta.get("entries", {}).items():
        kind = entry["scheme"]
        if kind == "int8_per_row":
            kind = f"{entry.get('method', 'rtn')} (int{entry['bits']}, {entry['clip']}" + (
                f" k={entry['k']:g}" if "k" in entry else "") + (" +lqer)" if "lqer" in entry else ")")
        generic = re.sub(r"\.\d+\.", ".", name)
        if generic not in kinds.setdefault(kind, []):
            kinds[kind].append(generic)
    return ["Quantized weights:"] + [f"  {kind}: {', '.join(names)}" for kind, names in kinds.items()]
