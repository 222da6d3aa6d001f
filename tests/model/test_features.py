"""The record-stack skeleton features, each on and off, against a plain float64 reference of SPEC 2.4,
4.4, 5.1 and 5.4 written out in this file (attention is used as a black box: it has its own tests)."""

import dataclasses
import math

import pytest
import torch

from pgolf.config import DEFAULT_CONTROL_PATTERNS, ModelConfig
from pgolf.model.block import ACTIVATIONS
from pgolf.model.features.smear_gate import SmearGate
from pgolf.model.gpt import GPT, count_parameters
from pgolf.optim.groups import assign_parameter_groups

BASE = ModelConfig(vocab_size=64, num_layers=5, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2)
# Looping blocks 1..2 once more: on = [0,1,2,1,2,3,4] (encoder [0,1,2], decoder [1,2,3,4]).
LOOP = dict(num_loops=1, loop_start=1, loop_end=2)
EVERYTHING = dict(activation="leaky_relu2", ln_scale=True, skip_gates_enabled=True, smear_gate_enabled=True,
                  parallel_residual_start=3, parallel_residual_mode="two_lane", **LOOP)
FEATURES = {
    "baseline": {},
    "leaky_relu2": dict(activation="leaky_relu2"),
    "ln_scale": dict(ln_scale=True),
    "skip_gates": dict(skip_gates_enabled=True),
    "looping": LOOP,
    "parallel_single": dict(parallel_residual_start=3),
    "parallel_two_lane": dict(parallel_residual_start=3, parallel_residual_mode="two_lane"),
    "smear_gate": dict(smear_gate_enabled=True),
    "untied": dict(tie_embeddings=False),
    "everything_single": dict(EVERYTHING, parallel_residual_mode="single", parallel_residual_start=2),
    "everything_two_lane": EVERYTHING,
    "everything_untied": dict(EVERYTHING, tie_embeddings=False),
}
# Each feature runs with looping on where it can, so the looped graph is what the checks see.
CASES = [pytest.param(changes, id=name) for name, changes in FEATURES.items()]


def random_model(changes: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
    """A model whose zero-init weights and control tensors hold random values, so every path matters."""
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(BASE, **changes))
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
        for name, param in model.named_parameters():
            if any(pattern in name for pattern in DEFAULT_CONTROL_PATTERNS):
                param.add_(0.3 * torch.randn_like(param))
    model.set_looping(model.supports_looping)
    return model.to(dtype)


# ---- the float64 reference ---------------------------------------------------------------------------

def rms(x):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def ref_smear(x, ids, weight_1W, lam, bos):
    out = x.clone()
    for t in range(1, x.size(1)):
        gate = torch.sigmoid(x[:, t, :12] @ weight_1W[0])[:, None]
        not_bos = (ids[:, t] != bos).to(x.dtype)[:, None]
        out[:, t] = x[:, t] + lam * gate * x[:, t - 1] * not_bos
    return out


def ref_mlp(mlp, x, activation):
    z = x @ mlp.fc.weight.T
    hidden = torch.relu(z) ** 2 if activation == "relu2" else torch.where(z > 0, z, 0.5 * z) ** 2
    return hidden @ mlp.proj.weight.T


def ref_branches(block, i, cfg, attn_input, mlp_input):
    s = 1 / math.sqrt(i + 1) if cfg.ln_scale else 1.0
    attn = block.attn_scale * block.attn(rms(attn_input) * s)
    return attn, block.mlp_scale * ref_mlp(block.mlp, rms(mlp_input) * s, cfg.activation)


def ref_block(block, i, cfg, x, x0):
    x_in = block.resid_mix[0] * x + block.resid_mix[1] * x0
    if cfg.parallel_residual_mode == "single" and 0 <= cfg.parallel_residual_start <= i:
        attn, mlp = ref_branches(block, i, cfg, x_in, x_in)
        return x_in + attn + mlp
    h = x_in + ref_branches(block, i, cfg, x_in, x_in)[0]
    return h + ref_branches(block, i, cfg, h, h)[1]


def ref_skip(model, x, skip, j):
    s = model.skip_weights[j] * skip
    if not model.cfg.skip_gates_enabled:
        return x + s
    g = torch.sigmoid(model.skip_gates[j])
    return g * x + (1 - g) * s


def ref_hidden(model: GPT, ids, encoder, decoder, lane_start):
    cfg = model.cfg
    x = model.tok_emb.weight[ids]
    if cfg.smear_gate_enabled:
        x = ref_smear(x, ids, model.smear_gate.gate.weight, model.smear_gate.smear_lambda, cfg.bos_token_id)
    x = x0 = rms(x)
    skips = []
    for i in encoder:
        x = ref_block(model.blocks[i], i, cfg, x, x0)
        skips.append(x)
    a = m = None
    for j, i in enumerate(decoder):
        if j == lane_start:
            a, m = x, x
        if a is None:
            x = ref_block(model.blocks[i], i, cfg, ref_skip(model, x, skips.pop(), j) if skips else x, x0)
            continue
        a = ref_skip(model, a, skips.pop(), j) if skips else a
        block = model.blocks[i]
        attn, mlp = ref_branches(block, i, cfg, block.resid_mix[0] * a + block.resid_mix[1] * x0, m)
        lam, post = model.parallel_resid_lambdas[i], model.parallel_post_lambdas[i]
        a, m = lam[0] * a + post[0, 0] * attn + post[1, 0] * mlp, lam[1] * m + post[0, 1] * attn + post[1, 1] * mlp
    return rms(x if a is None else (a + m) / 2)


def spec_layer_order(changes: dict, looping: bool):
    """Encoder, decoder and two-lane start written out by hand for BASE's 5 layers."""
    order = [0, 1, 2, 1, 2, 3, 4] if looping and changes.get("num_loops") else [0, 1, 2, 3, 4]
    encoder, decoder = order[: len(order) // 2], order[len(order) // 2:]
    two_lane = changes.get("parallel_residual_mode") == "two_lane"
    lane_start = decoder.index(changes["parallel_residual_start"]) if two_lane else None
    return encoder, decoder, lane_start


@pytest.mark.parametrize("looping", [False, True])
@pytest.mark.parametrize("changes", CASES)
def test_forward_equals_the_float64_reference(changes, looping):
    model = random_model(changes, dtype=torch.float64)
    model.set_looping(looping and model.supports_looping)
    ids = torch.randint(0, 64, (2, 12))
    ids[:, 5] = model.cfg.bos_token_id
    with torch.no_grad():
        expected = ref_hidden(model, ids, *spec_layer_order(changes, model.looping))
        torch.testing.assert_close(model.forward_hidden(ids), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("changes", CASES)
def test_loss_is_finite_and_every_parameter_gets_a_gradient(changes):
    model = random_model(changes)
    x = torch.randint(0, 64, (2, 16))
    loss = model(x, torch.roll(x, -1, 1))
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} received no gradient"


@pytest.mark.parametrize("changes", CASES)
def test_causality(changes):
    model = random_model(changes).eval()
    x = torch.randint(0, 64, (1, 24))
    changed = x.clone()
    changed[0, 12:] = (x[0, 12:] + 1 + torch.randint(0, 60, (12,))) % 64
    with torch.no_grad():
        a, b = model.forward_logits(x), model.forward_logits(changed)
    torch.testing.assert_close(a[0, :12], b[0, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[0, 12:], b[0, 12:])


@pytest.mark.parametrize("name", [n for n in FEATURES if n not in ("baseline", "untied")])
def test_feature_keeps_every_baseline_parameter_and_its_initial_value(name):
    tie = FEATURES[name].get("tie_embeddings", True)
    torch.manual_seed(3)
    baseline = dict(GPT(dataclasses.replace(BASE, tie_embeddings=tie)).named_parameters())
    torch.manual_seed(3)
    featured = dict(GPT(dataclasses.replace(BASE, **FEATURES[name])).named_parameters())
    for key, param in baseline.items():  # skip_weights may have more slots (looping): compare the shared ones
        assert torch.equal(featured[key][: len(param)], param), key
    extra = sorted(set(featured) - set(baseline))
    assert all(any(p in key for p in DEFAULT_CONTROL_PATTERNS) for key in extra), extra


def test_smear_gate_is_the_identity_at_init():
    torch.manual_seed(0)
    plain = GPT(BASE)
    torch.manual_seed(0)
    smeared = GPT(dataclasses.replace(BASE, smear_gate_enabled=True))
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert torch.equal(plain.forward_logits(ids), smeared.forward_logits(ids))


def test_smear_module_matches_the_reference_and_stops_at_bos():
    torch.manual_seed(0)
    smear = SmearGate(16, bos_token_id=1).double()
    with torch.no_grad():
        smear.gate.weight.normal_()
        smear.smear_lambda.fill_(0.7)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    ids = torch.randint(2, 64, (2, 10))
    ids[:, 6] = 1  # document 2 starts at position 6; position 5 is document 1's last token
    with torch.no_grad():
        torch.testing.assert_close(smear(x, ids), ref_smear(x, ids, smear.gate.weight, smear.smear_lambda, 1))
        changed = x.clone()
        changed[:, 5] += 1.0
        out, out_changed = smear(x, ids), smear(changed, ids)
        assert torch.equal(out[:, 6:], out_changed[:, 6:])
        assert not torch.allclose(out[:, 5], out_changed[:, 5])
        no_bos = ids.clone()
        no_bos[:, 6] = 7  # without the separator the previous token does flow in: the check can fail
        assert not torch.allclose(smear(x, no_bos)[:, 6], smear(changed, no_bos)[:, 6])


def test_smear_does_not_carry_the_previous_document_into_the_next_in_the_whole_model():
    model = random_model(dict(smear_gate_enabled=True)).eval()
    with torch.no_grad():
        model.smear_gate.smear_lambda.fill_(1.0)
        for block in model.blocks:
            block.attn_scale.zero_()  # attention cannot look back, so only the smear path links positions
    ids = torch.randint(2, 64, (1, 12))
    ids[0, 6] = model.cfg.bos_token_id
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % 62 + 2  # the previous document's last token
    no_bos, no_bos_changed = ids.clone(), changed.clone()
    no_bos[0, 6] = no_bos_changed[0, 6] = 7
    with torch.no_grad():
        logits, logits_changed = model.forward_logits(ids), model.forward_logits(changed)
        assert torch.equal(logits[0, 6:], logits_changed[0, 6:])
        assert not torch.allclose(model.forward_logits(no_bos)[0, 6], model.forward_logits(no_bos_changed)[0, 6])


def test_activations_match_their_formulas():
    z = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["relu2"](z), torch.clamp(z, min=0) ** 2)
    torch.testing.assert_close(ACTIVATIONS["leaky_relu2"](z), torch.where(z > 0, z * z, 0.25 * z * z))


def test_orthogonal_init_touches_only_large_non_zero_init_linears():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(BASE, model_dim=64, num_heads=4, num_kv_heads=2, ortho_init=True))
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    for w in (attn.c_q.weight, mlp.fc.weight):  # both dims >= 64: orthonormal rows or columns
        small = min(w.shape)
        gram = w @ w.T if w.size(0) == small else w.T @ w
        torch.testing.assert_close(gram, torch.eye(small), atol=1e-5, rtol=0)
    assert torch.count_nonzero(attn.proj.weight) == 0 and torch.count_nonzero(mlp.proj.weight) == 0
    k = attn.c_k.weight  # 32 x 64: keeps PyTorch's default uniform(+-1/sqrt(64))
    assert k.abs().max() <= 1 / 8 and not torch.allclose(k @ k.T, torch.eye(32), atol=1e-2)


def test_everything_on_trains_and_every_parameter_has_one_optimizer_home():
    model = random_model(EVERYTHING, seed=1)
    groups = assign_parameter_groups(model, tie_embeddings=True, control_patterns=DEFAULT_CONTROL_PATTERNS)
    scalar_names = {name for name, _ in groups["scalar"]}
    assert {"skip_gates", "parallel_resid_lambdas", "parallel_post_lambdas",
            "smear_gate.gate.weight", "smear_gate.smear_lambda"} <= scalar_names
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    pattern = torch.arange(16).repeat(2, 2) % 64  # a predictable sequence
    losses = []
    for _ in range(12):
        loss = model(pattern[:, :-1], pattern[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5, losses


def test_parameter_counts_of_the_features():
    d, L = BASE.model_dim, BASE.num_layers
    base = count_parameters(GPT(BASE))
    looped = GPT(dataclasses.replace(BASE, **LOOP))
    assert count_parameters(looped) == base + d  # skip slots: 3 with looping on instead of 2
    assert count_parameters(GPT(dataclasses.replace(BASE, skip_gates_enabled=True))) == base + 2 * d
    assert count_parameters(GPT(dataclasses.replace(BASE, smear_gate_enabled=True))) == base + 12 + 1
    two_lane = GPT(dataclasses.replace(BASE, parallel_residual_start=3, parallel_residual_mode="two_lane"))
    assert count_parameters(two_lane) == base + 6 * L
    for changes in (dict(activation="leaky_relu2"), dict(ln_scale=True), dict(parallel_residual_start=3)):
        assert count_parameters(GPT(dataclasses.replace(BASE, **changes))) == base
