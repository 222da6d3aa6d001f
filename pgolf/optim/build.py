"""Build the optimizers of SPEC 2.6 from the model and the ``optim`` config section.

| group  | optimizer                  | base LR                                     | weight decay |
|--------|----------------------------|---------------------------------------------|--------------|
| token  | Adam, AdamW if decay > 0   | ``tied_embed_lr`` if tied else ``embed_lr`` | ``embed_wd`` |
| head   | Adam                       | ``head_lr`` (untied only)                   | none         |
| matrix | Muon                       | ``matrix_lr``                               | ``muon_wd``  |
| scalar | Adam, AdamW if decay > 0   | ``scalar_lr``                               | ``adam_wd``  |

Adam uses betas ``(beta1, beta2)`` and ``adam_eps`` and, like the references, torch's fused
implementation (``fused=True``) wherever this torch build has it for the parameters' device and dtype
(CUDA, and CPU since torch 2.4): the fused kernel rounds differently from the for-each one, so only
the fused one gives the references' step bit for bit (``tests/parity/test_reference_parity.py``).
Where it is missing (:func:`fused_adam_available`) the group falls back to torch's default
implementation. Every decay is decoupled and scaled by the group's scheduled LR (``p *= 1 - lr * wd``,
SPEC 4.6); with a decay of 0 the group is plain Adam, as in the baseline. Muon gets MuonEq-R
(``muon_row_normalize``) and its Newton-Schulz coefficients (``muon_ns_coefficients``) from the same
section, and with ``muon_sharded`` on several ranks becomes :class:`pgolf.optim.sharded.ShardedMuon`.
Every param group records its ``base_lr`` (and ``group_name``), so the training loop applies the
schedule with ``apply_lr_and_momentum`` as ``lr = base_lr * multiplier``; the Muon group also records
its ``base_weight_decay``, which the optional taper (``muon_wd_taper``) scales the same way.
"""

import functools
from collections.abc import Sequence

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim.groups import GroupMembers, assign_parameter_groups
from pgolf.optim.muon import Muon, OrthogonalizeFn, orthogonalizer_for
from pgolf.optim.sharded import ShardedMuon


@functools.cache
def fused_adam_available(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs fused Adam for ``device_type``/``dtype``, by one probe step.

    Construction alone is not proof: a build can list a device as supported and still lack the kernel
    for a dtype, which only the first ``step`` reveals. The probe touches a one-element tensor only.
    """
    probe = torch.zeros(1, device=device_type, dtype=dtype, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        torch.optim.Adam([probe], fused=True).step()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


def _make_group_adam(
    group_name: str, members: GroupMembers, lr: float, optim_cfg: OptimConfig, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam for one group; AdamW (decoupled decay) when ``weight_decay > 0``."""
    params = [p for _, p in members]
    # Fused as in the references (same rounding); None = torch's default where the kernel is missing.
    fused = all(fused_adam_available(p.device.type, p.dtype) for p in params) or None
    param_group = {"params": params, "lr": lr, "base_lr": lr, "group_name": group_name}
    # Plain Adam at zero decay keeps the baseline's exact code path (and numerics).
    optimizer_class = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    return optimizer_class(
        [param_group],
        betas=(optim_cfg.beta1, optim_cfg.beta2),
        eps=optim_cfg.adam_eps,
        weight_decay=weight_decay,
        fused=fused,
    )


def build_optimizers(
    model: nn.Module,
    optim_cfg: OptimConfig,
    *,
    tie_embeddings: bool,
    control_patterns: Sequence[str],
    rank: int = 0,
    world_size: int = 1,
    orthogonalize: OrthogonalizeFn | None = None,
) -> list[torch.optim.Optimizer]:
    """One optimizer per non-empty group, in the order token, head, matrix (Muon), scalar.

    ``optim_cfg`` is the ``OptimConfig`` section.
    ``rank``/``world_size`` tell Muon which matrices this process orthogonalises; with
    ``optim_cfg.muon_sharded`` and ``world_size > 1`` the matrix optimizer is a
    :class:`pgolf.optim.sharded.ShardedMuon`, which expects local (not DDP-averaged) gradients. ``orthogonalize``
    replaces the Newton-Schulz function chosen by ``muon_ns_coefficients`` (pass
    ``torch.compile(orthogonalizer_for(name))`` on GPU).
    """
    groups = assign_parameter_groups(model, tie_embeddings=tie_embeddings, control_patterns=control_patterns)
    token_lr = optim_cfg.tied_embed_lr if tie_embeddings else optim_cfg.embed_lr
    optimizers: list[torch.optim.Optimizer] = [
        _make_group_adam("token", groups["token"], token_lr, optim_cfg, optim_cfg.embed_wd)
    ]
    if groups["head"]:
        optimizers.append(_make_group_adam("head", groups["head"], optim_cfg.head_lr, optim_cfg))
    if groups["matrix"]:
        matrix_group = {
            "params": [p for _, p in groups["matrix"]],
            "lr": optim_cfg.matrix_lr,
            "base_lr": optim_cfg.matrix_lr,
            "base_weight_decay": optim_cfg.muon_wd,  # MUON_WD; the taper scales it (apply_lr_and_momentum)
            "group_name": "matrix",
        }
        # MUON_SHARDED with several ranks: reduce-scatter / all-gather instead of DDP + replicated Muon;
        # the caller then skips DDP and calls pgolf.optim.grad_sync.synchronize_gradients.
        muon_class = ShardedMuon if optim_cfg.muon_sharded and world_size > 1 else Muon
        optimizers.append(
            muon_class(
                [matrix_group],
                lr=optim_cfg.matrix_lr,
                momentum=optim_cfg.muon_momentum,
                backend_steps=optim_cfg.muon_backend_steps,
                row_normalize=optim_cfg.muon_row_normalize,
                weight_decay=optim_cfg.muon_wd,
                rank=rank,
                world_size=world_size,
                orthogonalize=orthogonalize or orthogonalizer_for(optim_cfg.muon_ns_coefficients),
            )
        )
    if groups["scalar"]:
        optimizers.append(
            _make_group_adam("scalar", groups["scalar"], optim_cfg.scalar_lr, optim_cfg, optim_cfg.adam_wd)
        )
    return optimizers


def apply_lr_and_momentum(
    optimizers: Sequence[torch.optim.Optimizer], *, lr_mult: float, muon_momentum: float | None = None,
    muon_wd_mult: float | None = None,
) -> None:
    """Set every group's ``lr = base_lr * lr_mult`` and, when given, every Muon group's momentum and
    weight decay ``base_weight_decay * muon_wd_mult`` (the taper; None leaves the decay as it is)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
            if muon_momentum is not None and isinstance(optimizer, Muon):
                group["momentum"] = muon_momentum
            if muon_wd_mult is not None and isinstance(optimizer, Muon):
                # A group restored from an older checkpoint has no base: its decay was never tapered.
                group["weight_decay"] = group.setdefault("base_weight_decay", group["weight_decay"]) * muon_wd_mult
