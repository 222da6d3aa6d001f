"""The baseline's round-to-nearest int8 export (SPEC 2.9), producing tensors for the pgolf container.

Per tensor of the state dict:

1. non-float: stored unchanged ("passthrough");
2. float with at most 65,536 elements: stored fp32 if its name contains one of the keep-float patterns
   (control tensors such as ``attn_scale``), else fp16 ("passthrough");
3. other 2-D float: per-row int8 ("int8_per_row"); ``clip_r`` = the 0.9999984 quantile of ``|W_r|``,
   ``scale_r = max(clip_r / 127, 1 / 127)`` stored fp16, ``q = clamp(round(clamp(W, ±clip_r) / scale_r),
   -127, 127)``;
4. other float: per-tensor int8 with one fp32 scale (``clip / 127``, or 1.0 when clip is 0)
   ("int8_per_tensor").

Stored tensors: passthrough under the original name; quantised ones as ``<name>.q`` (int8) and
``<name>.scale``. The meta records, per original name, the scheme and the original dtype, which
dequantisation restores.

One deliberate refinement over the baseline: the per-row scale is rounded to fp16 *before* quantising
(the baseline divides by the fp32 scale and stores the fp16 one). Dividing by the scale that is actually
stored makes the dequantisation error at most half a step for every unclipped weight, at no byte cost.
All arithmetic is fp32 on the CPU.
"""

import torch

from pgolf.artifact.container import CONTAINER_DTYPES, container_dtype_name
from pgolf.errors import ArtifactError, ConfigError

INT8_CLIP_QUANTILE = 0.9999984
PASSTHROUGH_MAX_NUMEL = 65_536
RTN_INT8_FORMAT = "pgolf_int8_rtn_v1"
# torch.quantile refuses inputs above 2**24 elements (per row in new torch, in total in older ones).
TORCH_QUANTILE_MAX_NUMEL = 1 << 24


def _row_quantile_by_kthvalue(x_RC: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile of each row (torch.quantile's definition) for rows of any length."""
    columns = x_RC.shape[1]
    rank = q * (columns - 1)  # Python float (double), exact enough for any row length
    lower = int(rank)
    upper = min(lower + 1, columns - 1)
    below = torch.kthvalue(x_RC, lower + 1, dim=1).values
    above = torch.kthvalue(x_RC, upper + 1, dim=1).values
    return torch.lerp(below, above, torch.tensor(rank - lower, dtype=x_RC.dtype))


def rtn_row_quantile(x_RC: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x_RC, q, dim=1)`` without torch's input-size limit (rows processed in chunks)."""
    rows, columns = x_RC.shape
    if rows == 0 or columns == 0:
        return torch.zeros(rows, dtype=x_RC.dtype)
    if columns > TORCH_QUANTILE_MAX_NUMEL:
        return _row_quantile_by_kthvalue(x_RC, q)
    rows_per_chunk = max(1, TORCH_QUANTILE_MAX_NUMEL // columns)
    return torch.cat([torch.quantile(chunk, q, dim=1) for chunk in x_RC.split(rows_per_chunk)])


def _rtn_require_finite(name: str, w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        raise ArtifactError(
            f"tensor {name!r} contains NaN or inf and cannot be quantised; the run diverged. Lower the learning "
            "rate or resume from an earlier checkpoint."
        )


def _rtn_quantize_rows(name: str, w_RC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 codes and fp16 scales of a 2-D fp32 matrix."""
    clip_R = rtn_row_quantile(w_RC.abs(), INT8_CLIP_QUANTILE)
    scale_R = (clip_R / 127.0).clamp_min(1.0 / 127.0).to(torch.float16)
    if not bool(torch.isfinite(scale_R).all()):
        raise ArtifactError(f"tensor {name!r} has weights too large for fp16 scales (|w| > 8e6); the run diverged.")
    clipped = torch.maximum(torch.minimum(w_RC, clip_R[:, None]), -clip_R[:, None])
    q_RC = torch.clamp(torch.round(clipped / scale_R.float()[:, None]), -127, 127).to(torch.int8)
    return q_RC.contiguous(), scale_R.contiguous()


def _rtn_quantize_whole_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes of any-shape fp32 tensor with one fp32 scale (a 0-d tensor)."""
    clip = rtn_row_quantile(w.abs().reshape(1, -1), INT8_CLIP_QUANTILE)[0]
    scale = clip / 127.0 if float(clip) > 0 else torch.tensor(1.0)
    q = torch.clamp(torch.round(torch.clamp(w, -float(clip), float(clip)) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale.to(torch.float32).reshape(())


def _rtn_store(stored: dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
    if key in stored:
        raise ArtifactError(
            f"quantised tensor key {key!r} collides with another state-dict entry (names ending in '.q' or "
            "'.scale' clash with the keys of quantised tensors); rename the parameter."
        )
    stored[key] = tensor


def _rtn_check_patterns(keep_float_patterns) -> tuple[str, ...]:
    if isinstance(keep_float_patterns, str) or not all(isinstance(p, str) for p in keep_float_patterns):
        raise ConfigError(
            f"keep_float_patterns must be a tuple of name substrings, got {keep_float_patterns!r}; write "
            "('attn_scale',) rather than 'attn_scale'."
        )
    return tuple(keep_float_patterns)


def quantize_state_dict_int8(
    state_dict: dict[str, torch.Tensor], keep_float_patterns: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Quantise a state dict as the baseline does; return (tensors to store, JSON-able meta)."""
    patterns = _rtn_check_patterns(keep_float_patterns)
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        original_dtype = container_dtype_name(tensor.dtype)
        if not tensor.is_floating_point():
            scheme = "passthrough"
            _rtn_store(stored, name, tensor.contiguous())
        elif tensor.numel() <= PASSTHROUGH_MAX_NUMEL:
            scheme = "passthrough"
            keep_fp32 = any(pattern in name for pattern in patterns)
            _rtn_store(stored, name, tensor.to(torch.float32 if keep_fp32 else torch.float16).contiguous())
        else:
            w = tensor.to(torch.float32)
            _rtn_require_finite(name, w)
            if w.ndim == 2:
                scheme, (q, scale) = "int8_per_row", _rtn_quantize_rows(name, w)
            else:
                scheme, (q, scale) = "int8_per_tensor", _rtn_quantize_whole_tensor(w)
            _rtn_store(stored, name + ".q", q)
            _rtn_store(stored, name + ".scale", scale)
        entries[name] = {"scheme": scheme, "dtype": original_dtype}
    return stored, {"format": RTN_INT8_FORMAT, "entries": entries}


def _rtn_stored_tensor(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ArtifactError(f"quantised artifact lacks tensor {key!r}; the artifact is incomplete or from another format.")
    return tensors[key]


def _rtn_dequantize_entry(tensors: dict[str, torch.Tensor], name: str, scheme: str) -> torch.Tensor:
    """The fp32 (or stored-dtype, for passthrough) reconstruction of one state-dict entry."""
    if scheme == "passthrough":
        return _rtn_stored_tensor(tensors, name)
    q = _rtn_stored_tensor(tensors, name + ".q")
    scale = _rtn_stored_tensor(tensors, name + ".scale")
    if q.dtype != torch.int8:
        raise ArtifactError(f"{name}.q must be int8, found {q.dtype}; the artifact is corrupt.")
    if scheme == "int8_per_row":
        if q.ndim != 2 or tuple(scale.shape) != (q.shape[0],):
            raise ArtifactError(f"{name}: per-row scales of shape {tuple(scale.shape)} do not match codes {tuple(q.shape)}.")
        return q.float() * scale.float()[:, None]
    if scheme == "int8_per_tensor":
        if scale.numel() != 1:
            raise ArtifactError(f"{name}: a per-tensor scale must be one value, found shape {tuple(scale.shape)}.")
        return q.float() * scale.float().reshape(())
    raise ArtifactError(f"{name}: unknown quantisation scheme {scheme!r} (known: passthrough, int8_per_row, int8_per_tensor).")


def dequantize_state_dict_int8(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """Rebuild the state dict from :func:`quantize_state_dict_int8` output, in the original dtypes and order."""
    if not isinstance(meta, dict) or meta.get("format") != RTN_INT8_FORMAT or not isinstance(meta.get("entries"), dict):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"quantisation meta has format {found!r}, expected {RTN_INT8_FORMAT!r} with an 'entries' dict.")
    state_dict: dict[str, torch.Tensor] = {}
    for name, entry in meta["entries"].items():
        if not isinstance(entry, dict) or entry.get("dtype") not in CONTAINER_DTYPES:
            raise ArtifactError(f"quantisation meta entry for {name!r} is malformed: {entry!r}.")
        values = _rtn_dequantize_entry(tensors, name, entry.get("scheme"))
        state_dict[name] = values.to(CONTAINER_DTYPES[entry["dtype"]])
    return state_dict
