"""Mirroring a run to a remote store, and fetching it back (tooling: never exported).

``CHECKPOINT_SYNC=URL`` mirrors the run directory to URL: ``hf://user/repo[/path]`` (a Hugging Face model
repository; ``hf://datasets/user/repo[/path]`` for a dataset repository), through huggingface_hub with
the token from ``HF_TOKEN`` or ``huggingface-cli login``; or a local folder (a mounted Google Drive, a
Kaggle dataset folder) or any fsspec URL (``s3://``, ``gs://`` ... when that filesystem is installed).

The remote copy has the run directory's layout: ``config.json``, ``train.log``, ``metrics.jsonl``,
``checkpoints/step_00001234/`` (its files, ``manifest.json`` uploaded last, so a checkpoint without a
manifest is incomplete and never resumed from), and at the end ``report.json``, ``artifact/``,
``final_weights.pgtc`` and ``training_done.json``. ``pgolf_mirror.json`` marks the folder as a mirror and
names the run: its directory name and the sha256 of its ``config.json`` (written once when the run starts,
kept by every resume and fetch, and naming the seed, data and RUN_ID), so a mirror holding another run
is refused before anything is uploaded (:func:`check_mirror_holds_this_run`). Only the newest ``CHECKPOINT_KEEP`` complete checkpoints are kept remotely (an older one
loses its manifest first).

:class:`CheckpointMirror` is handed to the training as its ``on_checkpoint_written`` hook: the hook
hard-links (or copies) the checkpoint's files into a staging folder at once, so pruning the local
checkpoint cannot race the upload, and a background thread uploads them. A failed upload is retried with
backoff, logged, and never stops the run. :func:`fetch_mirrored_run` downloads the newest complete
checkpoint and the run's files into a local run directory that ``pgolf train --resume`` continues.
"""

import hashlib
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from pgolf.data.tokenizer_match import file_sha256
from pgolf.errors import PgolfError
from pgolf.log import ProgressBar
from pgolf.train.checkpoint import (CHECKPOINT_MANIFEST_FILE, CHECKPOINTS_DIR_NAME, PARTIAL_CHECKPOINT_SUFFIX,
                                    read_checkpoint_manifest)
from pgolf.train.resume import TRAINING_DONE_FILE

MIRROR_MARKER_FILE = "pgolf_mirror.json"
HUB_SCHEME = "hf://"
# Files of the run directory mirrored with every checkpoint (so a resumed run appends to its own logs).
RUN_FILES = ("config.json", "train.log", "metrics.jsonl")
# Files mirrored at the end of a run, in this order (training_done.json after the weights it vouches for).
FINAL_FILES = ("final_weights.pgtc", TRAINING_DONE_FILE, "report.json")
STAGING_DIR_NAME = ".sync_staging"


class SyncError(PgolfError):
    """A remote store could not be read or written."""


def is_remote_url(text: str) -> bool:
    """True for ``hf://...`` and any ``scheme://`` URL; False for a plain path."""
    return "://" in str(text)


def is_mirror_folder(text: str) -> bool:
    """A local folder holding a run mirror (``pgolf_mirror.json``), as opposed to a run directory."""
    return not is_remote_url(text) and (Path(text) / MIRROR_MARKER_FILE).is_file()


class FsspecStore:
    """A mirror on a local folder or any fsspec filesystem. Files are written under a temporary name and
    moved into place, so a half-copied file never has its final name."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def put_files(self, pairs: list[tuple[Path, str]]) -> None:
        for local, rel in pairs:
            target = self._full(rel)
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local), target + ".part")
            self.fs.mv(target + ".part", target)

    def listdir(self, rel: str) -> list[str]:
        path = self._full(rel)
        if not self.fs.isdir(path):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._full(rel))

    def get_file(self, rel: str, local: Path) -> None:
        self.fs.get_file(self._full(rel), str(local))

    def remove(self, rels: list[str]) -> None:
        for rel in rels:
            if self.fs.exists(self._full(rel)):
                self.fs.rm(self._full(rel), recursive=True)


class HubStore:
    """A mirror in a Hugging Face hub repository (``api``: an ``HfApi``; tests hand a fake). Each
    ``put_files`` is one commit; the repository is created (private) on the first write."""

    def __init__(self, url: str, api=None):
        parts = [part for part in url[len(HUB_SCHEME):].split("/") if part]
        self.repo_type = "model"
        if parts and parts[0] in ("datasets", "models"):
            self.repo_type = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:]
        if len(parts) < 2:
            raise SyncError(f"CHECKPOINT_SYNC={url}: a hub URL is hf://user/repo[/path] "
                            "(hf://datasets/user/repo[/path] for a dataset repository).")
        self.url = url
        self.repo_id = "/".join(parts[:2])
        self.prefix = "/".join(parts[2:])
        self.api = api if api is not None else HfApi()
        self._created = False

    def _full(self, rel: str) -> str:
        return "/".join(part for part in (self.prefix, rel) if part)

    def put_files(self, pairs: list[tuple[Path, str]]) -> None:
        if not self._created:
            self.api.create_repo(self.repo_id, repo_type=self.repo_type, private=True, exist_ok=True)
            self._created = True
        operations = [CommitOperationAdd(path_in_repo=self._full(rel), path_or_fileobj=str(local))
                      for local, rel in pairs]
        self.api.create_commit(self.repo_id, operations=operations, repo_type=self.repo_type,
                               commit_message=f"pgolf mirror: {pairs[-1][1]}")

    def _all_files(self) -> list[str]:
        try:
            return list(self.api.list_repo_files(self.repo_id, repo_type=self.repo_type))
        except Exception as error:  # a missing repository is an empty mirror to the caller that asks
            if type(error).__name__ == "RepositoryNotFoundError":
                return []
            raise

    def listdir(self, rel: str) -> list[str]:
        base = self._full(rel)
        base = base + "/" if base else ""
        return sorted({name[len(base):].split("/", 1)[0] for name in self._all_files() if name.startswith(base)})

    def exists(self, rel: str) -> bool:
        full = self._full(rel)
        return any(name == full or name.startswith(full + "/") for name in self._all_files())

    def get_file(self, rel: str, local: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            downloaded = self.api.hf_hub_download(self.repo_id, self._full(rel), repo_type=self.repo_type,
                                                  local_dir=scratch)
            shutil.copyfile(downloaded, local)

    def remove(self, rels: list[str]) -> None:
        present = self._all_files()
        operations = []
        for rel in rels:
            full = self._full(rel)
            if full in present:
                operations.append(CommitOperationDelete(path_in_repo=full))
            elif any(name.startswith(full + "/") for name in present):
                operations.append(CommitOperationDelete(path_in_repo=full + "/", is_folder=True))
        if operations:
            self.api.create_commit(self.repo_id, operations=operations, repo_type=self.repo_type,
                                   commit_message=f"pgolf mirror: remove {', '.join(rels)}")


def open_store(url: str, hub_api=None):
    """The store behind a CHECKPOINT_SYNC / --resume URL."""
    if not url:
        raise SyncError("no mirror URL given.")
    if url.startswith(HUB_SCHEME):
        return HubStore(url, hub_api)
    try:
        return FsspecStore(url)
    except (ImportError, ValueError) as error:  # an fsspec protocol whose package is not installed, a bad URL
        raise SyncError(f"cannot open the mirror {url}: {error}. A folder, hf://user/repo[/path], or an fsspec URL "
                        "whose filesystem package is installed (s3fs for s3://, gcsfs for gs://).") from None


def remote_complete_checkpoints(store) -> list[str]:
    """Names of the mirror's complete checkpoints (``step_*`` with a manifest), oldest first."""
    names = [name for name in store.listdir(CHECKPOINTS_DIR_NAME)
             if name.startswith("step_") and name[5:].isdigit()]
    complete = [name for name in names if store.exists(f"{CHECKPOINTS_DIR_NAME}/{name}/{CHECKPOINT_MANIFEST_FILE}")]
    return sorted(complete, key=lambda name: int(name[5:]))


def with_retries(action: Callable[[], None], what: str, log: Callable[[str], None], attempts: int,
                 delay_seconds: float) -> bool:
    """Run ``action`` up to ``attempts`` times with doubling delays; False (logged) if it never succeeded."""
    for attempt in range(1, attempts + 1):
        try:
            action()
            return True
        except Exception as error:  # any failure of a remote store: retried, logged, never raised
            log(f"checkpoint_sync:failed {what} attempt:{attempt}/{attempts} error:{type(error).__name__}: {error}")
            if attempt < attempts:
                time.sleep(delay_seconds * 2 ** (attempt - 1))
    return False


def print_sync_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CheckpointMirror:
    """Uploads a run's checkpoints (as they are written) and final files to ``url`` in a background thread.

    Call the object with a checkpoint directory (the training's ``on_checkpoint_written`` hook); call
    :meth:`finish` with the run directory when the run ends (or fails) to mirror the final files and wait."""

    def __init__(self, url: str, keep: int, *, store=None, log: Callable[[str], None] = print_sync_line,
                 attempts: int = 5, retry_delay_seconds: float = 2.0, progress: bool = True):
        self.url = url
        self.store = store if store is not None else open_store(url)
        self.keep = max(int(keep), 1)
        self.log = log
        self.attempts = attempts
        self.retry_delay_seconds = retry_delay_seconds
        self.progress = progress
        self.run_dir: Path | None = None
        self.uploaded: list[str] = []
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._newest_staged = ""
        self._finishing = False
        self._thread = threading.Thread(target=self._work, name="pgolf-checkpoint-sync", daemon=True)
        self._thread.start()

    # ----- called from the training (main thread): fast -----

    def __call__(self, checkpoint_dir: Path) -> None:
        try:
            checkpoint_dir = Path(checkpoint_dir)
            if self.run_dir is None:
                self.run_dir = checkpoint_dir.parent.parent
                remove_stale_staging(self.run_dir)
            staged = self._stage(checkpoint_dir)
            self._newest_staged = staged.name
            self._queue.put(("checkpoint", staged))
        except Exception as error:  # the mirror never stops the run
            self.log(f"checkpoint_sync:failed staging {checkpoint_dir} error:{type(error).__name__}: {error}")

    def _stage(self, checkpoint_dir: Path) -> Path:
        """Hard links (copies where links fail) of the checkpoint and the run's log files, taken now."""
        staging = self.run_dir / STAGING_DIR_NAME / checkpoint_dir.name
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "run").mkdir(parents=True)
        (staging / "checkpoint").mkdir()
        for source in sorted(checkpoint_dir.iterdir()):
            link_or_copy(source, staging / "checkpoint" / source.name)
        for name in RUN_FILES:
            if (self.run_dir / name).is_file():
                shutil.copyfile(self.run_dir / name, staging / "run" / name)  # the logs grow: a copy
        return staging

    # ----- the background thread -----

    def _work(self) -> None:
        while True:
            kind, payload = self._queue.get()
            try:
                if kind == "stop":
                    return
                if kind == "checkpoint":
                    self._upload_checkpoint(payload)
                elif kind == "final":
                    self._upload_final(payload)
            except Exception as error:  # never let the thread die: later uploads may still succeed
                self.log(f"checkpoint_sync:failed {kind} error:{type(error).__name__}: {error}")
            finally:
                self._queue.task_done()

    def _upload_checkpoint(self, staging: Path) -> None:
        name = staging.name
        if name < self._newest_staged:  # uploads fell behind (a slow link): only the newest one matters
            shutil.rmtree(staging, ignore_errors=True)
            self.log(f"checkpoint_sync:skipped {name} (a newer checkpoint, {self._newest_staged}, is queued)")
            return
        started = time.perf_counter()
        files = sorted((staging / "checkpoint").iterdir())
        data = [path for path in files if path.name != CHECKPOINT_MANIFEST_FILE]
        manifest = [path for path in files if path.name == CHECKPOINT_MANIFEST_FILE]
        remote = f"{CHECKPOINTS_DIR_NAME}/{name}"
        run_files = [(staging / "run" / n, n) for n in RUN_FILES if (staging / "run" / n).is_file()]
        steps = [("run files", [(self._marker(staging), MIRROR_MARKER_FILE), *run_files])]
        steps += [(f"{name} data", [(path, f"{remote}/{path.name}") for path in data]),
                  (f"{name} manifest", [(path, f"{remote}/{path.name}") for path in manifest])]
        total = sum(path.stat().st_size for _, pairs in steps for path, _ in pairs)
        # A bar only once training is over (finish() waits on the uploads); during training it would fight
        # with the training bar on the same terminal line, so the log lines say what happened.
        bar = ProgressBar(f"upload {name}", total, enabled=self.progress and self._finishing)
        done = 0
        for what, pairs in steps:
            if not with_retries(lambda: self.store.put_files(pairs), what, self.log, self.attempts,
                                self.retry_delay_seconds):
                self.failed.append(name)
                bar.close()
                shutil.rmtree(staging, ignore_errors=True)
                self.log(f"checkpoint_sync:gave_up {name} (the local checkpoint is intact; the next one is tried)")
                return
            done += sum(path.stat().st_size for path, _ in pairs)
            bar.update(done, f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        self.uploaded.append(name)
        self.log(f"checkpoint_sync:uploaded {name} to:{self.url}/{remote} bytes:{total} "
                 f"time:{time.perf_counter() - started:.1f}s")
        with_retries(self._prune, "prune", self.log, self.attempts, self.retry_delay_seconds)

    def _marker(self, staging: Path) -> Path:
        marker = staging / MIRROR_MARKER_FILE
        marker.write_text(json.dumps(run_identity(self.run_dir)), encoding="utf-8")
        return marker

    def _prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; drop older ones (manifest first) and incomplete
        leftovers older than the newest complete one."""
        complete = remote_complete_checkpoints(self.store)
        if not complete:
            return
        newest = int(complete[-1][5:])
        for old in complete[:-self.keep]:
            self.store.remove([f"{CHECKPOINTS_DIR_NAME}/{old}/{CHECKPOINT_MANIFEST_FILE}"])
            self.store.remove([f"{CHECKPOINTS_DIR_NAME}/{old}"])
        for name in self.store.listdir(CHECKPOINTS_DIR_NAME):
            if name.startswith("step_") and name[5:].isdigit() and name not in complete and int(name[5:]) < newest:
                self.store.remove([f"{CHECKPOINTS_DIR_NAME}/{name}"])

    def _upload_final(self, run_dir: Path) -> None:
        pairs = [(run_dir / name, name) for name in RUN_FILES if (run_dir / name).is_file()]
        artifact = run_dir / "artifact"
        if artifact.is_dir():
            pairs += [(path, f"artifact/{path.relative_to(artifact).as_posix()}")
                      for path in sorted(artifact.rglob("*")) if path.is_file()]
        pairs += [(run_dir / name, name) for name in FINAL_FILES if (run_dir / name).is_file()]
        for index, pair in enumerate(pairs):  # one at a time, in order: training_done.json after the weights
            if not with_retries(lambda: self.store.put_files([pair]), f"final {pair[1]}", self.log, self.attempts,
                                self.retry_delay_seconds):
                self.failed.append(pair[1])
        self.log(f"checkpoint_sync:mirrored final files of {run_dir} to:{self.url} files:{len(pairs)}")

    def wait_idle(self) -> None:
        """Block until every queued upload is done (tests; a caller that must know the mirror is current)."""
        self._queue.join()

    # ----- the end of the run -----

    def finish(self, run_dir: Path | None, timeout_seconds: float = 3600.0) -> None:
        """Mirror the run's final files (report, artifact, logs), wait for every upload, stop the thread."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        self._finishing = True
        if run_dir is not None and run_dir.is_dir():
            self.run_dir = run_dir
            self._queue.put(("final", run_dir))
        self._queue.put(("stop", None))
        self._thread.join(timeout_seconds)
        if run_dir is not None:
            shutil.rmtree(run_dir / STAGING_DIR_NAME, ignore_errors=True)


def remove_stale_staging(run_dir: Path) -> None:
    """A ``.sync_staging`` folder left by a killed run (``kill -9``, a reclaimed machine). Safe to remove at
    the first checkpoint this process writes: only the process holding the run's lock writes checkpoints
    (and stages them), so whatever is staged there belongs to a process that is gone."""
    if (Path(run_dir) / STAGING_DIR_NAME).is_dir():
        shutil.rmtree(Path(run_dir) / STAGING_DIR_NAME, ignore_errors=True)


def remote_bytes(store, rel: str) -> bytes:
    """The content of one (small) remote file, fetched through a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / Path(rel).name
        store.get_file(rel, local)
        return local.read_bytes()


def run_identity(run_dir: Path) -> dict:
    """What ``pgolf_mirror.json`` records of the mirrored run. The run id alone may repeat (the same RUN_ID
    on two machines); its ``config.json`` also holds the seed and data and is never rewritten by a resume."""
    identity = {"format": 2, "run_id": Path(run_dir).name}
    if (Path(run_dir) / "config.json").is_file():
        identity["config_sha256"] = file_sha256(Path(run_dir) / "config.json")
    return identity


def read_mirror_marker(store) -> dict | None:
    """The mirror's ``pgolf_mirror.json`` (None for an empty folder or repository)."""
    if not store.exists(MIRROR_MARKER_FILE):
        return None
    return json.loads(remote_bytes(store, MIRROR_MARKER_FILE).decode("utf-8"))


def mirrored_config_sha256(store, marker: dict) -> str | None:
    """The sha256 of the mirrored run's config.json: recorded in the marker, or (a mirror written before
    format 2) of its mirrored ``config.json``."""
    if marker.get("config_sha256"):
        return str(marker["config_sha256"])
    if not store.exists("config.json"):
        return None
    return hashlib.sha256(remote_bytes(store, "config.json")).hexdigest()


def check_mirror_holds_this_run(url: str, run_dir: Path | None, continuing: bool, *, store=None) -> None:
    """Before anything is uploaded: SyncError unless the mirror at ``url`` is empty or holds this run.

    ``continuing``: ``run_dir`` is an existing run being resumed (locally, or fetched from this mirror);
    the mirror must hold the run with the same ``config.json``. A new run may only take a mirror that holds
    nothing resumable of a run with its own RUN_ID (an earlier start killed before its first complete
    checkpoint upload: the same launch command starting over); ``run_dir`` None is a new run whose RUN_ID
    is not chosen yet."""
    store = store if store is not None else open_store(url)
    finished = False
    try:
        marker = read_mirror_marker(store)
        if marker is None:
            return
        held_run = str(marker.get("run_id") or "?")
        if continuing:
            held_config = mirrored_config_sha256(store, marker)
            mine = file_sha256(Path(run_dir) / "config.json")
            if held_config in (None, mine):
                return
            why = f"its {MIRROR_MARKER_FILE} names run {held_run!r} with another config.json than {run_dir}'s"
        else:
            resumable = remote_complete_checkpoints(store) or store.exists(TRAINING_DONE_FILE)
            finished = store.exists("report.json")
            if run_dir is not None and held_run == Path(run_dir).name and not resumable:
                return
            why = (f"its {MIRROR_MARKER_FILE} names run {held_run!r}" + (" (with checkpoints or final weights)"
                                                                         if resumable else ""))
    except SyncError:
        raise
    except Exception as error:  # any failure of a remote store
        raise SyncError(f"cannot read the mirror {url}: {type(error).__name__}: {error}") from None
    continue_hint = ("" if continuing or finished else f" To continue run {held_run!r} instead, resume it: "
                     f"pgolf train --resume {url} (or PGOLF_AUTO_RESUME=1 with RUN_ID={held_run}).")
    raise SyncError(f"CHECKPOINT_SYNC={url} holds another run: {why}. Mirroring {run_dir or 'this run'} there would "
                    "mix the two runs, so nothing was uploaded. Give this run its own CHECKPOINT_SYNC URL (end it with "
                    "the RUN_ID), or remove that mirror if you no longer need it." + continue_hint)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def fetch_mirrored_run(url: str, runs_dir: Path, run_id: str | None = None, *, store=None,
                       log: Callable[[str], None] = print_sync_line) -> Path:
    """Download the run mirrored at ``url`` (its files and newest complete checkpoint) into
    ``runs_dir/<run id>`` and return that directory, ready for a local resume. The run id is ``run_id``,
    else the one the mirror names. An existing local directory is refused (resume it locally instead)."""
    store = store if store is not None else open_store(url)
    try:
        marker_names = store.exists(MIRROR_MARKER_FILE)
        checkpoints = remote_complete_checkpoints(store)
    except Exception as error:
        raise SyncError(f"cannot read the mirror {url}: {type(error).__name__}: {error}") from None
    if not marker_names or not store.exists("config.json"):
        raise SyncError(f"{url} is not a pgolf run mirror (no {MIRROR_MARKER_FILE} or config.json); give the "
                        "CHECKPOINT_SYNC URL of a run that wrote at least one checkpoint.")
    run_dir = Path(runs_dir) / (run_id or mirror_run_id(store))
    if run_dir.exists():
        raise SyncError(f"{run_dir} already exists; resume it with `pgolf train --resume {run_dir}`, or give "
                        "another RUNS_DIR/RUN_ID to fetch the mirror into.")
    partial = run_dir.with_name(run_dir.name + PARTIAL_CHECKPOINT_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = [name for name in (*RUN_FILES, *FINAL_FILES) if store.exists(name)]
    if TRAINING_DONE_FILE in names and "final_weights.pgtc" not in names:
        names.remove(TRAINING_DONE_FILE)
    for name in names:
        store.get_file(name, partial / name)
    if checkpoints:
        fetch_checkpoint(store, checkpoints[-1], partial / CHECKPOINTS_DIR_NAME)
    os.rename(partial, run_dir)
    log(f"checkpoint_sync:fetched {url} into:{run_dir} checkpoint:{checkpoints[-1] if checkpoints else 'none'}")
    return run_dir


def mirror_run_id(store) -> str:
    """The run name a mirror's ``pgolf_mirror.json`` records (the directory name of the mirrored run)."""
    return str((read_mirror_marker(store) or {}).get("run_id") or "resumed")


def fetch_checkpoint(store, name: str, local_root: Path) -> Path:
    """One remote checkpoint into ``local_root/name`` (manifest last); its sizes checked against the manifest."""
    local_root.mkdir(parents=True, exist_ok=True)
    target = local_root / (name + PARTIAL_CHECKPOINT_SUFFIX)
    target.mkdir()
    remote = f"{CHECKPOINTS_DIR_NAME}/{name}"
    store.get_file(f"{remote}/{CHECKPOINT_MANIFEST_FILE}", target / (CHECKPOINT_MANIFEST_FILE + ".fetched"))
    manifest_path = target / (CHECKPOINT_MANIFEST_FILE + ".fetched")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    files = manifest.get("files", {})
    bar = ProgressBar(f"download {name}", sum(files.values()))
    done = 0
    for file_name, size in sorted(files.items()):
        store.get_file(f"{remote}/{file_name}", target / file_name)
        if (target / file_name).stat().st_size != size:
            raise SyncError(f"mirrored checkpoint file {remote}/{file_name} has {(target / file_name).stat().st_size} "
                            f"bytes, its manifest says {size}; the mirror is damaged.")
        done += size
        bar.update(done, f"{done / 1e6:.1f} MB")
    bar.close()
    os.rename(manifest_path, target / CHECKPOINT_MANIFEST_FILE)
    final = local_root / name
    os.rename(target, final)
    read_checkpoint_manifest(final)
    return final
