"""The embedded default dataset, built once per test session into a temporary cache, for the
experiment-tooling tests that train tiny real runs (see exp_runs.py)."""

import pytest

from pgolf.data.corpus import ensure_default_dataset


@pytest.fixture(scope="session")
def exp_default_data(tmp_path_factory):
    return ensure_default_dataset(tmp_path_factory.mktemp("exp_cache"), log=lambda _: None)
