"""ATTENTION_BACKEND: every kernel against a plain float64 reference (outputs and gradients, GQA
included), the auto resolution with faked availability, the errors of unavailable forced backends,
and FlashAttention 3's wiring (layout, GQA, varlen boundaries) through a stand-in module written here.
"""

import copy
import dataclasses
import math
import types

import pytest
import torch

import pgolf.model.attention as attention
from pgolf.config import ModelConfig
from pgolf.errors import ConfigError
from pgolf.model.attention import (FORCED_SDPA_BACKENDS, SDPA_BACKENDS, CausalSelfAttention, describe_attention_backend,
                                   eager_attention, flash_attention_3, resolve_attention_backend, sdpa_attention)
from pgolf.model.gpt import GPT

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CPU_KERNELS = ("auto", "sdpa", "sdpa_math", "sdpa_flash", "eager")
CFG = ModelConfig(vocab_size=64, num_layers=2, model_dim=48, num_heads=6, num_kv_heads=2, mlp_mult=2)


def reference_attention(q, k, v, segments=None):
    """softmax(q k^T / sqrt(D)) v in float64 with K/V heads repeated by hand and the mask built by loops."""
    B, H, T, D = q.shape
    group = H // k.size(1)
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kh, vh = k[b, h // group].double(), v[b, h // group].double()
            scores = q[b, h].double() @ kh.T / math.sqrt(D)
            for i in range(T):
                for j in range(T):
                    if j > i or (segments is not None and segments[b, i] != segments[b, j]):
                        scores[i, j] = float("-inf")
            out[b, h] = torch.softmax(scores, dim=-1) @ vh
    return out


def random_qkv(B=2, H=6, Hkv=2, T=9, D=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, n, T, D, generator=gen, dtype=dtype) for n in (H, Hkv, Hkv))


def run_kernel(name, q, k, v, segments=None):
    """The kernel ``name`` resolves to on CPU, called directly."""
    kernel = resolve_attention_backend(name, CPU)
    if kernel == "eager":
        return eager_attention(q, k, v, segments)
    return sdpa_attention(q, k, v, segments, attention.SDPA_BACKENDS[kernel])


# ---------------------------------------------------------------- kernels agree with the reference


@pytest.mark.parametrize("name", CPU_KERNELS)
@pytest.mark.parametrize("num_kv_heads", [6, 2, 1])
def test_every_cpu_kernel_matches_the_float64_reference(name, num_kv_heads):
    q, k, v = random_qkv(Hkv=num_kv_heads)
    torch.testing.assert_close(run_kernel(name, q, k, v).double(), reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_every_cpu_kernel_gives_the_reference_gradients(name):
    q, k, v = (t.requires_grad_() for t in random_qkv())
    weights = torch.randn(2, 6, 9, 8)
    (run_kernel(name, q, k, v) * weights).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    (reference_attention(q64, k64, v64) * weights.double()).sum().backward()
    for mine, expected in zip(got, (q64.grad, k64.grad, v64.grad)):
        torch.testing.assert_close(mine.double(), expected, rtol=1e-4, atol=1e-5)


def test_auto_on_cpu_is_the_baseline_sdpa_call_bit_for_bit():
    q, k, v = random_qkv()
    baseline = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(run_kernel("auto", q, k, v), baseline)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_attention_modules_of_every_backend_agree(name):
    torch.manual_seed(0)
    reference = CausalSelfAttention(CFG, 1)
    module = CausalSelfAttention(dataclasses.replace(CFG, attention_backend=name), 1)
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.2)
    module.load_state_dict(reference.state_dict())
    x = torch.randn(2, 11, CFG.model_dim)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-6)


def test_gpt_losses_agree_across_backends_and_every_parameter_gets_a_gradient():
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    losses = []
    for name in ("sdpa", "sdpa_math", "eager"):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(CFG, attention_backend=name, xsa_last_n=1))
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "zero_init", False):
                    module.weight.normal_(0, 0.05)
        loss = model(ids, ids)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        losses.append(loss.item())
    assert max(losses) - min(losses) < 1e-5


# ---------------------------------------------------------------- resolution and errors


def fake_environment(monkeypatch, *, importable: bool, capability):
    monkeypatch.setattr(attention, "load_flash_attn_3", lambda: types.SimpleNamespace() if importable else None)
    monkeypatch.setattr(attention, "cuda_capability", lambda device: capability if device.type == "cuda" else None)


@pytest.mark.parametrize("importable,capability,expected", [
    (True, (9, 0), "fa3"),     # Hopper with FA3 installed
    (False, (9, 0), "sdpa"),   # Hopper without FA3
    (True, (8, 0), "sdpa"),    # FA3 installed but an A100
    (True, (7, 5), "sdpa"),    # T4
])
def test_auto_picks_fa3_only_on_hopper_when_importable(monkeypatch, importable, capability, expected):
    fake_environment(monkeypatch, importable=importable, capability=capability)
    assert resolve_attention_backend("auto", CUDA) == expected
    assert resolve_attention_backend("auto", CPU) == "sdpa"


def test_forced_backends_resolve_to_themselves(monkeypatch):
    fake_environment(monkeypatch, importable=True, capability=(8, 0))
    for name in ("fa3", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_math", "eager"):
        assert resolve_attention_backend(name, CUDA) == name


def test_forced_fa3_without_the_module_names_the_package(monkeypatch):
    fake_environment(monkeypatch, importable=False, capability=(9, 0))
    with pytest.raises(ConfigError, match="flash-attn-3") as error:
        resolve_attention_backend("fa3", CUDA)
    assert "flash_attn_interface" in str(error.value) and "ATTENTION_BACKEND" in str(error.value)


@pytest.mark.parametrize("name,device,capability,needle", [
    ("fa3", CPU, None, "CUDA GPU"),
    ("sdpa_efficient", CPU, None, "CUDA GPU"),
    ("sdpa_flash", CUDA, (7, 5), "8.0"),
])
def test_unavailable_forced_backends_are_config_errors(monkeypatch, name, device, capability, needle):
    fake_environment(monkeypatch, importable=True, capability=capability)
    with pytest.raises(ConfigError, match=needle):
        resolve_attention_backend(name, device)


def test_forced_fa3_module_on_cpu_fails_clearly_at_the_forward():
    module = CausalSelfAttention(dataclasses.replace(CFG, attention_backend="fa3"), 0)
    with pytest.raises(ConfigError, match="ATTENTION_BACKEND=fa3"):
        module(torch.randn(1, 4, CFG.model_dim))


def test_describe_names_the_kernel_and_the_reason(monkeypatch):
    assert describe_attention_backend(CFG, CPU) == "attention_backend:sdpa (auto: cpu device)"
    isolated = dataclasses.replace(CFG, doc_isolated_attention=True, attention_backend="eager")
    assert describe_attention_backend(isolated, CPU) == "attention_backend:eager (forced) doc_isolated:block_diagonal_mask"
    fake_environment(monkeypatch, importable=True, capability=(9, 0))
    assert describe_attention_backend(dataclasses.replace(isolated, attention_backend="auto"), CUDA) == (
        "attention_backend:fa3 (auto: FlashAttention 3 on a Hopper GPU) doc_isolated:varlen")
    fake_environment(monkeypatch, importable=False, capability=(9, 0))
    assert "pip install flash-attn-3" in describe_attention_backend(CFG, CUDA)


# ---------------------------------------------------------------- FlashAttention 3 wiring (stand-in module)


def stand_in_flash_attn_3(calls: list):
    """flash_attn_func / flash_attn_varlen_func in plain float64 maths, (B, T, H, D) / (total, H, D) layout."""

    def dense(q, k, v, causal):
        assert causal and q.dtype == torch.bfloat16
        out = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).to(q.dtype)

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
        calls.append((cu_seqlens_q, max_seqlen_q))
        assert causal and cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
        out = torch.zeros(q.shape, dtype=q.dtype)
        bounds = cu_seqlens_q.tolist()
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if stop > start:
                piece = [t[start:stop].transpose(0, 1)[None] for t in (q, k, v)]
                out[start:stop] = reference_attention(*piece)[0].transpose(0, 1).to(q.dtype)
        return out, None  # like older builds, which also return the log-sum-exp

    return types.SimpleNamespace(flash_attn_func=dense, flash_attn_varlen_func=varlen)


def bf16_rounded(*tensors):
    return [t.to(torch.bfloat16).double() for t in tensors]


def test_fa3_dense_path_matches_the_reference_in_bf16():
    q, k, v = random_qkv()
    out = flash_attention_3(stand_in_flash_attn_3([]), q, k, v, None)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out.double(), reference_attention(*bf16_rounded(q, k, v)), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("compiling", [False, True])
def test_fa3_varlen_path_keeps_documents_apart(monkeypatch, compiling):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    q, k, v = random_qkv(T=10)
    segments = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 2, 2, 3, 3, 3, 3]])
    calls = []
    out = flash_attention_3(stand_in_flash_attn_3(calls), q, k, v, segments)
    torch.testing.assert_close(out.double(), reference_attention(*bf16_rounded(q, k, v), segments), rtol=1e-2, atol=1e-2)
    cu_seqlens, max_seqlen = calls[0]
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.numel() % 64 == 0 and max_seqlen == 10
    assert cu_seqlens[:7].tolist() == [0, 2, 5, 10, 14, 16, 20] and set(cu_seqlens[7:].tolist()) == {20}


def test_a_model_holding_fa3_can_be_deep_copied(monkeypatch):
    """pgolf check deep-copies models; a module object would not copy, its functions do."""
    monkeypatch.setattr(attention, "load_flash_attn_3", lambda: stand_in_flash_attn_3([]))
    module = CausalSelfAttention(dataclasses.replace(CFG, attention_backend="fa3"), 0)
    assert module.flash_attn_3 is not None
    assert copy.deepcopy(module).flash_attn_3.flash_attn_func is module.flash_attn_3.flash_attn_func


def test_the_forced_sdpa_names_are_the_sdpa_backends_that_name_a_kernel():
    """attend() picks a forced SDPA kernel by FORCED_SDPA_BACKENDS: it must list exactly those entries."""
    assert set(FORCED_SDPA_BACKENDS) == {name for name, kernel in SDPA_BACKENDS.items() if kernel is not None}
