"""Which quantisation scheme each state-dict tensor gets: an ordered rule table, first match wins.

The table is built from ``QuantConfig`` (SPEC 2.9, 4.10, 5.1, 5.5)::

    rule         matches                                             scheme
    nonfloat     integer / bool tensors                              stored unchanged
    gate         2-D float named ``*attn_gate*``                     int8 per row, scale = row max/127
    keep_fp32    numel <= 65,536 and a keep-float name pattern       stored fp32
    small        numel <= 65,536                                     stored fp16
    embed        2-D named ``tok_emb``                               EMBED_BITS per row, k = EMBED_CLIP_SIGMAS
    attn         2-D ``blocks.<i>.attn.(c_q|c_k|c_v|proj).weight``   MATRIX_BITS per row, attention k
    mlp          2-D ``blocks.<i>.mlp.(fc|proj).weight``             MATRIX_BITS per row, MLP k
    matrix       any other 2-D                                       MATRIX_BITS per row, MATRIX_CLIP_SIGMAS
    tensor       anything else (large, not 2-D)                      int8 per tensor

The gate rule comes before the size rules on purpose: attention-gate matrices are tiny (8 x 12 ...
8 x 512) and would otherwise stay fp32 through the keep-float patterns; the records store them as int8
per row (the "quant gate", SPEC 5.5). With the default config (no gates, 8 bits, percentile clip) the
table reproduces the baseline's int8 export exactly.
"""

import re
from dataclasses import dataclass

import torch

from pgolf.config import QuantConfig

QUANT_PASSTHROUGH_MAX_NUMEL = 65_536
# Rule groups whose matrices are GPTQ/LQER/pruning candidates (the gate and per-tensor rules are not).
QUANT_MATRIX_GROUPS = ("embed", "attn", "mlp", "matrix")


@dataclass(frozen=True)
class QuantScheme:
    """How one tensor is stored.

    ``kind``: "passthrough" (``store_dtype`` = "float16"/"float32", or "" for unchanged), "int8_per_row"
    (codes in [-R, R], R = 2^(bits-1) - 1, in int8 containers, one fp16 scale per row) or
    "int8_per_tensor" (one fp32 scale). ``clip``: how row scales are chosen ("percentile", "sdclip",
    "absmax"); ``k`` is the SDClip multiplier (ignored by the other clips). ``group`` names the rule.
    """

    kind: str
    group: str
    bits: int = 8
    clip: str = ""
    k: float = 0.0
    store_dtype: str = ""


@dataclass(frozen=True)
class QuantRule:
    """One row of the policy table; every condition that is set must hold."""

    group: str
    scheme: QuantScheme
    name_regex: str = ""
    floating: bool | None = None
    ndim: int | None = None
    max_numel: int | None = None

    def matches(self, name: str, tensor: torch.Tensor) -> bool:
        if self.floating is not None and tensor.is_floating_point() != self.floating:
            return False
        if self.ndim is not None and tensor.ndim != self.ndim:
            return False
        if self.max_numel is not None and tensor.numel() > self.max_numel:
            return False
        return not self.name_regex or re.search(self.name_regex, name) is not None


def _keep_float_regex(patterns: tuple[str, ...]) -> str:
    # A pattern matches as a plain substring, as in the baseline; an empty tuple matches nothing.
    return "|".join(re.escape(p) for p in patterns) if patterns else r"(?!)"


def quant_clip_sigmas(cfg: QuantConfig) -> dict[str, float]:
    """SDClip k per group; 0 for MLP/attention falls back to MATRIX_CLIP_SIGMAS (SPEC 5.1)."""
    return {
        "embed": cfg.embed_clip_sigmas,
        "attn": cfg.attn_clip_sigmas or cfg.matrix_clip_sigmas,
        "mlp": cfg.mlp_clip_sigmas or cfg.matrix_clip_sigmas,
        "matrix": cfg.matrix_clip_sigmas,
    }


def build_quant_policy(cfg: QuantConfig) -> list[QuantRule]:
    """The ordered rule table for ``cfg`` (see the module docstring)."""
    k = quant_clip_sigmas(cfg)

    def per_row(group: str, bits: int) -> QuantScheme:
        return QuantScheme("int8_per_row", group, bits=bits, clip=cfg.clip_method, k=k[group])

    small = QUANT_PASSTHROUGH_MAX_NUMEL
    return [
        QuantRule("nonfloat", QuantScheme("passthrough", "nonfloat"), floating=False),
        QuantRule("gate", QuantScheme("int8_per_row", "gate", bits=8, clip="absmax"),
                  name_regex=r"attn_gate", floating=True, ndim=2, max_numel=small),
        QuantRule("keep_fp32", QuantScheme("passthrough", "keep_fp32", store_dtype="float32"),
                  name_regex=_keep_float_regex(tuple(cfg.int8_keep_float_fp32_name_patterns)), max_numel=small),
        QuantRule("small", QuantScheme("passthrough", "small", store_dtype="float16"), max_numel=small),
        QuantRule("embed", per_row("embed", cfg.embed_bits), name_regex=r"tok_emb", ndim=2),
        QuantRule("attn", per_row("attn", cfg.matrix_bits),
                  name_regex=r"(^|\.)blocks\.\d+\.attn\.(c_q|c_k|c_v|proj)\.weight$", ndim=2),
        QuantRule("mlp", per_row("mlp", cfg.matrix_bits), name_regex=r"(^|\.)blocks\.\d+\.mlp\.(fc|proj)\.weight$", ndim=2),
        QuantRule("matrix", per_row("matrix", cfg.matrix_bits), ndim=2),
        QuantRule("tensor", QuantScheme("int8_per_tensor", "tensor", bits=8, clip="percentile")),
    ]


def resolve_quant_scheme(name: str, tensor: torch.Tensor, rules: list[QuantRule]) -> QuantScheme:
    """The scheme of the first rule that matches (the last rule of the built table matches everything)."""
    for rule in rules:
        if rule.matches(name, tensor):
            return rule.scheme
    raise ValueError(f"no quantisation rule matches tensor {name!r}; the rule table must end with a catch-all rule")


def describe_quant_plan(state_dict: dict[str, torch.Tensor], cfg: QuantConfig) -> list[dict]:
    """Per tensor, in state-dict order: name, shape, scheme kind, rule group, bits, clip and k."""
    rules = build_quant_policy(cfg)
    plan = []
    for name, tensor in state_dict.items():
        scheme = resolve_quant_scheme(name, tensor, rules)
        quantised = scheme.kind != "passthrough"
        plan.append({
            "name": name,
            "shape": list(tensor.shape),
            "scheme": scheme.kind,
            "group": scheme.group,
            "bits": scheme.bits if quantised else None,
            "clip": scheme.clip if quantised else None,
            "k": scheme.k if quantised and scheme.clip == "sdclip" else None,
            "stored": scheme.store_dtype or (str(tensor.dtype).removeprefix("torch.") if not quantised else "int8"),
        })
    return plan


def format_quant_plan(plan: list[dict]) -> list[str]:
    """One log line per tensor of :func:`describe_quant_plan`."""
    lines = []
    for row in plan:
        shape = "x".join(str(n) for n in row["shape"]) or "scalar"
        detail = f" bits:{row['bits']} clip:{row['clip']}" if row["bits"] is not None else ""
        detail += f" k:{row['k']:g}" if row["k"] is not None else ""
        lines.append(f"quant_plan: {row['name']} {shape} {row['scheme']} ({row['group']}) stored:{row['stored']}{detail}")
    return lines
