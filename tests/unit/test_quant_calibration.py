"""GPTQ Hessian collection (SPEC 4.10): X^T X / batches per quantised layer, recorded by hand as reference."""

import pytest
import torch
from testkit import run_gloo_ranks
from torch import nn

from pgolf.errors import ConfigError
from pgolf.quant.calibration import collect_hessians, hessian_target_modules, training_calibration_batches
from pgolf.runtime import Runtime

CPU_RUNTIME = Runtime(torch.device("cpu"))

D, VOCAB = 256, 50


class TinyBlock(nn.Module):
    """Named like the real blocks; records the inputs of its large linears when ``record`` is a dict."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_q = nn.Linear(D, 260, bias=False)   # 66,560 weights: hooked
        self.attn.c_k = nn.Linear(D, 4, bias=False)     # small: not hooked
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(D, 300, bias=False)
        self.mlp.proj = nn.Linear(300, D, bias=False)
        self.record = None

    def _note(self, key, x):
        if self.record is not None:
            self.record.setdefault(key, []).append(x.detach().double().reshape(-1, x.shape[-1]))

    def forward(self, x, prefix):
        self._note(f"{prefix}.attn.c_q.weight", x)
        x = x + 0.1 * self.attn.c_q(x)[..., :D] + self.attn.c_k(x).mean(-1, keepdim=True)
        self._note(f"{prefix}.mlp.fc.weight", x)
        hidden = torch.relu(self.mlp.fc(x))
        self._note(f"{prefix}.mlp.proj.weight", hidden)
        return x + 0.1 * self.mlp.proj(hidden)


class TinyModel(nn.Module):
    """Block 0 runs twice per forward (depth recurrence); optional untied head."""

    def __init__(self, tied=True):
        super().__init__()
        torch.manual_seed(0)
        self.tok_emb = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList([TinyBlock(), TinyBlock()])
        self.final_norm = nn.RMSNorm(D, elementwise_affine=False)
        self.lm_head = None if tied else nn.Linear(D, VOCAB, bias=False)
        self.record = None

    def forward_logits(self, ids):
        x = self.tok_emb(ids)
        for layer in (0, 1, 0):
            self.blocks[layer].record = self.record
            x = self.blocks[layer](x, f"blocks.{layer}")
        h = self.final_norm(x)
        head = "tok_emb.weight" if self.lm_head is None else "lm_head.weight"
        if self.record is not None:
            self.record.setdefault(head, []).append(h.detach().double().reshape(-1, D))
        return h @ (self.tok_emb.weight if self.lm_head is None else self.lm_head.weight).T


def batches(count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 7), generator=g) for _ in range(count)]


def hand_hessians(model, inputs):
    model.record = {}
    with torch.no_grad():
        for ids in inputs:
            model.forward_logits(ids)
    recorded, model.record = model.record, None
    return {key: sum(x.T @ x for x in xs) / len(inputs) for key, xs in recorded.items()}


@pytest.mark.parametrize("tied", [True, False])
def test_hessians_equal_xtx_over_batches(tied):
    model = TinyModel(tied=tied).train()
    inputs = batches(3)
    hessians = collect_hessians(model, inputs, runtime=CPU_RUNTIME)
    expected = hand_hessians(model, inputs)
    head = "tok_emb.weight" if tied else "lm_head.weight"
    assert set(hessians) == {f"blocks.{i}.{m}.weight" for i in (0, 1) for m in ("attn.c_q", "mlp.fc", "mlp.proj")} | {head}
    for key, h in hessians.items():
        assert h.dtype == torch.float32
        torch.testing.assert_close(h.double(), expected[key], rtol=1e-5, atol=1e-4)
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_a_module_called_twice_accumulates_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Module()])
            self.blocks[0].fc = nn.Linear(D, 300, bias=False)

        def forward_logits(self, x):
            return self.blocks[0].fc(x) + self.blocks[0].fc(x)  # the same input, twice per forward

    x = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    hessians = collect_hessians(Twice(), [x, x, x], runtime=CPU_RUNTIME)  # three batches
    expected = 2 * x.double().T @ x.double()  # (3 batches x 2 visits) / 3 batches
    torch.testing.assert_close(hessians["blocks.0.fc.weight"].double(), expected, rtol=1e-5, atol=1e-4)


def test_targets_are_large_block_linears_only():
    names = set(hessian_target_modules(TinyModel()))
    assert "blocks.0.attn.c_k.weight" not in names and "blocks.0.attn.c_q.weight" in names


def test_no_batches_is_an_error():
    with pytest.raises(ConfigError, match="GPTQ_CALIBRATION_BATCHES"):
        collect_hessians(TinyModel(), [], runtime=CPU_RUNTIME)


def test_training_calibration_batches_reads_the_loader():
    class FakeLoader:
        def __init__(self):
            self.calls = []

        def next_batch(self, global_tokens, seq_len, grad_accum_steps):
            self.calls.append((global_tokens, seq_len, grad_accum_steps))
            return torch.full((2, seq_len), len(self.calls)), None

    loader = FakeLoader()
    got = list(training_calibration_batches(loader, 3, global_tokens=64, seq_len=8, grad_accum_steps=2))
    assert loader.calls == [(64, 8, 2)] * 3
    assert [int(x[0, 0]) for x in got] == [1, 2, 3]


WORLD = 2


def calibration_work(rank):
    return collect_hessians(TinyModel(), batches(1 + rank, seed=10 + rank), runtime=CPU_RUNTIME)  # uneven batch counts


def test_two_ranks_average_over_all_batches(tmp_path):
    results = run_gloo_ranks(calibration_work, WORLD, tmp_path)
    model = TinyModel()
    all_inputs = batches(1, seed=10) + batches(2, seed=11)
    expected = hand_hessians(model, all_inputs)
    for got in results:
        for key, h in got.items():
            torch.testing.assert_close(h.double(), expected[key], rtol=1e-5, atol=1e-4)
