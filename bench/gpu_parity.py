"""GPU path vs the eager fp32 CPU reference, for the same weights and tokens (needs CUDA).

Checks, for the baseline_sp1024 model with perturbed (non-zero) output projections:
  1. loss and logits: CPU fp32 eager vs GPU bf16-autocast eager vs GPU torch.compile;
  2. evaluation sums (loss, tokens, bytes) through `evaluate_bpb` with real byte tables;
  3. one full optimizer step (Muon + Adam): parameters after the step, GPU vs CPU.
Reported as relative errors ||a - b|| / ||b||. bf16 operands put expected errors near 1e-3..1e-2.

    python bench/gpu_parity.py --tokens PATH/fineweb_val_*.bin --tokenizer PATH/fineweb_1024_bpe.model
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.data.shards import read_shard  # noqa: E402
from pgolf.data.tokenizer import build_byte_tables, load_sentencepiece  # noqa: E402
from pgolf.eval.bpb import autocast_context, evaluate_bpb  # noqa: E402
from pgolf.model.gpt import GPT, place_model_on_device  # noqa: E402
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


def compare_forward(model_cpu: GPT, tokens: torch.Tensor, cuda: torch.device) -> dict:
    x, y = tokens[:-1].view(4, -1), tokens[1:].view(4, -1)
    with torch.no_grad():
        ref_logits = model_cpu.forward_logits(x)
        ref_loss = model_cpu(x, y)
        gpu = copy_to(model_cpu, cuda)
        with autocast_context(cuda):
            gpu_logits = gpu.forward_logits(x.to(cuda))
            gpu_loss = gpu(x.to(cuda), y.to(cuda))
            compiled = torch.compile(gpu, dynamic=False, fullgraph=True)
            compiled_loss = compiled(x.to(cuda), y.to(cuda))
    return {"loss_cpu_fp32": ref_loss.item(), "loss_gpu_bf16": gpu_loss.item(), "loss_gpu_compiled": compiled_loss.item(),
            "logits_rel_err_gpu_vs_cpu": relative_error(gpu_logits, ref_logits),
            "loss_rel_err_compiled_vs_eager_gpu": abs(compiled_loss.item() - gpu_loss.item()) / abs(gpu_loss.item())}


def compare_eval(model_cpu: GPT, tokens: torch.Tensor, tokenizer: str, cuda: torch.device) -> dict:
    tables = build_byte_tables(load_sentencepiece(tokenizer), 1024)
    kwargs = dict(seq_len=1024, batch_sequences=8, byte_tables=tables)
    cpu_sums = evaluate_bpb(model_cpu, tokens, device=torch.device("cpu"), **kwargs)
    gpu_sums = evaluate_bpb(copy_to(model_cpu, cuda), tokens, device=cuda, **kwargs)
    return {"eval_bpb_cpu": cpu_sums.val_bpb, "eval_bpb_gpu": gpu_sums.val_bpb,
            "eval_bytes_equal": cpu_sums.byte_count == gpu_sums.byte_count,
            "eval_tokens_equal": cpu_sums.token_count == gpu_sums.token_count,
            "eval_bpb_rel_err": abs(gpu_sums.val_bpb - cpu_sums.val_bpb) / cpu_sums.val_bpb}


def one_step(model: GPT, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    optimizers = build_optimizers(model, baseline_sp1024().optim, tie_embeddings=cfg.tie_embeddings,
                                  control_patterns=cfg.control_tensor_name_patterns)
    with autocast_context(device):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--eval-tokens", type=int, default=32 * 1024)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    args = parser.parse_args()
    cuda = torch.device(args.device)
    all_tokens = torch.from_numpy(read_shard(args.tokens)[: args.eval_tokens + 1].astype("int64"))
    model_cpu = reference_model()
    result = {"device": torch.cuda.get_device_name() if cuda.type == "cuda" else "cpu", "torch": torch.__version__}
    result.update(compare_forward(model_cpu, all_tokens[: 4 * 1024 + 1], cuda))
    result.update(compare_eval(model_cpu, all_tokens, args.tokenizer, cuda))
    result.update(compare_optimizer_step(model_cpu, all_tokens[: 4 * 1024 + 1], cuda))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
