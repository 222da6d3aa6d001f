"""The runtime value: AUTOCAST_DTYPE resolution, autocast, loss scaling, embedding dtype (CPU; GPUs are faked)."""

import warnings

import pytest
import torch

import pgolf.runtime as runtime_module
from pgolf.dist import DistContext
from pgolf.errors import ConfigError
from pgolf.runtime import NoLossScaling, Runtime, resolve_autocast_dtype, resolve_runtime

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def fake_gpu(monkeypatch, *, bf16: bool):
    monkeypatch.setattr(runtime_module, "gpu_supports_bf16", lambda device: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


@pytest.mark.parametrize("value", ["auto", "bf16", "fp16"])
def test_cpu_always_runs_fp32_without_autocast(value):
    assert resolve_autocast_dtype(value, CPU) == torch.float32


@pytest.mark.parametrize("bf16,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_is_bf16_where_the_gpu_has_it_else_fp16(monkeypatch, bf16, expected):
    fake_gpu(monkeypatch, bf16=bf16)
    assert resolve_autocast_dtype("auto", CUDA) == expected


def test_forced_dtypes(monkeypatch):
    fake_gpu(monkeypatch, bf16=True)
    assert resolve_autocast_dtype("fp16", CUDA) == torch.float16
    assert resolve_autocast_dtype("bf16", CUDA) == torch.bfloat16


def test_forced_bf16_on_a_gpu_without_it_is_a_config_error(monkeypatch):
    fake_gpu(monkeypatch, bf16=False)
    with pytest.raises(ConfigError, match="AUTOCAST_DTYPE=fp16") as error:
        resolve_autocast_dtype("bf16", CUDA)
    assert "Tesla T4" in str(error.value)


def test_unknown_value_is_a_config_error():
    with pytest.raises(ConfigError, match="AUTOCAST_DTYPE"):
        resolve_autocast_dtype("fp8", CPU)


def test_cpu_has_no_native_bf16_gpu():
    assert not runtime_module.gpu_supports_bf16(CPU)


def test_autocast_context_is_a_no_op_on_cpu_and_for_fp32():
    for device, dtype in ((CPU, torch.bfloat16), (CPU, torch.float32), (CUDA, torch.float32)):
        with Runtime(device, dtype).autocast():
            assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_autocast_context_on_cuda_is_torch_autocast_with_the_dtype():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on this machine
        context = Runtime(CUDA, torch.float16).autocast()
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.float16


def test_loss_scaling_only_for_fp16_on_cuda():
    assert isinstance(Runtime(CPU, torch.float16).loss_scaler(), NoLossScaling)
    assert isinstance(Runtime(CUDA, torch.bfloat16).loss_scaler(), NoLossScaling)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(Runtime(CUDA, torch.float16).loss_scaler(), torch.amp.GradScaler)


def sgd_step(use_scaler: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 3))
    opt = torch.optim.SGD([weight], lr=0.1)
    loss = (weight @ torch.arange(3.0)).square().sum()
    if use_scaler:
        scaler = NoLossScaling()
        assert scaler.scale(loss) is loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad = weight.grad.clone()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        grad = weight.grad.clone()
        opt.step()
    return grad, weight.detach().clone()


def test_the_no_op_scaler_recipe_is_exactly_a_plain_step():
    (grad_a, weight_a), (grad_b, weight_b) = sgd_step(True), sgd_step(False)
    assert torch.equal(grad_a, grad_b) and torch.equal(weight_a, weight_b)
    scaler = NoLossScaling()
    assert not scaler.is_enabled() and scaler.get_scale() == 1.0 and scaler.state_dict() == {}


def test_describe_precision():
    assert Runtime(CPU).describe(NoLossScaling()) == "precision:fp32 (no autocast on cpu)"
    assert Runtime(CUDA, torch.bfloat16).describe(NoLossScaling()) == "precision:bf16 autocast loss_scaling:off"


def test_embedding_is_stored_in_bf16_only_under_bf16_autocast_on_cuda():
    assert Runtime(CUDA, torch.bfloat16).embedding_dtype == torch.bfloat16
    assert Runtime(CUDA, torch.float16).embedding_dtype == torch.float32  # the GradScaler must unscale it
    assert Runtime(CPU).embedding_dtype == torch.float32


def test_the_runtime_is_a_value_not_process_state(monkeypatch):
    """Two runtimes in one process (a run beside ``pgolf eval``, a test) do not disturb each other."""
    fake_gpu(monkeypatch, bf16=False)
    fp16 = resolve_runtime(CUDA, "auto")
    fp32 = resolve_runtime(CPU, "auto")
    assert fp16.autocast_dtype == torch.float16 and fp32.autocast_dtype == torch.float32
    assert resolve_runtime(CUDA, "auto").autocast_dtype == torch.float16  # unchanged by the CPU one


def test_the_distributed_context_carries_the_runtime(monkeypatch):
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=CPU, is_distributed=False)
    assert ctx.runtime == Runtime(CPU, torch.float32)
    fake_gpu(monkeypatch, bf16=True)
    gpu = DistContext(rank=0, world_size=1, local_rank=0, device=CUDA, is_distributed=False).with_precision("auto")
    assert gpu.runtime == Runtime(CUDA, torch.bfloat16) and gpu.device == CUDA
