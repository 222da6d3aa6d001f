"""Two-lane parallel decoder (SPEC 5.1, from the 2026-04-10 VarLenAttn record, #1530).

From the first decoder position whose block is at or after ``parallel_residual_start``, the residual
stream splits into two lanes that both start as the current x: lane ``a`` (attention) and lane ``m``
(MLP). U-Net skips are mixed into lane a. In block i, attention reads ``resid_mix(a, x0)`` and the MLP
reads lane m; each lane then keeps a learned share of itself and takes a learned share of both
branch outputs:

    a' = lam[i, 0] * a + P[i, 0, 0] * attn + P[i, 1, 0] * mlp
    m' = lam[i, 1] * m + P[i, 0, 1] * attn + P[i, 1, 1] * mlp

with ``lam = parallel_resid_lambdas`` (L, 2), init 1.1, and ``P = parallel_post_lambdas`` (L, 2, 2),
init 1 (first index: which branch, second: which lane). After the last block the output is the mean
of the lanes. ``attn`` and ``mlp`` are the block's own scaled branches (``Block.attention_branch`` /
``Block.mlp_branch``), so the block maths lives in one place. The lane residual is the lane itself;
resid_mix only shapes what attention reads.

The lambdas are top-level model parameters indexed by physical layer (rows of blocks that never run
in the lanes simply stay at their init).
"""

import torch
from torch import nn

from pgolf.model.block import Block

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
PARALLEL_LANES_EXPORT_SWITCH = "parallel_residual_mode == 'two_lane'"

# Initial weight of each lane on itself: slightly above 1, as in the record.
PARALLEL_RESID_LAMBDA_INIT = 1.1


def new_parallel_resid_lambdas(num_layers: int) -> nn.Parameter:
    """``(L, 2)``: per physical block, how much lane a and lane m keep of themselves."""
    return nn.Parameter(torch.full((num_layers, 2), PARALLEL_RESID_LAMBDA_INIT))


def new_parallel_post_lambdas(num_layers: int) -> nn.Parameter:
    """``(L, 2, 2)``: per physical block, ``[branch (attn, mlp), lane (a, m)]`` output weights."""
    return nn.Parameter(torch.ones(num_layers, 2, 2))


def two_lane_block(
    block: Block,
    lanes: tuple[torch.Tensor, torch.Tensor],
    x0: torch.Tensor,
    resid_lambdas_2: torch.Tensor,
    post_lambdas_22: torch.Tensor,
    segments_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one block on lanes ``(a, m)`` and return the updated lanes. ``segments_BT``: document ids
    when attention stays inside documents (DOC_ISOLATED_ATTENTION)."""
    a, m = lanes
    attn = block.attention_branch(block.mix_input(a, x0), segments_BT)
    mlp = block.mlp_branch(m)
    lam = resid_lambdas_2.to(a.dtype)
    post = post_lambdas_22.to(a.dtype)
    new_a = lam[0] * a + post[0, 0] * attn + post[1, 0] * mlp
    new_m = lam[1] * m + post[0, 1] * attn + post[1, 1] * mlp
    return new_a, new_m


def merge_lanes(lanes: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The decoder output: the mean of the two lanes (the record's PARALLEL_FINAL_LANE=mean)."""
    a, m = lanes
    return (a + m) * 0.5
