"""CHECKPOINT_SYNC's mirror (pgolf/commands/checkpoint_sync.py) on fake checkpoints: the remote layout,
manifest last, pruning to CHECKPOINT_KEEP, retries, failures that never raise, an upload that does not
block the caller, and fetching the newest complete checkpoint back. The hf:// path runs the real
huggingface_hub client (create_repo, create_commit, list_repo_files, hf_hub_download) against the local
hub stand-in (tests/unit/hub_standin.py, regular-file uploads only), and through a fake HfApi that records
what pgolf asks of the client."""

import json
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from hub_standin import HubStandIn, RunningHub

from pgolf.commands.checkpoint_sync import (MIRROR_MARKER_FILE, CheckpointMirror, FsspecStore, HubStore, SyncError,
                                            fetch_mirrored_run, is_mirror_folder, is_remote_url, open_store,
                                            remote_complete_checkpoints)
from pgolf.train.checkpoint import read_checkpoint_manifest


def fake_checkpoint(run_dir: Path, step: int, payload: bytes = b"x" * 1000) -> Path:
    """A checkpoint directory as CheckpointManager leaves it (files + manifest with their sizes)."""
    directory = run_dir / "checkpoints" / f"step_{step:08d}"
    directory.mkdir(parents=True)
    files = {"model.pgtc": payload + bytes([step]), "rank_00000.pgtc": b"r" * 100}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {"format": 1, "step": step, "world_size": 1, "files": {k: len(v) for k, v in files.items()}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def fake_run(tmp_path: Path, name: str = "myrun") -> Path:
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "train.log").write_text("line 1\n")
    (run_dir / "metrics.jsonl").write_text("{}\n")
    return run_dir


def quiet_mirror(url, keep=2, **kwargs) -> tuple[CheckpointMirror, list[str]]:
    lines: list[str] = []
    return CheckpointMirror(url, keep, log=lines.append, retry_delay_seconds=0.0, progress=False, **kwargs), lines


def test_urls_and_mirror_folders(tmp_path):
    assert is_remote_url("hf://user/repo") and is_remote_url("s3://bucket/x") and not is_remote_url(str(tmp_path))
    assert not is_mirror_folder(str(tmp_path))
    (tmp_path / MIRROR_MARKER_FILE).write_text("{}")
    assert is_mirror_folder(str(tmp_path))
    hub = HubStore("hf://datasets/me/golf/runs/a", api=object())
    assert (hub.repo_id, hub.repo_type, hub.prefix) == ("me/golf", "dataset", "runs/a")
    assert HubStore("hf://me/golf", api=object()).repo_type == "model"
    with pytest.raises(SyncError, match="hf://user/repo"):
        HubStore("hf://me", api=object())
    assert isinstance(open_store(str(tmp_path)), FsspecStore)
    with pytest.raises(SyncError, match="cannot open the mirror"):
        open_store("nosuchprotocol://bucket/run")


def test_checkpoints_logs_and_final_files_are_mirrored_and_pruned(tmp_path):
    run_dir, remote = fake_run(tmp_path), tmp_path / "mirror"
    mirror, lines = quiet_mirror(str(remote), keep=2)
    for step in (2, 4, 6):
        checkpoint = fake_checkpoint(run_dir, step)
        mirror(checkpoint)
        mirror.wait_idle()
        if step == 2:  # the local checkpoint may be pruned before its upload: the staged links are uploaded
            for path in checkpoint.iterdir():
                path.unlink()
            checkpoint.rmdir()
    (run_dir / "report.json").write_text('{"val_loss": 1}')
    (run_dir / "artifact").mkdir()
    (run_dir / "artifact" / "model.int8.ptz").write_bytes(b"blob")
    mirror.finish(run_dir)
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert (remote / "checkpoints" / "step_00000006" / "model.pgtc").read_bytes() == b"x" * 1000 + bytes([6])
    assert read_checkpoint_manifest(remote / "checkpoints" / "step_00000006")["step"] == 6
    assert (remote / "report.json").is_file() and (remote / "artifact" / "model.int8.ptz").read_bytes() == b"blob"
    assert json.loads((remote / MIRROR_MARKER_FILE).read_text())["run_id"] == "myrun"
    assert not list(remote.rglob("*.part")) and not (run_dir / ".sync_staging").exists()
    assert mirror.uploaded == ["step_00000002", "step_00000004", "step_00000006"] and not mirror.failed
    assert any("checkpoint_sync:uploaded step_00000006" in line for line in lines)


class FlakyStore(FsspecStore):
    """Fails the first ``failures`` writes (a network error), or every write when failures < 0."""

    def __init__(self, url, failures):
        super().__init__(url)
        self.failures = failures

    def put_files(self, pairs):
        if self.failures != 0:
            self.failures -= 1 if self.failures > 0 else 0
            raise ConnectionError("network is down")
        super().put_files(pairs)


def test_failed_uploads_are_retried_then_logged_and_never_raise(tmp_path):
    run_dir = fake_run(tmp_path)
    mirror, lines = quiet_mirror(str(tmp_path / "m1"), store=FlakyStore(str(tmp_path / "m1"), 2), attempts=3)
    mirror(fake_checkpoint(run_dir, 2))
    mirror.finish(run_dir)
    assert mirror.uploaded == ["step_00000002"] and sum("attempt:" in line for line in lines) == 2
    broken, lines = quiet_mirror(str(tmp_path / "m2"), store=FlakyStore(str(tmp_path / "m2"), -1), attempts=2)
    broken(fake_checkpoint(run_dir, 4))
    broken.finish(run_dir)  # nothing raised
    assert broken.failed[0] == "step_00000004" and any("gave_up step_00000004" in line for line in lines)
    assert remote_complete_checkpoints(FsspecStore(str(tmp_path / "m2"))) == []


class BlockingStore(FsspecStore):
    def __init__(self, url):
        super().__init__(url)
        self.release = threading.Event()

    def put_files(self, pairs):
        self.release.wait(timeout=30)
        super().put_files(pairs)


def test_the_hook_returns_at_once_and_an_incomplete_upload_does_not_count(tmp_path):
    run_dir, store = fake_run(tmp_path), BlockingStore(str(tmp_path / "m"))
    mirror, _ = quiet_mirror(str(tmp_path / "m"), store=store)
    started = time.perf_counter()
    mirror(fake_checkpoint(run_dir, 2))
    assert time.perf_counter() - started < 1.0  # the upload waits on the store; training does not
    assert remote_complete_checkpoints(store) == []
    # Files without their manifest (an upload cut off) never count as a checkpoint.
    (tmp_path / "m" / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "m" / "checkpoints" / "step_00000001" / "model.pgtc").write_bytes(b"half")
    assert remote_complete_checkpoints(store) == []
    store.release.set()
    mirror.finish(run_dir)
    assert remote_complete_checkpoints(store) == ["step_00000002"]
    assert not (tmp_path / "m" / "checkpoints" / "step_00000001").exists()  # older leftover pruned


def test_when_uploads_fall_behind_only_the_newest_queued_checkpoint_is_uploaded(tmp_path):
    run_dir, store = fake_run(tmp_path), BlockingStore(str(tmp_path / "m"))
    mirror, lines = quiet_mirror(str(tmp_path / "m"), store=store)
    for step in (2, 4, 6):
        mirror(fake_checkpoint(run_dir, step))
    store.release.set()
    mirror.finish(run_dir)
    assert mirror.uploaded[-1] == "step_00000006" and "step_00000004" not in mirror.uploaded
    assert any("skipped step_00000004" in line for line in lines)
    assert remote_complete_checkpoints(store)[-1] == "step_00000006"


def test_fetch_brings_back_the_newest_complete_checkpoint(tmp_path):
    run_dir, remote = fake_run(tmp_path), tmp_path / "mirror"
    mirror, _ = quiet_mirror(str(remote))
    mirror(fake_checkpoint(run_dir, 2))
    mirror(fake_checkpoint(run_dir, 4))
    mirror.finish(None)
    (remote / "checkpoints" / "step_00000006").mkdir()  # an upload in flight: no manifest
    fetched = fetch_mirrored_run(str(remote), tmp_path / "elsewhere", log=lambda _: None)
    assert fetched == tmp_path / "elsewhere" / "myrun"
    assert [p.name for p in (fetched / "checkpoints").iterdir()] == ["step_00000004"]
    assert (fetched / "train.log").read_text() == "line 1\n" and (fetched / "config.json").is_file()
    with pytest.raises(SyncError, match="already exists"):
        fetch_mirrored_run(str(remote), tmp_path / "elsewhere", log=lambda _: None)
    assert fetch_mirrored_run(str(remote), tmp_path / "elsewhere", "other", log=lambda _: None).name == "other"
    (remote / "checkpoints" / "step_00000004" / "model.pgtc").write_bytes(b"short")
    with pytest.raises(SyncError, match="damaged"):
        fetch_mirrored_run(str(remote), tmp_path / "third", log=lambda _: None)
    with pytest.raises(SyncError, match="not a pgolf run mirror"):
        fetch_mirrored_run(str(tmp_path / "nothing"), tmp_path / "fourth", log=lambda _: None)


class RepositoryNotFoundError(Exception):
    """Named as huggingface_hub's error, which HubStore treats as an empty mirror."""


class FakeHubApi:
    """The part of ``huggingface_hub.HfApi`` HubStore calls, over a dict of repository files."""

    def __init__(self):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.commits: list[list] = []

    def create_repo(self, repo_id, *, repo_type, private, exist_ok):
        assert private and exist_ok
        self.repos.setdefault((repo_id, repo_type), {})

    def create_commit(self, repo_id, *, operations, repo_type, commit_message):
        files = self.repos[(repo_id, repo_type)]
        self.commits.append(operations)
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            elif isinstance(op, CommitOperationDelete):
                folder = op.path_in_repo.rstrip("/") + "/"
                for name in [n for n in files if n == op.path_in_repo or n.startswith(folder)]:
                    del files[name]

    def list_repo_files(self, repo_id, *, repo_type):
        if (repo_id, repo_type) not in self.repos:
            raise RepositoryNotFoundError(repo_id)
        return sorted(self.repos[(repo_id, repo_type)])

    def hf_hub_download(self, repo_id, filename, *, repo_type, local_dir):
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.repos[(repo_id, repo_type)][filename])
        return str(target)


def test_hub_mirror_round_trip_through_the_hub_client_interface(tmp_path):
    api = FakeHubApi()
    url = "hf://datasets/me/golf/runs/a"
    run_dir = fake_run(tmp_path)
    assert remote_complete_checkpoints(HubStore(url, api)) == []  # no repository yet
    mirror, _ = quiet_mirror(url, keep=1, store=HubStore(url, api))
    for step in (2, 4):
        mirror(fake_checkpoint(run_dir, step))
        mirror.wait_idle()
    mirror.finish(None)
    files = api.repos[("me/golf", "dataset")]
    assert sorted(n for n in files if "/checkpoints/" in n) == [
        "runs/a/checkpoints/step_00000004/manifest.json", "runs/a/checkpoints/step_00000004/model.pgtc",
        "runs/a/checkpoints/step_00000004/rank_00000.pgtc"]
    data_commit, manifest_commit = [c for c in api.commits if any("step_00000004" in op.path_in_repo for op in c)][:2]
    assert all(not op.path_in_repo.endswith("manifest.json") for op in data_commit)  # the manifest comes last
    assert [op.path_in_repo for op in manifest_commit] == ["runs/a/checkpoints/step_00000004/manifest.json"]
    fetched = fetch_mirrored_run(url, tmp_path / "new_machine", store=HubStore(url, api), log=lambda _: None)
    assert (fetched / "checkpoints" / "step_00000004" / "model.pgtc").read_bytes() == b"x" * 1000 + bytes([4])


def test_hub_mirror_through_huggingface_hub_against_the_local_stand_in(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub = HubStandIn("me/golf", exists=False)
    run_dir = fake_run(tmp_path)
    with RunningHub(hub) as endpoint:
        url = "hf://datasets/me/golf/runs/a"
        store = HubStore(url, api=HfApi(endpoint=endpoint, token="hf_standin"))
        assert remote_complete_checkpoints(store) == []  # the repository does not exist yet
        mirror, lines = quiet_mirror(url, keep=1, store=store, attempts=1)
        for step in (2, 4):
            mirror(fake_checkpoint(run_dir, step))
            mirror.wait_idle()
        (run_dir / "report.json").write_text('{"val_loss": 1}')
        mirror.finish(run_dir)
        assert mirror.uploaded == ["step_00000002", "step_00000004"] and not mirror.failed, lines
        assert hub.exists and sorted(n for n in hub.files if "/checkpoints/" in n) == [
            "runs/a/checkpoints/step_00000004/manifest.json", "runs/a/checkpoints/step_00000004/model.pgtc",
            "runs/a/checkpoints/step_00000004/rank_00000.pgtc"]
        assert hub.files["runs/a/report.json"] == b'{"val_loss": 1}'
        step4 = [commit for commit in hub.commits if any("step_00000004" in path for _, path in commit)]
        assert [path.rsplit("/", 1)[1] for _, path in step4[1]] == ["manifest.json"]  # after the data files
        deleted = [op for commit in hub.commits for op in commit]
        assert ("deletedFile", "runs/a/checkpoints/step_00000002/manifest.json") in deleted
        fetched = fetch_mirrored_run(url, tmp_path / "new_machine", store=HubStore(url, api=HfApi(endpoint=endpoint)),
                                     log=lambda _: None)
    assert (fetched / "checkpoints" / "step_00000004" / "model.pgtc").read_bytes() == b"x" * 1000 + bytes([4])
    assert (fetched / "report.json").is_file() and (fetched / "train.log").read_text() == "line 1\n"
