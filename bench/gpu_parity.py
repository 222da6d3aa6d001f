"""GPU path vs the eager fp32 CPU reference, for the same weights and tokens (needs CUDA; --device cpu
smoke-tests the plumbing with tiny shapes).

Checks, for a preset's model (``--preset``: baseline_sp1024 by default, record_sp8192 with its
recurrence, XSA, parallel residuals...) at its real shapes, with perturbed (non-zero) output projections:
  forward   loss and logits: CPU fp32 eager (ATTENTION_BACKEND=eager) vs the device's bf16-autocast eager
            forward with the preset's attention kernel (FA3 when installed on a Hopper, else SDPA) vs
            torch.compile; for each looping state the preset has, and once more with document-isolated
            attention (DOC_ISOLATED_ATTENTION=1: a block-diagonal mask on SDPA, FA3 varlen);
  eval      evaluation sums (loss, tokens, bytes) through ``evaluate_bpb`` with real byte tables;
  step      one real optimizer step (``run_training_step``: the preset's Muon/Adam settings, weight decay,
            gradient clipping): parameter updates, device vs CPU;
  attention every attention kernel (sdpa, sdpa_flash, sdpa_efficient, sdpa_math, fa3 when importable,
            eager in bf16) vs a float64 reference, values and q/k/v gradients, causal and
            document-isolated (segments from real BOS positions), with forward+backward times; and the
            float64 document mask vs attention over each document on its own;
  kernels   the fused Triton kernels (pgolf/model/kernels) vs their eager references at training sizes:
            softcapped cross-entropy and the squared (Leaky)ReLU fc matmul, eager and compiled, with times.
Each result is one JSON line (printed as it finishes, so a killed run keeps what it measured) with
relative errors ||a - b|| / ||b|| and ``ok`` against a bf16 tolerance (TOLERANCES; NaN never passes).

    python bench/gpu_parity.py --tokens VAL.bin --tokenizer sp1024.model
    python bench/gpu_parity.py --preset record_sp8192 --tokens SP8192_VAL.bin --tokenizer sp8192.model
    python bench/gpu_parity.py --sections kernels                      # kernel parity only, needs no data
    python bench/gpu_parity.py --device cpu --set NUM_LAYERS=2 MODEL_DIM=64 ...   # plumbing smoke test
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.commands.configuration import resolve_config  # noqa: E402
from pgolf.config import Config  # noqa: E402
from pgolf.data.shards import read_shard  # noqa: E402
from pgolf.data.tokenizer import build_byte_tables, load_sentencepiece  # noqa: E402
from pgolf.dist import DistContext  # noqa: E402
from pgolf.eval.bpb import evaluate_bpb  # noqa: E402
from pgolf.model.attention import (  # noqa: E402
    SDPA_BACKENDS, eager_attention, flash_attention_3, flash_attention_3_entry_points, sdpa_attention,
)
from pgolf.model.features.doc_isolation import document_segment_ids  # noqa: E402
from pgolf.model.gpt import GPT, place_model_on_device  # noqa: E402
from pgolf.model.kernels.fused_mlp import (  # noqa: E402
    fused_linear_squared_activation, load_fused_mlp_kernels, mlp_activation_reference,
)
from pgolf.model.kernels.softcap_ce import (  # noqa: E402
    load_softcap_ce_kernels, softcapped_cross_entropy_fused, softcapped_cross_entropy_reference,
)
from pgolf.optim.build import build_optimizers  # noqa: E402
from pgolf.runtime import Runtime, resolve_runtime  # noqa: E402
from pgolf.train.loop import TrainingParts, run_training_step  # noqa: E402

# bf16 operands put relative errors near 1e-3..1e-2 (the Muon update, orthogonalised in bf16, higher).
TOLERANCES = {"logits": 3e-2, "loss": 1e-2, "eval_bpb": 1e-2, "step_update": 1e-1, "attention": 3e-2,
              "kernel": 3e-2, "doc_mask": 1e-9}
SECTIONS = ("forward", "eval", "step", "attention", "kernels")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def within(value: float, kind: str) -> bool:
    """``value`` is a finite error under the tolerance of ``kind``."""
    return math.isfinite(value) and value <= TOLERANCES[kind]


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def with_model(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def reference_model(cfg: Config, seed: int = 0) -> GPT:
    """The CPU fp32 reference with eager attention; zero-init projections perturbed, since zeros would
    hide most of the network from the comparison."""
    torch.manual_seed(seed)
    model = GPT(with_model(cfg, attention_backend="eager").model)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.02)
    return model


def copy_to(reference: GPT, cfg: Config, runtime: Runtime) -> GPT:
    """The reference's weights in a model with ``cfg``'s attention kernel, placed for ``runtime``."""
    clone = GPT(cfg.model)
    clone.load_state_dict(reference.state_dict())
    clone.set_looping(reference.looping)
    return place_model_on_device(clone, runtime)


def device_runtime(device: torch.device) -> Runtime:
    """bf16 autocast on CUDA (what a run on an H100 uses), plain fp32 elsewhere."""
    return resolve_runtime(device, "bf16" if device.type == "cuda" else "auto")


def batch(tokens: torch.Tensor, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    span = tokens[: rows * seq_len + 1]
    return span[:-1].view(rows, seq_len), span[1:].view(rows, seq_len)


def compare_forward(reference: GPT, cfg: Config, x: torch.Tensor, y: torch.Tensor, runtime: Runtime,
                    compile_too: bool) -> dict:
    with torch.no_grad():
        ref_logits, ref_loss = reference.forward_logits(x), reference(x, y)
        model = copy_to(reference, cfg, runtime)
        xd, yd = x.to(runtime.device), y.to(runtime.device)
        with runtime.autocast():
            logits, loss = model.forward_logits(xd), model(xd, yd)
            compiled_loss = torch.compile(model, dynamic=False, fullgraph=True)(xd, yd) if compile_too else None
    result = {"loss_cpu_fp32": ref_loss.item(), "loss_device": loss.item(),
              "logits_rel_err": relative_error(logits, ref_logits),
              "loss_rel_err": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())}
    ok = within(result["logits_rel_err"], "logits") and within(result["loss_rel_err"], "loss")
    if compiled_loss is not None:
        result["loss_compiled"] = compiled_loss.item()
        result["compiled_vs_eager_loss_rel_err"] = abs(compiled_loss.item() - loss.item()) / abs(loss.item())
        ok = ok and within(result["compiled_vs_eager_loss_rel_err"], "loss")
    return {**result, "ok": ok}


def forward_checks(cfg: Config, tokens: torch.Tensor, runtime: Runtime, rows: int, compile_too: bool) -> None:
    """One record per looping state, then one with document-isolated attention (looping off)."""
    x, y = batch(tokens, rows, cfg.train.train_seq_len)
    reference = reference_model(cfg)
    for looping in ([False, True] if reference.supports_looping else [False]):
        reference.set_looping(looping)
        # One compile (looping off) checks Inductor's numerics; each further graph would cost ~30 s of GPU.
        emit({"check": "forward", "looping": looping, "doc_isolated": False, "tokens": x.numel(),
              **compare_forward(reference, cfg, x, y, runtime, compile_too and not looping)})
    isolated = with_model(cfg, doc_isolated_attention=True)
    reference = reference_model(isolated)
    emit({"check": "forward", "looping": False, "doc_isolated": True, "tokens": x.numel(),
          "documents_in_batch": int((x == cfg.model.bos_token_id).sum()),
          **compare_forward(reference, isolated, x, y, runtime, False)})


def eval_check(cfg: Config, tokens: torch.Tensor, tokenizer: str, runtime: Runtime, rows: int) -> dict:
    reference = reference_model(cfg)
    tables = build_byte_tables(load_sentencepiece(tokenizer), cfg.model.vocab_size)
    kwargs = dict(seq_len=cfg.train.train_seq_len, batch_sequences=rows, target_bytes=tables)
    cpu = evaluate_bpb(reference, tokens, runtime=Runtime(torch.device("cpu")), **kwargs)
    dev = evaluate_bpb(copy_to(reference, cfg, runtime), tokens, runtime=runtime, **kwargs)
    rel = abs(dev.val_bpb - cpu.val_bpb) / cpu.val_bpb
    same_counts = cpu.byte_count == dev.byte_count and cpu.token_count == dev.token_count
    return {"check": "eval", "eval_tokens": tokens.numel() - 1, "eval_bpb_cpu": cpu.val_bpb, "eval_bpb_device": dev.val_bpb,
            "eval_bpb_rel_err": rel, "counts_equal": same_counts, "ok": same_counts and within(rel, "eval_bpb")}


class FixedBatches:
    """The loader interface over one fixed (x, y) batch, so both devices step on the same tokens."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def next_batch(self, batch_tokens: int, seq_len: int, accum: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def one_step(model: GPT, cfg: Config, x: torch.Tensor, y: torch.Tensor, runtime: Runtime) -> tuple[dict, float]:
    """Parameters after one real training step. world_size 8 (not distributed) means one micro-batch:
    the reference's 8-way accumulation would cost 8 CPU forwards for the same check."""
    ctx = DistContext(0, 8, 0, runtime.device, False, runtime.autocast_dtype)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns)
    parts = TrainingParts(model, model, optimizers, FixedBatches(x.to(runtime.device), y.to(runtime.device)))
    loss = run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=cfg.optim.muon_momentum)
    return {name: p.detach().float().cpu() for name, p in model.named_parameters()}, loss.item()


def step_check(cfg: Config, tokens: torch.Tensor, runtime: Runtime, rows: int) -> dict:
    x, y = batch(tokens, rows, cfg.train.train_seq_len)
    reference = reference_model(cfg)
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    dev_after, dev_loss = one_step(copy_to(reference, cfg, runtime), cfg, x, y, runtime)
    cpu_cfg = with_model(cfg, attention_backend="eager")
    cpu_after, cpu_loss = one_step(copy_to(reference, cpu_cfg, Runtime(torch.device("cpu"))), cpu_cfg, x, y,
                                   Runtime(torch.device("cpu")))
    errors = {n: relative_error(dev_after[n] - before[n], cpu_after[n] - before[n]) for n in before}
    worst = max(errors, key=lambda n: errors[n] if math.isfinite(errors[n]) else math.inf)
    return {"check": "step", "tokens": x.numel(), "loss_cpu": cpu_loss, "loss_device": dev_loss,
            "update_worst_rel_err": errors[worst], "update_worst_param": worst,
            "update_median_rel_err": sorted(errors.values())[len(errors) // 2],
            "params_over_tolerance": sorted(n for n, e in errors.items() if not within(e, "step_update")),
            "ok": within(errors[worst], "step_update")}


def device_milliseconds(fn, repeats: int = 10) -> float:
    """Median time of ``fn()`` in ms after two warm-up calls: CUDA events on a GPU, the host clock elsewhere."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - begin))
    return round(sorted(times)[len(times) // 2], 3)


def forward_backward(loss_fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``loss_fn(*leaves)`` and the gradients of its (weighted) sum with respect to fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = loss_fn(*leaves)
    weights = torch.randn(out.shape, device=out.device, generator=torch.Generator(out.device).manual_seed(1))
    grads = torch.autograd.grad((out.float() * weights).sum(), leaves)
    return out.detach(), list(grads)


def attention_kernels(device: torch.device) -> dict:
    """name -> fn(q, k, v, segments) for every kernel this device can try; the value is None when it
    cannot run here (reported as skipped, with why)."""
    kernels = {name: (lambda q, k, v, s, kernel=kernel: sdpa_attention(q, k, v, s, kernel))
               for name, kernel in SDPA_BACKENDS.items()}
    kernels["eager_bf16"] = eager_attention
    if device.type != "cuda":
        kernels.update(sdpa_flash=None, sdpa_efficient=None, fa3=None)
        return kernels
    fa3 = flash_attention_3_entry_points()
    kernels["fa3"] = (lambda q, k, v, s: flash_attention_3(fa3, q, k, v, s)) if fa3 is not None else None
    return kernels


def attention_inputs(cfg: Config, tokens: torch.Tensor, rows: int, device: torch.device):
    m, seq_len = cfg.model, cfg.train.train_seq_len
    head_dim = m.model_dim // m.num_heads
    gen = torch.Generator(device).manual_seed(int(time.time()))  # fresh inputs every run
    shape = lambda heads: (rows, heads, seq_len, head_dim)  # noqa: E731
    q, k, v = (torch.randn(shape(h), device=device, generator=gen) for h in (m.num_heads, m.num_kv_heads, m.num_kv_heads))
    x, _ = batch(tokens, rows, seq_len)
    return q, k, v, document_segment_ids(x.to(device), m.bos_token_id)


def doc_mask_check(q, k, v, segments) -> dict:
    """The float64 block-diagonal mask vs causal attention over each document on its own, on the row
    with the most documents (a row inside one document would test nothing)."""
    r = int((segments[:, -1] - segments[:, 0]).argmax())
    q, k, v, row = q[r:r + 1], k[r:r + 1], v[r:r + 1], segments[r]
    whole = eager_attention(q, k, v, segments[r:r + 1])
    pieces = []
    for seg in torch.unique_consecutive(row).tolist():
        idx = (row == seg).nonzero().flatten()
        a, b = idx[0].item(), idx[-1].item() + 1
        pieces.append(eager_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None))
    err = relative_error(whole, torch.cat(pieces, dim=2))
    return {"check": "attention", "kernel": "float64_doc_mask_vs_per_document", "documents_in_row": len(pieces),
            "rel_err": err, "ok": within(err, "doc_mask") and len(pieces) > 1}


def attention_check(name: str, fn, q, k, v, segments, ref_out, ref_grads) -> dict:
    lowp = [t.to(torch.bfloat16) if q.is_cuda else t.float() for t in (q, k, v)]
    out, grads = forward_backward(lambda a, b, c: fn(a, b, c, segments), *lowp)
    errors = {"out_rel_err": relative_error(out, ref_out),
              **{f"grad_{n}_rel_err": relative_error(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    step = lambda: fn(*(t.detach().requires_grad_() for t in lowp), segments).float().sum().backward()  # noqa: E731
    return {**errors, "fwd_bwd_ms": device_milliseconds(step), "ok": all(within(e, "attention") for e in errors.values())}


def attention_checks(cfg: Config, tokens: torch.Tensor, device: torch.device, rows: int) -> None:
    q, k, v, segments = attention_inputs(cfg, tokens, rows, device)
    q64, k64, v64 = (t.double() for t in (q, k, v))
    emit(doc_mask_check(q64, k64, v64, segments))
    shape = {"rows": rows, "seq_len": cfg.train.train_seq_len, "heads": cfg.model.num_heads,
             "kv_heads": cfg.model.num_kv_heads}
    for isolated in (False, True):
        segs = segments if isolated else None
        ref_out, ref_grads = forward_backward(lambda a, b, c, s=segs: eager_attention(a, b, c, s), q64, k64, v64)
        for name, fn in attention_kernels(device).items():
            record = {"check": "attention", "kernel": name, "doc_isolated": isolated, **shape}
            if fn is None:
                emit({**record, "skipped": "not available here (CUDA-only kernel, or flash_attn_interface not installed)"})
                continue
            try:
                emit({**record, **attention_check(name, fn, q, k, v, segs, ref_out, ref_grads)})
            except Exception as error:  # noqa: BLE001 - e.g. sdpa_flash takes no mask: report, go on
                emit({**record, "error": f"{type(error).__name__}: {str(error)[:300]}"})


def compare_softcap_ce(device: torch.device, rows: int, vocab: int, compile_too: bool) -> dict:
    gen = torch.Generator(device).manual_seed(0)
    logits = (torch.randn(rows, vocab, device=device, generator=gen) * 8).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device=device, generator=gen)
    fused = lambda x: softcapped_cross_entropy_fused(x, targets, 30.0, "none")  # noqa: E731
    eager = lambda x: softcapped_cross_entropy_reference(x, targets, 30.0, "none")  # noqa: E731
    loss_f, (grad_f,) = forward_backward(fused, logits)
    loss_e, (grad_e,) = forward_backward(eager, logits)
    loss_64 = softcapped_cross_entropy_reference(logits.double().cpu(), targets.cpu(), 30.0, "none")
    step = lambda fn: lambda: fn(logits.detach().requires_grad_()).sum().backward()  # noqa: E731
    result = {"kernel": f"ce_{rows}x{vocab}", "loss_rel_err_vs_eager": relative_error(loss_f, loss_e),
              "loss_rel_err_vs_float64": relative_error(loss_f.cpu(), loss_64),
              "eager_loss_rel_err_vs_float64": relative_error(loss_e.cpu(), loss_64),
              "grad_rel_err_vs_eager": relative_error(grad_f, grad_e),
              "fused_fwd_bwd_ms": device_milliseconds(step(fused)), "eager_fwd_bwd_ms": device_milliseconds(step(eager))}
    if compile_too:  # the fused path inside a fullgraph compile (custom ops), vs the eager mean
        compiled = torch.compile(lambda x: softcapped_cross_entropy_fused(x, targets, 30.0, "mean"), fullgraph=True)
        loss_c, (grad_c,) = forward_backward(compiled, logits)
        mean = lambda x: softcapped_cross_entropy_reference(x, targets, 30.0, "mean")  # noqa: E731
        loss_m, (grad_m,) = forward_backward(mean, logits)
        result.update(compiled_mean_rel_err=relative_error(loss_c, loss_m),
                      compiled_grad_rel_err=relative_error(grad_c, grad_m),
                      eager_compiled_fwd_bwd_ms=device_milliseconds(step(torch.compile(eager))))
    return result


def compare_fused_mlp(device: torch.device, rows: int, dim: int, hidden: int, slope: float, compile_too: bool) -> dict:
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(rows, dim, device=device, generator=gen).bfloat16()
    weight = torch.randn(hidden, dim, device=device, generator=gen) / dim ** 0.5  # fp32 master weight

    def fused(x_, w_):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fused_linear_squared_activation(x_, w_, slope)

    def eager(x_, w_):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return mlp_activation_reference(torch.nn.functional.linear(x_, w_.to(x_.dtype)), slope)

    h_f, (gx_f, gw_f) = forward_backward(fused, x, weight)
    h_e, (gx_e, gw_e) = forward_backward(eager, x, weight)
    h_64 = mlp_activation_reference(x.double() @ weight.double().T, slope)
    step = lambda fn: lambda: fn(x, weight.detach().requires_grad_()).float().sum().backward()  # noqa: E731
    result = {"kernel": f"mlp_{rows}x{dim}x{hidden}_slope{slope:g}", "h_rel_err_vs_eager": relative_error(h_f, h_e),
              "h_rel_err_vs_float64": relative_error(h_f, h_64), "eager_h_rel_err_vs_float64": relative_error(h_e, h_64),
              "grad_x_rel_err": relative_error(gx_f, gx_e), "grad_w_rel_err": relative_error(gw_f, gw_e),
              "fused_fwd_bwd_ms": device_milliseconds(step(fused)), "eager_fwd_bwd_ms": device_milliseconds(step(eager))}
    if compile_too:  # the fused path inside a fullgraph compile, and what Inductor makes of the eager one
        h_c, _ = forward_backward(torch.compile(fused, fullgraph=True), x, weight)
        result.update(compiled_h_rel_err=relative_error(h_c, h_f),
                      eager_compiled_fwd_bwd_ms=device_milliseconds(step(torch.compile(eager, fullgraph=True))))
    return result


def kernel_ok(result: dict) -> bool:
    errors = [v for k, v in result.items() if k.endswith("_rel_err") or "rel_err_vs_eager" in k]
    return all(within(e, "kernel") for e in errors)


def kernel_checks(device: torch.device, rows: int, compile_too: bool) -> None:
    """Every comparison is independent, so one failure is reported and the rest still run."""
    loaded = {"ce": load_softcap_ce_kernels(), "mlp": load_fused_mlp_kernels()}
    if not all(loaded.values()) and device.type != "cuda":
        emit({"check": "kernels", "skipped": f"no CUDA (Triton kernels need a GPU here; loaded: {loaded})"})
        return
    checks = [(compare_softcap_ce, (device, rows, 1024, compile_too)), (compare_softcap_ce, (device, rows, 8192, compile_too)),
              (compare_fused_mlp, (device, rows, 512, 2048, 0.0, compile_too)),
              (compare_fused_mlp, (device, rows, 512, 2048, 0.5, compile_too))]
    for check, args in checks:
        try:
            result = check(*args)
            emit({"check": "kernels", "loaded": loaded, **result, "ok": kernel_ok(result)})
        except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
            emit({"check": "kernels", "kernel": f"{check.__name__}{args[1:-1]}", "error": f"{type(error).__name__}: {error}"})


def run_model_sections(args, cfg: Config, sections: set[str], device: torch.device) -> None:
    needed = (args.rows * cfg.train.train_seq_len + 1) if sections & {"forward", "step", "attention"} else 0
    if "eval" in sections:
        needed = max(needed, args.eval_tokens + 1)
    tokens = torch.from_numpy(read_shard(args.tokens)[:needed].astype("int64"))
    runtime = device_runtime(device)
    steps = [("forward", lambda: forward_checks(cfg, tokens, runtime, args.rows, not args.no_compile)),
             ("eval", lambda: emit(eval_check(cfg, tokens[: args.eval_tokens + 1], args.tokenizer, runtime, args.rows))),
             ("step", lambda: emit(step_check(cfg, tokens, runtime, args.rows))),
             ("attention", lambda: attention_checks(cfg, tokens, device, args.rows))]
    for name, run in steps:
        if name in sections:
            began = time.perf_counter()
            try:
                run()
            except Exception as error:  # noqa: BLE001 - report the failed check, keep the others
                emit({"check": name, "error": f"{type(error).__name__}: {str(error)[:500]}"})
            emit({"check": f"{name}_seconds", "seconds": round(time.perf_counter() - began, 1)})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="baseline_sp1024", help="the model (and optimizer) to check")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=value", help="config overrides (shrink for CPU)")
    parser.add_argument("--tokens", help="a validation shard of the preset's vocabulary (model sections)")
    parser.add_argument("--tokenizer", help="its SentencePiece model (section eval)")
    parser.add_argument("--rows", type=int, default=0, help="sequences per forward/step batch (0: 4096 tokens' worth)")
    parser.add_argument("--eval-tokens", type=int, default=32 * 1024)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--kernel-rows", type=int, default=16384, help="tokens per kernel check (section kernels)")
    parser.add_argument("--no-compile", action="store_true", help="skip every torch.compile check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit({"check": "parity", "skipped": "no CUDA (run with --device cpu for a plumbing smoke test)"})
        return 2
    cfg, _, name = resolve_config(args.preset, list(args.set), environ={})
    args.rows = args.rows or max(1, 4096 // cfg.train.train_seq_len)
    emit({"check": "parity_start", "preset": name, "overrides": args.set, "device": torch.cuda.get_device_name()
          if device.type == "cuda" else "cpu", "torch": torch.__version__, "seq_len": cfg.train.train_seq_len,
          "rows": args.rows, "attention_backend": cfg.model.attention_backend, "tolerances": TOLERANCES})
    model_sections = sections & {"forward", "eval", "step", "attention"}
    if model_sections:
        if not args.tokens or ("eval" in sections and not args.tokenizer):
            print("sections forward/step/attention need --tokens, eval also --tokenizer", file=sys.stderr)
            return 2
        run_model_sections(args, cfg, model_sections, device)
    if "kernels" in sections:
        kernel_checks(device, args.kernel_rows, not args.no_compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
