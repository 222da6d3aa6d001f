"""Fixtures shared by end-to-end tests that run whole trainings in this process."""

import pytest

from pgolf.data.corpus import ensure_default_dataset


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The embedded default dataset, built once per test module into a temporary cache."""
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)


@pytest.fixture
def cpu_process(monkeypatch):
    """One CPU process whatever the environment: no torchrun variables, no auto-resume."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_AUTO_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")


@pytest.fixture
def single_cpu_process(cpu_process, monkeypatch):
    """``cpu_process``, and the export not under test: `pgolf train` counts a fixed code size instead of
    exporting."""
    monkeypatch.setattr("pgolf.commands.train.exported_code_bytes", lambda cfg, preset_name: 50_000)
