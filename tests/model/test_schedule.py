"""Layer order as data (SPEC 4.4.6): virtual layer sequence, U-Net split, skip pairing, lane start."""

import dataclasses

import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.errors import ConfigError
from pgolf.model.gpt import GPT
from pgolf.model.schedule import build_layer_schedule, max_num_skip, virtual_layer_order

# Record R1081 topology at a tiny width: 11 blocks, blocks 3..5 run three times once looping is on.
RECORD_TOPOLOGY = ModelConfig(vocab_size=32, num_layers=11, model_dim=16, num_heads=2, num_kv_heads=1, mlp_mult=2,
                              num_loops=2, loop_start=3, loop_end=5)


def test_record_virtual_order_and_split_equal_spec_4_4_6():
    assert virtual_layer_order(11, 2, 3, 5) == (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)
    on = build_layer_schedule(RECORD_TOPOLOGY, looping=True)
    assert on.encoder == (0, 1, 2, 3, 4, 5, 3, 4)
    assert on.decoder == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert on.num_skip == 8 and len(on.virtual_layers) == 17
    off = build_layer_schedule(RECORD_TOPOLOGY, looping=False)
    assert off.encoder == (0, 1, 2, 3, 4) and off.decoder == (5, 6, 7, 8, 9, 10) and off.num_skip == 5
    assert max_num_skip([off, on]) == 8


def test_no_loops_means_both_schedules_are_the_baseline():
    cfg = dataclasses.replace(RECORD_TOPOLOGY, num_loops=0)
    assert build_layer_schedule(cfg, looping=True) == build_layer_schedule(cfg, looping=False)
    assert build_layer_schedule(cfg, looping=False).encoder == (0, 1, 2, 3, 4)


def test_single_block_loop_and_loop_at_the_edges():
    assert virtual_layer_order(4, 1, 0, 0) == (0, 0, 1, 2, 3)
    assert virtual_layer_order(4, 1, 3, 3) == (0, 1, 2, 3, 3)
    assert virtual_layer_order(3, 3, 0, 2) == (0, 1, 2) * 4


def test_skip_parameters_are_sized_for_the_looped_schedule():
    model = GPT(dataclasses.replace(RECORD_TOPOLOGY, skip_gates_enabled=True))
    assert model.skip_weights.shape == (8, 16) and model.skip_gates.shape == (8, 16)


def executed_layers(model: GPT, input_ids: torch.Tensor) -> list[int]:
    """Physical block indices in the order the forward actually ran them."""
    order: list[int] = []
    hooks = [block.register_forward_hook(lambda module, args, out, i=i: order.append(i))
             for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        model.forward_logits(input_ids)
    for hook in hooks:
        hook.remove()
    return order


def recorded_skip_pairs(model: GPT, input_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(decoder position, id of the skip tensor's producing encoder position) for every merged skip."""
    outputs: list[int] = []
    hooks = [block.register_forward_hook(lambda module, args, out: outputs.append(id(out))) for block in model.blocks]
    pairs: list[tuple[int, int]] = []
    original = model.merge_skip

    def recording_merge(x, skip, position):
        pairs.append((position, outputs.index(id(skip))))
        return original(x, skip, position)

    model.merge_skip = recording_merge
    with torch.no_grad():
        model.forward_logits(input_ids)
    del model.merge_skip
    for hook in hooks:
        hook.remove()
    return pairs


def test_forward_runs_the_spec_order_and_pairs_skips_last_in_first_out():
    model = GPT(RECORD_TOPOLOGY)
    ids = torch.randint(0, 32, (1, 8))
    assert executed_layers(model, ids) == list(range(11))
    # Looping off: decoder position j takes encoder position 4 - j; the last decoder block gets none.
    assert recorded_skip_pairs(model, ids) == [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0)]
    model.set_looping(True)
    assert executed_layers(model, ids) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert recorded_skip_pairs(model, ids) == [(j, 7 - j) for j in range(8)]


def test_two_lane_start_is_the_decoder_tail_from_the_parallel_layer():
    cfg = dataclasses.replace(RECORD_TOPOLOGY, parallel_residual_start=8, parallel_residual_mode="two_lane")
    on, off = build_layer_schedule(cfg, looping=True), build_layer_schedule(cfg, looping=False)
    assert on.decoder[on.lane_start:] == (8, 9, 10) and on.lane_start == 6
    assert off.decoder[off.lane_start:] == (8, 9, 10) and off.lane_start == 3
    single = dataclasses.replace(cfg, parallel_residual_mode="single")
    assert build_layer_schedule(single, looping=True).lane_start == 9  # lanes never start


@pytest.mark.parametrize("start", [4, 2])
def test_two_lane_inside_the_loop_or_the_encoder_is_refused(start):
    cfg = dataclasses.replace(RECORD_TOPOLOGY, parallel_residual_start=start, parallel_residual_mode="two_lane")
    with pytest.raises(ConfigError, match="PARALLEL_RESIDUAL_START"):
        GPT(cfg)


def test_set_looping_changes_the_forward_but_not_the_parameters():
    model = GPT(dataclasses.replace(RECORD_TOPOLOGY, skip_gates_enabled=True))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight.normal_(0, 0.1)
            block.mlp.proj.weight.normal_(0, 0.1)
    ids = torch.randint(0, 32, (1, 8))
    before = [(name, id(p)) for name, p in model.named_parameters()]
    assert model.supports_looping and model.looping is False
    with torch.no_grad():
        flat = model.forward_logits(ids)
        model.set_looping(True)
        looped = model.forward_logits(ids)
        model.set_looping(False)
        flat_again = model.forward_logits(ids)
    assert [(name, id(p)) for name, p in model.named_parameters()] == before
    assert not torch.allclose(flat, looped)
    assert torch.equal(flat, flat_again)


def test_set_looping_without_loops_is_a_config_error():
    model = GPT(dataclasses.replace(RECORD_TOPOLOGY, num_loops=0))
    assert not model.supports_looping
    model.set_looping(False)
    with pytest.raises(ConfigError, match="NUM_LOOPS"):
        model.set_looping(True)
