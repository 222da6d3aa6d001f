"""Sharded Muon on two gloo processes == one process given the rank-averaged gradients (SPEC 5.1).

Each rank has its own gradients (different seeds). The reference is the plain single-process Muon fed
``(g0 + g1) / 2``, which is what DDP would hand it. Sharded Muon reduce-scatters the local gradients
(sum, then / 2: the same two roundings), orthogonalises only its own matrices and all-gathers the bf16
updates, so the parameters and the owners' momentum buffers must agree bit for bit; the replicated
two-rank Muon must agree too. Also checked on the same two processes: the all-reduce fallback for
backends without reduce-scatter, the one flat all-reduce of the Adam gradients, gradient clipping
across shards (vs torch's clip_grad_norm_), and a state_dict save/load in the middle of the run.
"""

import torch
from testkit import run_gloo_ranks

from pgolf.optim.grad_sync import clip_grad_norm_synchronized_, flat_all_reduce_mean, synchronize_gradients
from pgolf.optim.muon import Muon
from pgolf.optim.sharded import ShardedMuon, balanced_shard_layout

# Uneven sizes so the balanced assignment needs padding; tall, wide and square matrices.
SHAPES = [(24, 16), (16, 40), (32, 32), (48, 8), (8, 12), (20, 20)]
ADAM_SHAPES = [(16,), (3, 5), (7,)]
MOMENTA = [0.85, 0.9, 0.95, 0.95]
WORLD_SIZE = 2
MUON_KW = dict(lr=0.03, momentum=MOMENTA[0], backend_steps=5, weight_decay=0.1)
CLIP_NORM = 0.5


def make_params(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in shapes]


def rank_grads(shapes, step, rank):
    """Rank ``rank``'s local gradients at ``step`` (different on every rank)."""
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + len(shapes))
    return [torch.randn(shape, generator=gen) for shape in shapes]


def averaged_grads(shapes, step):
    return [(g0 + g1) / 2 for g0, g1 in zip(rank_grads(shapes, step, 0), rank_grads(shapes, step, 1))]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def run_optimizer(opt, params, grads_at, steps):
    for step in steps:
        opt.param_groups[0]["momentum"] = MOMENTA[step]
        set_grads(params, grads_at(step))
        opt.step()


def momentum_of(opt, params):
    return {i: opt.state[p]["momentum_buffer"].clone() for i, p in enumerate(params) if p in opt.state}


def sharded_run(rank, native, steps=range(len(MOMENTA))):
    params = make_params(SHAPES, 0)
    opt = ShardedMuon(params, rank=rank, world_size=WORLD_SIZE, native_collectives=native, **MUON_KW)
    run_optimizer(opt, params, lambda step: rank_grads(SHAPES, step, rank), steps)
    return [p.detach().clone() for p in params], momentum_of(opt, params)


def resumed_run(rank):
    """Two steps, state_dict into a fresh optimizer on copied parameters, then the remaining steps."""
    params = make_params(SHAPES, 0)
    opt = ShardedMuon(params, rank=rank, world_size=WORLD_SIZE, **MUON_KW)
    run_optimizer(opt, params, lambda step: rank_grads(SHAPES, step, rank), range(2))
    state = opt.state_dict()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = ShardedMuon(params2, rank=rank, world_size=WORLD_SIZE, **MUON_KW)
    opt2.load_state_dict(state)
    run_optimizer(opt2, params2, lambda step: rank_grads(SHAPES, step, rank), range(2, len(MOMENTA)))
    return [p.detach().clone() for p in params2]


def replicated_run(rank):
    """The existing mode: DDP-averaged gradients into the replicated two-rank Muon."""
    params = make_params(SHAPES, 0)
    opt = Muon(params, rank=rank, world_size=WORLD_SIZE, **MUON_KW)
    run_optimizer(opt, params, lambda step: averaged_grads(SHAPES, step), range(len(MOMENTA)))
    return [p.detach().clone() for p in params]


def clipped_run(rank):
    """One step of synchronize -> clip -> step over a sharded Muon and an Adam group."""
    matrices, others = make_params(SHAPES, 0), make_params(ADAM_SHAPES, 1)
    muon = ShardedMuon(matrices, rank=rank, world_size=WORLD_SIZE, **MUON_KW)
    adam = torch.optim.Adam(others, lr=0.01)
    set_grads(matrices, rank_grads(SHAPES, 0, rank))
    set_grads(others, rank_grads(ADAM_SHAPES, 0, rank))
    synchronize_gradients([adam, muon])
    norm = clip_grad_norm_synchronized_([adam, muon], CLIP_NORM)
    muon.step()
    adam.step()
    return [p.detach().clone() for p in matrices + others], norm


def averaged_adam_grads(rank):
    params = make_params(ADAM_SHAPES, 1)
    set_grads(params, rank_grads(ADAM_SHAPES, 0, rank))
    flat_all_reduce_mean(params)
    return [p.grad.clone() for p in params]


def sharded_work(rank):
    return {"native": sharded_run(rank, None), "fallback": sharded_run(rank, False),
            "resumed": resumed_run(rank), "replicated": replicated_run(rank),
            "clipped": clipped_run(rank), "adam_grads": averaged_adam_grads(rank)}


def single_process_reference():
    params = make_params(SHAPES, 0)
    opt = Muon(params, rank=0, world_size=1, **MUON_KW)
    run_optimizer(opt, params, lambda step: averaged_grads(SHAPES, step), range(len(MOMENTA)))
    return [p.detach().clone() for p in params], momentum_of(opt, params)


def clipped_reference():
    matrices, others = make_params(SHAPES, 0), make_params(ADAM_SHAPES, 1)
    muon, adam = Muon(matrices, rank=0, world_size=1, **MUON_KW), torch.optim.Adam(others, lr=0.01)
    set_grads(matrices, averaged_grads(SHAPES, 0))
    set_grads(others, averaged_grads(ADAM_SHAPES, 0))
    norm = torch.nn.utils.clip_grad_norm_(matrices + others, CLIP_NORM)
    muon.step()
    adam.step()
    return [p.detach().clone() for p in matrices + others], norm


def assert_all_equal(got, want, label):
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f"{label}: tensor {index} differs (max abs {(a - b).abs().max().item():.3g})"


def test_balanced_layout_keeps_whole_matrices_and_balances():
    # numels 384, 640, 1024, 384, 96, 400. Largest first to the lighter rank: 1024 -> r0, 640 -> r1,
    # 400 -> r1, 384 (#0) -> r0, 384 (#3) -> r1, 96 -> r0; loads 1504 and 1424.
    layout = balanced_shard_layout([p.numel() for p in make_params(SHAPES, 0)], 2)
    assert layout.owners == (0, 1, 0, 1, 0, 1)
    assert layout.shard_numel == 1504
    # Inside a shard, parameter order: rank 0 holds #0, #2, #4; rank 1 holds #1, #3, #5 (from 1504 on).
    assert layout.offsets == (0, 0, 384, 640, 1408, 1024)
    assert [layout.flat_slice(i).start for i in range(6)] == [0, 1504, 384, 2144, 1408, 2528]
    assert balanced_shard_layout([10, 10, 10], 1).owners == (0, 0, 0)


def test_two_gloo_ranks_sharded_match_one_process(tmp_path):
    results = run_gloo_ranks(sharded_work, WORLD_SIZE, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected, expected_momentum = single_process_reference()
        expected_clipped, expected_norm = clipped_reference()
    finally:
        torch.set_num_threads(threads)
    owners = balanced_shard_layout([p.numel() for p in expected], WORLD_SIZE).owners
    for rank, result in enumerate(results):
        for mode in ("native", "fallback"):
            params, momentum = result[mode]
            assert_all_equal(params, expected, f"rank {rank} {mode}")
            assert sorted(momentum) == [i for i, owner in enumerate(owners) if owner == rank]
            assert_all_equal([momentum[i] for i in sorted(momentum)],
                             [expected_momentum[i] for i in sorted(momentum)], f"rank {rank} {mode} momentum")
        assert_all_equal(result["resumed"], expected, f"rank {rank} resumed from state_dict")
        assert_all_equal(result["replicated"], expected, f"rank {rank} replicated Muon")
        assert_all_equal(result["adam_grads"], averaged_grads(ADAM_SHAPES, 0), f"rank {rank} flat all-reduce")
        clipped, norm = result["clipped"]
        assert abs(norm.item() - expected_norm.item()) <= 1e-5 * expected_norm.item()
        assert expected_norm.item() > CLIP_NORM  # the clip was active
        for index, (got, want) in enumerate(zip(clipped, expected_clipped, strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"rank {rank} clipped param {index}")
