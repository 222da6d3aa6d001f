"""Muon shared across two gloo processes gives exactly the single-process result (SPEC 2.6).

Each rank orthogonalises only its own matrices (index % world_size == rank) and writes them into a flat
bf16 buffer that is zero elsewhere; the SUM all-reduce adds exact zeros to every entry, and each update
is computed by the same code on the same CPU, so the parameters must agree bit for bit.
"""

import torch
from testkit import run_gloo_ranks

from pgolf.optim.muon import Muon

# Five matrices over two ranks: uneven ownership, tall, wide and square shapes.
SHAPES = [(24, 16), (16, 40), (32, 32), (48, 8), (8, 12)]
MOMENTA = [0.85, 0.9, 0.95]
WORLD_SIZE = 2


def make_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


def run_muon_steps(params, *, rank, world_size):
    """Three steps with a momentum schedule and seeded gradients (identical on every rank)."""
    opt = Muon(params, lr=0.03, momentum=MOMENTA[0], backend_steps=5, rank=rank, world_size=world_size)
    for step, momentum in enumerate(MOMENTA):
        opt.param_groups[0]["momentum"] = momentum
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    owned = [index for index, p in enumerate(params) if "momentum_buffer" in opt.state[p]]
    return [p.detach().clone() for p in params], owned


def muon_dist_work(rank):
    params, owned = run_muon_steps(make_params(), rank=rank, world_size=WORLD_SIZE)
    return {"params": params, "owned": owned}


def test_two_gloo_ranks_match_one_process(tmp_path):
    results = run_gloo_ranks(muon_dist_work, WORLD_SIZE, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected, owned_single = run_muon_steps(make_params(), rank=0, world_size=1)
    finally:
        torch.set_num_threads(threads)
    assert owned_single == list(range(len(SHAPES)))
    for rank, result in enumerate(results):
        # Momentum buffers live only on the owning rank.
        assert result["owned"] == list(range(rank, len(SHAPES), WORLD_SIZE))
        for index, (got, want) in enumerate(zip(result["params"], expected)):
            assert torch.equal(got, want), f"rank {rank} parameter {index} differs from one process"
