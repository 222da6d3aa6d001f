"""``pgolf seeds``: seed lists, the t-interval of the mean against SciPy and plain float64 maths, and one
tiny end-to-end seed group on the embedded default data (plus its refusals and a failing seed)."""

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from pgolf.cli import main as cli_main
from pgolf.errors import ConfigError, TrainingError
from pgolf.exp.runner import mean_interval, parse_seed_list, student_t_critical

TINY = {"ITERATIONS": "2", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096", "VAL_MAX_TOKENS": "8192",
        "MAX_WALLCLOCK_SECONDS": "0"}


@pytest.fixture(autouse=True)
def single_cpu_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SEED", "RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")


def tiny_items(data, runs_dir: Path) -> list[str]:
    settings = {**TINY, "DATA_PATH": str(data.data_path), "TOKENIZER_PATH": str(data.tokenizer_path),
                "RUNS_DIR": str(runs_dir)}
    return [f"{key}={value}" for key, value in settings.items()]


def test_seed_lists():
    assert parse_seed_list("42,314,999") == [42, 314, 999]
    assert parse_seed_list(" 7 ") == [7]
    for bad, fragment in [("", "integers"), ("1,,2", "integers"), ("1,x", "integer"), ("1,2,1", "repeats 1")]:
        with pytest.raises(ConfigError, match=fragment):
            parse_seed_list(bad)


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 200])
def test_t_critical_values_match_scipy(df):
    for confidence in (0.9, 0.95, 0.99):
        assert student_t_critical(confidence, df) == pytest.approx(scipy_stats.t.ppf((1 + confidence) / 2, df),
                                                                   rel=1e-9)


def test_mean_interval_against_plain_float64_maths():
    values = [1.0810, 1.0827, 1.0799, 1.0841]
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    interval = mean_interval(values)
    assert interval.n == 4 and interval.mean == pytest.approx(mean, rel=1e-15)
    assert interval.std == pytest.approx(std, rel=1e-12)
    assert interval.low == pytest.approx(mean - half, rel=1e-12)
    assert interval.high == pytest.approx(mean + half, rel=1e-12)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=mean, scale=scipy_stats.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    single = mean_interval([1.2])
    assert single.mean == 1.2 and single.std is None and single.low is None and single.high is None


def test_seed_group_end_to_end(exp_default_data, tmp_path, monkeypatch, capsys):
    """Two seeds, one after the other: one folder each, group.json first, the table's numbers are the
    runs' own reports, and the same --name again is refused. (The exact code size costs a full export
    per run; a stand-in records that each run asks for it with its own configuration.)"""
    asked = []
    for module in ("pgolf.report", "pgolf.exp.runner"):  # another engineer's edit must not look like a code change
        monkeypatch.setattr(f"{module}.pgolf_code_hash", lambda: "pinned")
    monkeypatch.setattr("pgolf.exp.runner.exported_code_bytes",
                        lambda cfg, preset_name: asked.append((cfg.train.seed, preset_name)) or 4321)
    items = tiny_items(exp_default_data, tmp_path)
    assert cli_main(["seeds", "--seeds", "3,4", "--name", "grp", "--json", *items]) == 0
    assert asked == [(3, "tiny_cpu"), (4, "tiny_cpu")]
    result = json.loads(capsys.readouterr().out)
    group = tmp_path / "grp"
    plan = json.loads((group / "group.json").read_text())
    assert plan["seeds"] == [3, 4] and plan["preset"] == "tiny_cpu"
    assert plan["run_dirs"] == [str(group / "seed_3"), str(group / "seed_4")]
    assert plan["changes_from_preset"]["ITERATIONS"] == 2
    reports = [json.loads((group / f"seed_{seed}" / "report.json").read_text()) for seed in (3, 4)]
    assert [report["seed"] for report in reports] == [3, 4]
    assert [report["code_bytes"] for report in reports] == [4321, 4321]
    scores = [report["val_bpb_final"] for report in reports]
    assert scores[0] != scores[1]  # the seed really reached the run
    assert [run["val_bpb"] for run in result["runs"]] == scores
    assert result["summary"]["mean"] == pytest.approx(sum(scores) / 2, rel=1e-15)
    assert result["summary"]["std"] == pytest.approx(abs(scores[0] - scores[1]) / math.sqrt(2), rel=1e-12)
    assert json.loads((group / "seeds.json").read_text()) == result

    # A group stopped after seed 3, with seed 4 past its training (an interruption in its evaluation):
    # --resume reuses seed 3 and evaluates seed 4's final weights again (pgolf's own resume), to the
    # same score.
    (group / "seeds.json").rename(group / "seeds.json.done")
    (group / "seed_4" / "report.json").unlink()
    assert cli_main(["seeds", "--seeds", "3,4", "--name", "grp", "--resume", "--json", *items]) == 0
    captured = capsys.readouterr()
    assert f"finished before, reusing {group / 'seed_3'}" in captured.err
    assert f"(continuing {group / 'seed_4'})" in captured.err
    assert "training had finished" in (group / "seed_4" / "train.log").read_text()
    resumed = json.loads(captured.out)
    assert [run["val_bpb"] for run in resumed["runs"]] == scores and resumed["summary"] == result["summary"]

    assert cli_main(["seeds", "--seeds", "5", "--name", "grp", *items]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (group / "seed_5").exists()


def test_seed_on_the_command_line_is_refused(tmp_path, capsys):
    assert cli_main(["seeds", "--seeds", "1,2", f"RUNS_DIR={tmp_path}", "SEED=7"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failing_seed_stops_naming_it_and_keeps_the_finished_ones(exp_default_data, tmp_path, monkeypatch, capsys):
    """The training itself is replaced here (the end-to-end test above covers it): seed 1 finishes,
    seed 2 fails, seed 3 never starts."""
    started = []

    def fake_training(cfg, *, out_dir, run_id, seed, **_):
        started.append(seed)
        if seed == 2:
            raise TrainingError("non-finite loss at step 3")
        (out_dir / run_id).mkdir()
        return {"val_bpb": 1.5, "run_dir": str(out_dir / run_id), "seed": seed}

    monkeypatch.setattr("pgolf.exp.runner.run_training", fake_training)
    assert cli_main(["seeds", "--seeds", "1,2,3", "--name", "bad", *tiny_items(exp_default_data, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "seed 2" in err and "non-finite loss at step 3" in err and "finished (1 of 3): seed_1" in err
    assert started == [1, 2]
    assert (tmp_path / "bad" / "seed_1").is_dir() and (tmp_path / "bad" / "group.json").is_file()
    assert not (tmp_path / "bad" / "seeds.json").exists()
    partial = json.loads((tmp_path / "bad" / "seeds.partial.json").read_text())
    assert partial["partial"] is True and partial["interrupted"] is False and partial["seeds"] == [1]
