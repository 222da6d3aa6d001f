"""Muon: momentum SGD whose update is orthogonalised by a Newton-Schulz iteration (SPEC 2.6, 4.6, 5.7).

Muon is used for the 2-D weight matrices inside the transformer blocks. Each step, for a matrix with
gradient G:

1. ``buf = mu * buf + G`` and the Nesterov look-ahead ``U = G + mu * buf``;
2. optionally (MuonEq-R, ``row_normalize``) every row of ``U`` is divided by its L2 norm;
3. ``U`` is replaced by an approximately orthogonal matrix with the same singular vectors
   (``zeropower_via_newton_schulz``: the baseline's fixed quintic, or the Polar Express schedule);
4. the update is scaled by ``sqrt(max(1, rows / cols))`` so tall matrices take comparably sized steps;
5. optionally decoupled weight decay ``p *= 1 - lr * wd``; then ``p -= lr * U``.

With several processes the orthogonalisation (the expensive part) is shared: parameter ``i`` is
processed only on rank ``i % world_size``, every rank writes its results into one flat bf16 buffer that
is zero elsewhere, one ``all_reduce(SUM)`` assembles all updates, and every rank applies all of them.
Momentum buffers therefore exist only on the rank that owns the parameter. With ``world_size == 1`` no
collective is issued, so the optimizer runs in a plain single process without ``torch.distributed``.
``MUON_SHARDED=1`` swaps this scheme for a reduce-scatter / all-gather one with the same maths
(:class:`pgolf.optim.sharded.ShardedMuon`).
"""

import functools
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from pgolf.errors import ConfigError

# (a, b, c) of the quintic X <- a X + (b A + c A^2) X, A = X X^T; tuned for fast growth of small
# singular values rather than exact convergence (the baseline's values).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (SPEC 5.7): one (a, b, c) per iteration, each tuned for the singular-value range the
# previous iterations leave, so five steps land closer to 1 than five fixed quintic steps.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# MUON_NS_COEFFICIENTS -> per-iteration coefficient schedule. Iteration i uses entry
# min(i, len - 1): the quintic repeats its single tuple; Polar Express uses each tuple once with
# MUON_BACKEND_STEPS=5, and with more steps repeats its last (most conservative) tuple, with fewer it
# stops early (the schedule's later, convergence-polishing tuples are then skipped).
NEWTON_SCHULZ_SCHEDULES = {
    "quintic": (NEWTON_SCHULZ_COEFFICIENTS,),
    "polar_express": POLAR_EXPRESS_COEFFICIENTS,
}

CoefficientSchedule = tuple[tuple[float, float, float], ...]


def newton_schulz_with_schedule(
    G: torch.Tensor,
    steps: int,
    schedule: CoefficientSchedule,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Return a ``dtype`` matrix close to ``U V^T`` for ``G = U S V^T``, by ``steps`` iterations.

    Iteration ``i`` uses ``schedule[min(i, len(schedule) - 1)]`` as ``(a, b, c)`` in
    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``. The result's singular values land near 1
    rather than exactly at 1; that is enough for Muon and far cheaper than an SVD. ``dtype`` is bf16
    in training; float64 makes the same maths checkable against a plain reference. Pure tensor code
    with no Python state, so the caller may wrap it in ``torch.compile``.
    """
    X = G.to(dtype)
    # Frobenius normalisation puts every singular value in [0, 1], inside the iteration's basin.
    X = X / (X.norm() + eps)
    # Work on the wide orientation so X X^T is the smaller Gram matrix.
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for step in range(steps):
        a, b, c = schedule[min(step, len(schedule) - 1)]
        A = X @ X.T
        # (c A) A, not c (A A): in bf16 the two orders round differently, and this is the references'
        # order (their ``b * A + c * A @ A`` parses as ``(c * A) @ A``); tests/parity pins the bits.
        B = b * A + (c * A) @ A
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X


def zeropower_via_newton_schulz(
    G: torch.Tensor,
    steps: int,
    coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS,
    eps: float = 1e-7,
) -> torch.Tensor:
    """The baseline's orthogonaliser: ``steps`` bf16 iterations of one fixed quintic (SPEC 2.6).

    The result's singular values land roughly in [0.7, 1.15].
    """
    return newton_schulz_with_schedule(G, steps, (coefficients,), eps=eps)


def row_normalized(U: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: every row of ``U`` divided by its L2 norm (computed in fp32, clamped at ``eps``).

    Equalising the row norms before orthogonalisation gives every output unit an update of the same
    size (SPEC 4.6). Returned in ``U``'s dtype.
    """
    U32 = U.float()
    norms = U32.norm(dim=1, keepdim=True).clamp_min(eps)
    return (U32 / norms).to(U.dtype)


OrthogonalizeFn = Callable[[torch.Tensor, int], torch.Tensor]


def orthogonalizer_for(ns_coefficients: str) -> OrthogonalizeFn:
    """The bf16 Newton-Schulz function ``(G, steps) -> U`` for a ``MUON_NS_COEFFICIENTS`` name.

    Wrap the result in ``torch.compile`` on GPU. ``"quintic"`` computes exactly what
    ``zeropower_via_newton_schulz`` computes.
    """
    if ns_coefficients not in NEWTON_SCHULZ_SCHEDULES:
        raise ConfigError(
            f"MUON_NS_COEFFICIENTS={ns_coefficients!r} is not one of {', '.join(NEWTON_SCHULZ_SCHEDULES)}."
        )
    return functools.partial(newton_schulz_with_schedule, schedule=NEWTON_SCHULZ_SCHEDULES[ns_coefficients])


class Muon(torch.optim.Optimizer):
    """Muon optimizer for 2-D parameters, sharing the orthogonalisation work across ranks.

    Param-group entries: ``lr``, ``momentum`` (changed every step by the training loop's schedule),
    ``backend_steps`` (Newton-Schulz iterations), ``nesterov``, ``row_normalize`` (MuonEq-R) and
    ``weight_decay`` (decoupled, scaled by the group's current ``lr``). ``rank``/``world_size`` say
    which parameters this process owns; ``world_size > 1`` needs an initialised default process group
    and the same parameter order on every rank, and every rank must call ``step`` (it issues one
    collective per param group). ``orthogonalize`` is the Newton-Schulz function, e.g.
    ``orthogonalizer_for("polar_express")``, possibly compiled.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        lr: float,
        momentum: float,
        backend_steps: int = 5,
        nesterov: bool = True,
        row_normalize: bool = False,
        weight_decay: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        orthogonalize: OrthogonalizeFn = zeropower_via_newton_schulz,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Muon learning rate must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if backend_steps < 1:
            raise ValueError(f"Muon backend_steps must be >= 1, got {backend_steps}")
        if weight_decay < 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0, got {weight_decay}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Muon needs 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                        row_normalize=row_normalize, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.rank = rank
        self.world_size = world_size
        self.orthogonalize = orthogonalize
        self._check_muon_params()

    def _check_muon_params(self) -> None:
        """Fail at construction, not mid-run, on shapes or devices the flat buffer cannot hold."""
        for group in self.param_groups:
            devices = {p.device for p in group["params"]}
            if len(devices) > 1:
                raise ValueError(f"Muon needs all parameters of a group on one device, got {sorted(map(str, devices))}")
            for index, p in enumerate(group["params"]):
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon handles only 2-D matrices, but parameter {index} has shape {tuple(p.shape)}; "
                        "give it to an Adam group instead (see pgolf/optim/groups.py)."
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Apply one Muon update to every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"Muon was built with world_size={self.world_size} but torch.distributed is not "
                "initialised; initialise the process group first or build it with world_size=1."
            )
        self._update_all_groups()
        return loss

    def _update_all_groups(self) -> None:
        """Every group's update (``ShardedMuon`` replaces this with its sharded version)."""
        for group in self.param_groups:
            self._step_muon_group(group)

    def _step_muon_group(self, group: dict) -> None:
        params: list[torch.Tensor] = group["params"]
        if not params:
            return
        total = sum(p.numel() for p in params)
        updates_flat = torch.zeros(total, dtype=torch.bfloat16, device=params[0].device)
        offset = 0
        for index, p in enumerate(params):
            # Only the owning rank computes; the others leave zeros for the SUM to fill in.
            if index % self.world_size == self.rank and p.grad is not None:
                update = self._orthogonal_update(p, p.grad, group)
                updates_flat[offset : offset + p.numel()] = update.reshape(-1)
            offset += p.numel()
        if self.world_size > 1:
            dist.all_reduce(updates_flat, op=dist.ReduceOp.SUM)
        self._apply_muon_updates(params, updates_flat, group)

    @staticmethod
    def _apply_muon_updates(params: list[torch.Tensor], updates_flat: torch.Tensor, group: dict) -> None:
        """Apply every parameter's update from the flat buffer (parameters back to back, in order)."""
        offset = 0
        for p in params:
            apply_muon_update_(p, updates_flat[offset : offset + p.numel()], group)
            offset += p.numel()

    def _orthogonal_update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        """Momentum, Nesterov look-ahead, row normalisation, orthogonalisation and shape scaling.

        ``grad`` is the (rank-averaged) gradient of ``p``: ``p.grad`` here, a slice of the reduce-scattered
        shard in :class:`pgolf.optim.sharded.ShardedMuon`.
        """
        momentum = group["momentum"]
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad)
        direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        if group["row_normalize"]:
            direction = row_normalized(direction)
        update = self.orthogonalize(direction, group["backend_steps"])
        rows, cols = p.shape
        return update * max(1.0, rows / cols) ** 0.5


def apply_muon_update_(p: torch.Tensor, update_flat: torch.Tensor, group: dict) -> None:
    """Decoupled weight decay ``p *= 1 - lr * wd`` (skipped at 0, so the baseline is unchanged), then
    ``p -= lr * U``, with the group's scheduled ``lr``; ``update_flat`` holds ``U`` flattened."""
    lr, weight_decay = group["lr"], group["weight_decay"]
    update = update_flat.view_as(p).to(dtype=p.dtype)
    # Same rule on every rank: every rank holds a gradient for the same parameters (same graph).
    if weight_decay != 0.0 and p.grad is not None:
        p.mul_(1.0 - lr * weight_decay)
    p.add_(update, alpha=-lr)
