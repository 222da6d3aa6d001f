"""Exponential moving average of the weights (SPEC 4.9).

An fp32 shadow copy of every floating-point tensor of the model's state dict (parameters and
persistent buffers). After each optimizer step ``ema <- d * ema + (1 - d) * weight``; after training
the shadow is copied back into the model, cast to each tensor's own dtype, so evaluation, quantization
and the artifact all see the averaged weights. fp32 matters: with d = 0.9965 the per-step change
``(1 - d) * (w - ema)`` is far below bf16 resolution, so a bf16 average (the embedding is bf16) would
barely move.

Start step: the optimizer steps with 0-based index >= ``start_step`` are averaged in. With
``start_step = 0`` the average starts from the initial weights, as in the record. Before the start
the shadow simply follows the weights (a copy after each of the first ``start_step`` steps), so the
average begins at the weights of that moment instead of dragging in the early ones, and a run that
stops before the start applies its current weights unchanged.
"""

import torch
from torch import nn

from pgolf.errors import ConfigError

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
EMA_EXPORT_SWITCH = "ema_decay > 0"


def floating_state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point entries of ``model.state_dict()``: detached views sharing the live storage."""
    return {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}


class WeightEMA:
    """fp32 moving average of a model's floating state; ``update`` after each step, ``apply_to`` at the end.

    Build it from the weights training starts from (after compile priming has been undone). Every
    rank keeps its own copy; the weights are identical across ranks, so the averages are too.
    """

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA_DECAY must be in (0, 1) for an EMA, got {decay}; EMA_DECAY=0 turns the EMA off.")
        if start_step < 0:
            raise ConfigError(f"EMA_START_STEP must be >= 0, got {start_step}; 0 averages from the first step.")
        self.decay = decay
        self.start_step = start_step
        self.shadow = {name: t.detach().float().clone() for name, t in floating_state_tensors(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module, steps_done: int) -> None:
        """Fold in the weights after optimizer step number ``steps_done`` (1-based: 1 after the first step)."""
        names, sources = self._fp32_sources(model)
        targets = [self.shadow[name] for name in names]
        if steps_done <= self.start_step:
            # Not averaging yet: follow the weights, so the average starts from where they are then.
            torch._foreach_copy_(targets, sources)
            return
        torch._foreach_mul_(targets, self.decay)
        torch._foreach_add_(targets, sources, alpha=1.0 - self.decay)

    def _fp32_sources(self, model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
        live = floating_state_tensors(model)
        if live.keys() != self.shadow.keys():
            raise RuntimeError(
                f"the model's floating-point state changed since the EMA was built (missing: "
                f"{sorted(self.shadow.keys() - live.keys())}, new: {sorted(live.keys() - self.shadow.keys())}); "
                "build the WeightEMA after every module replacement."
            )
        names = list(self.shadow)
        return names, [live[name].float() for name in names]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The fp32 averages by state-dict name (what a checkpoint stores; the live tensors, not copies)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_tensors(self, averages: dict[str, torch.Tensor]) -> None:
        """Replace the averages with ``averages`` (from :meth:`state_tensors` of the same model)."""
        if averages.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - averages.keys()), sorted(averages.keys() - self.shadow.keys())
            raise ConfigError(f"the checkpoint's EMA does not fit this model (missing: {missing}, unknown: {extra}); "
                              "resume with the configuration the run was started with.")
        for name, average in averages.items():
            self.shadow[name].copy_(average)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Copy the averages into ``model`` in place, each cast to the dtype of the tensor it replaces."""
        live = floating_state_tensors(model)
        for name, average in self.shadow.items():
            live[name].copy_(average)
