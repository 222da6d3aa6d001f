"""Layer order as data: which physical block runs at each position, and where U-Net skips connect.

The model runs a *virtual* sequence of physical block indices. Without depth recurrence it is simply
``0..L-1``; with it (SPEC 4.4.6) the segment ``loop_start..loop_end`` appears ``num_loops + 1`` times
and the repeated entries share weights. The first half (``len // 2``) of the sequence is the U-Net
encoder, whose outputs are pushed on a stack; the rest is the decoder, whose position ``j`` first
takes in ``pop()`` weighted by ``skip_weights[j]`` (LIFO: the last encoder output feeds the first
decoder position). ``lane_start`` marks where the two-lane parallel decoder (SPEC 5.1) takes over.

Record settings (11 layers, loop 3..5, two extra loops), looping on:
encoder [0,1,2,3,4,5,3,4], decoder [5,3,4,5,6,7,8,9,10], 8 skips; looping off: encoder [0..4],
decoder [5..10], 5 skips. Skip parameters are sized for the larger of the two (``max_num_skip``) so
switching looping on never changes the parameter set.
"""

from dataclasses import dataclass, replace

from pgolf.config import ModelConfig
from pgolf.errors import ConfigError


@dataclass(frozen=True)
class LayerSchedule:
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]
    # Decoder position from which the two-lane parallel decoder runs; len(decoder) = never.
    lane_start: int

    @property
    def num_skip(self) -> int:
        return min(len(self.encoder), len(self.decoder))

    @property
    def virtual_layers(self) -> tuple[int, ...]:
        """Every block visit in order (17 for the record with looping on)."""
        return self.encoder + self.decoder


def virtual_layer_order(num_layers: int, num_loops: int = 0, loop_start: int = 0, loop_end: int = 0) -> tuple[int, ...]:
    """Physical block indices in execution order: ``loop_start..loop_end`` (inclusive) runs
    ``num_loops + 1`` times; ``num_loops == 0`` gives ``0..num_layers-1``."""
    if num_loops == 0:
        return tuple(range(num_layers))
    segment = tuple(range(loop_start, loop_end + 1))
    return tuple(range(loop_start)) + segment * (num_loops + 1) + tuple(range(loop_end + 1, num_layers))


def split_unet(order: tuple[int, ...]) -> LayerSchedule:
    """First ``len(order) // 2`` entries are the encoder, the rest the decoder."""
    num_encoder = len(order) // 2
    decoder = tuple(order[num_encoder:])
    return LayerSchedule(encoder=tuple(order[:num_encoder]), decoder=decoder, lane_start=len(decoder))


def unet_layer_schedule(num_layers: int) -> LayerSchedule:
    """Baseline U-Net order: encoder = blocks [0, L//2), decoder = the rest."""
    return split_unet(virtual_layer_order(num_layers))


def two_lane_start(schedule: LayerSchedule, parallel_start: int) -> int:
    """First decoder position whose block is at or after ``parallel_start``.

    The lanes, once split, run to the end of the decoder, so every visit of a block >= parallel_start
    must lie in that tail: none in the encoder, no sequential block after the first parallel one.
    """
    tail = [j for j, layer in enumerate(schedule.decoder) if layer >= parallel_start]
    start = tail[0] if tail else len(schedule.decoder)
    encoder_ok = all(layer < parallel_start for layer in schedule.encoder)
    if not encoder_ok or tail != list(range(start, len(schedule.decoder))):
        raise ConfigError(
            f"PARALLEL_RESIDUAL_START={parallel_start} with PARALLEL_RESIDUAL_MODE=two_lane needs the blocks "
            f"from {parallel_start} on to run only at the end of the decoder, but the layer order is "
            f"encoder {list(schedule.encoder)}, decoder {list(schedule.decoder)}. Start the lanes after the "
            "looped segment (PARALLEL_RESIDUAL_START > LOOP_END) and in the decoder half, or use "
            "PARALLEL_RESIDUAL_MODE=single."
        )
    return start


def build_layer_schedule(cfg: ModelConfig, looping: bool) -> LayerSchedule:
    """The model's layer schedule with depth recurrence on (``looping``) or off."""
    num_loops = cfg.num_loops if looping else 0
    schedule = split_unet(virtual_layer_order(cfg.num_layers, num_loops, cfg.loop_start, cfg.loop_end))
    if cfg.parallel_residual_mode == "two_lane" and cfg.parallel_residual_start >= 0:
        schedule = replace(schedule, lane_start=two_lane_start(schedule, cfg.parallel_residual_start))
    return schedule


def max_num_skip(schedules: list[LayerSchedule]) -> int:
    """Skip slots needed so that every schedule finds its weights (8 for the record)."""
    return max(schedule.num_skip for schedule in schedules)
