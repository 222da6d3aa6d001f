"""`pgolf check`'s budgets verdict (pgolf/commands/check.py): the run's own training + calibration total,
and an honest verdict when a cap is missing or evaluation is over on a machine other than the challenge's."""

import pytest

from pgolf.commands.check import check_budgets, check_status, receipt_verdict
from pgolf.config import apply_config_overrides
from pgolf.presets import tiny_cpu

CPU = {"device": "cpu"}
CHALLENGE = {"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 8}


def config(**overrides):
    return apply_config_overrides(tiny_cpu(), {key: str(value) for key, value in overrides.items()}, source="test")


def report(env=CPU, evaluation=0.3, **fields):
    """The fields of a GPTQ run's report.json the budgets check reads (the walk-through's run by default)."""
    base = {"train_seconds": 2.94, "calibration_seconds": 1.49, "train_plus_calibration_seconds": 4.43,
            "env": env, "eval_budget": {"total_seconds": evaluation}}
    return {**base, **fields}


def test_calibration_counts_against_the_training_cap():
    result = check_budgets(config(MAX_WALLCLOCK_SECONDS=3), report())
    assert not result.passed and not result.unverified
    assert result.details[0].startswith("training + calibration 4.4s of 3s (over by 1.4s")


def test_a_report_without_the_total_adds_its_calibration_seconds():
    fields = report()
    del fields["train_plus_calibration_seconds"]
    assert not check_budgets(config(MAX_WALLCLOCK_SECONDS=3), fields).passed
    assert check_budgets(config(MAX_WALLCLOCK_SECONDS=5), fields).passed


def test_evaluation_over_budget_fails_on_the_challenges_machine():
    result = check_budgets(config(EVAL_BUDGET_SECONDS=600), report(env=CHALLENGE, evaluation=612.0))
    assert not result.passed and not result.unverified
    assert result.details[1] == "evaluation 612.0s of 600s on 8x NVIDIA H100 80GB HBM3 (over: needs 1.02x faster)"
    assert check_status(result.as_dict()) == "FAIL"


def test_evaluation_over_budget_elsewhere_is_unverified_not_a_pass():
    result = check_budgets(config(EVAL_BUDGET_SECONDS=0.01), report())
    assert not result.passed and result.unverified
    assert "over here" in result.details[1] and "not the challenge's 8xH100" in result.details[1]
    assert check_status(result.as_dict()) == "UNVERIFIED"


@pytest.mark.parametrize("env", [CPU, CHALLENGE])
def test_an_uncapped_run_says_so_and_passes_only_within_the_challenges_600s(env):
    quick = check_budgets(config(MAX_WALLCLOCK_SECONDS=0), report(env=env))
    assert quick.passed and quick.details[0].startswith("training budget not enforced: the run had no cap")
    slow = check_budgets(config(MAX_WALLCLOCK_SECONDS=0), report(env=env, train_plus_calibration_seconds=10800.0))
    assert not slow.passed and slow.unverified == (env is CPU)
    assert "over the challenge's 600s" in slow.details[0]


def test_a_report_without_evaluation_time_is_unverified():
    fields = report()
    del fields["eval_budget"]
    result = check_budgets(config(), fields)
    assert result.unverified and "evaluation time not recorded" in result.details[1]


def test_receipt_verdict_separates_failed_from_unverified():
    passing = {"check": "causality", "passed": True, "applicable": True, "details": []}
    failing = {**passing, "passed": False}
    unverified = {**passing, "passed": False, "unverified": True}
    assert receipt_verdict([passing, passing]) == "passed"
    assert receipt_verdict([passing, unverified]) == "unverified"
    assert receipt_verdict([failing, unverified]) == "failed"


def test_a_cap_above_the_challenges_is_judged_against_600s():
    """MAX_WALLCLOCK_SECONDS=1200 stopped nothing at 600 s: a 900 s run under it must not pass."""
    long_run = report(env=CHALLENGE, train_plus_calibration_seconds=900.0)
    result = check_budgets(config(MAX_WALLCLOCK_SECONDS=1200), long_run)
    assert not result.passed and not result.unverified
    assert "the run's cap 1200s is above the challenge's" in result.details[0]
    assert check_budgets(config(MAX_WALLCLOCK_SECONDS=1200), report(env=CHALLENGE)).passed
