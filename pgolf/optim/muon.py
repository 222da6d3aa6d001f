"""Muon: momentum SGD whose update is orthogonalised by a quintic Newton-Schulz iteration (SPEC 2.6).

Muon is used for the 2-D weight matrices inside the transformer blocks. Each step, for a matrix with
gradient G:

1. ``buf = mu * buf + G`` and the Nesterov look-ahead ``U = G + mu * buf``;
2. ``U`` is replaced by an approximately orthogonal matrix with the same singular vectors
   (``zeropower_via_newton_schulz``);
3. the update is scaled by ``sqrt(max(1, rows / cols))`` so tall matrices take comparably sized steps;
4. ``p -= lr * U``.

With several processes the orthogonalisation (the expensive part) is shared: parameter ``i`` is
processed only on rank ``i % world_size``, every rank writes its results into one flat bf16 buffer that
is zero elsewhere, one ``all_reduce(SUM)`` assembles all updates, and every rank applies all of them.
Momentum buffers therefore exist only on the rank that owns the parameter. With ``world_size == 1`` no
collective is issued, so the optimizer runs in a plain single process without ``torch.distributed``.
"""

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

# (a, b, c) of the quintic X <- a X + (b A + c A^2) X, A = X X^T; tuned for fast growth of small
# singular values rather than exact convergence (the baseline's values).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newton_schulz(
    G: torch.Tensor,
    steps: int,
    coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Return a bf16 matrix close to ``U V^T`` for ``G = U S V^T``, by ``steps`` quintic iterations.

    The result's singular values land roughly in [0.7, 1.15] rather than exactly at 1; that is enough
    for Muon and far cheaper than an SVD. Pure tensor code with no Python state, so the caller may
    wrap it in ``torch.compile``.
    """
    a, b, c = coefficients
    X = G.bfloat16()
    # Frobenius normalisation puts every singular value in [0, 1], inside the iteration's basin.
    X = X / (X.norm() + eps)
    # Work on the wide orientation so X X^T is the smaller Gram matrix.
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X


OrthogonalizeFn = Callable[[torch.Tensor, int], torch.Tensor]


class Muon(torch.optim.Optimizer):
    """Muon optimizer for 2-D parameters, sharing the orthogonalisation work across ranks.

    Param-group entries: ``lr``, ``momentum`` (changed every step by the training loop's schedule),
    ``backend_steps`` (Newton-Schulz iterations) and ``nesterov``. ``rank``/``world_size`` say which
    parameters this process owns; ``world_size > 1`` needs an initialised default process group and
    the same parameter order on every rank, and every rank must call ``step`` (it issues one
    collective per param group). ``orthogonalize`` lets the caller pass a compiled
    ``zeropower_via_newton_schulz``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        lr: float,
        momentum: float,
        backend_steps: int = 5,
        nesterov: bool = True,
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
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Muon needs 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov)
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
        for group in self.param_groups:
            self._step_muon_group(group)
        return loss

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
                update = self._orthogonal_update(p, group)
                updates_flat[offset : offset + p.numel()] = update.reshape(-1)
            offset += p.numel()
        if self.world_size > 1:
            dist.all_reduce(updates_flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            update = updates_flat[offset : offset + p.numel()].view_as(p).to(dtype=p.dtype)
            p.add_(update, alpha=-group["lr"])
            offset += p.numel()

    def _orthogonal_update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Momentum, Nesterov look-ahead, orthogonalisation and shape scaling for one owned matrix."""
        grad = p.grad
        momentum = group["momentum"]
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad)
        direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        update = self.orthogonalize(direction, group["backend_steps"])
        rows, cols = p.shape
        return update * max(1.0, rows / cols) ** 0.5
