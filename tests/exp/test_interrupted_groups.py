"""``pgolf seeds`` and ``pgolf sweep`` that stop (Ctrl-C, a failing run): the partial summary of what
finished, the message saying what finished and what did not, and ``--resume``; and the arguments refused
before anything is created (--name outside RUNS_DIR, seeds out of range).

The training is a stand-in here that writes a report.json like a real run's (the end-to-end tests in
test_seeds.py and test_sweep.py train for real, and test_seeds.py resumes a real run)."""

import csv
import io
import json

import pytest

from pgolf.cli import main as cli_main
from pgolf.errors import TrainingError

FAKE_HASH = "fakehash"
# Data paths given, so no default dataset is built: the stand-in never reads them.
ITEMS = ["DATA_PATH=/data/shards", "TOKENIZER_PATH=/data/t.model", "ITERATIONS=2"]


@pytest.fixture(autouse=True)
def single_cpu_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SEED", "RUN_ID", "PGOLF_PRESET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PGOLF_DEVICE", "cpu")
    monkeypatch.setattr("pgolf.exp.runner.pgolf_code_hash", lambda: FAKE_HASH)


class StandIn:
    """Training stand-in: records each call (run id, continued?), and stops on the runs it is told to."""

    def __init__(self, *, interrupt: str | None = None, fail: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.interrupt, self.fail = interrupt, fail

    def __call__(self, cfg, *, out_dir, run_id, seed, continue_existing=False, **_):
        self.calls.append((run_id, continue_existing))
        run_dir = out_dir / run_id
        run_dir.mkdir(exist_ok=continue_existing)
        if run_id == self.interrupt:
            raise KeyboardInterrupt
        if run_id == self.fail:
            raise TrainingError("non-finite loss at step 3")
        bpb = 1.2 + seed * 1e-3 + cfg.optim.matrix_lr
        report = {"val_bpb": bpb, "val_loss": 2 * bpb, "seed": seed, "code_hash": FAKE_HASH, "run_dir": str(run_dir),
                  "steps": 2}
        (run_dir / "report.json").write_text(json.dumps(report))
        return report


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli_main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---- pgolf seeds


def test_an_interrupted_seed_group_leaves_a_partial_summary_and_resumes(tmp_path, monkeypatch, capsys):
    runs_dir, items = tmp_path / "runs", [*ITEMS, f"RUNS_DIR={tmp_path / 'runs'}"]
    group = runs_dir / "grp"
    stand_in = StandIn(interrupt="seed_2")
    monkeypatch.setattr("pgolf.exp.runner.run_training", stand_in)
    status, _, err = run(capsys, "seeds", "--seeds", "1,2,3", "--name", "grp", *items)
    assert status == 130 and "interrupted" in err
    assert "finished (1 of 3): seed_1" in err and "unfinished (its folder keeps what it wrote): seed_2" in err
    assert "not started: seed_3" in err and "--resume --name grp" in err
    partial = json.loads((group / "seeds.partial.json").read_text())
    assert partial["partial"] is True and partial["interrupted"] is True and partial["seeds"] == [1]
    assert partial["summary"]["n"] == 1 and partial["planned_seeds"] == [1, 2, 3]
    assert partial["missing_runs"] == [str(group / "seed_2"), str(group / "seed_3")]
    assert not (group / "seeds.json").exists()

    status, _, err = run(capsys, "seeds", "--seeds", "1,2,3", "--name", "grp", *items)
    assert status == 2 and "unfinished seeds" in err and "--resume" in err
    status, _, err = run(capsys, "seeds", "--seeds", "1,2,3", "--name", "grp", "--resume", *items[:-1],
                         f"RUNS_DIR={runs_dir}", "MATRIX_LR=0.05")
    assert status == 2 and "planned with other settings" in err and "MATRIX_LR" in err.upper()

    stand_in = StandIn()
    monkeypatch.setattr("pgolf.exp.runner.run_training", stand_in)
    status, out, err = run(capsys, "seeds", "--seeds", "1,2,3", "--name", "grp", "--resume", "--json", *items)
    assert status == 0 and "reusing" in err
    assert stand_in.calls == [("seed_2", True), ("seed_3", False)]  # seed 1 reused, seed 2 continued
    result = json.loads(out)
    assert result["seeds"] == [1, 2, 3] and json.loads((group / "seeds.json").read_text()) == result
    status, _, err = run(capsys, "seeds", "--seeds", "1,2,3", "--name", "grp", "--resume", *items)
    assert status == 2 and "nothing to resume" in err


def test_resume_refuses_a_finished_run_of_other_code(tmp_path, monkeypatch, capsys):
    items = [*ITEMS, f"RUNS_DIR={tmp_path}"]
    monkeypatch.setattr("pgolf.exp.runner.run_training", StandIn(interrupt="seed_2"))
    assert run(capsys, "seeds", "--seeds", "1,2", "--name", "grp", *items)[0] == 130
    monkeypatch.setattr("pgolf.exp.runner.pgolf_code_hash", lambda: "newer")
    status, _, err = run(capsys, "seeds", "--seeds", "1,2", "--name", "grp", "--resume", *items)
    assert status == 2 and "made by code hash fakehash, but the installed pgolf is newer" in err
    assert "reusing" not in err  # refused before anything ran; the earlier partial summary stays
    assert json.loads((tmp_path / "grp" / "seeds.partial.json").read_text())["seeds"] == [1]


# ---- pgolf sweep


def test_a_failing_arm_leaves_the_complete_pairs_and_the_sweep_resumes(tmp_path, monkeypatch, capsys):
    """A diverging arm used to stop the sweep with no summary at all."""
    items = [*ITEMS, f"RUNS_DIR={tmp_path}", "MATRIX_LR=0.02,0.04"]
    sweep = tmp_path / "sw"
    monkeypatch.setattr("pgolf.exp.runner.run_training", StandIn(fail="a1_matrix_lr-0.04_seed2"))
    status, _, err = run(capsys, "sweep", "--seeds", "1,2", "--name", "sw", *items)
    assert status == 2 and "non-finite loss at step 3" in err
    assert "complete pairs: seed(s) 1 (every arm)" in err and "--resume --name sw" in err
    partial = json.loads((sweep / "sweep.partial.json").read_text())
    assert partial["partial"] is True and partial["interrupted"] is False and "non-finite" in partial["stopped_by"]
    assert partial["complete_seeds"] == [1] and partial["seeds"] == [1] and partial["planned_seeds"] == [1, 2]
    assert [arm["n"] for arm in partial["arms"]] == [1, 1]
    assert partial["arms"][1]["comparison"]["delta_mean"] == pytest.approx(0.02)
    assert [entry["run_dir"] for entry in partial["unpaired_runs"]] == [str(sweep / "a0_matrix_lr-0.02_seed2")]
    rows = list(csv.DictReader(io.StringIO((sweep / "sweep.partial.csv").read_text())))
    assert [row["arm"] for row in rows] == ["a0_matrix_lr-0.02", "a1_matrix_lr-0.04"] and "val_bpb_seed1" in rows[0]
    assert not (sweep / "sweep.json").exists() and not (sweep / "sweep.csv").exists()

    stand_in = StandIn()
    monkeypatch.setattr("pgolf.exp.runner.run_training", stand_in)
    status, out, _ = run(capsys, "sweep", "--seeds", "1,2", "--name", "sw", "--resume", "--json", *items)
    assert status == 0 and stand_in.calls == [("a1_matrix_lr-0.04_seed2", True)]
    result = json.loads(out)
    assert [arm["n"] for arm in result["arms"]] == [2, 2] and "partial" not in result
    assert result["arms"][1]["comparison"]["deltas"] == pytest.approx([0.02, 0.02])
    assert json.loads((sweep / "sweep.json").read_text()) == result and (sweep / "sweep.csv").is_file()


def test_a_sweep_interrupted_before_any_pair_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pgolf.exp.runner.run_training", StandIn(interrupt="a1_matrix_lr-0.04_seed1"))
    status, _, err = run(capsys, "sweep", "--seeds", "1,2", "--name", "sw", *ITEMS, f"RUNS_DIR={tmp_path}",
                         "MATRIX_LR=0.02,0.04")
    assert status == 130 and "no complete pair" in err and "not started: a0_matrix_lr-0.02_seed2" in err
    partial = json.loads((tmp_path / "sw" / "sweep.partial.json").read_text())
    assert partial["arms"] == [] and partial["complete_seeds"] == [] and len(partial["unpaired_runs"]) == 1
    assert not (tmp_path / "sw" / "sweep.partial.csv").exists()


def test_resume_needs_the_name_and_the_same_plan(tmp_path, monkeypatch, capsys):
    items = [*ITEMS, f"RUNS_DIR={tmp_path}", "MATRIX_LR=0.02,0.04"]
    status, _, err = run(capsys, "sweep", "--seeds", "1", "--resume", *items)
    assert status == 2 and "give its --name" in err
    status, _, err = run(capsys, "sweep", "--seeds", "1", "--resume", "--name", "nothing_here", *items)
    assert status == 2 and "has no plan.json" in err
    monkeypatch.setattr("pgolf.exp.runner.run_training", StandIn(interrupt="a1_matrix_lr-0.04_seed1"))
    assert run(capsys, "sweep", "--seeds", "1,2", "--name", "sw", *items)[0] == 130
    status, _, err = run(capsys, "sweep", "--seeds", "1,3", "--name", "sw", "--resume", *items)
    assert status == 2 and "planned with other settings" in err and "seeds" in err


# ---- arguments refused before anything is created


@pytest.mark.parametrize("command", ["seeds", "sweep"])
@pytest.mark.parametrize("name", ["../escaped", "ABSOLUTE", "a/b", ".."])
def test_a_name_outside_runs_dir_is_refused(tmp_path, capsys, command, name):
    """`--name ../escaped` (or an absolute path) used to write outside RUNS_DIR."""
    name = str(tmp_path / "absolute") if name == "ABSOLUTE" else name
    runs_dir = tmp_path / "runs"
    axis = ["MATRIX_LR=0.02,0.04"] if command == "sweep" else []
    status, _, err = run(capsys, command, "--seeds", "1", "--name", name, *ITEMS, f"RUNS_DIR={runs_dir}", *axis)
    assert status == 2 and "plain folder name" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["seeds", "sweep"])
@pytest.mark.parametrize("seeds,fragment", [("-1", "-1 outside 0 .. 4294967295"),
                                            ("1,4294967296", "4294967296 outside"), ("1,2,1", "repeats 1")])
def test_bad_seeds_are_refused_before_anything_is_created(tmp_path, capsys, command, seeds, fragment):
    """`--seeds=-1` used to create the group folder and group.json, then fail."""
    axis = ["MATRIX_LR=0.02,0.04"] if command == "sweep" else []
    status, _, err = run(capsys, command, f"--seeds={seeds}", "--name", "g", *ITEMS, f"RUNS_DIR={tmp_path}", *axis)
    assert status == 2 and fragment in err
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_a_run_that_finished_without_a_score(tmp_path, monkeypatch, capsys):
    """A run whose report holds no finite score (it diverged) would diverge again: refused by name before
    anything runs, rather than retried."""
    items = [*ITEMS, f"RUNS_DIR={tmp_path}"]
    monkeypatch.setattr("pgolf.exp.runner.run_training", StandIn(interrupt="seed_2"))
    assert run(capsys, "seeds", "--seeds", "1,2", "--name", "grp", *items)[0] == 130
    report = tmp_path / "grp" / "seed_1" / "report.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "val_bpb": None, "val_loss": None}))
    stand_in = StandIn()
    monkeypatch.setattr("pgolf.exp.runner.run_training", stand_in)
    status, _, err = run(capsys, "seeds", "--seeds", "1,2", "--name", "grp", "--resume", *items)
    assert status == 2 and "seed 1 finished earlier without a score" in err and "not a finite number" in err
    assert stand_in.calls == []
