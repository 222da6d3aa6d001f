"""NVTX ranges without CUDA, and the compile monitor on a real (eager-backend) torch.compile."""

import torch

from pgolf.train.instrument import (CompileEvent, CompileMonitor, DynamoSnapshot, compile_events_between,
                                    nvtx_range)


def test_nvtx_range_is_a_no_op_without_cuda():
    with nvtx_range("forward"):
        value = 1 + 1
    assert value == 2


def test_monitor_reports_a_recompile_on_a_new_shape_with_its_reason():
    def double_sum(x):
        return (2 * x).sum()

    compiled = torch.compile(double_sum, backend="eager", dynamic=False)
    compiled(torch.ones(4))  # "priming": compiled before the monitor starts
    monitor = CompileMonitor()
    compiled(torch.ones(4))
    assert monitor.poll() == []  # the primed graph is reused: nothing to report
    compiled(torch.ones(7))  # a new shape: recompiles
    events = monitor.poll()
    assert [event.kind for event in events] == ["recompile"]
    line = events[0].log_line(12)
    assert line.startswith("recompile detected at step 12: ") and "size mismatch" in line
    assert monitor.poll() == []  # reported once


def test_monitor_reports_graph_breaks():
    def breaks(x):
        torch._dynamo.graph_break()
        return x + 1

    monitor = CompileMonitor()
    torch.compile(breaks, backend="eager")(torch.ones(2))
    assert "graph_break" in [event.kind for event in monitor.poll()]


def test_events_between_snapshots_from_plain_counts():
    before = DynamoSnapshot(graphs=2, guard_failures={"f": ["a"]}, graph_breaks={"print": 1})
    after = DynamoSnapshot(graphs=6, guard_failures={"f": ["a", "b", "c"]}, graph_breaks={"print": 1, "x": 2})
    assert compile_events_between(before, after) == [
        CompileEvent("recompile", "b; c"), CompileEvent("graph_break", "x"), CompileEvent("new_graph", "2 new graph(s) compiled")]
    assert compile_events_between(before, None) == [] and compile_events_between(after, after) == []
