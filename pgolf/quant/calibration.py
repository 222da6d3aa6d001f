"""GPTQ calibration: Hessians ``H = X^T X / batches`` of the inputs of the layers that get quantised.

SPEC 4.10: forward hooks accumulate ``X^T X`` (fp32) over the inputs of every linear layer in ``blocks``
with more than 65,536 weights (a layer visited several times per forward, as in depth recurrence,
accumulates once per visit: the hook simply fires per call), plus, for the tied embedding, over the
*output* of ``final_norm`` (the input of the tied output projection). A model with an untied
``lm_head`` gets that Hessian under ``lm_head.weight`` instead, and the embedding none (it is a lookup
table, not a linear layer on the hidden states). Every Hessian is divided by the number of batches.

Calibration data MUST be training data: the caller passes batches from a fresh training loader (see
:func:`training_calibration_batches`). This module refuses nothing itself, because it only ever sees
token tensors; reading the validation split here would leak it into the artifact. Hessian collection
reads training data, so its time belongs inside the training budget (``GPTQ_RESERVE_SECONDS``).
"""

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import Config
from pgolf.data.run_data import build_train_loader
from pgolf.dist import DistContext
from pgolf.errors import ConfigError
from pgolf.log import ProgressBar, RunLogger
from pgolf.quant.policy import QUANT_PASSTHROUGH_MAX_NUMEL
from pgolf.runtime import Runtime


def _accumulate_outer(hessians: dict[str, torch.Tensor], key: str, x: torch.Tensor) -> None:
    """``hessians[key] += X^T X`` with X the activations flattened to (tokens, features), in fp32."""
    x_NC = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
    if key not in hessians:
        hessians[key] = torch.zeros(x_NC.shape[1], x_NC.shape[1], dtype=torch.float32, device=x_NC.device)
    hessians[key].addmm_(x_NC.T, x_NC)


def hessian_target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Weight name -> module whose input is that weight's Hessian source (the linear layers of ``blocks``)."""
    targets = {}
    for module_name, module in model.named_modules():
        in_blocks = module_name.startswith("blocks.")
        if in_blocks and isinstance(module, nn.Linear) and module.weight.numel() > QUANT_PASSTHROUGH_MAX_NUMEL:
            targets[f"{module_name}.weight"] = module
    return targets


def _head_hessian_key(model: nn.Module) -> str | None:
    """The weight fed by ``final_norm``'s output: ``lm_head.weight`` if untied, else ``tok_emb.weight``."""
    if getattr(model, "final_norm", None) is None:
        return None
    if getattr(model, "lm_head", None) is not None:
        return "lm_head.weight"
    return "tok_emb.weight" if getattr(model, "tok_emb", None) is not None else None


def _register_hessian_hooks(model: nn.Module, hessians: dict[str, torch.Tensor]) -> list:
    handles = []
    for key, module in hessian_target_modules(model).items():
        handles.append(module.register_forward_hook(
            lambda _module, inputs, _output, key=key: _accumulate_outer(hessians, key, inputs[0])))
    head_key = _head_hessian_key(model)
    if head_key is not None:
        handles.append(model.final_norm.register_forward_hook(
            lambda _module, _inputs, output, key=head_key: _accumulate_outer(hessians, key, output)))
    return handles


def _average_hessians(hessians: dict[str, torch.Tensor], batches: int) -> dict[str, torch.Tensor]:
    """Divide by the batch count; with torch.distributed up and world > 1, sum over ranks first."""
    total_batches = batches
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for key in sorted(hessians):  # the same order on every rank
            dist.all_reduce(hessians[key], op=dist.ReduceOp.SUM)
        count = torch.tensor([float(batches)], device=next(iter(hessians.values())).device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        total_batches = int(count.item())
    return {key: h / total_batches for key, h in hessians.items()}


@torch.no_grad()
def collect_hessians(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    runtime: Runtime,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Hessians keyed by weight name (``blocks.0.attn.c_q.weight``, ``tok_emb.weight`` ...), fp32.

    ``model``: the bare model (not DDP / torch.compile wrapped, whose names carry prefixes).
    ``batches``: input-id tensors of TRAINING data (module docstring). ``forward`` defaults to
    ``model.forward_logits``. The model runs in eval mode under no-grad in ``runtime``'s precision and its
    training mode is restored afterwards. In a distributed run every rank must call this with the same
    number of layers visited; the result is the average over all ranks' batches.
    """
    forward = forward or model.forward_logits
    hessians: dict[str, torch.Tensor] = {}
    handles = _register_hessian_hooks(model, hessians)
    was_training = model.training
    model.eval()
    count = 0
    bar = ProgressBar("gptq calibration", None)  # the batch count is the caller's iterator's
    try:
        for input_ids in batches:
            with runtime.autocast():
                forward(input_ids.to(runtime.device))
            count += 1
            bar.update(count, f"{count} batches")
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0 or not hessians:
        raise ConfigError("GPTQ calibration saw no batches or no quantisable layers; set GPTQ_CALIBRATION_BATCHES >= 1.")
    return _average_hessians(hessians, count)


def training_calibration_batches(loader, num_batches: int, *, global_tokens: int, seq_len: int,
                                 grad_accum_steps: int = 1) -> Iterator[torch.Tensor]:
    """Input ids of ``num_batches`` batches from a training loader (``next_batch`` as DistributedTokenLoader).

    Pass a FRESH training loader (so calibration re-reads the data the run started with, SPEC 4.10);
    the loader itself refuses validation shards. Each batch is one training micro-batch of this rank:
    ``global_tokens / (world_size * grad_accum_steps)`` tokens.
    """
    for _ in range(num_batches):
        input_ids, _targets = loader.next_batch(global_tokens, seq_len, grad_accum_steps)
        yield input_ids


def collect_gptq_hessians(model: nn.Module, cfg: Config, ctx: DistContext, train_files: list[Path],
                          logger: RunLogger) -> tuple[dict[str, torch.Tensor] | None, float]:
    """GPTQ Hessians (None with QUANT_METHOD=rtn) and the seconds they took, on every rank.

    The batches come from a FRESH training loader (the sequences the run started with, SPEC 4.10):
    training data only, never validation. ``model`` must be the bare model, not its compiled/DDP wrapper.
    Reading training data is training, so these seconds belong inside MAX_WALLCLOCK_SECONDS (the reserve).
    """
    if cfg.quant.quant_method != "gptq":
        return None, 0.0
    logger.line("GPTQ:collecting Hessians from calibration data...")
    ctx.runtime.synchronize()
    start = time.perf_counter()
    loader = build_train_loader(cfg.train.train_loader, cfg.model.vocab_size, ctx, train_files)
    batches = training_calibration_batches(loader, cfg.quant.gptq_calibration_batches,
                                           global_tokens=cfg.train.train_batch_tokens, seq_len=cfg.train.train_seq_len,
                                           grad_accum_steps=ctx.grad_accum_steps)
    hessians = collect_hessians(model, batches, runtime=ctx.runtime)
    ctx.runtime.synchronize()
    seconds = time.perf_counter() - start
    logger.line(f"GPTQ:collected {len(hessians)} Hessians in {seconds:.1f}s")
    return hessians, seconds


def calibration_budget_fields(cfg: Config, train_seconds: float, calibration_seconds: float,
                              logger: RunLogger) -> dict:
    """Training + calibration seconds against MAX_WALLCLOCK_SECONDS (report fields; logged with GPTQ)."""
    cap = cfg.train.max_wallclock_seconds
    total = train_seconds + calibration_seconds
    fits = total <= cap if cap > 0 else None
    if cfg.quant.quant_method == "gptq":
        verdict = "no cap" if fits is None else (f"fits, {cap - total:.1f}s to spare" if fits else
                                                 f"OVER by {total - cap:.1f}s: raise GPTQ_RESERVE_SECONDS")
        logger.line(f"GPTQ:train_time {train_seconds:.1f}s + calibration {calibration_seconds:.1f}s = {total:.1f}s "
                    f"of MAX_WALLCLOCK_SECONDS={cap:g} ({verdict})")
    return {"calibration_seconds": calibration_seconds, "train_plus_calibration_seconds": total,
            "wallclock_cap_seconds": cap, "train_plus_calibration_fits": fits}
