"""Per-head attention output gates (SPEC 5.5): ``y_h <- g_h(x) * y_h`` before the output projection.

Three record variants, mutually exclusive, chosen by ``ATTN_OUT_GATE``:

* ``attn_out`` (#1667): ``g = 2 sigmoid(W x[..., :12])``, W (H, 12) zero-init, so g = 1 (identity) at init;
* ``gated``    (#1736, Qwen "gated attention"): ``g = sigmoid(W x)``, W (H, d) ~ N(0, 0.005^2), g ~ 0.5;
* ``sparse``   (#1787, used by the TOP record): ``g = sigmoid(scale W x[..., :12])``, W (H, 12) zero-init,
  g = 0.5 at init, ``scale = SPARSE_ATTN_GATE_SCALE``.

``x`` is the attention input (the normed residual stream). The gate's weight lives at
``...attn.attn_gate.weight``; "attn_gate" is a control pattern, so the scalar AdamW trains it and it
stays in float like the other control tensors.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
ATTN_GATE_EXPORT_SWITCH = "attn_out_gate != 'none'"

# The windowed variants read only the first 12 channels of x: 12 * H weights per layer.
ATTN_GATE_WINDOW = 12


class AttnGateVariant(NamedTuple):
    """How one gate variant reads its input, starts, and maps logits to a gate."""

    windowed: bool  # True: reads x[..., :ATTN_GATE_WINDOW]; False: the whole model dim
    init_std: float  # 0.0 = zero init
    output_gain: float  # g = output_gain * sigmoid(logit_scale * W x)
    scaled: bool  # True: logit_scale = SPARSE_ATTN_GATE_SCALE, else 1


ATTN_GATE_VARIANTS = {
    "attn_out": AttnGateVariant(windowed=True, init_std=0.0, output_gain=2.0, scaled=False),
    "gated": AttnGateVariant(windowed=False, init_std=0.005, output_gain=1.0, scaled=False),
    "sparse": AttnGateVariant(windowed=True, init_std=0.0, output_gain=1.0, scaled=True),
}


class AttentionOutputGate(nn.Module):
    """Input-dependent sigmoid gate per head and token, applied to the (B, H, T, D) attention output."""

    def __init__(self, variant: str, model_dim: int, num_heads: int, *, logit_scale: float = 1.0):
        super().__init__()
        spec = ATTN_GATE_VARIANTS[variant]
        assert model_dim >= ATTN_GATE_WINDOW or not spec.windowed, (variant, model_dim)  # validate_config's rule
        self.variant = variant
        self.in_features = ATTN_GATE_WINDOW if spec.windowed else model_dim
        self.output_gain = spec.output_gain
        self.logit_scale = logit_scale if spec.scaled else 1.0
        self.weight = nn.Parameter(torch.zeros(num_heads, self.in_features))
        if spec.init_std > 0:
            nn.init.normal_(self.weight, mean=0.0, std=spec.init_std)

    def gate(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """The gate values g (B, T, H)."""
        logits_BTH = F.linear(x_BTD[..., : self.in_features], self.weight.to(x_BTD.dtype))
        return self.output_gain * torch.sigmoid(self.logit_scale * logits_BTH)

    def forward(self, x_BTD: torch.Tensor, y_BHTD: torch.Tensor) -> torch.Tensor:
        g_BH1T = self.gate(x_BTD).transpose(1, 2).unsqueeze(-1).to(y_BHTD.dtype)
        return y_BHTD * g_BH1T

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, in_features={self.in_features}, logit_scale={self.logit_scale}"


def build_attention_output_gate(cfg: ModelConfig) -> AttentionOutputGate | None:
    """The gate ``cfg.attn_out_gate`` names, or ``None`` for "none" (the baseline)."""
    if cfg.attn_out_gate == "none":
        return None
    return AttentionOutputGate(cfg.attn_out_gate, cfg.model_dim, cfg.num_heads,
                               logit_scale=cfg.sparse_attn_gate_scale)
