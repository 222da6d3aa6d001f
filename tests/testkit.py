"""Helpers several test files share."""

import os
import random
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.config import Config, ModelConfig, apply_config_overrides
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.presets import tiny_cpu


def small_scoring_gpt(vocab_size: int, seed: int = 0) -> GPT:
    """A 2-layer, 32-wide GPT in eval mode whose zero-initialised output projections got small random
    values, so every path contributes to the scores."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab_size, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    return model.eval()


class RecordingLogger(RunLogger):
    """A run logger that keeps its lines and events in memory instead of writing files."""

    def __init__(self):
        super().__init__(None, echo=False)
        self.lines, self.events = [], []

    def line(self, text):
        self.lines.append(text)

    def event(self, kind, **fields):
        self.events.append((kind, fields))


# SPEC 2.6's quintic coefficients, written out here so the tests' reference does not read pgolf's.
REFERENCE_QUINTIC = ((3.4445, -4.7750, 2.0315),)
NEWTON_SCHULZ_EPS = 1e-7


def reference_newton_schulz(G: torch.Tensor, steps: int, coefficients=REFERENCE_QUINTIC,
                            b_times_a_squared=None) -> torch.Tensor:
    """The references' bf16 Newton-Schulz loop written out plainly (SPEC 2.6, 5.7): ``B = b*A + (c*A)@A``.
    ``b_times_a_squared`` replaces that product only for the guard test of another order."""
    X = G.bfloat16()
    X /= X.norm() + NEWTON_SCHULZ_EPS
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    for step in range(steps):
        a, b, c = coefficients[min(step, len(coefficients) - 1)]
        A = X @ X.T
        B = b * A + c * A @ A if b_times_a_squared is None else b_times_a_squared(A, b, c)
        X = a * X + B @ X
    return X.T if tall else X



def can_create_files_in(folder) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextmanager
def unwritable(folder):
    """``folder`` (existing, readable) made so that this process cannot create files in it: its write bits
    cleared, and for root, whom permission bits do not stop, the immutable attribute (chattr +i); skips
    the test where neither works. Restored on exit."""
    folder = Path(folder)
    folder.chmod(0o555)
    immutable = False
    try:
        if can_create_files_in(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if can_create_files_in(folder):
            pytest.skip("cannot make a directory unwritable for this process")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def run_items(default_data, runs_dir, base: dict, **extra) -> list[str]:
    """``KEY=value`` items of a small run on the default data: ``base`` settings, then ``extra``."""
    values = {**base, "DATA_PATH": str(default_data.data_path), "TOKENIZER_PATH": str(default_data.tokenizer_path),
              "RUNS_DIR": str(runs_dir), **extra}
    return [f"{key}={value}" for key, value in values.items()]


def run_config(default_data, runs_dir, base: dict, **extra) -> Config:
    """The tiny_cpu configuration with the same items (for run.main in this process)."""
    overrides = dict(item.split("=", 1) for item in run_items(default_data, runs_dir, base, **extra))
    return apply_config_overrides(tiny_cpu(), overrides, source="test")


def word_documents(words: str, count: int, seed: int) -> list[str]:
    """``count`` documents of 4 to 30 words drawn from the space-separated ``words`` (tokenizer training)."""
    rng = random.Random(seed)
    vocabulary = words.split()
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(4, 30))) + "." for _ in range(count)]


def tiny_run_overrides(data, runs, run_id: str, iterations: int) -> dict[str, str]:
    """KEY=value settings of a seconds-long tiny_cpu run on the default dataset ``data``, into ``runs/run_id``."""
    return {"ITERATIONS": str(iterations), "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64",
            "TRAIN_BATCH_TOKENS": "4096", "VAL_MAX_TOKENS": "4096", "DATA_PATH": str(data.data_path),
            "TOKENIZER_PATH": str(data.tokenizer_path), "RUNS_DIR": str(runs), "RUN_ID": run_id}


def _gloo_rank(rank: int, world_size: int, store: str, out_dir: str, work, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.save(work(rank, *args), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's shutdown: under CPU load a rank sometimes aborted there ("terminate
    # called without an active exception", no Python frame left: a native thread still joinable at exit)
    # after its result was saved, and the test failed for it. The result is on disk; the test compares it.
    os._exit(0)


def run_gloo_ranks(work, world_size: int, folder: Path, *args) -> list:
    """``work(rank, *args)`` in ``world_size`` processes joined by a gloo group (one thread each); returns
    what each rank returned, in rank order. ``work`` must be a module-level function (it is pickled)."""
    mp.spawn(_gloo_rank, args=(world_size, str(folder / "store"), str(folder), work, args), nprocs=world_size,
             join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(world_size)]
