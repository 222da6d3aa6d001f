"""PGOLF_DEVICE: what each spelling resolves to (pgolf.dist), checked without a GPU by faking CUDA's presence."""

import pytest
import torch

from pgolf.dist import _choose_device
from pgolf.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_cuda_without_an_index_takes_the_local_rank(fake_cuda):
    # torch.cuda.set_device(torch.device("cuda")) raises: the index must be filled in.
    assert _choose_device(3, "cuda") == torch.device("cuda", 3)
    assert _choose_device(0, " cuda ") == torch.device("cuda", 0)


def test_an_explicit_index_and_the_automatic_choice(fake_cuda):
    assert _choose_device(3, "cuda:1") == torch.device("cuda", 1)
    assert _choose_device(2, "") == torch.device("cuda", 2)
    assert _choose_device(2, "cpu") == torch.device("cpu")


def test_cuda_asked_for_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="PGOLF_DEVICE=cuda.*no CUDA device.*PGOLF_DEVICE=cpu"):
        _choose_device(0, "cuda")
    assert _choose_device(0, "") == torch.device("cpu")


def test_a_misspelled_device_is_named():
    with pytest.raises(ConfigError, match="PGOLF_DEVICE='gpu' is not a device"):
        _choose_device(0, "gpu")
