"""SmearGate with the BOS fix (SPEC 5.4): blend the previous token's embedding into the current one.

Applied to the raw token embeddings, before the first RMSNorm. For every position t >= 1:

    x_t <- x_t + lam * sigmoid(w . x_t[:12]) * x_{t-1} * notBOS_t

``w`` (a 12 -> 1 linear) and the scalar ``lam`` start at zero, so the module is the identity at init.
The gate reads only the first 12 channels of the *current* token, a cheap input-dependent decision of
how much of the previous token to take in (a learned, soft bigram). ``notBOS_t`` is 0 where the current
input token is the document separator, so in a packed stream the last token of one document never
leaks into the next document's BOS embedding (and through it into that document).

Both tensors are small controls: the model stores this module as ``smear_gate``, whose name matches a
control pattern, so they are trained by the scalar AdamW and kept in float in the artifact.
"""

import torch
from torch import nn

from pgolf.model.layers import CastedLinear

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
SMEAR_GATE_EXPORT_SWITCH = "smear_gate_enabled"

# Channels of the current token the gate reads (the TOP record's GATE_WINDOW).
SMEAR_GATE_WINDOW = 12


class SmearGate(nn.Module):
    def __init__(self, model_dim: int, bos_token_id: int):
        super().__init__()
        assert model_dim >= SMEAR_GATE_WINDOW, model_dim  # validate_config's rule
        self.bos_token_id = bos_token_id
        self.gate = CastedLinear(SMEAR_GATE_WINDOW, 1, zero_init=True)
        self.smear_lambda = nn.Parameter(torch.zeros(1))

    def forward(self, x_BTD: torch.Tensor, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """Smeared embeddings, same shape; position 0 of every row is unchanged (nothing before it)."""
        gate_BT1 = torch.sigmoid(self.gate(x_BTD[:, 1:, :SMEAR_GATE_WINDOW]))
        not_bos_BT1 = (input_ids_BT[:, 1:, None] != self.bos_token_id).to(x_BTD.dtype)
        previous_BTD = x_BTD[:, :-1]
        smeared_BTD = x_BTD[:, 1:] + self.smear_lambda.to(x_BTD.dtype) * gate_BT1 * previous_BTD * not_bos_BT1
        return torch.cat((x_BTD[:, :1], smeared_BTD), dim=1)
