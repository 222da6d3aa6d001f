"""The baseline's round-to-nearest int8 export (SPEC 2.9), producing tensors for the pgolf container.

Per tensor of the state dict:

1. non-float: stored unchanged ("passthrough");
2. float with at most 65,536 elements: stored fp32 if its name contains one of the keep-float patterns
   (control tensors such as ``attn_scale``), else fp16 ("passthrough");
3. other 2-D float: per-row int8 ("int8_per_row"); ``clip_r`` = the 0.9999984 quantile of ``|W_r|``,
   ``scale_r = max(clip_r / 127, 1 / 127)`` in fp32, ``q = clamp(round(clamp(W, ±clip_r) / scale_r),
   -127, 127)``, and then ``scale_r`` stored as fp16 (the baseline's order: codes from the fp32 scale);
4. other float: per-tensor int8 with one fp32 scale (``clip / 127``, or 1.0 when clip is 0)
   ("int8_per_tensor").

Stored tensors: passthrough under the original name; quantised ones as ``<name>.q`` (int8) and
``<name>.scale``. The meta records, per original name, the scheme and the original dtype, which
dequantisation restores.

Codes and stored scales equal the baseline's bit for bit (``tests/parity/test_reference_parity.py``).
Because the codes come from the fp32 scale while dequantisation multiplies by its fp16 rounding ``s``
(within ``2^-11 s`` of it), the error of an unclipped weight is at most ``s (1/2 + (|q| + 1/2) 2^-11)``:
half a step plus up to about 6 % of a step, not exactly half a step. Rounding the scale first would
make the bound exact but moves about 0.016 % of the codes away from the baseline's, so pgolf does not.
The export's arithmetic is fp32 on the CPU (the scale functions below also run on CUDA, for GPTQ).

The per-row routine is generalised to int-N codes (R = 2^(bits-1) - 1, still one code per int8 byte)
with three ways of choosing the row scale, used by :mod:`pgolf.quant.artifact_quant`:

* "percentile" (the baseline): ``max(quantile(|W_r|, 0.9999984) / R, 1/127)``, weights clamped to the
  quantile before rounding, codes from the fp32 scale (the baseline's order, above). The 1/127 floor is
  the baseline's and is kept for every bit width (it only guards all-zero rows; a floor of 1/R would
  wipe out small weights at low bit widths).
* "sdclip" (SPEC 4.10): ``k * std_unbiased(W_r) / R``, clamped >= 1e-10; no explicit clamp, the codes
  saturate at +-R, i.e. at k standard deviations.
* "absmax" (the quant gate, SPEC 5.5): ``max|W_r| / R``.

The other two round the scale to fp16 *before* quantising, as the record does for SDClip (SPEC 4.10
step 5). An fp16 scale that rounds to 0 (e.g. SDClip on an all-zero row: 1e-10 underflows in fp16) is
raised to the smallest fp16 subnormal so codes never become 0/0.
"""

import torch

from pgolf.artifact.container import CONTAINER_DTYPES, container_dtype_name
from pgolf.errors import ArtifactError, ConfigError

INT8_CLIP_QUANTILE = 0.9999984
PASSTHROUGH_MAX_NUMEL = 65_536
RTN_INT8_FORMAT = "pgolf_int8_rtn_v1"
# torch.quantile refuses inputs above 2**24 elements (per row in new torch, in total in older ones).
TORCH_QUANTILE_MAX_NUMEL = 1 << 24
# The baseline's per-row scale floor (1/127), kept for every bit width.
PERCENTILE_SCALE_FLOOR = 1.0 / 127.0
SDCLIP_MIN_SCALE = 1e-10
FP16_SMALLEST_SUBNORMAL = 2.0 ** -24


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


def require_finite_weights(name: str, w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        raise ArtifactError(
            f"tensor {name!r} contains NaN or inf and cannot be quantised; the run diverged. Lower the learning "
            "rate or resume from an earlier checkpoint."
        )


def rtn_code_range(bits: int) -> int:
    """Largest code magnitude R of symmetric int-``bits`` codes (int8: 127, int6: 31)."""
    if not 2 <= bits <= 8:
        raise ConfigError(f"quantisation bits must be between 2 and 8 (codes live in int8 bytes), got {bits}.")
    return 2 ** (bits - 1) - 1


def _rtn_fp16_scales(name: str, scale_R: torch.Tensor) -> torch.Tensor:
    """Round scales to fp16 (the stored values); refuse overflow, lift underflow to the smallest subnormal."""
    scale_R = scale_R.to(torch.float16)
    if not bool(torch.isfinite(scale_R).all()):
        raise ArtifactError(f"tensor {name!r} has weights too large for fp16 scales (|w| > 8e6); the run diverged.")
    return scale_R.clamp_min(FP16_SMALLEST_SUBNORMAL)


def sdclip_row_scales(w_RC: torch.Tensor, bits: int, k: float, name: str = "tensor") -> torch.Tensor:
    """SDClip fp16 row scales ``k * std_unbiased(W_r) / R`` (SPEC 4.10); a 1-column row has std 0."""
    if w_RC.shape[1] < 2:  # the unbiased std of one value is undefined: treat it as 0
        std_R = torch.zeros(w_RC.shape[0], device=w_RC.device)
    else:
        std_R = w_RC.float().std(dim=1, correction=1)
    return _rtn_fp16_scales(name, (k * std_R / rtn_code_range(bits)).clamp_min(SDCLIP_MIN_SCALE))


def _percentile_clip_and_scales(w_RC: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's per-row clip values and fp32 scales, generalised to R = 2^(bits-1) - 1."""
    clip_R = rtn_row_quantile(w_RC.abs(), INT8_CLIP_QUANTILE)
    return clip_R, (clip_R / rtn_code_range(bits)).clamp_min(PERCENTILE_SCALE_FLOOR)


def rtn_row_scales(w_RC: torch.Tensor, bits: int, clip: str, k: float = 0.0, name: str = "tensor") -> torch.Tensor:
    """The fp16 per-row scales of ``clip`` = "percentile" | "sdclip" | "absmax" (module docstring)."""
    code_range = rtn_code_range(bits)
    if clip == "sdclip":
        return sdclip_row_scales(w_RC, bits, k, name)
    if clip == "percentile":
        return _rtn_fp16_scales(name, _percentile_clip_and_scales(w_RC, bits)[1])
    if clip == "absmax":
        absmax_R = w_RC.abs().amax(dim=1) if w_RC.shape[1] else torch.zeros(w_RC.shape[0])
        return _rtn_fp16_scales(name, absmax_R / code_range)
    raise ConfigError(f"unknown clip method {clip!r} for tensor {name!r}; use percentile, sdclip or absmax.")


def rtn_quantize_rows(
    name: str, w_RC: torch.Tensor, bits: int = 8, clip: str = "percentile", k: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest per-row codes in [-R, R] (int8) and fp16 scales of a 2-D fp32 matrix."""
    code_range = rtn_code_range(bits)
    if clip == "percentile":
        # The baseline's order: clamp the weights to the quantile, divide by the fp32 scale, store it fp16.
        clip_R, divisor_R = _percentile_clip_and_scales(w_RC, bits)
        w_RC = torch.maximum(torch.minimum(w_RC, clip_R[:, None]), -clip_R[:, None])
        scale_R = _rtn_fp16_scales(name, divisor_R)
    else:
        scale_R = rtn_row_scales(w_RC, bits, clip, k, name)
        divisor_R = scale_R.float()
    q_RC = torch.clamp(torch.round(w_RC / divisor_R[:, None]), -code_range, code_range).to(torch.int8)
    return q_RC.contiguous(), scale_R.contiguous()


def _rtn_quantize_rows(name: str, w_RC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 codes and fp16 scales of a 2-D fp32 matrix (the baseline's scheme)."""
    return rtn_quantize_rows(name, w_RC, 8, "percentile")


def rtn_quantize_whole_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes of any-shape fp32 tensor with one fp32 scale (a 0-d tensor)."""
    clip = rtn_row_quantile(w.abs().reshape(1, -1), INT8_CLIP_QUANTILE)[0]
    scale = clip / 127.0 if float(clip) > 0 else torch.tensor(1.0)
    q = torch.clamp(torch.round(torch.clamp(w, -float(clip), float(clip)) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale.to(torch.float32).reshape(())


def store_quantized_tensor(stored: dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
    if key in stored:
        raise ArtifactError(
            f"quantised tensor key {key!r} collides with another state-dict entry (names ending in '.q' or "
            "'.scale' clash with the keys of quantised tensors); rename the parameter."
        )
    stored[key] = tensor


def check_keep_float_patterns(keep_float_patterns) -> tuple[str, ...]:
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
    patterns = check_keep_float_patterns(keep_float_patterns)
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        original_dtype = container_dtype_name(tensor.dtype)
        if not tensor.is_floating_point():
            scheme = "passthrough"
            store_quantized_tensor(stored, name, tensor.contiguous())
        elif tensor.numel() <= PASSTHROUGH_MAX_NUMEL:
            scheme = "passthrough"
            keep_fp32 = any(pattern in name for pattern in patterns)
            store_quantized_tensor(stored, name, tensor.to(torch.float32 if keep_fp32 else torch.float16).contiguous())
        else:
            w = tensor.to(torch.float32)
            require_finite_weights(name, w)
            if w.ndim == 2:
                scheme, (q, scale) = "int8_per_row", _rtn_quantize_rows(name, w)
            else:
                scheme, (q, scale) = "int8_per_tensor", rtn_quantize_whole_tensor(w)
            store_quantized_tensor(stored, name + ".q", q)
            store_quantized_tensor(stored, name + ".scale", scale)
        entries[name] = {"scheme": scheme, "dtype": original_dtype}
    return stored, {"format": RTN_INT8_FORMAT, "entries": entries}


def stored_tensor_or_error(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ArtifactError(f"quantised artifact lacks tensor {key!r}; the artifact is incomplete or from another format.")
    return tensors[key]


def dequantize_stored_entry(tensors: dict[str, torch.Tensor], name: str, scheme: str) -> torch.Tensor:
    """The fp32 (or stored-dtype, for passthrough) reconstruction of one state-dict entry."""
    if scheme == "passthrough":
        return stored_tensor_or_error(tensors, name)
    q = stored_tensor_or_error(tensors, name + ".q")
    scale = stored_tensor_or_error(tensors, name + ".scale")
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
        values = dequantize_stored_entry(tensors, name, entry.get("scheme"))
        state_dict[name] = values.to(CONTAINER_DTYPES[entry["dtype"]])
    return state_dict
