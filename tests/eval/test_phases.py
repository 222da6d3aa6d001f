"""The timed evaluation phases (pgolf/eval/phases.py)."""

import copy
import dataclasses

import torch

from pgolf.config import Config, EvalConfig, ModelConfig, TrainConfig, TTTConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.dist import DistContext
from pgolf.eval.compliance import check_score_before_update
from pgolf.eval.phases import EvalPhase, evaluation_budget, extra_evaluation_phases
from pgolf.eval.ttt import TTTObserver
from pgolf.model.gpt import GPT

VOCAB = 32


def test_phases_follow_the_config_and_are_timed():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1)).eval()
    tables = ByteTables(base_bytes=torch.ones(VOCAB, dtype=torch.int16),
                        has_leading_space=torch.zeros(VOCAB, dtype=torch.bool),
                        is_boundary=torch.zeros(VOCAB, dtype=torch.bool))
    val = torch.randint(0, VOCAB, (97,), generator=torch.Generator().manual_seed(1))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
    cfg = Config(train=TrainConfig(train_seq_len=16, train_batch_tokens=128),
                 eval=EvalConfig(eval_stride=4, sliding_window_enabled=False))
    assert extra_evaluation_phases(cfg, ctx, val, tables, model, lambda: copy.deepcopy(model)) == []
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, sliding_window_enabled=True),
                              ttt=TTTConfig(ttt_enabled=True, ttt_chunk_tokens=32, ttt_epochs=1))
    observer = TTTObserver()
    phases = extra_evaluation_phases(cfg, ctx, val, tables, model, lambda: copy.deepcopy(model), observer)
    assert [p.label for p in phases] == ["quantized_sliding_window", "quantized_ttt"]
    assert all(p.sums.token_count == 96 and p.seconds > 0 for p in phases)
    assert check_score_before_update(observer, 96).passed
    assert phases[0].log_line().startswith("quantized_sliding_window val_loss:")


def test_budget_totals_and_speedup():
    sums = None
    phases = [EvalPhase("a", sums, 200.0), EvalPhase("b", sums, 700.0)]
    budget = evaluation_budget(phases, 600.0)
    assert budget["total_seconds"] == 900.0 and not budget["fits_on_this_machine"]
    assert budget["speedup_needed_to_fit"] == 1.5 and budget["phases"] == {"a": 200.0, "b": 700.0}
