"""Newton-Schulz orthogonalisation and the single-process Muon step (SPEC 2.6)."""

import copy

import pytest
import torch
from testkit import reference_newton_schulz

from pgolf.optim.muon import Muon, zeropower_via_newton_schulz

SHAPES = [(64, 32), (32, 64), (48, 48), (16, 200)]


def fp32_newton_schulz(G, steps, a=3.4445, b=-4.7750, c=2.0315, eps=1e-7):
    """The same quintic, written out in fp32 with the Gram matrix always on the short side."""
    tall = G.shape[0] > G.shape[1]
    X = (G.T if tall else G).float()
    X = X / (torch.linalg.matrix_norm(X) + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_is_close_to_polar_factor(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    out = zeropower_via_newton_schulz(G, steps=5)
    assert out.shape == G.shape and out.dtype == torch.bfloat16
    out = out.float()
    # The quintic does not converge to 1; it pushes every singular value into roughly [0.7, 1.15].
    singular_values = torch.linalg.svdvals(out)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.2
    # Same singular vectors as G: close to U V^T, and U^T out V is nearly diagonal.
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    assert torch.linalg.matrix_norm(out - polar) / torch.linalg.matrix_norm(polar) < 0.35
    core = U.T @ out @ Vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 0.06


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_matches_fp32_iteration(shape):
    torch.manual_seed(1)
    G = torch.randn(shape) * 3.0
    out = zeropower_via_newton_schulz(G, steps=5).float()
    ref = fp32_newton_schulz(G, steps=5)
    assert torch.linalg.matrix_norm(out - ref) / torch.linalg.matrix_norm(ref) < 0.05


def test_newton_schulz_transpose_symmetry_and_zero_input():
    torch.manual_seed(2)
    G = torch.randn(40, 24)
    tall = zeropower_via_newton_schulz(G, steps=5).float()
    wide = zeropower_via_newton_schulz(G.T.contiguous(), steps=5).float()
    torch.testing.assert_close(tall, wide.T, rtol=0, atol=2e-2)
    zero = zeropower_via_newton_schulz(torch.zeros(8, 5), steps=5)
    assert torch.equal(zero, torch.zeros(8, 5, dtype=torch.bfloat16))


def make_muon_params(seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


def set_random_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def test_muon_steps_match_fp32_reference():
    """Per-step updates against the SPEC formula in fp32 (loose: the optimizer works in bf16)."""
    params = make_muon_params()
    lr = 0.04
    opt = Muon(params, lr=lr, momentum=0.85, backend_steps=5)
    ref_bufs = [torch.zeros_like(p) for p in params]
    for step, mu in enumerate([0.85, 0.9, 0.95]):
        opt.param_groups[0]["momentum"] = mu
        before = [p.detach().clone() for p in params]
        set_random_grads(params, seed=10 + step)
        opt.step()
        for p, p0, buf in zip(params, before, ref_bufs):
            buf.copy_(mu * buf + p.grad)
            direction = p.grad + mu * buf
            rows, cols = p.shape
            expected = fp32_newton_schulz(direction, steps=5) * max(1.0, rows / cols) ** 0.5
            actual = (p0 - p.detach()) / lr
            assert torch.linalg.matrix_norm(actual - expected) / torch.linalg.matrix_norm(expected) < 0.05


def test_muon_steps_follow_momentum_formula_exactly():
    """Three steps with a momentum schedule, against the same maths written out by hand (bf16 NS included)."""
    params = make_muon_params()
    ref_params = [p.detach().clone() for p in params]
    ref_bufs = [torch.zeros_like(p) for p in params]
    opt = Muon(params, lr=0.05, momentum=0.85, backend_steps=3)
    for step, mu in enumerate([0.85, 0.9, 0.95]):
        opt.param_groups[0]["momentum"] = mu
        set_random_grads(params, seed=20 + step)
        opt.step()
        for p, ref, buf in zip(params, ref_params, ref_bufs):
            # Same op forms as the optimizer (fused add with alpha) so the comparison can be exact.
            buf.mul_(mu).add_(p.grad)
            direction = p.grad.add(buf, alpha=mu)
            scale = max(1.0, ref.shape[0] / ref.shape[1]) ** 0.5
            # The shape scale is applied in bf16, then the update is cast to the parameter's dtype.
            update = reference_newton_schulz(direction, steps=3) * scale
            ref.add_(update.float(), alpha=-0.05)
    for p, ref, buf in zip(params, ref_params, ref_bufs):
        assert torch.equal(p.detach(), ref)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)


def test_muon_without_nesterov_uses_buffer():
    params = make_muon_params()
    p0 = params[0].detach().clone()
    opt = Muon(params[:1], lr=0.1, momentum=0.5, nesterov=False)
    set_random_grads(params[:1], seed=30)
    opt.step()
    rows, cols = p0.shape
    expected = (reference_newton_schulz(params[0].grad, steps=5) * (rows / cols) ** 0.5).float()
    assert torch.equal(params[0].detach(), p0.add(expected, alpha=-0.1))


def test_muon_skips_parameters_without_grad_and_uses_custom_orthogonalize():
    params = make_muon_params()
    before = [p.detach().clone() for p in params]
    calls = []

    def sign_orthogonalize(G, steps):
        calls.append(tuple(G.shape))
        return torch.sign(G).bfloat16()

    opt = Muon(params, lr=1.0, momentum=0.0, orthogonalize=sign_orthogonalize)
    set_random_grads(params, seed=40)
    params[1].grad = None
    opt.step()
    assert calls == [SHAPES[0], SHAPES[2], SHAPES[3]]
    assert torch.equal(params[1].detach(), before[1])
    assert params[1] not in opt.state
    assert torch.equal(params[2].detach(), before[2] - torch.sign(params[2].grad))


def test_muon_rejects_bad_setup():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.ones(4))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="rank"):
        Muon(make_muon_params(), lr=0.1, momentum=0.9, rank=2, world_size=2)
    params = make_muon_params()
    opt = Muon(params, lr=0.1, momentum=0.9, rank=0, world_size=2)
    set_random_grads(params, seed=50)
    with pytest.raises(RuntimeError, match="not initialised"):
        opt.step()


def test_muon_state_dict_round_trip():
    params = make_muon_params()
    opt = Muon(params, lr=0.02, momentum=0.9)
    set_random_grads(params, seed=60)
    opt.step()
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = Muon(clone, lr=0.5, momentum=0.1)
    # state_dict() returns live references; copy it as a checkpoint or snapshot would.
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.param_groups[0]["momentum"] == 0.9 and opt2.param_groups[0]["lr"] == 0.02
    for p, q in zip(params, clone):
        q.grad = p.grad.clone()
    opt.step()
    opt2.step()
    for p, q in zip(params, clone):
        assert torch.equal(p.detach(), q.detach())
