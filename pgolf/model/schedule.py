"""Layer order as data: which physical block runs at each position, and where U-Net skips connect.

The baseline splits its L blocks into an encoder (first L//2) whose outputs are pushed on a stack and
a decoder whose j-th block first adds ``skip_weights[j] * pop()`` (last encoder output feeds the first
decoder block). Later features (depth recurrence, parallel lanes) change this schedule, not the model's
forward.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSchedule:
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]

    @property
    def num_skip(self) -> int:
        return min(len(self.encoder), len(self.decoder))


def unet_layer_schedule(num_layers: int) -> LayerSchedule:
    """Baseline U-Net order: encoder = blocks [0, L//2), decoder = the rest."""
    num_encoder = num_layers // 2
    return LayerSchedule(encoder=tuple(range(num_encoder)), decoder=tuple(range(num_encoder, num_layers)))
