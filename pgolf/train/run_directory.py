"""The run's directory: a fresh ``RUNS_DIR/<RUN_ID>`` agreed across ranks, never an existing one reused
(except the run being resumed), and locked by the one process that writes into it.

The lock is a file ``run.lock`` created with O_EXCL (atomic on every local filesystem) holding the
writer's pid and host. A second writer (two launches with the same RUN_ID and auto-resume, say) gets
an error naming the holder; a lock whose process is gone on this host (a killed run, a worker group
restarted by ``torchrun --max-restarts``) is stale and taken over. The holder touches the file every
RUN_LOCK_HEARTBEAT_SECONDS, so a lock of another host (a preempted machine whose RUNS_DIR outlived it,
the restarted pod having a new host name) is stale once its heartbeat is RUN_LOCK_STALE_SECONDS old:
the documented restart, the same command again, then resumes without anyone deleting the lock.
"""

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from pgolf.config import Config
from pgolf.dist import DistContext, barrier, broadcast_object_from_main
from pgolf.errors import ConfigError, PgolfError
from pgolf.fsutil import require_writable_directory
from pgolf.train.resume import RunStart, resume_decision, resume_mode


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"


def open_run_directory(cfg: Config, ctx: DistContext, resume: bool = False) -> RunStart:
    """The run's directory, agreed across ranks: a fresh one, or the existing run being resumed."""
    mode = resume_mode(resume, cfg.run.pgolf_auto_resume)
    if mode == "never":
        return RunStart(create_run_directory(cfg, ctx))
    start, problem = broadcast_object_from_main(resume_decision(cfg, mode) if ctx.is_main else None)
    if problem:
        raise ConfigError(problem)
    return start if start is not None else RunStart(create_run_directory(cfg, ctx))


def check_runs_dir_writable(cfg: Config, ctx: DistContext) -> None:
    """Before the data checks (which may take a while): a new run's directory could be created in RUNS_DIR.
    Rank 0 checks, leaving nothing behind; every rank raises the same ConfigError when it could not."""
    target = Path(cfg.run.runs_dir) / (cfg.run.run_id or "<RUN_ID>")
    problem = None
    if ctx.is_main:
        try:
            require_writable_directory(cfg.run.runs_dir, "the run directory")
        except PgolfError as error:
            problem = (f"cannot create the run directory {target}: {error} Set RUNS_DIR to a writable place.")
    problem = broadcast_object_from_main(problem)
    if problem:
        raise ConfigError(problem)


def create_run_directory(cfg: Config, ctx: DistContext) -> Path:
    """A fresh directory for this run, agreed across ranks. An existing one is never reused."""
    run_id = broadcast_object_from_main(cfg.run.run_id or new_run_id())
    run_dir = Path(cfg.run.runs_dir) / run_id
    if ctx.is_main:
        if run_dir.exists():
            raise ConfigError(f"run directory {run_dir} already exists; pgolf never overwrites a run. "
                              "Choose another RUN_ID (or leave it empty for a fresh one, or resume it: "
                              "pgolf train --resume).")
        try:
            run_dir.mkdir(parents=True)
        except OSError as error:
            raise ConfigError(f"cannot create the run directory {run_dir}: {error.strerror}. Set RUNS_DIR to a "
                              "writable place.") from None
    barrier()
    return run_dir


RUN_LOCK_NAME = "run.lock"
RUN_LOCK_HEARTBEAT_SECONDS = 60.0
# Long beside the heartbeat: a busy filesystem or clocks a few minutes apart must not free a live lock.
RUN_LOCK_STALE_SECONDS = 900.0


def process_is_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host (signal 0 checks without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


class RunLock:
    """``RUN_DIR/run.lock`` held by this process while it writes the run; released on exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RUN_LOCK_NAME
        self.held = False
        self._stop_heartbeat = threading.Event()

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; PgolfError naming the holder if it is alive."""
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._remove_if_stale()
                continue
            except OSError as error:
                raise PgolfError(f"cannot write the lock {self.path}: {error.strerror}. The run directory must be "
                                 "writable (move it to a writable place and resume it there).") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(mine, handle)
            self.held = True
            threading.Thread(target=self._beat, name="pgolf-run-lock", daemon=True).start()
            return
        raise PgolfError(f"could not take the lock {self.path}; another process keeps creating it.")

    def _beat(self) -> None:
        """Touch the lock while it is held: its age tells other hosts whether the holder still lives."""
        while not self._stop_heartbeat.wait(RUN_LOCK_HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return  # removed or unreachable: nothing to keep fresh

    def _heartbeat_age(self) -> float | None:
        try:
            return max(time.time() - self.path.stat().st_mtime, 0.0)
        except OSError:
            return None

    def _remove_if_stale(self) -> None:
        holder = self._read_holder()
        if not holder:  # being written this instant, or left half-written by a killed process
            time.sleep(1.0)
            holder = self._read_holder()
        age = self._heartbeat_age()
        here = holder.get("host") == socket.gethostname()
        gone = not process_is_alive(int(holder.get("pid", -1))) if here else (age or 0.0) > RUN_LOCK_STALE_SECONDS
        if not holder or gone:
            self.path.unlink(missing_ok=True)  # stale: nobody holds it any more
            return
        beat = "" if here or age is None else (f"; its last heartbeat was {age:.0f}s ago, and it is taken over "
                                               f"once that is over {RUN_LOCK_STALE_SECONDS:.0f}s")
        raise PgolfError(
            f"run directory {self.path.parent} is in use by process {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {holder.get('started', '?')}; lock file {self.path}{beat}). Two "
            "runs must not write one directory: wait for it to finish, pick another RUN_ID, or, if that process "
            f"is gone (a machine that no longer exists), delete {self.path} and resume.")

    def _read_holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        self._stop_heartbeat.set()
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def lock_run_directory(run_dir: Path, ctx: DistContext) -> RunLock | None:
    """Rank 0 locks the run directory; every rank raises the same error when it cannot."""
    lock = RunLock(run_dir) if ctx.is_main else None
    problem = None
    if lock is not None:
        try:
            lock.acquire()
        except PgolfError as error:
            problem = str(error)
    problem = broadcast_object_from_main(problem)
    if problem:
        raise PgolfError(problem)
    return lock
