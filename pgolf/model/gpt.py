"""The GPT skeleton. Read ``GPT.forward`` top to bottom: it is the whole model.

embed -> RMS norm -> U-Net layer schedule (encoder outputs pushed, popped into the decoder with learned
skip weights) -> final norm -> head (tied to the embedding by default) -> soft cap -> cross-entropy.
Every constant comes from SPEC 2.4-2.5. Optional features (later) are constructed or ``None`` in
``__init__`` and get exactly one guarded line in ``forward``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.block import Block
from pgolf.model.layers import CastedLinear, RMSNorm
from pgolf.model.schedule import unet_layer_schedule


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = unet_layer_schedule(cfg.num_layers)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(cfg, layer_index) for layer_index in range(cfg.num_layers))
        self.skip_weights = nn.Parameter(torch.ones(self.schedule.num_skip, cfg.model_dim))
        self.final_norm = RMSNorm()
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)

    def forward_hidden(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (B, T, D)."""
        x = F.rms_norm(self.tok_emb(input_ids_BT), (self.cfg.model_dim,))
        x0 = x  # every block can mix the embedding back in (resid_mix)
        skips: list[torch.Tensor] = []
        for layer in self.schedule.encoder:
            x = self.blocks[layer](x, x0)
            skips.append(x)
        for j, layer in enumerate(self.schedule.decoder):
            if j < self.schedule.num_skip and skips:  # U-Net: LIFO, last encoder output feeds first decoder
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            x = self.blocks[layer](x, x0)
        return self.final_norm(x)

    def forward_logits(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits (B, T, V) in fp32."""
        h = self.forward_hidden(input_ids_BT)
        head_weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, head_weight.to(h.dtype)).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap)

    def forward(self, input_ids_BT: torch.Tensor, target_ids_BT: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats: the mean (training), the sum (evaluation) or per token ('none')."""
        logits = self.forward_logits(input_ids_BT)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids_BT.reshape(-1), reduction=reduction)
        return loss.view_as(target_ids_BT) if reduction == "none" else loss


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def place_model_on_device(model: GPT, device: torch.device) -> GPT:
    """Move to ``device`` with the baseline's dtypes (SPEC 2.5).

    On CUDA the embedding is stored in bf16 (it is read by lookup and by the tied head under bf16
    autocast) while linear weights and small control tensors stay fp32 masters. On CPU everything
    stays fp32, where bf16 buys nothing and costs precision.
    """
    model = model.to(device)
    if device.type == "cuda":
        model.tok_emb.to(torch.bfloat16)
    return model


def build_model(cfg: ModelConfig, device: torch.device) -> GPT:
    return place_model_on_device(GPT(cfg), device)
