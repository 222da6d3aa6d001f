"""Schedules at their boundaries (SPEC 2.7, 4.7, 5.9)."""

import pytest

from pgolf.config import Config, TrainConfig, validate_config
from pgolf.errors import ConfigError
from pgolf.optim.schedules import lr_multiplier_at, muon_momentum_at, training_progress


def test_muon_momentum_warmup_boundaries():
    kw = dict(start=0.85, end=0.95, warmup_steps=500)
    assert muon_momentum_at(0, **kw) == pytest.approx(0.85, abs=1e-15)
    assert muon_momentum_at(250, **kw) == pytest.approx(0.90, abs=1e-15)
    assert muon_momentum_at(500, **kw) == pytest.approx(0.95, abs=1e-15)
    assert muon_momentum_at(10_000, **kw) == pytest.approx(0.95, abs=1e-15)
    # One step before the end is still strictly below the final value.
    assert muon_momentum_at(499, **kw) == pytest.approx(0.85 + 0.1 * 499 / 500, abs=1e-15)


def test_muon_momentum_without_warmup_is_end_value():
    assert muon_momentum_at(0, start=0.85, end=0.95, warmup_steps=0) == 0.95
    with pytest.raises(ConfigError, match="MUON_MOMENTUM_WARMUP_STEPS"):
        muon_momentum_at(0, start=0.85, end=0.95, warmup_steps=-1)


@pytest.mark.parametrize("warmdown_frac", [0.72, 0.25, 0.5, 1.0])
def test_lr_multiplier_boundaries(warmdown_frac):
    start = 1.0 - warmdown_frac
    assert lr_multiplier_at(0.0, warmdown_frac=warmdown_frac) == 1.0
    # At the switch point the line starts at (almost exactly) 1, so there is no jump.
    assert lr_multiplier_at(start, warmdown_frac=warmdown_frac) == pytest.approx(1.0, abs=1e-12)
    if start > 0:
        assert lr_multiplier_at(start * 0.999, warmdown_frac=warmdown_frac) == 1.0
    midway = start + warmdown_frac / 2
    assert lr_multiplier_at(midway, warmdown_frac=warmdown_frac) == pytest.approx(0.5, abs=1e-12)
    assert lr_multiplier_at(1.0, warmdown_frac=warmdown_frac) == 0.0


def test_lr_multiplier_exact_switch_point():
    # 0.5 is exactly representable: progress 0.5 is the first point of the warm-down, value 1.
    assert lr_multiplier_at(0.5, warmdown_frac=0.5) == 1.0
    assert lr_multiplier_at(0.75, warmdown_frac=0.5) == 0.5


def test_lr_multiplier_without_warmdown_is_constant():
    for progress in (0.0, 0.5, 0.999, 1.0):
        assert lr_multiplier_at(progress, warmdown_frac=0.0) == 1.0


def test_lr_multiplier_min_lr_floor():
    assert lr_multiplier_at(1.0, warmdown_frac=0.72, min_lr=0.1) == 0.1
    assert lr_multiplier_at(0.28 + 0.36, warmdown_frac=0.72, min_lr=0.1) == pytest.approx(0.5)


def test_a_bad_warmdown_fraction_is_refused_by_the_config_once():
    with pytest.raises(ConfigError, match="WARMDOWN_FRAC"):
        validate_config(Config(train=TrainConfig(warmdown_frac=1.5)))
    with pytest.raises(AssertionError):  # the schedule only asserts what the config guarantees
        lr_multiplier_at(0.5, warmdown_frac=1.5)


def test_training_progress_wallclock_and_steps():
    assert training_progress(elapsed_seconds=0.0, budget_seconds=600.0, step=7, iterations=100) == 0.0
    assert training_progress(elapsed_seconds=150.0, budget_seconds=600.0, step=7, iterations=100) == 0.25
    assert training_progress(elapsed_seconds=900.0, budget_seconds=600.0, step=7, iterations=100) == 1.0
    # No budget: steps decide, elapsed time is ignored.
    assert training_progress(elapsed_seconds=1e9, budget_seconds=0.0, step=25, iterations=100) == 0.25
    assert training_progress(elapsed_seconds=0.0, budget_seconds=0.0, step=100, iterations=100) == 1.0
    assert training_progress(elapsed_seconds=0.0, budget_seconds=0.0, step=150, iterations=100) == 1.0
    assert training_progress(elapsed_seconds=-1.0, budget_seconds=10.0, step=0, iterations=100) == 0.0


def test_training_progress_needs_a_limit():
    with pytest.raises(ConfigError, match="ITERATIONS"):
        training_progress(elapsed_seconds=1.0, budget_seconds=0.0, step=1, iterations=0)
