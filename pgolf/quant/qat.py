"""Quantization-aware training (QAT): straight-through fake quantization of the block matrices.

From ``QAT_START_FRAC`` of training progress on, every block linear that the export will store as
per-row int-N (the policy groups ``attn``, ``mlp`` and ``matrix``, see :mod:`pgolf.quant.policy`)
multiplies its input by ``dequantize(quantize(W))`` instead of ``W``. The codes and scales are the
ones :func:`pgolf.quant.rtn.rtn_quantize_rows` computes from the same weights (same bits, clip method
and SDClip k, fp16-rounded scales), so the training forward sees exactly the round-to-nearest weights
the artifact will hold. The backward is straight-through: the gradient w.r.t. ``W`` is the plain
gradient w.r.t. the quantized weight, and the fp32 master weights keep learning.

How it attaches (ARCHITECTURE section 5: never a second forward). :func:`attach_qat` replaces each
chosen ``CastedLinear`` by a :class:`FakeQuantLinear` that holds the *same* ``weight`` Parameter, so
state-dict keys, optimizer parameter groups, DDP and the EMA are untouched. The replacements start
switched off and are then numerically identical to ``CastedLinear``; the training loop switches them
on, once and for good, and :meth:`QATController.remove` puts the original modules back.

Choices:

* Fake quantization applies only in training mode. Evaluation (``model.eval()``: validation during
  training, the pre-quantization score, GPTQ calibration) always sees the full-precision weights, which
  the export quantizes itself.
* The tied embedding is not fake-quantized. Its use as the output head is an ``F.linear`` inside
  ``GPT.forward_logits``, not a module call, and it is usually stored at 7-8 bits with a wide SDClip,
  where the quantization error is small. For the same reason an untied ``lm_head`` (read as a weight,
  its forward never runs) is skipped: only linears under ``blocks.`` are replaced.
* GPTQ changes the codes after training; QAT still trains the weights towards the RTN grid of the same
  scales, which is what GPTQ starts from.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig
from pgolf.errors import ConfigError
from pgolf.model.layers import CastedLinear
from pgolf.quant.policy import QuantScheme, build_quant_policy, resolve_quant_scheme
from pgolf.quant.rtn import (
    FP16_SMALLEST_SUBNORMAL, INT8_CLIP_QUANTILE, PERCENTILE_SCALE_FLOOR, SDCLIP_MIN_SCALE, rtn_code_range,
    rtn_row_quantile,
)

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
QAT_EXPORT_SWITCH = "qat_start_frac > 0"

# Policy groups whose block matrices are fake-quantized (the embedding and the gates are not).
QAT_MATRIX_GROUPS = ("attn", "mlp", "matrix")
QAT_CLIP_METHODS = ("percentile", "sdclip", "absmax")
# fp16 keeps 10 of fp32's 23 mantissa bits; below its smallest normal (2^-14) the step is fixed at 2^-24.
FP16_DROPPED_MANTISSA_BITS = 13
FP16_SMALLEST_NORMAL = 2.0 ** -14


def round_to_fp16_grid(x: torch.Tensor) -> torch.Tensor:
    """``x.to(float16).float()`` for finite fp32 ``x`` within the fp16 range, by exact fp32/int32 arithmetic.

    Why not the cast: inside a fused ``torch.compile`` kernel, Inductor elides an fp32 -> fp16 -> fp32
    round trip (it computes fp16 intermediates in fp32 unless ``emulate_precision_casts`` is set), and
    the scales would silently differ from the stored ones. Normal range: round the mantissa to 10 bits,
    ties to even, on the bit pattern. Subnormal range: round to a multiple of 2^-24 (exact in fp32).
    Values beyond fp16's range are not turned into inf (the export refuses such weights).
    """
    x = x.float()
    bits = x.view(torch.int32)
    dropped = (1 << FP16_DROPPED_MANTISSA_BITS) - 1
    lowest_kept = (bits >> FP16_DROPPED_MANTISSA_BITS) & 1
    normal = ((bits + (dropped >> 1) + lowest_kept) & ~dropped).view(torch.float32)
    subnormal = torch.round(x * 2.0 ** 24) * 2.0 ** -24
    return torch.where(x.abs() < FP16_SMALLEST_NORMAL, subnormal, normal)


def _qat_fp16_scales(scale_R: torch.Tensor) -> torch.Tensor:
    """fp16-rounded scales lifted off zero, as the export stores them (no finiteness check: compilable)."""
    return round_to_fp16_grid(scale_R).clamp_min(FP16_SMALLEST_SUBNORMAL)


def fake_quantize_rows(w_RC: torch.Tensor, bits: int, clip: str, k: float = 0.0) -> torch.Tensor:
    """``dequantize(quantize(w_RC))`` of per-row round to nearest, in fp32, without autograd.

    The arithmetic mirrors :func:`pgolf.quant.rtn.rtn_quantize_rows` step by step, so the result equals
    the export's ``q * scale`` bit for bit on the same weights. It has no data-dependent Python branch
    (``torch.compile(fullgraph=True)`` can trace it); the export's checks for non-finite weights stay
    at export time.
    """
    w_RC = w_RC.detach().float()
    code_range = rtn_code_range(bits)
    if clip == "percentile":  # the baseline clamps to the row quantile, divides by the fp32 scale, stores it fp16
        clip_R = rtn_row_quantile(w_RC.abs(), INT8_CLIP_QUANTILE)
        divisor_R = (clip_R / code_range).clamp_min(PERCENTILE_SCALE_FLOOR)
        w_RC = torch.maximum(torch.minimum(w_RC, clip_R[:, None]), -clip_R[:, None])
        codes_RC = torch.clamp(torch.round(w_RC / divisor_R[:, None]), -code_range, code_range)
        return codes_RC * _qat_fp16_scales(divisor_R)[:, None]
    elif clip == "sdclip":  # codes saturate at +-R, i.e. at k row standard deviations
        if w_RC.shape[1] < 2:
            std_R = torch.zeros(w_RC.shape[0], device=w_RC.device)
        else:
            std_R = w_RC.std(dim=1, correction=1)
        scale_R = _qat_fp16_scales((k * std_R / code_range).clamp_min(SDCLIP_MIN_SCALE))
    elif clip == "absmax":
        scale_R = _qat_fp16_scales(w_RC.abs().amax(dim=1) / code_range)
    else:
        raise ConfigError(f"unknown clip method {clip!r} for QAT; use one of {', '.join(QAT_CLIP_METHODS)}.")
    codes_RC = torch.clamp(torch.round(w_RC / scale_R[:, None]), -code_range, code_range)
    return codes_RC * scale_R[:, None]


class FakeQuantLinear(CastedLinear):
    """A ``CastedLinear`` that, when QAT is on and the module is training, uses its fake-quantized weight.

    Built from an existing ``CastedLinear`` and sharing its ``weight`` Parameter (no copy). Off, or in
    eval mode, the forward is exactly ``CastedLinear.forward``. ``qat_enabled`` is a plain bool, so
    ``torch.compile`` guards on it and the on/off graphs are two primed variants.
    """

    def __init__(self, source: CastedLinear, scheme: QuantScheme):
        # nn.Module.__init__ only: CastedLinear.__init__ would allocate (and randomly initialise) a new weight.
        nn.Module.__init__(self)
        self.in_features, self.out_features = source.in_features, source.out_features
        self.zero_init = source.zero_init
        self.weight = source.weight
        self.register_parameter("bias", None)
        self.bits, self.clip, self.k = scheme.bits, scheme.clip, scheme.k
        self.qat_enabled = False
        self.train(source.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.qat_enabled and self.training:
            weight_q = fake_quantize_rows(weight, self.bits, self.clip, self.k)
            # Straight-through: the value is exactly weight_q (w - w.detach() is exactly 0); the gradient
            # w.r.t. w is the identity. Same estimator as w + (q(w) - w).detach(), without its rounding.
            weight = weight_q + (weight - weight.detach())
        return F.linear(x, weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, clip={self.clip}, k={self.k:g}, qat={self.qat_enabled}"


@dataclass
class QATController:
    """The fake-quant modules of one model and the switch the training loop flips.

    ``start_frac``: the training progress at which QAT switches on. ``originals`` keeps the replaced
    ``CastedLinear`` modules (they share their weights with the replacements) for :meth:`remove`.
    """

    model: nn.Module
    start_frac: float
    modules: dict[str, FakeQuantLinear]
    originals: dict[str, CastedLinear] = field(repr=False)
    enabled: bool = False

    def set_enabled(self, enabled: bool) -> None:
        """Switch fake quantization on or off in every replaced module."""
        self.enabled = bool(enabled)
        for module in self.modules.values():
            module.qat_enabled = self.enabled

    def remove(self) -> None:
        """Put the original ``CastedLinear`` modules back (their weights are the trained ones)."""
        for name, original in self.originals.items():
            _set_submodule(self.model, name, original)
        self.modules, self.originals, self.enabled = {}, {}, False


def _set_submodule(model: nn.Module, dotted_name: str, module: nn.Module) -> None:
    parent_name, _, child_name = dotted_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


def qat_schemes_for(model: nn.Module, cfg: QuantConfig) -> dict[str, QuantScheme]:
    """Module name -> scheme for every block ``CastedLinear`` the policy stores as a per-row matrix."""
    rules = build_quant_policy(cfg)
    schemes = {}
    for name, module in model.named_modules():
        if type(module) is not CastedLinear or not name.startswith("blocks."):
            continue
        scheme = resolve_quant_scheme(f"{name}.weight", module.weight, rules)
        if scheme.kind == "int8_per_row" and scheme.group in QAT_MATRIX_GROUPS:
            schemes[name] = scheme
    return schemes


def attach_fake_quant(model: nn.Module, schemes: dict[str, QuantScheme], start_frac: float) -> QATController:
    """Replace the named ``CastedLinear`` modules by switched-off :class:`FakeQuantLinear` ones."""
    assert 0.0 <= start_frac < 1.0, start_frac  # validate_config's rule (QAT_START_FRAC)
    originals = {name: model.get_submodule(name) for name in schemes}
    for name, scheme in schemes.items():  # check everything before replacing anything
        if type(originals[name]) is not CastedLinear:
            raise ConfigError(f"QAT can only replace CastedLinear modules; {name!r} is a "
                              f"{type(originals[name]).__name__} (is QAT attached twice?).")
        if scheme.kind != "int8_per_row" or scheme.clip not in QAT_CLIP_METHODS:
            raise ConfigError(f"QAT fake-quantizes per-row int-N schemes only; {name!r} has "
                              f"{scheme.kind}/{scheme.clip}.")
        rtn_code_range(scheme.bits)  # refuses bits outside 2..8 now rather than at the first QAT step
    modules = {name: FakeQuantLinear(originals[name], scheme) for name, scheme in schemes.items()}
    for name, module in modules.items():
        _set_submodule(model, name, module)
    return QATController(model, start_frac, modules, originals)


def attach_qat(model: nn.Module, cfg: QuantConfig) -> QATController | None:
    """The run's entry point: fake-quant modules per the policy, or None (QAT_START_FRAC=0, or no matrix).

    Call it on the bare model before compiling or DDP-wrapping it; pass the controller to the training
    loop (``TrainingParts.qat``). A model without per-row block matrices (all of them small enough to
    be stored as fp16) gets None: there is nothing the export would round.
    """
    if cfg.qat_start_frac <= 0.0:
        return None
    schemes = qat_schemes_for(model, cfg)
    return attach_fake_quant(model, schemes, cfg.qat_start_frac) if schemes else None


def describe_qat(controller: QATController) -> list[str]:
    """One log line per fake-quantized module: ``qat_plan: <name> bits:<b> clip:<c> k:<k>``."""
    return [f"qat_plan: {name} bits:{m.bits} clip:{m.clip}" + (f" k:{m.k:g}" if m.clip == "sdclip" else "")
            for name, m in controller.modules.items()]
