"""Safe file writing: nothing a user made is half-written or silently replaced."""

import os
import tempfile
from pathlib import Path

from pgolf.errors import PgolfError


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` so that readers see either nothing or the complete file.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
    the destination (rename is atomic within one filesystem). With ``overwrite=False`` an existing file
    is an error, so a user's artifact or shard is never replaced by accident.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise PgolfError(f"{path} already exists; refusing to overwrite it. Move it away or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no partial file behind, whatever went wrong (disk full, Ctrl-C, ...).
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
