"""Attention features (SPEC 4.4.2, 4.4.3, 5.5): partial RoPE, NTK rescale, XSA, output gates.

Every check compares against references written plainly here (float64 loops over frequencies and
heads, K/V heads repeated explicitly), never against the implementation itself.
"""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.features.xsa import ExclusiveSelfAttention
from pgolf.model.gpt import GPT
from pgolf.model.layers import Rotary, apply_rotary
from pgolf.optim.groups import assign_parameter_groups

# head_dim 16, GQA 2:1; model_dim >= 12 so the windowed gates have their 12 input channels.
CFG = ModelConfig(vocab_size=64, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=2)
HEAD_DIM = 16
GATES = ("attn_out", "gated", "sparse")


def make_attention(seed: int = 0, layer_index: int = 2, randomize: bool = True, **changes) -> CausalSelfAttention:
    """Attention of the last layer; ``randomize`` gives every parameter (zero-init ones too) random values."""
    torch.manual_seed(seed)
    attn = CausalSelfAttention(dataclasses.replace(CFG, **changes), layer_index)
    if randomize:
        with torch.no_grad():
            for name, param in attn.named_parameters():
                param.copy_(torch.randn_like(param) * (0.5 if "gate" in name else 0.2) + (1.0 if name == "q_gain" else 0))
    return attn


# ---------------------------------------------------------------- plain references (float64)


def reference_rope(x: torch.Tensor, rotated_dims: int, base: float) -> torch.Tensor:
    """Rotate-half RoPE on the first ``rotated_dims`` dims of (..., T, D), one frequency at a time."""
    out = x.clone()
    half = rotated_dims // 2
    positions = torch.arange(x.size(-2), dtype=torch.float64)
    for i in range(half):
        angle = positions * base ** (-2 * i / rotated_dims)
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        x1, x2 = x[..., i : i + 1], x[..., half + i : half + i + 1]
        out[..., i : i + 1] = x1 * cos + x2 * sin
        out[..., half + i : half + i + 1] = -x1 * sin + x2 * cos
    return out


def reference_xsa(y_BHTD: torch.Tensor, v_repeated_BHTD: torch.Tensor) -> torch.Tensor:
    """y - (y . v_hat) v_hat per head, with the value heads already repeated to the query heads."""
    v_hat = v_repeated_BHTD / v_repeated_BHTD.norm(dim=-1, keepdim=True)
    return y_BHTD - (y_BHTD * v_hat).sum(-1, keepdim=True) * v_hat


def reference_gate(cfg: ModelConfig, weight: torch.Tensor, x_BTD: torch.Tensor) -> torch.Tensor:
    """The gate g (B, T, H) from the formulas of SPEC 5.5."""
    if cfg.attn_out_gate == "attn_out":
        return 2 * torch.sigmoid(x_BTD[..., :12] @ weight.T)
    if cfg.attn_out_gate == "gated":
        return torch.sigmoid(x_BTD @ weight.T)
    return torch.sigmoid(cfg.sparse_attn_gate_scale * (x_BTD[..., :12] @ weight.T))


def reference_attention(attn: CausalSelfAttention, cfg: ModelConfig, x: torch.Tensor, use_xsa: bool) -> torch.Tensor:
    """The whole attention in float64 with explicit K/V head repetition and an explicit causal mask."""
    B, T, _ = x.shape
    H, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, HEAD_DIM
    w = {name: p.detach().double() for name, p in attn.named_parameters()}
    heads = lambda t, n: t.view(B, T, n, hd).transpose(1, 2)  # noqa: E731
    q, k, v = heads(x @ w["c_q.weight"].T, H), heads(x @ w["c_k.weight"].T, Hkv), heads(x @ w["c_v.weight"].T, Hkv)
    rms = lambda t: t / torch.sqrt(t.square().mean(-1, keepdim=True) + torch.finfo(t.dtype).eps)  # noqa: E731
    rotated_dims = cfg.rope_dims or hd
    base = cfg.rope_base
    if 0 < cfg.rope_train_seq_len < T:
        base = base * (T / cfg.rope_train_seq_len) ** (rotated_dims / (rotated_dims - 2))
    q, k = reference_rope(rms(q), rotated_dims, base), reference_rope(rms(k), rotated_dims, base)
    q = q * w["q_gain"][None, :, None, None]
    group = H // Hkv
    k_rep = torch.stack([k[:, h // group] for h in range(H)], dim=1)
    v_rep = torch.stack([v[:, h // group] for h in range(H)], dim=1)
    scores = q @ k_rep.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v_rep
    if use_xsa:
        y = reference_xsa(y, v_rep)
    if cfg.attn_out_gate != "none":
        y = y * reference_gate(cfg, w["attn_gate.weight"], x).transpose(1, 2)[..., None]
    return y.transpose(1, 2).reshape(B, T, -1) @ w["proj.weight"].T


def baseline_attention_forward(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention as it was before the record-stack features, op for op (SPEC 2.4)."""
    B, T, D = x.shape
    H, Hkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = F.linear(x, attn.c_q.weight).view(B, T, H, hd).transpose(1, 2)
    k = F.linear(x, attn.c_k.weight).view(B, T, Hkv, hd).transpose(1, 2)
    v = F.linear(x, attn.c_v.weight).view(B, T, Hkv, hd).transpose(1, 2)
    q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
    inv_freq = 1.0 / (CFG.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos()[None, None], angles.sin()[None, None]

    def rotate(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return torch.cat((t1 * cos + t2 * sin, -t1 * sin + t2 * cos), dim=-1)

    q, k = rotate(q), rotate(k)
    q = q * attn.q_gain[None, :, None, None]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.linear(y.transpose(1, 2).reshape(B, T, D), attn.proj.weight)


# ---------------------------------------------------------------- baseline preserved


def test_all_features_off_equals_the_baseline_attention_bit_for_bit():
    attn = make_attention()
    assert attn.xsa is None and attn.attn_gate is None
    x = torch.randn(2, 24, CFG.model_dim)
    with torch.no_grad():
        assert torch.equal(attn(x), baseline_attention_forward(attn, x))


def test_rope_dims_zero_is_full_rope():
    full, whole_head = make_attention(rope_dims=0), make_attention(rope_dims=HEAD_DIM)
    x = torch.randn(2, 20, CFG.model_dim)
    with torch.no_grad():
        assert torch.equal(full(x), whole_head(x))
    assert full.rotary.dim == HEAD_DIM


def test_features_off_add_no_parameters():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(make_attention(randomize=False)) == count(make_attention(randomize=False, xsa_last_n=3, rope_dims=8))
    assert count(make_attention(randomize=False, attn_out_gate="sparse")) == count(make_attention(randomize=False)) + 4 * 12


# ---------------------------------------------------------------- partial RoPE and NTK


@pytest.mark.parametrize("rotated_dims", [4, 8, HEAD_DIM])
def test_partial_rope_matches_reference_and_keeps_the_other_dims(rotated_dims):
    x = torch.randn(2, 3, 11, HEAD_DIM, dtype=torch.float64)
    cos, sin = Rotary(rotated_dims, base=10000.0)(11, torch.device("cpu"), torch.float64)
    out = apply_rotary(x, cos, sin)
    torch.testing.assert_close(out, reference_rope(x, rotated_dims, 10000.0), rtol=0, atol=1e-6)
    assert torch.equal(out[..., rotated_dims:], x[..., rotated_dims:])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_partial_rope_attention_matches_reference():
    cfg = dataclasses.replace(CFG, rope_dims=8)
    attn = make_attention(rope_dims=8).double()
    x = torch.randn(2, 13, CFG.model_dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, cfg, x, use_xsa=False), rtol=0, atol=1e-6)


def test_ntk_rescale_not_applied_up_to_the_training_length():
    plain, ntk = Rotary(8, base=500.0), Rotary(8, base=500.0, train_seq_len=16)
    for T in (5, 16):
        assert all(torch.equal(a, b) for a, b in zip(plain(T, torch.device("cpu"), torch.float32),
                                                    ntk(T, torch.device("cpu"), torch.float32)))


@pytest.mark.parametrize("rotated_dims", [4, 8])
def test_ntk_rescale_applied_beyond_the_training_length(rotated_dims):
    T, train_len, base = 40, 16, 500.0
    cos, sin = Rotary(rotated_dims, base=base, train_seq_len=train_len)(T, torch.device("cpu"), torch.float64)
    scaled_base = base * (T / train_len) ** (rotated_dims / (rotated_dims - 2))
    inv_freq = torch.tensor([scaled_base ** (-2 * i / rotated_dims) for i in range(rotated_dims // 2)],
                            dtype=torch.float64)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    torch.testing.assert_close(cos[0, 0], angles.cos(), rtol=0, atol=1e-5)
    torch.testing.assert_close(sin[0, 0], angles.sin(), rtol=0, atol=1e-5)
    unscaled_cos, _ = Rotary(rotated_dims, base=base)(T, torch.device("cpu"), torch.float64)
    assert (cos - unscaled_cos).abs().max() > 1e-2


def test_ntk_needs_more_than_two_rotated_dims():
    with pytest.raises(AssertionError):  # validate_config names ROPE_DIMS (tests/unit/test_config.py)
        Rotary(2, train_seq_len=16)


# ---------------------------------------------------------------- XSA


def test_xsa_is_orthogonal_to_each_heads_own_value_and_matches_repeated_reference():
    B, H, Hkv, T, D = 2, 6, 2, 7, 5
    y, v = torch.randn(B, H, T, D, dtype=torch.float64), torch.randn(B, Hkv, T, D, dtype=torch.float64)
    out = ExclusiveSelfAttention(H, Hkv)(y, v)
    for h in range(H):
        v_own = v[:, h // (H // Hkv)]  # query head h reads KV head h // group (SDPA's enable_gqa)
        v_hat = v_own / v_own.norm(dim=-1, keepdim=True)
        assert (out[:, h] * v_hat).sum(-1).abs().max() < 1e-12
    v_repeated = v.repeat_interleave(H // Hkv, dim=1)
    torch.testing.assert_close(out, reference_xsa(y, v_repeated), rtol=0, atol=1e-12)


def test_xsa_only_on_the_last_n_layers():
    cfg = dataclasses.replace(CFG, num_layers=5, xsa_last_n=2)
    assert [CausalSelfAttention(cfg, i).xsa is not None for i in range(5)] == [False, False, False, True, True]


def test_xsa_attention_matches_reference_with_explicitly_repeated_kv():
    cfg = dataclasses.replace(CFG, xsa_last_n=1)
    attn = make_attention(xsa_last_n=1).double()
    x = torch.randn(2, 13, CFG.model_dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, cfg, x, use_xsa=True), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- output gates


@pytest.mark.parametrize("variant", GATES)
def test_gate_attention_matches_reference(variant):
    cfg = dataclasses.replace(CFG, attn_out_gate=variant, sparse_attn_gate_scale=0.5, xsa_last_n=1, rope_dims=8)
    attn = make_attention(attn_out_gate=variant, sparse_attn_gate_scale=0.5, xsa_last_n=1, rope_dims=8).double()
    x = torch.randn(2, 13, CFG.model_dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, cfg, x, use_xsa=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant, expected, tolerance", [("attn_out", 1.0, 0.0), ("sparse", 0.5, 0.0),
                                                          ("gated", 0.5, 0.05)])
def test_gate_value_at_init(variant, expected, tolerance):
    gated = make_attention(randomize=False, attn_out_gate=variant, sparse_attn_gate_scale=0.5)
    x = F.rms_norm(torch.randn(2, 9, CFG.model_dim), (CFG.model_dim,))
    g = gated.attn_gate.gate(x)
    assert g.shape == (2, 9, CFG.num_heads)
    assert (g - expected).abs().max() <= tolerance
    if variant == "gated":
        assert g.std() > 0  # input-dependent from the start (random weights), unlike the zero-init ones


def test_attn_out_gate_is_the_identity_at_init():
    plain = make_attention(seed=3)
    gated = make_attention(seed=3, randomize=False, attn_out_gate="attn_out")
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 9, CFG.model_dim)
    with torch.no_grad():
        assert torch.equal(gated(x), plain(x))


@pytest.mark.parametrize("variant", GATES)
def test_gate_gets_a_gradient_and_goes_to_the_scalar_optimizer(variant):
    cfg = dataclasses.replace(CFG, attn_out_gate=variant)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():  # zero-init output projections would block the gate's gradient
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    model(tokens, torch.roll(tokens, -1, 1)).backward()
    gate_names = [name for name, _ in model.named_parameters() if "attn_gate" in name]
    assert gate_names == [f"blocks.{i}.attn.attn_gate.weight" for i in range(cfg.num_layers)]
    for name, param in model.named_parameters():
        if name in gate_names:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    groups = assign_parameter_groups(model, tie_embeddings=True, control_patterns=cfg.control_tensor_name_patterns)
    scalar_names = {name for name, _ in groups["scalar"]}
    assert set(gate_names) <= scalar_names


def test_windowed_gate_needs_twelve_channels():
    with pytest.raises(AssertionError):  # validate_config names ATTN_OUT_GATE (tests/unit/test_config.py)
        CausalSelfAttention(ModelConfig(model_dim=8, num_heads=2, num_kv_heads=1, attn_out_gate="sparse"), 0)


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("rope_dims, rope_train_seq_len, xsa_last_n, gate",
                         list(itertools.product([0, 8], [0, 8], [0, 1], ["none", *GATES])))
def test_causality_for_every_feature_combination(rope_dims, rope_train_seq_len, xsa_last_n, gate):
    attn = make_attention(rope_dims=rope_dims, rope_train_seq_len=rope_train_seq_len, xsa_last_n=xsa_last_n,
                          attn_out_gate=gate)
    x = torch.randn(1, 16, CFG.model_dim)
    changed = x.clone()
    changed[0, 10:] = torch.randn(6, CFG.model_dim)
    with torch.no_grad():
        a, b = attn(x), attn(changed)
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])
