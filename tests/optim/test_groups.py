"""Parameter groups (every parameter exactly once) and the optimizers built on them (SPEC 2.6)."""

import copy

import pytest
import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.errors import ConfigError
from pgolf.optim import build
from pgolf.optim.build import apply_lr_and_momentum, build_optimizers
from pgolf.optim.groups import assign_parameter_groups
from pgolf.optim.muon import Muon

CONTROL_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)  # fmt: skip

# The baseline's values (SPEC 2.1, 2.6), spelled out rather than taken from OptimConfig's defaults.
BASELINE_OPTIM = OptimConfig(
    embed_lr=0.6, head_lr=0.008, tied_embed_lr=0.05, matrix_lr=0.04, scalar_lr=0.04,
    muon_momentum=0.95, muon_backend_steps=5, muon_momentum_warmup_start=0.85,
    muon_momentum_warmup_steps=500, beta1=0.9, beta2=0.95, adam_eps=1e-8, grad_clip_norm=0.0,
    muon_row_normalize=False, muon_ns_coefficients="quintic", muon_wd=0.0, adam_wd=0.0, embed_wd=0.0,
)  # fmt: skip


class TinyAttention(nn.Module):
    def __init__(self, d, kv_dim, heads):
        super().__init__()
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, kv_dim, bias=False)
        self.c_v = nn.Linear(d, kv_dim, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_gain = nn.Parameter(torch.full((heads,), 1.5))


class TinyMLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(2 * d, d, bias=False)


class TinyBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = TinyAttention(d, d // 2, heads=4)
        self.mlp = TinyMLP(d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))


class TinyBaselineNames(nn.Module):
    """Only the baseline's parameter names and shapes; no forward is needed to test grouping."""

    def __init__(self, *, tie_embeddings=True, vocab=32, d=16, layers=3):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(TinyBlock(d) for _ in range(layers))
        self.skip_weights = nn.Parameter(torch.ones(layers // 2, d))
        self.lm_head = None if tie_embeddings else nn.Linear(d, vocab, bias=False)


def group_names(groups):
    return {key: [name for name, _ in members] for key, members in groups.items()}


def test_baseline_names_land_in_expected_groups():
    model = TinyBaselineNames(tie_embeddings=False, layers=2)
    names = group_names(assign_parameter_groups(model, tie_embeddings=False, control_patterns=CONTROL_PATTERNS))
    assert names["token"] == ["tok_emb.weight"]
    assert names["head"] == ["lm_head.weight"]
    matrices = ["attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "attn.proj.weight"]
    matrices += ["mlp.fc.weight", "mlp.proj.weight"]
    assert sorted(names["matrix"]) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in matrices)
    scalars = ["attn.q_gain", "attn_scale", "mlp_scale", "resid_mix"]
    assert sorted(names["scalar"]) == sorted([f"blocks.{i}.{s}" for i in range(2) for s in scalars] + ["skip_weights"])


def test_tied_model_has_no_head_group():
    model = TinyBaselineNames(tie_embeddings=True)
    groups = assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)
    assert groups["head"] == []
    total = sum(len(members) for members in groups.values())
    assert total == len(list(model.parameters()))


def test_unexpected_parameter_is_a_clear_error():
    model = TinyBaselineNames()
    model.bigram = nn.Linear(16, 16, bias=False)  # a 2-D matrix outside blocks fits no rule
    with pytest.raises(ConfigError, match=r"'bigram\.weight'.*no optimizer group"):
        assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)
    model = TinyBaselineNames()
    model.blocks[1].attn.bank = nn.Parameter(torch.zeros(2, 4, 4))  # 3-D inside blocks: neither rule
    with pytest.raises(ConfigError, match=r"'blocks\.1\.attn\.bank'"):
        assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)


def test_parameter_matching_two_rules_is_a_clear_error():
    model = TinyBaselineNames()
    with pytest.raises(ConfigError, match=r"'tok_emb\.weight'.*several optimizer groups"):
        assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS + ("tok_emb",))


@pytest.mark.parametrize("model_tied", [True, False])
def test_untied_head_mismatches_are_errors(model_tied):
    model = TinyBaselineNames(tie_embeddings=model_tied)
    with pytest.raises(ConfigError, match="TIE_EMBEDDINGS"):
        assign_parameter_groups(model, tie_embeddings=not model_tied, control_patterns=CONTROL_PATTERNS)


def test_new_small_parameters_find_the_scalar_group():
    model = TinyBaselineNames()
    model.skip_gates = nn.Parameter(torch.zeros(1, 16))  # top-level attribute
    model.smear = nn.Module()
    model.smear.gate = nn.Parameter(torch.zeros(16))  # 1-D, outside blocks
    model.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)  # not trainable: ignored
    names = group_names(assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS))
    assert {"skip_gates", "smear.gate"} <= set(names["scalar"])
    assert "frozen" not in sum(names.values(), [])


def randomize_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_build_optimizers_layout_and_base_lrs(tie_embeddings):
    model = TinyBaselineNames(tie_embeddings=tie_embeddings)
    opts = build_optimizers(model, BASELINE_OPTIM, tie_embeddings=tie_embeddings, control_patterns=CONTROL_PATTERNS)
    expected = [("token", 0.05 if tie_embeddings else 0.6)]
    expected += [] if tie_embeddings else [("head", 0.008)]
    expected += [("matrix", 0.04), ("scalar", 0.04)]
    assert [(o.param_groups[0]["group_name"], o.param_groups[0]["base_lr"]) for o in opts] == expected
    assert [type(o) for o in opts if o.param_groups[0]["group_name"] == "matrix"] == [Muon]
    for o in opts:
        group = o.param_groups[0]
        assert group["lr"] == group["base_lr"]
        if isinstance(o, Muon):
            assert group["momentum"] == 0.95 and group["backend_steps"] == 5
        else:
            assert isinstance(o, torch.optim.Adam)
            assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8 and group["weight_decay"] == 0.0
            assert group["fused"]  # as in the references; torch has a fused CPU kernel since 2.4


def test_adam_groups_equal_torch_reference_with_schedule():
    """Token/head/scalar params follow fused torch.optim.Adam with the SPEC hyperparameters, LR scaled each step."""
    model = TinyBaselineNames(tie_embeddings=False)
    reference = copy.deepcopy(model)
    opts = build_optimizers(model, BASELINE_OPTIM, tie_embeddings=False, control_patterns=CONTROL_PATTERNS)
    ref_groups = assign_parameter_groups(reference, tie_embeddings=False, control_patterns=CONTROL_PATTERNS)
    base_lrs = {"token": 0.6, "head": 0.008, "scalar": 0.04}
    ref_opts = {
        key: torch.optim.Adam([p for _, p in ref_groups[key]], lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                              fused=True)
        for key, lr in base_lrs.items()
    }
    for step, mult in enumerate([1.0, 0.5, 0.25]):
        apply_lr_and_momentum(opts, lr_mult=mult, muon_momentum=0.9)
        randomize_grads(model, seed=step)
        randomize_grads(reference, seed=step)
        for key, ref_opt in ref_opts.items():
            ref_opt.param_groups[0]["lr"] = base_lrs[key] * mult
            ref_opt.step()
        for opt in opts:
            opt.step()
    params = dict(model.named_parameters())
    for key in base_lrs:
        for name, ref_param in ref_groups[key]:
            torch.testing.assert_close(params[name], ref_param, rtol=0, atol=0)
    # The matrices moved (Muon) and their group got the scheduled momentum and LR.
    muon = next(o for o in opts if isinstance(o, Muon))
    assert muon.param_groups[0]["momentum"] == 0.9
    assert muon.param_groups[0]["lr"] == pytest.approx(0.04 * 0.25)
    ref_params = dict(reference.named_parameters())
    assert not torch.equal(params["blocks.0.mlp.fc.weight"], ref_params["blocks.0.mlp.fc.weight"])


def test_apply_lr_without_momentum_leaves_muon_momentum():
    model = TinyBaselineNames()
    opts = build_optimizers(model, BASELINE_OPTIM, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)
    apply_lr_and_momentum(opts, lr_mult=0.0)
    assert all(o.param_groups[0]["lr"] == 0.0 for o in opts)
    assert next(o for o in opts if isinstance(o, Muon)).param_groups[0]["momentum"] == 0.95


def test_adam_falls_back_to_torch_default_without_a_fused_kernel(monkeypatch):
    """A torch build or device without fused Adam still gets working (unfused) Adam groups."""
    monkeypatch.setattr(build, "fused_adam_available", lambda device_type, dtype: False)
    model = TinyBaselineNames(tie_embeddings=False)
    opts = build_optimizers(model, BASELINE_OPTIM, tie_embeddings=False, control_patterns=CONTROL_PATTERNS)
    adams = [o for o in opts if not isinstance(o, Muon)]
    assert adams and all(o.param_groups[0]["fused"] is None for o in adams)
    randomize_grads(model, seed=7)
    before = model.tok_emb.weight.detach().clone()
    for opt in opts:
        opt.step()
    assert not torch.equal(model.tok_emb.weight.detach(), before)


def test_fused_probe_says_no_when_torch_refuses(monkeypatch):
    class RefusingAdam:
        def __init__(self, params, fused):
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")

    assert build.fused_adam_available.__wrapped__("cpu", torch.float32)  # torch >= 2.4 has the CPU kernel
    monkeypatch.setattr(torch.optim, "Adam", RefusingAdam)
    assert not build.fused_adam_available.__wrapped__("cpu", torch.float32)
