"""The GPT skeleton. Read ``GPT.forward_hidden`` top to bottom: it is the whole model.

embed -> input features (SmearGate) -> RMS norm -> U-Net layer schedule (encoder outputs pushed, popped
into the decoder with learned skip weights, optionally gated) -> optional two-lane parallel decoder ->
final norm -> head (tied to the embedding by default) -> soft cap -> cross-entropy.

Baseline constants come from SPEC 2.4-2.5, the record stack from SPEC 4.4-4.5 and 5.1/5.4. Every
optional feature is constructed or ``None`` in ``__init__`` and gets one guarded line in the forward;
per-layer topology (depth recurrence, U-Net pairs, where the lanes start) is data from ``schedule.py``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.errors import ConfigError
from pgolf.model.block import Block
from pgolf.model.features.doc_isolation import document_segment_ids
from pgolf.model.features.parallel_lanes import (
    merge_lanes,
    new_parallel_post_lambdas,
    new_parallel_resid_lambdas,
    two_lane_block,
)
from pgolf.model.features.smear_gate import SmearGate
from pgolf.model.kernels.softcap_ce import softcapped_cross_entropy
from pgolf.model.layers import CastedLinear, RMSNorm
from pgolf.model.schedule import LayerSchedule, build_layer_schedule, max_num_skip
from pgolf.runtime import Runtime


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Layer order with depth recurrence off (False) and on (True); identical when NUM_LOOPS=0.
        self.schedules = {looping: build_layer_schedule(cfg, looping) for looping in (False, True)}
        # A plain bool, so torch.compile guards on it and both graphs can be primed (SPEC 4.8).
        self.looping = False
        num_skip = max_num_skip(list(self.schedules.values()))
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(cfg, layer_index) for layer_index in range(cfg.num_layers))
        self.skip_weights = nn.Parameter(torch.ones(num_skip, cfg.model_dim))
        self.final_norm = RMSNorm()
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        if cfg.ortho_init:
            orthogonal_init_(self)
        # Optional features, built after the shared weights so that switching one on leaves every
        # other initial weight (same seed) unchanged: paired on/off comparisons start from one model.
        self.skip_gates = nn.Parameter(torch.zeros(num_skip, cfg.model_dim)) if cfg.skip_gates_enabled else None
        self.smear_gate = SmearGate(cfg.model_dim, cfg.bos_token_id) if cfg.smear_gate_enabled else None
        two_lane = cfg.parallel_residual_mode == "two_lane" and cfg.parallel_residual_start >= 0
        self.parallel_resid_lambdas = new_parallel_resid_lambdas(cfg.num_layers) if two_lane else None
        self.parallel_post_lambdas = new_parallel_post_lambdas(cfg.num_layers) if two_lane else None

    @property
    def supports_looping(self) -> bool:
        """Whether depth recurrence is configured (NUM_LOOPS > 0)."""
        return self.cfg.num_loops > 0

    def set_looping(self, enabled: bool) -> None:
        """Switch depth recurrence on or off; the parameters stay the same, only the layer order changes."""
        if enabled and not self.supports_looping:
            raise ConfigError(
                "depth recurrence was switched on but NUM_LOOPS=0; set NUM_LOOPS > 0 (with LOOP_START and "
                "LOOP_END) or leave ENABLE_LOOPING_AT unused."
            )
        self.looping = bool(enabled)

    @property
    def layer_schedule(self) -> LayerSchedule:
        """The layer order the next forward runs."""
        return self.schedules[self.looping]

    def merge_skip(self, x: torch.Tensor, skip: torch.Tensor, position: int) -> torch.Tensor:
        """U-Net skip into decoder ``position``: added (baseline), or a sigmoid-gated lerp (SPEC 4.4 step 3)."""
        weighted = self.skip_weights[position].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + weighted
        gate = torch.sigmoid(self.skip_gates[position].to(x.dtype))
        # g x + (1 - g) s as the record computes it: one lerp from the skip towards x (s + g (x - s)),
        # which rounds differently from the two-product form.
        return torch.lerp(weighted, x, gate)

    def two_lane_decoder(self, x: torch.Tensor, x0: torch.Tensor, skips: list[torch.Tensor], schedule: LayerSchedule,
                         segments_BT: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder positions from ``schedule.lane_start`` on, as two lanes (SPEC 5.1); returns their mean."""
        lanes = (x, x)
        for position in range(schedule.lane_start, len(schedule.decoder)):
            layer = schedule.decoder[position]
            if skips:  # skips go into the attention lane
                lanes = (self.merge_skip(lanes[0], skips.pop(), position), lanes[1])
            lanes = two_lane_block(self.blocks[layer], lanes, x0, self.parallel_resid_lambdas[layer],
                                   self.parallel_post_lambdas[layer], segments_BT)
        return merge_lanes(lanes)

    def embed(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """The blocks' input (B, T, D): token embeddings through the input features, RMS-normed.

        Separate so that ``pgolf check`` can test the input features' document isolation on their own.
        """
        x = self.tok_emb(input_ids_BT)
        if self.smear_gate is not None:  # SmearGate: blend in the previous token's embedding, never across BOS
            x = self.smear_gate(x, input_ids_BT)
        return F.rms_norm(x, (self.cfg.model_dim,))

    def forward_hidden(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (B, T, D)."""
        x = self.embed(input_ids_BT)
        x0 = x  # every block can mix the embedding back in (resid_mix)
        segments = None  # document segment ids when attention stays inside documents (SPEC 5.2)
        if self.cfg.doc_isolated_attention:
            segments = document_segment_ids(input_ids_BT, self.cfg.bos_token_id)
        schedule = self.schedules[self.looping]  # depth recurrence changes only this layer order
        skips: list[torch.Tensor] = []
        for layer in schedule.encoder:
            x = self.blocks[layer](x, x0, segments)
            skips.append(x)
        for position in range(schedule.lane_start):
            if skips:  # U-Net: LIFO, the last encoder output feeds the first decoder position
                x = self.merge_skip(x, skips.pop(), position)
            x = self.blocks[schedule.decoder[position]](x, x0, segments)
        # Two-lane parallel decoder for the remaining positions (only the two_lane mode sets a lane start;
        # testing the mode first lets `pgolf export` leave the lanes out of other configurations).
        if self.cfg.parallel_residual_mode == "two_lane" and schedule.lane_start < len(schedule.decoder):
            x = self.two_lane_decoder(x, x0, skips, schedule, segments)
        return self.final_norm(x)

    def forward_logits(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits (B, T, V) in fp32."""
        logits = self.head_logits(self.forward_hidden(input_ids_BT)).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap)

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Raw (uncapped) logits in the compute dtype: the output head, tied or not."""
        head_weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, head_weight.to(h.dtype))

    def forward(self, input_ids_BT: torch.Tensor, target_ids_BT: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats: the mean (training), the sum (evaluation) or per token ('none')."""
        if self.cfg.fused_cross_entropy and self.training:  # SPEC 5.8: the fused kernel trains only
            raw = self.head_logits(self.forward_hidden(input_ids_BT))
            loss = softcapped_cross_entropy(raw.reshape(-1, raw.size(-1)), target_ids_BT.reshape(-1),
                                            self.cfg.logit_softcap, reduction)
        else:
            logits = self.forward_logits(input_ids_BT)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids_BT.reshape(-1), reduction=reduction)
        return loss.view_as(target_ids_BT) if reduction == "none" else loss


def orthogonal_init_(model: nn.Module) -> None:
    """Orthogonal init (gain 1) of every non-zero-init linear with both dims >= 64 (SPEC 4.5).

    Runs once at construction, in ``modules()`` order, from the global RNG the caller seeded. Small
    linears (gates) and the zero-init output projections keep their init.
    """
    for module in model.modules():
        if isinstance(module, CastedLinear) and not module.zero_init and min(module.weight.shape) >= 64:
            nn.init.orthogonal_(module.weight)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def place_model_on_device(model: GPT, runtime: Runtime) -> GPT:
    """Move to ``device`` with the baseline's dtypes (SPEC 2.5).

    On CUDA under bf16 autocast the embedding is stored in bf16 (it is read by lookup and by the tied
    head under autocast) while linear weights and small control tensors stay fp32 masters. Under fp16
    autocast (T4) it stays fp32: the loss scaler unscales its gradient and refuses half-precision ones.
    On CPU everything stays fp32, where bf16 buys nothing and costs precision.
    """
    model = model.to(runtime.device)
    model.tok_emb.to(runtime.embedding_dtype)
    return model


def build_model(cfg: ModelConfig, runtime: Runtime) -> GPT:
    """A fresh model on the runtime's device, in the dtypes its precision wants."""
    return place_model_on_device(GPT(cfg), runtime)
