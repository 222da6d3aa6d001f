"""Safe file writing: nothing a user made is half-written or silently replaced.

Every write goes to a temporary file in the destination's directory, is fsynced, then renamed into
place; a failure at any point (disk full, Ctrl-C, a killed process between two calls) leaves either
the old state or the complete new file, never a partial one under the real name.
"""

import errno
import os
import shutil
import tempfile
from pathlib import Path

from pgolf.errors import PgolfError

# os.write may write fewer bytes than asked; large buffers go out in slices of at most this size.
WRITE_SLICE_BYTES = 64 * 1024 * 1024


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (looping over short writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:WRITE_SLICE_BYTES])
        view = view[written:]


def _current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask both sets and
    returns it, which would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _plain_open_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: an existing file keeps its mode, a new one gets
    0o666 less the umask. (mkstemp creates 0o600, which hid every report, artifact and script from the
    user's group and others.)"""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename or unlink inside ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` so that readers see either nothing or the complete file.

    The bytes go to a temporary file in the same directory, are fsynced, then renamed over the
    destination (rename is atomic within one filesystem). With ``overwrite=False`` an existing file
    is an error, so a user's artifact or shard is never replaced by accident. A failed write raises
    ``PgolfError`` naming the file (and, for a full disk, saying so) and leaves no temporary file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise PgolfError(f"{path} already exists; refusing to overwrite it. Move it away or choose another path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _plain_open_mode(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # a read-only or missing place: nothing was written
        raise PgolfError(describe_write_failure(path, error, len(data))) from error
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException as error:
        # Leave no partial file behind, whatever went wrong (disk full, Ctrl-C, ...).
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise PgolfError(describe_write_failure(path, error, len(data))) from error
        raise
    fsync_directory(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)


def describe_write_failure(path: Path, error: OSError, size: int) -> str:
    """One message for a failed write: which file, why, and what to do about it."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"could not write {path} ({size:,} bytes): no space left on the device. Nothing partial was "
                "left behind; free some space (or point RUNS_DIR at a larger volume) and try again.")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"could not write {path}: {error.strerror}. Make the directory writable or choose another one."
    return f"could not write {path}: {error}. Nothing partial was left behind."


def free_disk_bytes(directory: str | os.PathLike) -> int:
    """Bytes available to this user on the filesystem that holds ``directory``."""
    return shutil.disk_usage(directory).free


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory tree if it exists (missing is fine)."""
    if Path(path).exists():
        shutil.rmtree(path)


def require_writable_directory(directory: str | os.PathLike, what: str, *, may_create: bool = True) -> Path:
    """Check, before any work, that ``what`` (for example "the receipt") can be written into ``directory``:
    it is a directory this process can create files in, or (``may_create``) it does not exist yet and its
    nearest existing parent is one. Nothing is left behind. PgolfError naming the place and the fix if not."""
    directory = Path(directory)
    existing = directory
    while not existing.exists():
        if not may_create:
            raise PgolfError(f"cannot write {what}: the directory {directory} does not exist. Create it first, or "
                             "choose another place.")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PgolfError(f"cannot write {what} into {directory}: {existing} is not a directory. Choose another place.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise PgolfError(f"cannot write {what} into {directory}: {existing} is not writable ({error.strerror}). "
                         "Make it writable or choose another place; nothing was done.") from None
    return directory
