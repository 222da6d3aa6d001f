"""Exclusive self-attention, XSA (SPEC 4.4.3; record 2026-03-20 "EfficientPartialXSA").

After attention, each head's output ``y`` has the component along its own token's value direction
removed: ``y <- y - (y . v_hat) v_hat`` with ``v_hat = v / ||v||`` per KV head and token. A head thus
reports what the *other* tokens contributed beyond the token's own value, which the residual stream
already carries. The records apply it on the last ``XSA_LAST_N`` layers (all 11 in R1081 and TOP).

Grouped-query attention shares one value head among ``H / Hkv`` query heads; the query heads are
viewed as (Hkv, group) so every group is projected against its shared ``v_hat`` by broadcasting,
without materialising repeated K/V heads.
"""

import torch
import torch.nn.functional as F
from torch import nn

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
XSA_EXPORT_SWITCH = "xsa_last_n > 0"


class ExclusiveSelfAttention(nn.Module):
    """Parameter-free XSA projection for the (B, H, T, D) layout of ``scaled_dot_product_attention``.

    Query head ``h`` reads KV head ``h // (H / Hkv)``, the grouping SDPA's ``enable_gqa`` uses.
    """

    def __init__(self, num_heads: int, num_kv_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads

    def forward(self, y_BHTD: torch.Tensor, v_BKTD: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y_BHTD.shape
        group = H // self.num_kv_heads
        y_BKGTD = y_BHTD.reshape(B, self.num_kv_heads, group, T, D)
        # Unit value direction per KV head and token, shared by the group's query heads.
        v_hat_BK1TD = F.normalize(v_BKTD, dim=-1).to(y_BHTD.dtype).unsqueeze(2)
        along_v_BKGT1 = (y_BKGTD * v_hat_BK1TD).sum(dim=-1, keepdim=True)
        return (y_BKGTD - along_v_BKGT1 * v_hat_BK1TD).reshape(B, H, T, D)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}"
