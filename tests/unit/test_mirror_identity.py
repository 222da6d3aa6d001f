"""A CHECKPOINT_SYNC mirror holds one run: pgolf_mirror.json records the run's name and the sha256 of its
config.json, and check_mirror_holds_this_run refuses (before any upload) a mirror holding another run,
while the same run (resumed, or fetched into a fresh folder) keeps mirroring there. A staging folder
left by a killed run is removed at the next run's first checkpoint."""

import json
from pathlib import Path

import pytest
from test_checkpoint_sync import fake_checkpoint, fake_run, quiet_mirror

from pgolf.commands.checkpoint_sync import (MIRROR_MARKER_FILE, STAGING_DIR_NAME, SyncError,
                                            check_mirror_holds_this_run, fetch_mirrored_run, file_sha256)


def mirrored_run(tmp_path: Path, name: str, config: str, step: int = 20) -> tuple[Path, Path]:
    """A run ``name`` with one checkpoint mirrored to tmp_path/mirror_<name>."""
    run_dir, remote = fake_run(tmp_path, name), tmp_path / f"mirror_{name}"
    (run_dir / "config.json").write_text(config)
    mirror, _ = quiet_mirror(str(remote))
    mirror(fake_checkpoint(run_dir, step))
    mirror.finish(run_dir)
    return run_dir, remote


def test_the_marker_records_the_run_and_its_config(tmp_path):
    run_dir, remote = mirrored_run(tmp_path, "a", '{"seed": 1}')
    marker = json.loads((remote / MIRROR_MARKER_FILE).read_text())
    assert marker == {"format": 2, "run_id": "a", "config_sha256": file_sha256(run_dir / "config.json")}


def test_a_new_run_is_refused_a_mirror_holding_another_run(tmp_path):
    _, remote = mirrored_run(tmp_path, "a", '{"seed": 1}')
    before = {p.relative_to(remote): p.read_bytes() for p in remote.rglob("*") if p.is_file()}
    for new_run in (tmp_path / "runs" / "b", None):  # a chosen RUN_ID, and one not chosen yet
        with pytest.raises(SyncError, match=r"holds another run: its pgolf_mirror.json names run 'a'.*"
                                            r"its own CHECKPOINT_SYNC URL.*remove that mirror"):
            check_mirror_holds_this_run(str(remote), new_run, continuing=False)
    # The same RUN_ID is refused too while the mirror holds a resumable checkpoint: resume it instead.
    with pytest.raises(SyncError, match="pgolf train --resume"):
        check_mirror_holds_this_run(str(remote), tmp_path / "elsewhere" / "a", continuing=False)
    assert {p.relative_to(remote): p.read_bytes() for p in remote.rglob("*") if p.is_file()} == before


def test_a_resumed_run_is_refused_the_mirror_of_another_run_with_the_same_name(tmp_path):
    _, remote = mirrored_run(tmp_path, "golf", '{"seed": 1}')
    other = tmp_path / "machine2" / "golf"  # the same RUN_ID on another machine: another run
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"seed": 2}')
    with pytest.raises(SyncError, match="another config.json"):
        check_mirror_holds_this_run(str(remote), other, continuing=True)


def test_the_same_run_keeps_its_mirror_resumed_or_fetched(tmp_path):
    run_dir, remote = mirrored_run(tmp_path, "golf", '{"seed": 1}')
    check_mirror_holds_this_run(str(remote), run_dir, continuing=True)  # a local resume
    fetched = fetch_mirrored_run(str(remote), tmp_path / "fresh", "renamed", log=lambda _: None)
    check_mirror_holds_this_run(str(remote), fetched, continuing=True)  # fetched under another RUN_ID
    check_mirror_holds_this_run(str(tmp_path / "empty"), tmp_path / "runs" / "new", continuing=False)


def test_a_restart_of_the_same_run_id_may_take_a_mirror_with_nothing_resumable(tmp_path):
    run_dir, remote = fake_run(tmp_path, "golf"), tmp_path / "mirror"
    remote.mkdir()
    (remote / MIRROR_MARKER_FILE).write_text(json.dumps({"format": 2, "run_id": "golf"}))
    (remote / "config.json").write_text("{}")  # a first start killed before a checkpoint was complete
    check_mirror_holds_this_run(str(remote), tmp_path / "fresh_machine" / "golf", continuing=False)
    with pytest.raises(SyncError, match="names run 'golf'"):
        check_mirror_holds_this_run(str(remote), run_dir.with_name("other"), continuing=False)


def test_a_format_1_marker_is_compared_through_the_mirrored_config(tmp_path):
    run_dir, remote = mirrored_run(tmp_path, "golf", '{"seed": 1}')
    (remote / MIRROR_MARKER_FILE).write_text(json.dumps({"format": 1, "run_id": "golf"}))
    check_mirror_holds_this_run(str(remote), run_dir, continuing=True)
    (run_dir / "config.json").write_text('{"seed": 2}')
    with pytest.raises(SyncError, match="another config.json"):
        check_mirror_holds_this_run(str(remote), run_dir, continuing=True)


def test_a_killed_runs_staging_folder_is_removed_at_the_next_first_checkpoint(tmp_path):
    run_dir, remote = fake_run(tmp_path), tmp_path / "mirror"
    stale = run_dir / STAGING_DIR_NAME / "step_00000002" / "checkpoint"
    stale.mkdir(parents=True)
    (stale / "model.pgtc").write_bytes(b"left by kill -9")
    mirror, _ = quiet_mirror(str(remote))
    mirror(fake_checkpoint(run_dir, 4))
    mirror.wait_idle()
    assert not (run_dir / STAGING_DIR_NAME / "step_00000002").exists()
    assert (remote / "checkpoints" / "step_00000004" / "manifest.json").is_file()
    mirror.finish(run_dir)
    assert not (run_dir / STAGING_DIR_NAME).exists()
