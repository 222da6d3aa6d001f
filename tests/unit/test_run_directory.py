"""One writer per run directory: the lock names a live holder, and a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from pgolf.config import Config, RunConfig
from pgolf.dist import DistContext
from pgolf.errors import ConfigError, PgolfError
from pgolf.train.run_directory import (RUN_LOCK_NAME, RUN_LOCK_STALE_SECONDS, RunLock, create_run_directory,
                                      lock_run_directory)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)


@pytest.fixture
def live_process():
    """Another process on this host that is alive for the duration of the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def write_lock(run_dir, pid: int, host: str | None = None) -> None:
    (run_dir / RUN_LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                     "started": "2026-12-06 12:00:00"}))


def test_the_lock_is_taken_and_released(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    holder = json.loads((tmp_path / RUN_LOCK_NAME).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] > 0
    lock.release()
    assert not (tmp_path / RUN_LOCK_NAME).exists()


def test_a_second_writer_gets_an_error_naming_the_live_holder(tmp_path, live_process):
    write_lock(tmp_path, live_process.pid)
    with pytest.raises(PgolfError) as error:
        lock_run_directory(tmp_path, CPU)
    message = str(error.value)
    assert str(live_process.pid) in message and socket.gethostname() in message and RUN_LOCK_NAME in message
    assert json.loads((tmp_path / RUN_LOCK_NAME).read_text())["pid"] == live_process.pid  # untouched


def test_a_lock_held_on_another_host_is_respected(tmp_path):
    write_lock(tmp_path, 1, host="some-other-machine")
    with pytest.raises(PgolfError, match=r"some-other-machine.*last heartbeat was \d+s ago"):
        RunLock(tmp_path).acquire()


def test_a_lock_of_another_host_without_a_heartbeat_is_taken_over(tmp_path):
    """A preempted machine's lock on a RUNS_DIR that outlived it (the restarted pod has another host name):
    once its heartbeat is older than RUN_LOCK_STALE_SECONDS, the same command resumes without help."""
    write_lock(tmp_path, 1, host="old-spot-machine")
    old = time.time() - RUN_LOCK_STALE_SECONDS - 5
    os.utime(tmp_path / RUN_LOCK_NAME, (old, old))
    lock = lock_run_directory(tmp_path, CPU)
    assert json.loads((tmp_path / RUN_LOCK_NAME).read_text())["host"] == socket.gethostname()
    lock.release()


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr("pgolf.train.run_directory.RUN_LOCK_HEARTBEAT_SECONDS", 0.05)
    lock = RunLock(tmp_path)
    lock.acquire()
    old = time.time() - 3600
    os.utime(tmp_path / RUN_LOCK_NAME, (old, old))
    deadline = time.time() + 5
    while time.time() - (tmp_path / RUN_LOCK_NAME).stat().st_mtime > 60 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - (tmp_path / RUN_LOCK_NAME).stat().st_mtime < 60  # touched again by the heartbeat
    lock.release()
    assert not (tmp_path / RUN_LOCK_NAME).exists()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, int(finished.stdout))
    lock = lock_run_directory(tmp_path, CPU)
    assert json.loads((tmp_path / RUN_LOCK_NAME).read_text())["pid"] != int(finished.stdout)
    lock.release()


def test_a_half_written_lock_is_stale(tmp_path):
    (tmp_path / RUN_LOCK_NAME).write_text("")  # a writer killed between create and write
    RunLock(tmp_path).acquire()


def test_an_existing_run_directory_is_never_reused(tmp_path):
    cfg = Config(run=RunConfig(runs_dir=str(tmp_path), run_id="taken"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="never overwrites"):
        create_run_directory(cfg, CPU)
