"""GPU path vs the eager fp32 CPU reference, for the same weights and tokens (needs CUDA).

Checks, for the baseline_sp1024 model with perturbed (non-zero) output projections:
  1. loss and logits: CPU fp32 eager vs GPU bf16-autocast eager vs GPU torch.compile;
  2. evaluation sums (loss, tokens, bytes) through `evaluate_bpb` with real byte tables;
  3. one full optimizer step (Muon + Adam): parameters after the step, GPU vs CPU;
  4. the fused Triton kernels (pgolf/model/kernels) vs their eager references on the GPU, at training
     sizes: softcapped cross-entropy (loss and logit gradients, also vs float64) and the squared
     (Leaky)ReLU fc matmul (values and input/weight gradients), eager and under torch.compile, with
     forward+backward times. Needs no data.
Reported as relative errors ||a - b|| / ||b||. bf16 operands put expected errors near 1e-3..1e-2.

    python bench/gpu_parity.py --tokens PATH/fineweb_val_*.bin --tokenizer PATH/fineweb_1024_bpe.model
    python bench/gpu_parity.py --sections kernels          # kernel parity only
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.data.shards import read_shard  # noqa: E402
from pgolf.data.tokenizer import build_byte_tables, load_sentencepiece  # noqa: E402
from pgolf.eval.bpb import evaluate_bpb  # noqa: E402
from pgolf.runtime import Runtime, resolve_runtime  # noqa: E402
from pgolf.model.gpt import GPT, place_model_on_device  # noqa: E402
from pgolf.model.kernels.fused_mlp import (  # noqa: E402
    fused_linear_squared_activation, load_fused_mlp_kernels, mlp_activation_reference,
)
from pgolf.model.kernels.softcap_ce import (  # noqa: E402
    load_softcap_ce_kernels, softcapped_cross_entropy_fused, softcapped_cross_entropy_reference,
)
from pgolf.optim.build import build_optimizers  # noqa: E402
from pgolf.presets import baseline_sp1024  # noqa: E402


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def reference_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(baseline_sp1024().model)
    with torch.no_grad():  # zero-init projections would hide most of the network from the comparison
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.02)
    return model


def copy_to(model: GPT, device: torch.device) -> GPT:
    clone = GPT(model.cfg)
    clone.load_state_dict(model.state_dict())
    return place_model_on_device(clone, device)


def bf16_runtime(device: torch.device) -> Runtime:
    """bf16 autocast on CUDA (what a run on an H100 uses), plain fp32 elsewhere."""
    return resolve_runtime(device, "bf16" if device.type == "cuda" else "auto")


def compare_forward(model_cpu: GPT, tokens: torch.Tensor, cuda: torch.device) -> dict:
    x, y = tokens[:-1].view(4, -1), tokens[1:].view(4, -1)
    with torch.no_grad():
        ref_logits = model_cpu.forward_logits(x)
        ref_loss = model_cpu(x, y)
        gpu = copy_to(model_cpu, cuda)
        with bf16_runtime(cuda).autocast():
            gpu_logits = gpu.forward_logits(x.to(cuda))
            gpu_loss = gpu(x.to(cuda), y.to(cuda))
            compiled = torch.compile(gpu, dynamic=False, fullgraph=True)
            compiled_loss = compiled(x.to(cuda), y.to(cuda))
    return {"loss_cpu_fp32": ref_loss.item(), "loss_gpu_bf16": gpu_loss.item(), "loss_gpu_compiled": compiled_loss.item(),
            "logits_rel_err_gpu_vs_cpu": relative_error(gpu_logits, ref_logits),
            "loss_rel_err_compiled_vs_eager_gpu": abs(compiled_loss.item() - gpu_loss.item()) / abs(gpu_loss.item())}


def compare_eval(model_cpu: GPT, tokens: torch.Tensor, tokenizer: str, cuda: torch.device) -> dict:
    tables = build_byte_tables(load_sentencepiece(tokenizer), 1024)
    kwargs = dict(seq_len=1024, batch_sequences=8, target_bytes=tables)
    cpu_sums = evaluate_bpb(model_cpu, tokens, runtime=Runtime(torch.device("cpu")), **kwargs)
    gpu_sums = evaluate_bpb(copy_to(model_cpu, cuda), tokens, runtime=bf16_runtime(cuda), **kwargs)
    return {"eval_bpb_cpu": cpu_sums.val_bpb, "eval_bpb_gpu": gpu_sums.val_bpb,
            "eval_bytes_equal": cpu_sums.byte_count == gpu_sums.byte_count,
            "eval_tokens_equal": cpu_sums.token_count == gpu_sums.token_count,
            "eval_bpb_rel_err": abs(gpu_sums.val_bpb - cpu_sums.val_bpb) / cpu_sums.val_bpb}


def one_step(model: GPT, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    optimizers = build_optimizers(model, baseline_sp1024().optim, tie_embeddings=cfg.tie_embeddings,
                                  control_patterns=cfg.control_tensor_name_patterns)
    with bf16_runtime(device).autocast():
        loss = model(x.to(device), y.to(device))
    loss.backward()
    for opt in optimizers:
        opt.step()
    return {name: p.detach().float().cpu() for name, p in model.named_parameters()}


def compare_optimizer_step(model_cpu: GPT, tokens: torch.Tensor, cuda: torch.device) -> dict:
    x, y = tokens[:-1].view(4, -1), tokens[1:].view(4, -1)
    before = {name: p.detach().clone() for name, p in model_cpu.named_parameters()}
    gpu_after = one_step(copy_to(model_cpu, cuda), x, y, cuda)
    cpu_after = one_step(copy_to(model_cpu, torch.device("cpu")), x, y, torch.device("cpu"))
    worst = max(((relative_error(gpu_after[n] - before[n], cpu_after[n] - before[n]), n) for n in before))
    return {"step_update_worst_rel_err": worst[0], "step_update_worst_param": worst[1]}


def cuda_milliseconds(fn, repeats: int = 20) -> float:
    """Median wall time of ``fn()`` on the GPU, after two warm-up calls (0 off the GPU: smoke tests)."""
    if not torch.cuda.is_available():
        return 0.0
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def forward_backward(loss_fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``loss_fn(*leaves)`` and the gradients of its (weighted) sum with respect to fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = loss_fn(*leaves)
    weights = torch.randn(out.shape, device=out.device, generator=torch.Generator(out.device).manual_seed(1))
    grads = torch.autograd.grad((out.float() * weights).sum(), leaves)
    return out.detach(), list(grads)


def compare_softcap_ce(cuda: torch.device, rows: int, vocab: int, compile_too: bool) -> dict:
    gen = torch.Generator(cuda).manual_seed(0)
    logits = (torch.randn(rows, vocab, device=cuda, generator=gen) * 8).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device=cuda, generator=gen)
    fused = lambda x: softcapped_cross_entropy_fused(x, targets, 30.0, "none")  # noqa: E731
    eager = lambda x: softcapped_cross_entropy_reference(x, targets, 30.0, "none")  # noqa: E731
    loss_f, (grad_f,) = forward_backward(fused, logits)
    loss_e, (grad_e,) = forward_backward(eager, logits)
    loss_64 = softcapped_cross_entropy_reference(logits.double().cpu(), targets.cpu(), 30.0, "none")
    step = lambda fn: lambda: fn(logits.detach().requires_grad_()).sum().backward()  # noqa: E731
    tag = f"ce_{rows}x{vocab}"
    result = {f"{tag}_loss_rel_err_vs_eager": relative_error(loss_f, loss_e),
              f"{tag}_loss_rel_err_vs_float64": relative_error(loss_f.cpu(), loss_64),
              f"{tag}_eager_loss_rel_err_vs_float64": relative_error(loss_e.cpu(), loss_64),
              f"{tag}_grad_rel_err_vs_eager": relative_error(grad_f, grad_e),
              f"{tag}_fused_fwd_bwd_ms": cuda_milliseconds(step(fused)),
              f"{tag}_eager_fwd_bwd_ms": cuda_milliseconds(step(eager))}
    if compile_too:  # the fused path inside a fullgraph compile (custom ops), vs the eager mean
        compiled = torch.compile(lambda x: softcapped_cross_entropy_fused(x, targets, 30.0, "mean"), fullgraph=True)
        loss_c, (grad_c,) = forward_backward(compiled, logits)
        mean = lambda x: softcapped_cross_entropy_reference(x, targets, 30.0, "mean")  # noqa: E731
        loss_m, (grad_m,) = forward_backward(mean, logits)
        result.update({f"{tag}_compiled_mean_rel_err": relative_error(loss_c, loss_m),
                       f"{tag}_compiled_grad_rel_err": relative_error(grad_c, grad_m),
                       f"{tag}_eager_compiled_fwd_bwd_ms": cuda_milliseconds(step(torch.compile(eager)))})
    return result


def compare_fused_mlp(cuda: torch.device, rows: int, dim: int, hidden: int, slope: float,
                      compile_too: bool) -> dict:
    gen = torch.Generator(cuda).manual_seed(0)
    x = torch.randn(rows, dim, device=cuda, generator=gen).bfloat16()
    weight = torch.randn(hidden, dim, device=cuda, generator=gen) / dim ** 0.5  # fp32 master weight

    def fused(x_, w_):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fused_linear_squared_activation(x_, w_, slope)

    def eager(x_, w_):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return mlp_activation_reference(torch.nn.functional.linear(x_, w_.to(x_.dtype)), slope)

    h_f, (gx_f, gw_f) = forward_backward(fused, x, weight)
    h_e, (gx_e, gw_e) = forward_backward(eager, x, weight)
    h_64 = mlp_activation_reference(x.double() @ weight.double().T, slope)
    step = lambda fn: lambda: fn(x, weight.detach().requires_grad_()).float().sum().backward()  # noqa: E731
    tag = f"mlp_{rows}x{dim}x{hidden}_slope{slope:g}"
    result = {f"{tag}_h_rel_err_vs_eager": relative_error(h_f, h_e),
              f"{tag}_h_rel_err_vs_float64": relative_error(h_f, h_64),
              f"{tag}_eager_h_rel_err_vs_float64": relative_error(h_e, h_64),
              f"{tag}_grad_x_rel_err": relative_error(gx_f, gx_e), f"{tag}_grad_w_rel_err": relative_error(gw_f, gw_e),
              f"{tag}_fused_fwd_bwd_ms": cuda_milliseconds(step(fused)),
              f"{tag}_eager_fwd_bwd_ms": cuda_milliseconds(step(eager))}
    if compile_too:  # the fused path inside a fullgraph compile, and what Inductor makes of the eager one
        h_c, _ = forward_backward(torch.compile(fused, fullgraph=True), x, weight)
        result.update({f"{tag}_compiled_h_rel_err": relative_error(h_c, h_f),
                       f"{tag}_eager_compiled_fwd_bwd_ms":
                           cuda_milliseconds(step(torch.compile(eager, fullgraph=True)))})
    return result


def compare_fused_kernels(cuda: torch.device, rows: int, compile_too: bool) -> dict:
    """Section 4; every comparison is independent, so one failure is reported and the rest still run."""
    result = {"kernels_ce_loaded": load_softcap_ce_kernels(), "kernels_mlp_loaded": load_fused_mlp_kernels()}
    checks = [(compare_softcap_ce, (cuda, rows, 1024, compile_too)),
              (compare_softcap_ce, (cuda, rows, 8192, compile_too)),
              (compare_fused_mlp, (cuda, rows, 512, 2048, 0.0, compile_too)),
              (compare_fused_mlp, (cuda, rows, 512, 2048, 0.5, compile_too))]
    for check, args in checks:
        try:
            result.update(check(*args))
        except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
            result[f"error_{check.__name__}_{args[1:-1]}"] = f"{type(error).__name__}: {error}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", help="a validation shard (sections forward, eval, step)")
    parser.add_argument("--tokenizer", help="its SentencePiece model (section eval)")
    parser.add_argument("--eval-tokens", type=int, default=32 * 1024)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--sections", default="forward,eval,step,kernels",
                        help="comma-separated subset of forward, eval, step, kernels")
    parser.add_argument("--kernel-rows", type=int, default=16384, help="tokens per kernel check (section kernels)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile kernel checks")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    cuda = torch.device(args.device)
    result = {"device": torch.cuda.get_device_name() if cuda.type == "cuda" else "cpu", "torch": torch.__version__}
    if sections & {"forward", "eval", "step"}:
        if not args.tokens or not args.tokenizer:
            parser.error("sections forward/eval/step need --tokens and --tokenizer")
        all_tokens = torch.from_numpy(read_shard(args.tokens)[: args.eval_tokens + 1].astype("int64"))
        model_cpu = reference_model()
        if "forward" in sections:
            result.update(compare_forward(model_cpu, all_tokens[: 4 * 1024 + 1], cuda))
        if "eval" in sections:
            result.update(compare_eval(model_cpu, all_tokens, args.tokenizer, cuda))
        if "step" in sections:
            result.update(compare_optimizer_step(model_cpu, all_tokens[: 4 * 1024 + 1], cuda))
    if "kernels" in sections:
        result.update(compare_fused_kernels(cuda, args.kernel_rows, not args.no_compile))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
