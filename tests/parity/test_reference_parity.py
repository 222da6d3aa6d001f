"""pgolf against independent re-statements of the reference scripts' numerics, bit for bit on CPU.

Each reference below is written here, from SPEC.md, in the reference scripts' operation order (the
order decides the rounding): SPEC 2.6 Muon with its bf16 Newton-Schulz (and the Polar Express schedule
of SPEC 5.7), fused Adam/AdamW with the references' hyperparameters (SPEC 2.6, 4.6), the record's
U-Net skip-gate lerp (SPEC 4.4 step 3), the record's GPTQ (SPEC 4.10) and the baseline's per-row int8
export (SPEC 2.9). No expected value is computed by pgolf code; pgolf only supplies inputs (a model's
parameters and their optimizer groups). Guards show that pgolf's earlier orders (c (A A) in
Newton-Schulz, unfused Adam, the two-product skip gate, a stable act-order sort, fp16-first int8
scales) give other bits on the same inputs, so the equalities pin the differences they are about.
"""

import pytest
import torch
from testkit import REFERENCE_QUINTIC, reference_newton_schulz

from pgolf.config import ModelConfig, OptimConfig, QuantConfig
from pgolf.model.gpt import GPT
from pgolf.optim.build import build_optimizers
from pgolf.optim.groups import assign_parameter_groups
from pgolf.optim.muon import Muon, orthogonalizer_for, zeropower_via_newton_schulz
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.quant.gptq import gptq_quantize_matrix
from pgolf.quant.rtn import quantize_state_dict_int8, rtn_quantize_rows, rtn_row_scales

# ---- constants copied from SPEC.md, not from pgolf

QUINTIC = list(REFERENCE_QUINTIC)  # SPEC 2.6 (tests/testkit.py)
POLAR_EXPRESS = [  # SPEC 5.7
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
ADAM_BETAS, ADAM_EPS = (0.9, 0.95), 1e-8  # SPEC 2.6 / 4.6
INT8_CLIP_QUANTILE = 0.9999984  # SPEC 2.9: INT8_CLIP_PERCENTILE = 99.99984
GPTQ_DAMPING, GPTQ_BLOCK = 0.01, 128  # SPEC 4.10

CONTROL_PATTERNS = ModelConfig().control_tensor_name_patterns
NS_SHAPES = [(64, 160), (160, 64), (96, 96), (24, 300)]  # wide, tall, square, very wide
MUON_SHAPES = [(48, 32), (32, 80), (40, 40), (96, 24)]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- Newton-Schulz and Muon (SPEC 2.6, 5.7)


@pytest.mark.parametrize("shape", NS_SHAPES)
@pytest.mark.parametrize("name,coefficients", [("quintic", QUINTIC), ("polar_express", POLAR_EXPRESS)])
def test_bf16_newton_schulz_equals_the_reference_loop(shape, name, coefficients):
    G = torch.randn(shape, generator=generator(shape[0] + shape[1])) * 0.3
    expected = reference_newton_schulz(G, 5, coefficients)
    actual = orthogonalizer_for(name)(G, 5)
    assert actual.dtype == torch.bfloat16
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_baseline_orthogonaliser_equals_the_reference_loop(steps):
    G = torch.randn(80, 120, generator=generator(steps))
    assert torch.equal(zeropower_via_newton_schulz(G, steps), reference_newton_schulz(G, steps, QUINTIC))


def test_guard_the_other_product_order_gives_other_bits():
    """c (A A) instead of (c A) A changes most bf16 outputs, so the equalities above pin the order."""
    G = torch.randn(64, 160, generator=generator(0))
    other = reference_newton_schulz(G, 5, QUINTIC, b_times_a_squared=lambda A, b, c: b * A + c * (A @ A))
    assert (other != reference_newton_schulz(G, 5, QUINTIC)).float().mean() > 0.3


def reference_muon_step(params, grads, buffers, *, lr, momentum, steps, coefficients):
    """SPEC 2.6 steps 1-3 and the final ``p <- p - lr * U`` (one process: the flat buffer is the update).

    The references update the buffer in place (``buf = mu * buf + G``) and take the Nesterov look-ahead
    ``U = G + mu * buf`` as one add with ``alpha=mu``; the update is written to a bf16 buffer and cast to
    the parameter's dtype before it is applied.
    """
    for p, g, buf in zip(params, grads, buffers):
        buf.mul_(momentum).add_(g)
        update = reference_newton_schulz(g.add(buf, alpha=momentum), steps, coefficients)
        update *= max(1, g.size(0) / g.size(1)) ** 0.5
        p.add_(update.bfloat16().to(p.dtype), alpha=-lr)


@pytest.mark.parametrize("name,coefficients", [("quintic", QUINTIC), ("polar_express", POLAR_EXPRESS)])
def test_muon_steps_equal_the_reference_step(name, coefficients):
    """Three steps from identical weights, gradients and (non-zero) momentum buffers, changing momentum."""
    gen = generator(1)
    weights = [torch.randn(shape, generator=gen) for shape in MUON_SHAPES]
    start_buffers = [torch.randn(shape, generator=gen) * 0.1 for shape in MUON_SHAPES]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    ref_params = [w.clone() for w in weights]
    ref_buffers = [b.clone() for b in start_buffers]
    opt = Muon(params, lr=0.04, momentum=0.85, backend_steps=5, orthogonalize=orthogonalizer_for(name))
    for p, buf in zip(params, start_buffers):
        opt.state[p]["momentum_buffer"] = buf.clone()
    for step, momentum in enumerate([0.85, 0.9, 0.95]):
        grads = [torch.randn(shape, generator=generator(10 + step)) for shape in MUON_SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.param_groups[0]["momentum"] = momentum
        opt.step()
        reference_muon_step(ref_params, grads, ref_buffers, lr=0.04, momentum=momentum, steps=5,
                            coefficients=coefficients)
    for p, ref, buf in zip(params, ref_params, ref_buffers):
        assert torch.equal(p.detach(), ref)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)


# ---- Adam and AdamW (SPEC 2.6, 4.6)


def tiny_model(tie_embeddings: bool, embedding_dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                            tie_embeddings=tie_embeddings))
    model.tok_emb.to(embedding_dtype)  # the baseline keeps its embedding in bf16 (SPEC 2.5)
    return model


def reference_adam_step(params, grads, *, lr, weight_decay):
    """One step of torch's fused Adam (AdamW with a decay), as the references construct it."""
    params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if weight_decay > 0:
        optimizer = torch.optim.AdamW(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=weight_decay,
                                      fused=True)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)
    optimizer.step()
    return [p.detach() for p in params]


# (config, tie_embeddings, {group: (reference lr, reference weight decay)}): the baseline's Adam (SPEC 2.6,
# tied and untied) and the record's AdamW (SPEC 4.6).
ADAM_CASES = {
    "baseline_tied": (OptimConfig(tied_embed_lr=0.05, scalar_lr=0.04), True,
                      {"token": (0.05, 0.0), "scalar": (0.04, 0.0)}),
    "baseline_untied": (OptimConfig(embed_lr=0.6, head_lr=0.008, scalar_lr=0.04), False,
                        {"token": (0.6, 0.0), "head": (0.008, 0.0), "scalar": (0.04, 0.0)}),
    "record_adamw": (OptimConfig(tied_embed_lr=0.03, scalar_lr=0.02, embed_wd=0.085, adam_wd=0.02), True,
                     {"token": (0.03, 0.085), "scalar": (0.02, 0.02)}),
}


@pytest.mark.parametrize("embedding_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_groups_step_like_fused_torch_adam(case, embedding_dtype):
    cfg, tied, expected_groups = ADAM_CASES[case]
    model = tiny_model(tied, embedding_dtype)
    groups = assign_parameter_groups(model, tie_embeddings=tied, control_patterns=CONTROL_PATTERNS)
    optimizers = {o.param_groups[0]["group_name"]: o for o in build_optimizers(
        model, cfg, tie_embeddings=tied, control_patterns=CONTROL_PATTERNS)}
    gen = generator(2)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(p.dtype)
    expected = {name: reference_adam_step([p for _, p in groups[name]], [p.grad for _, p in groups[name]],
                                          lr=lr, weight_decay=wd)
                for name, (lr, wd) in expected_groups.items()}
    assert set(expected) == set(optimizers) - {"matrix"}  # every Adam group is checked
    for name in expected:
        optimizers[name].step()
        for (param_name, p), ref in zip(groups[name], expected[name]):
            assert torch.equal(p.detach(), ref), (name, param_name)


def test_guard_unfused_adam_gives_other_bits():
    """The for-each kernel rounds differently, so the equality above pins the fused implementation."""
    w, g = torch.randn(64, 96, generator=generator(3)), torch.randn(64, 96, generator=generator(4)) * 1e-2
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        torch.optim.Adam([p], lr=0.05, betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused).step()
        results.append(p.detach())
    assert not torch.equal(*results)


# ---- U-Net skip gates (SPEC 4.4 step 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skip_gate_is_the_records_lerp(dtype):
    """``x = g x + (1 - g) s``, computed as the record does: ``lerp(start=s, end=x, weight=g)``."""
    model = GPT(ModelConfig(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2,
                            skip_gates_enabled=True))
    gen = generator(5)
    with torch.no_grad():
        model.skip_gates.copy_(torch.randn(model.skip_gates.shape, generator=gen) * 2)
        model.skip_weights.copy_(torch.randn(model.skip_weights.shape, generator=gen))
    x = torch.randn(2, 8, 32, generator=gen).to(dtype)
    skip = torch.randn(2, 8, 32, generator=gen).to(dtype)
    for position in range(model.skip_gates.shape[0]):
        s = model.skip_weights[position].detach().to(dtype) * skip
        g = torch.sigmoid(model.skip_gates[position].detach().to(dtype))
        with torch.no_grad():
            assert torch.equal(model.merge_skip(x, skip, position), torch.lerp(s, x, g))
        # The lerp's argument order is the SPEC's formula (checked in float64, where rounding is negligible).
        s64, g64 = s.double(), g.double()
        torch.testing.assert_close(torch.lerp(s64, x.double(), g64), g64 * x.double() + (1 - g64) * s64)
    if dtype == torch.bfloat16:  # guard: the two-product form rounds differently
        assert not torch.equal(torch.lerp(s, x, g), g * x + (1 - g) * s)


# ---- GPTQ (SPEC 4.10)


def reference_gptq_codes(w: torch.Tensor, hessian: torch.Tensor, scale_fp16: torch.Tensor, code_range: int,
                         stable_sort: bool = False) -> torch.Tensor:
    """SPEC 4.10 steps 1-7, one column vector at a time, as the record orders the float operations.

    The record sorts with torch's default (unstable) argsort; ``stable_sort`` is for the guard test only.
    """
    W, H = w.float().clone(), hessian.float().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = GPTQ_DAMPING * torch.diag(H).mean()
    H[torch.arange(cols), torch.arange(cols)] += damp
    perm = torch.argsort(torch.diag(H), descending=True, stable=stable_sort)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s = scale_fp16.float()
    Q = torch.zeros(rows, cols, dtype=torch.int8)
    for i1 in range(0, cols, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, cols)
        block, errors = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1)
        for j in range(i2 - i1):
            column = block[:, j]
            q = torch.clamp(torch.round(column / s), -code_range, code_range)
            Q[:, i1 + j] = q.to(torch.int8)
            err = (column - q * s) / Hinv[i1 + j, i1 + j]
            errors[:, j] = err
            block[:, j:] -= err.unsqueeze(1) * Hinv[i1 + j, i1 + j:i2].unsqueeze(0)
        W[:, i2:] -= errors @ Hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


def reference_sdclip_scales(w: torch.Tensor, k: float, code_range: int) -> torch.Tensor:
    """SPEC 4.10 step 5: k * unbiased row std / R, clamped at 1e-10, rounded to fp16."""
    return (k * w.float().std(dim=1) / code_range).clamp_min(1e-10).to(torch.float16)


def calibration_hessian(columns: int, seed: int, duplicates: bool = False) -> torch.Tensor:
    """X^T X / n of correlated inputs with very different feature scales; inputs 3 and C-5 always zero.

    ``duplicates`` copies inputs 2, 7 and 11 into 50, 60 and 90: equal diagonals, so the act-order sort
    meets ties and its stability decides the column order.
    """
    gen = generator(seed)
    x = torch.randn(600, columns // 4, generator=gen) @ torch.randn(columns // 4, columns, generator=gen)
    x = x + 0.1 * torch.randn(600, columns, generator=gen) * torch.rand(columns, generator=gen) * 3
    x[:, [3, columns - 5]] = 0.0
    if duplicates:
        x[:, [50, 60, 90]] = x[:, [2, 7, 11]]
    return x.T @ x / 600


# (rows, columns, bits, SDClip k, duplicated inputs, seed): the record's int6 matrices (k 12.85) and int8
# embedding (k 20). In the 2048-column case the mean over the strided diagonal view (torch.diagonal)
# rounds differently from the record's contiguous torch.diag, and on torch 2.13's CPU kernels that moves
# about 1,200 codes; the duplicated inputs give act-order ties, where the sort's stability decides.
GPTQ_CASES = [(64, 300, 6, 12.85, False, 1), (128, 2048, 6, 12.85, False, 0), (96, 64, 8, 20.0, False, 2),
              (64, 96, 6, 12.85, True, 3)]


@pytest.mark.parametrize("rows,columns,bits,k,duplicates,seed", GPTQ_CASES)
def test_gptq_codes_equal_the_records(rows, columns, bits, k, duplicates, seed):
    code_range = 2 ** (bits - 1) - 1
    w = torch.randn(rows, columns, generator=generator(seed)) * 0.05
    hessian = calibration_hessian(columns, seed=seed, duplicates=duplicates)
    scale = reference_sdclip_scales(w, k, code_range)
    assert torch.equal(rtn_row_scales(w, bits, "sdclip", k), scale)
    codes = gptq_quantize_matrix(w, hessian, scale, bits, damping=GPTQ_DAMPING, block_size=GPTQ_BLOCK)
    assert torch.equal(codes, reference_gptq_codes(w, hessian, scale, code_range))


def test_guard_a_stable_sort_gives_other_codes_on_ties():
    w = torch.randn(64, 96, generator=generator(3)) * 0.05
    hessian = calibration_hessian(96, seed=3, duplicates=True)
    scale = reference_sdclip_scales(w, 12.85, 31)
    stable = reference_gptq_codes(w, hessian, scale, 31, stable_sort=True)
    assert not torch.equal(stable, reference_gptq_codes(w, hessian, scale, 31))


# ---- baseline int8 export (SPEC 2.9)


def reference_int8_per_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC 2.9 step 3: codes from the fp32 scale, the scale stored fp16 afterwards."""
    clip = torch.quantile(w.abs(), INT8_CLIP_QUANTILE, dim=1)
    scale = torch.clamp(clip / 127, min=1 / 127)
    codes = torch.clamp(torch.round(torch.clamp(w, -clip[:, None], clip[:, None]) / scale[:, None]), -127, 127)
    return codes.to(torch.int8), scale.to(torch.float16)


def matrix_with_outliers(rows: int = 512, cols: int = 1024, seed: int = 6) -> torch.Tensor:
    """Gaussian rows of different spreads, rows with clipped outliers, and a row under the 1/127 floor."""
    gen = generator(seed)
    w = torch.randn(rows, cols, generator=gen) * torch.logspace(-1, 1, rows)[:, None]
    w[::7, 3] *= 300.0  # outliers: above the quantile, clipped
    w[5, :4] = torch.tensor([900.0, -800.0, 700.0, 650.0])
    w[9] *= 1e-4  # all weights tiny: the scale floors at 1/127
    return w


def test_int8_export_equals_the_baseline():
    w = matrix_with_outliers()
    expected_codes, expected_scales = reference_int8_per_row(w)
    tensors, meta = quantize_state_dict_int8({"w": w}, ())
    assert meta["entries"]["w"]["scheme"] == "int8_per_row"
    assert torch.equal(tensors["w.q"], expected_codes) and torch.equal(tensors["w.scale"], expected_scales)
    codes, scales = rtn_quantize_rows("w", w, 8, "percentile")
    assert torch.equal(codes, expected_codes) and torch.equal(scales, expected_scales)


def test_default_artifact_quantisation_equals_the_baseline():
    """The run's export path (QuantConfig defaults) stores the baseline's codes and scales too."""
    w = matrix_with_outliers(seed=7)
    tensors, _ = quantize_for_artifact({"blocks.0.mlp.fc.weight": w}, QuantConfig())
    expected_codes, expected_scales = reference_int8_per_row(w)
    assert torch.equal(tensors["blocks.0.mlp.fc.weight.q"], expected_codes)
    assert torch.equal(tensors["blocks.0.mlp.fc.weight.scale"], expected_scales)


def test_guard_fp16_first_scales_give_other_codes():
    """Dividing by the fp16-rounded scale (pgolf's earlier rule) moves some codes on this matrix."""
    w = matrix_with_outliers()
    expected_codes, expected_scales = reference_int8_per_row(w)
    clip = torch.quantile(w.abs(), INT8_CLIP_QUANTILE, dim=1)[:, None]
    fp16_first = torch.round(torch.clamp(w, -clip, clip) / expected_scales.float()[:, None]).clamp(-127, 127)
    assert (fp16_first.to(torch.int8) != expected_codes).any()

