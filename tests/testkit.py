"""Helpers several test files share."""

import torch

from pgolf.config import ModelConfig
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT


def small_scoring_gpt(vocab_size: int, seed: int = 0) -> GPT:
    """A 2-layer, 32-wide GPT in eval mode whose zero-initialised output projections got small random
    values, so every path contributes to the scores."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab_size, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    return model.eval()


class RecordingLogger(RunLogger):
    """A run logger that keeps its lines and events in memory instead of writing files."""

    def __init__(self):
        super().__init__(None, echo=False)
        self.lines, self.events = [], []

    def line(self, text):
        self.lines.append(text)

    def event(self, kind, **fields):
        self.events.append((kind, fields))
