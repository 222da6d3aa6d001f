"""``pgolf profile`` on tiny_cpu (2 steps): trace written and never overwritten, top ops, phase breakdown;
the training-FLOPs formula against a hand count; bench/gpu_throughput.py imports and refuses on CPU."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pgolf.cli import main as cli_main
from pgolf.config import ModelConfig
from pgolf.data.shards import write_shard
from pgolf.model.gpt import GPT
from pgolf.commands.profile import cpu_self_times, new_trace_path, training_flops_per_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def single_cpu_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")


def profile_json(tmp_path, capsys) -> dict:
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        write_shard(data / "fineweb_train_000000.bin", np.random.default_rng(0).integers(0, 1024, size=50_000))
    argv = ["profile", "--preset", "tiny_cpu", "--steps", "2", "--warmup", "0", "-o", str(tmp_path / "prof"), "--json",
            f"DATA_PATH={data}", "TOKENIZER_PATH=unused.model", "TRAIN_BATCH_TOKENS=1024", "TRAIN_SEQ_LEN=32", "EVAL_STRIDE=32",
            "NUM_LAYERS=2", "MODEL_DIM=64"]
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_profile_writes_a_trace_lists_top_ops_and_splits_the_step(tmp_path, capsys):
    first = profile_json(tmp_path, capsys)
    trace = Path(first["trace"])
    events = json.loads(trace.read_text())["traceEvents"]
    assert trace.parent == tmp_path / "prof" and any(event.get("name") == "pgolf::forward" for event in events)
    names = [op["name"] for op in first["top_ops"]]
    assert "aten::mm" in names and 0 < len(names) <= 15 and all(op["self_ms"] > 0 for op in first["top_ops"])
    phases = first["phases_ms"]
    assert set(phases) == {"data", "forward", "backward", "optimizer"}
    assert phases["forward"] > 0 and phases["optimizer"] > 0 and sum(phases.values()) <= first["step_ms"] * 1.05
    assert first["grad_accum_steps"] == 8 and first["tokens_per_second"] > 0
    assert new_trace_path(trace.parent) != trace  # the next profile gets a new file; this one is kept


def test_flops_per_token_against_a_hand_count():
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2))
    # Per block: q 32x32 + k 32x16 + v 32x16 + o 32x32 + fc 32x64 + proj 64x32 = 7168 weights.
    weights = 2 * 7168 + 64 * 32  # two blocks and the (tied) output head
    attention = 2 * 32 * (16 + 1) * 2  # 2 d (T+1) per block run, two block runs
    assert training_flops_per_token(model, 16) == 3 * (2 * weights + attention) == 104_832


def test_flops_count_every_block_run_of_depth_recurrence():
    cfg = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2,
                      num_loops=1, loop_start=1, loop_end=1)
    model = GPT(cfg)
    off, on = training_flops_per_token(model, 16), training_flops_per_token(model, 16, looping=True)
    assert on - off == 3 * (2 * 7168 + 2 * 32 * 17)  # block 1 runs once more
    flat = GPT(dataclasses.replace(cfg, num_loops=0))
    assert training_flops_per_token(flat, 16) == off


def test_gpu_throughput_bench_imports_and_refuses_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "bench" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 2
    assert "CUDA GPU" in capsys.readouterr().err


def test_cpu_self_time_subtracts_direct_children_only():
    events = [{"name": "parent", "ts": 0.0, "dur": 10.0}, {"name": "a", "ts": 2.0, "dur": 3.0},
              {"name": "b", "ts": 6.0, "dur": 2.0}, {"name": "b_child", "ts": 6.0, "dur": 1.0},
              {"name": "after", "ts": 12.0, "dur": 4.0}]
    self_us = cpu_self_times(events)
    assert [self_us[i] for i in range(5)] == [5.0, 3.0, 1.0, 1.0, 4.0]
