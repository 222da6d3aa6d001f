"""The long phases after training show a progress bar on a terminal (and print nothing elsewhere):
GPTQ calibration, quantization (the GPTQ solves), per-group compression and the fit-to-cap search."""

import io

import torch
from torch import nn

from pgolf.config import QuantConfig
from pgolf.quant.artifact_quant import quantize_for_artifact
from pgolf.quant.calibration import collect_hessians
from pgolf.quant.prune_search import SizeMemo
from pgolf.quant.packing import pack_model_artifact
from pgolf.runtime import Runtime


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch) -> FakeTerminal:
    """stderr as a terminal (patched inside the test: pytest swaps stderr between setup and call)."""
    screen = FakeTerminal()
    monkeypatch.setattr("sys.stderr", screen)
    clock = iter(range(100, 1_000_000))  # one second between updates: every update draws
    monkeypatch.setattr("pgolf.log.time.monotonic", lambda: float(next(clock)))
    return screen


class OneBlock(nn.Module):
    """A block linear large enough to get a Hessian (the small ones are stored as they are)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(512, 256, bias=False)])

    def forward_logits(self, x):
        return self.blocks[0](x)


def test_calibration_shows_its_batches(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    collect_hessians(OneBlock(), [torch.randn(2, 512) for _ in range(3)], runtime=Runtime(torch.device("cpu")))
    assert "gptq calibration 3 batches" in terminal.getvalue()


def test_quantization_shows_each_tensor(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(512, 256) for i in range(2)}
    quantize_for_artifact(state, QuantConfig(matrix_bits=6, clip_method="sdclip"), None)
    assert "quantize [" in terminal.getvalue() and "blocks.1.mlp.fc.weight" in terminal.getvalue()


def test_the_fit_to_cap_search_shows_its_trials(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    sizes = SizeMemo(lambda count: 1000 - count)
    sizes(3)
    sizes.measure_many([5, 7])
    assert "fit_to_cap search 1 trial compressions, 1 rounds" in terminal.getvalue()


def test_nothing_is_drawn_off_a_terminal(capsys):
    state = {"blocks.0.mlp.fc.weight": torch.randn(512, 256)}
    pack_model_artifact(state, QuantConfig(matrix_bits=6, clip_method="sdclip"))
    assert capsys.readouterr().err == ""
