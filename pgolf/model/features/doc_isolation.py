"""Document-isolated ("VarLen") attention, SPEC 5.2: no token attends across a BOS document boundary.

A document runs from a BOS token up to (not including) the next BOS. Tokens of a row that come before
its first BOS (a window that starts mid-document) form a segment of their own, and every row starts a
new segment, so documents longer than a row are cut at row boundaries, as the records cut them at
TRAIN_SEQ_LEN. The model computes the segment ids once per forward (``document_segment_ids``) and the
attention turns them into what its kernel needs:

* a block-diagonal causal boolean mask (B, 1, T, T) for PyTorch SDPA and the eager reference;
* ``cu_seqlens`` for FlashAttention 3's ``flash_attn_varlen_func``: the flat start offset of every
  segment of the (B*T)-token batch, then the total length, padded with the total length to a multiple
  of 64 entries (trailing empty segments), so the tensor takes few distinct shapes.

RoPE is not reset at document starts: positions stay absolute within the row, as in the records,
whose rotary is applied before the varlen kernel. Attention scores depend only on position
differences, so a document sees the same scores wherever it sits in a row (up to rounding).
"""

import torch

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
DOC_ISOLATION_EXPORT_SWITCH = "doc_isolated_attention"

# cu_seqlens entries come in multiples of this (SPEC 5.2), bounding the shapes the kernel sees.
VARLEN_CU_SEQLENS_MULTIPLE = 64
# Under torch.compile the number of segments must be a static bound: at most one segment start per
# this many tokens on average (plus one per row). FineWeb documents average about a thousand tokens;
# a micro-batch whose documents average under this length stops with a device assertion instead of
# merging documents silently.
VARLEN_TOKENS_PER_SEGMENT_BOUND = 128


def document_segment_ids(input_ids_BT: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """(B, T) segment index per token: the number of BOS tokens at or before it in its row.

    Tokens before a row's first BOS get 0; the first document gets 1, and so on.
    """
    return torch.cumsum((input_ids_BT == bos_token_id).to(torch.int32), dim=1)


def document_causal_mask(segments_BT: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask, True where query i may attend key j: j <= i in the same segment."""
    T = segments_BT.size(1)
    same_segment_BTT = segments_BT[:, :, None] == segments_BT[:, None, :]
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=segments_BT.device).tril()
    return (same_segment_BTT & causal_TT)[:, None]


def segment_starts(segments_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) True where a segment starts: the first token of every row and every segment change."""
    changed = segments_BT[:, 1:] != segments_BT[:, :-1]
    first = torch.ones_like(segments_BT[:, :1], dtype=torch.bool)
    return torch.cat((first, changed), dim=1)


def varlen_segment_capacity(batch: int, seq_len: int) -> int:
    """Static number of cu_seqlens entries for a (batch, seq_len) input under torch.compile."""
    bound = batch + batch * seq_len // VARLEN_TOKENS_PER_SEGMENT_BOUND + 1
    bound = min(bound, batch * seq_len + 1)  # never more segments than tokens
    return -(-bound // VARLEN_CU_SEQLENS_MULTIPLE) * VARLEN_CU_SEQLENS_MULTIPLE


def varlen_cu_seqlens(segments_BT: torch.Tensor, *, static_shape: bool = False) -> torch.Tensor:
    """int32 cumulative segment offsets over the flattened (B*T) tokens, padded with B*T to a multiple
    of 64 entries.

    ``static_shape=False`` (eager) sizes the tensor from the data (one host sync). ``static_shape=True``
    (inside torch.compile, where shapes must not depend on data) uses ``varlen_segment_capacity``
    entries and asserts on the device that the segments fit.
    """
    B, T = segments_BT.shape
    total = B * T
    starts = segment_starts(segments_BT).reshape(-1)
    if static_shape:
        capacity = varlen_segment_capacity(B, T)
        torch._assert_async(starts.sum() < capacity, "more documents in one micro-batch than the varlen bound")
        offsets = torch.nonzero_static(starts, size=capacity - 1, fill_value=total).squeeze(1)
    else:
        offsets = starts.nonzero().squeeze(1)
        padded = -(-(offsets.numel() + 1) // VARLEN_CU_SEQLENS_MULTIPLE) * VARLEN_CU_SEQLENS_MULTIPLE
        offsets = torch.cat((offsets, offsets.new_full((padded - 1 - offsets.numel(),), total)))
    return torch.cat((offsets, offsets.new_full((1,), total))).to(torch.int32)
