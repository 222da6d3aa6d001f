"""Instruments for the training loop: NVTX ranges for profilers, and a compile monitor.

``nvtx_range(name)`` marks a region for Nsight Systems (and shows in ``pgolf profile`` traces); it
costs nothing without CUDA.

``CompileMonitor`` catches what stalls a compiled run on the clock (USERS.md need 12): every priming
step compiles the graphs a run needs before the clock starts, so a new graph, a recompile (a guard
failed: a new shape, a flipped attribute) or a graph break seen after that means time spent compiling
inside the budget. The monitor reads TorchDynamo's own counters, which cost nothing to poll:

    monitor = CompileMonitor()           # after priming, when the clock starts
    ...                                  # after every step:
    for event in monitor.poll():
        logger.line(event.log_line(step))  # "recompile detected at step 37: tensor 'x' size mismatch ..."
"""

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# TorchDynamo's module: imported by torch.compile, never by us (it takes seconds to import).
DYNAMO_UTILS_MODULE = "torch._dynamo.utils"


@contextmanager
def nvtx_range(name: str):
    """An NVTX range around the block when CUDA is available; otherwise nothing."""
    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


@dataclass(frozen=True)
class CompileEvent:
    """Something was compiled after the monitor started: kind is recompile, graph_break or new_graph."""

    kind: str
    reason: str

    def log_line(self, step: int) -> str:
        what = self.kind.replace("_", " ")
        first_line = self.reason.strip().splitlines()[0] if self.reason.strip() else "no reason given"
        return f"{what} detected at step {step}: {first_line}"


@dataclass(frozen=True)
class DynamoSnapshot:
    """Counts of compiled graphs, guard failures and graph breaks at one moment."""

    graphs: int
    guard_failures: dict
    graph_breaks: dict


def dynamo_snapshot() -> DynamoSnapshot | None:
    """TorchDynamo's counters now, or None when torch.compile has never run in this process."""
    utils = sys.modules.get(DYNAMO_UTILS_MODULE)
    if utils is None:
        return None
    counters = getattr(utils, "counters", {})
    failures = {code: list(reasons) for code, reasons in getattr(utils, "guard_failures", {}).items()}
    return DynamoSnapshot(graphs=counters.get("stats", {}).get("unique_graphs", 0), guard_failures=failures,
                          graph_breaks=dict(counters.get("graph_break", {})))


def compile_events_between(before: DynamoSnapshot | None, after: DynamoSnapshot | None) -> list[CompileEvent]:
    """What was compiled between two snapshots: recompiles with their guard-failure reasons, graph
    breaks with theirs, and any other new graph."""
    if after is None:
        return []
    before = before or DynamoSnapshot(graphs=0, guard_failures={}, graph_breaks={})
    events = []
    for code, reasons in after.guard_failures.items():
        new_reasons = reasons[len(before.guard_failures.get(code, [])):]
        if new_reasons:  # one recompile lists why each cached graph of the function did not fit
            events.append(CompileEvent("recompile", "; ".join(reason.strip() for reason in new_reasons)))
    for reason, count in after.graph_breaks.items():
        if count > before.graph_breaks.get(reason, 0):
            events.append(CompileEvent("graph_break", reason))
    unexplained = after.graphs - before.graphs - len(events)
    if unexplained > 0:
        events.append(CompileEvent("new_graph", f"{unexplained} new graph(s) compiled"))
    return events


class CompileMonitor:
    """Reports compilation that happens after it was created (see the module docstring)."""

    def __init__(self):
        self.last = dynamo_snapshot()

    def poll(self) -> list[CompileEvent]:
        """Events since the previous poll (or since creation)."""
        now = dynamo_snapshot()
        events = compile_events_between(self.last, now)
        self.last = now
        return events
