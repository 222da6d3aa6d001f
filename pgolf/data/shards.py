"""The challenge's token shard format: write, read, validate and find shard files.

A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count, the
rest zero) followed by that many little-endian uint16 token ids. The file size must be exactly
``1024 + 2 * num_tokens``. Every way a shard can be broken gets its own message, because a silently
truncated or mislabelled shard would quietly change what a model trains or is scored on.
"""

import os
from pathlib import Path

import numpy as np

from pgolf.errors import DataError
from pgolf.fsutil import write_bytes_atomic

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
SHARD_MAX_TOKEN_ID = 65535
# The count lives in an int32 header slot, so a shard holds fewer than 2**31 tokens.
SHARD_MAX_TOKENS = 2**31 - 1

SHARD_GLOBS = {"train": "fineweb_train_*.bin", "val": "fineweb_val_*.bin"}
# Byte sidecars (``fineweb_val_bytes_*.bin``, CaseOps) share the format but are not token shards.
SHARD_SIDECAR_MARKER = "_bytes_"

_GET_DATA_HINT = (
    "Download shards with `pgolf data fineweb --variant sp1024`, "
    "or leave DATA_PATH empty to use the small embedded default corpus."
)


def write_shard(path: str | os.PathLike, tokens) -> Path:
    """Write ``tokens`` (1-D ints in [0, 65535]) as a challenge shard at ``path``, atomically.

    Refuses to overwrite an existing file and refuses an empty token list (readers reject it).
    """
    path = Path(path)
    if path.exists():
        raise DataError(f"shard {path} already exists; refusing to overwrite it. Delete it or write elsewhere.")
    values = _as_int_array(tokens)
    if values.ndim != 1:
        raise DataError(f"shard {path}: tokens must be 1-D, got shape {tuple(values.shape)}.")
    if values.size == 0:
        raise DataError(f"shard {path}: refusing to write a shard with zero tokens (readers reject it).")
    if values.size > SHARD_MAX_TOKENS:
        raise DataError(f"shard {path}: {values.size} tokens exceed the format's limit of {SHARD_MAX_TOKENS}; split it.")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > SHARD_MAX_TOKEN_ID:
        raise DataError(
            f"shard {path}: token ids must lie in [0, {SHARD_MAX_TOKEN_ID}] (uint16), got min {low} max {high}. "
            "A vocabulary larger than 65536 cannot be stored in this format."
        )
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, values.size
    return write_bytes_atomic(path, header.tobytes() + values.astype("<u2").tobytes())


def _as_int_array(tokens) -> np.ndarray:
    """Turn a list, numpy array or torch tensor of token ids into an integer numpy array."""
    if hasattr(tokens, "detach"):  # torch tensor, without importing torch here
        tokens = tokens.detach().cpu().numpy()
    values = np.asarray(tokens)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"token ids must be integers, got dtype {values.dtype}.")
    return values


def read_shard_header(path: str | os.PathLike) -> int:
    """Validate the shard at ``path`` (header and file size) and return its number of tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path} does not exist (or is not a file). Check DATA_PATH. {_GET_DATA_HINT}")
    actual_size = path.stat().st_size
    if actual_size == 0:
        raise DataError(f"shard {path} is empty (0 bytes); the download or export was interrupted. Delete it and fetch it again.")
    if actual_size < SHARD_HEADER_BYTES:
        raise DataError(
            f"shard {path} is {actual_size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header; "
            "it is truncated. Delete it and fetch it again."
        )
    with open(path, "rb") as handle:
        header = np.frombuffer(handle.read(SHARD_HEADER_BYTES), dtype="<i4")
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic != SHARD_MAGIC:
        raise DataError(
            f"shard {path} has magic {magic}, expected {SHARD_MAGIC}: it is not a challenge token shard "
            "(or it is corrupt). Remove it from the data directory."
        )
    if version != SHARD_VERSION:
        raise DataError(f"shard {path} has format version {version}; pgolf reads version {SHARD_VERSION} only. Re-export it.")
    _check_declared_size(path, num_tokens, actual_size)
    return num_tokens


def _check_declared_size(path: Path, num_tokens: int, actual_size: int) -> None:
    """The header's token count must match the bytes on disk exactly."""
    if num_tokens == 0:
        raise DataError(f"shard {path} declares zero tokens; an empty shard is useless and usually a failed export. Delete it.")
    if num_tokens < 0:
        raise DataError(f"shard {path} declares a negative token count ({num_tokens}); the header is corrupt. Fetch it again.")
    expected_size = SHARD_HEADER_BYTES + 2 * num_tokens
    if actual_size < expected_size:
        raise DataError(
            f"shard {path} is truncated: its header declares {num_tokens} tokens ({expected_size} bytes) but the "
            f"file has {actual_size} bytes. Delete it and fetch it again."
        )
    if actual_size > expected_size:
        raise DataError(
            f"shard {path} has {actual_size - expected_size} trailing bytes beyond the {num_tokens} tokens its header "
            f"declares ({expected_size} bytes expected, {actual_size} found). The file is corrupt; fetch it again."
        )


def read_shard(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Return the tokens of the shard at ``path`` as a 1-D uint16 array, after every header check.

    With ``mmap=True`` (default) the array is a read-only memory map, so opening a 200 MB shard costs
    nothing until tokens are touched; copy slices before handing them to torch.
    """
    num_tokens = read_shard_header(path)
    if mmap:
        return np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES, shape=(num_tokens,))
    with open(path, "rb") as handle:
        handle.seek(SHARD_HEADER_BYTES)
        tokens = np.fromfile(handle, dtype="<u2", count=num_tokens)
    if tokens.size != num_tokens:  # the file shrank between the size check and the read
        raise DataError(f"shard {path}: short read ({tokens.size} of {num_tokens} tokens). Fetch it again.")
    return tokens


def check_token_ids(tokens, vocab_size: int, path: str | os.PathLike) -> None:
    """Raise DataError if any token id in ``tokens`` (from the file ``path``) is >= ``vocab_size``."""
    values = _as_int_array(tokens)
    if values.size == 0:
        return
    too_large = values >= vocab_size
    if not too_large.any():
        return
    raise DataError(token_id_out_of_range_message(values, too_large, vocab_size, path))


def token_id_out_of_range_message(values: np.ndarray, too_large: np.ndarray, vocab_size: int,
                                  path: str | os.PathLike) -> str:
    """Worded apart from the check, so that `pgolf export` can move the words out of the counted script."""
    position = int(np.argmax(too_large))
    bad_id = int(values.reshape(-1)[position])
    return (f"{path}: token id {bad_id} at position {position} is out of range for vocab size {vocab_size}. "
            "The shards were made with a bigger tokenizer than the model expects: set VOCAB_SIZE to the "
            "tokenizer's vocabulary size and TOKENIZER_PATH to the tokenizer the shards were exported with "
            "(or use the shards that match your tokenizer).")


def list_split_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """Sorted shard files of ``split`` in ``directory``, byte sidecars excluded; empty when none."""
    files = sorted(Path(directory).glob(SHARD_GLOBS[split]))
    return [f for f in files if SHARD_SIDECAR_MARKER not in f.name]


def find_shards(data_path: str | os.PathLike, split: str) -> list[Path]:
    """Sorted shard files of ``split`` ("train" or "val") in the directory ``data_path``."""
    if split not in SHARD_GLOBS:
        raise ValueError(f"split must be one of {sorted(SHARD_GLOBS)}, got {split!r}")
    directory = Path(data_path)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist (looking for {SHARD_GLOBS[split]}). Check DATA_PATH. "
                        f"{_GET_DATA_HINT}")
    files = list_split_shards(directory, split)
    if not files:
        raise DataError(f"no {split} shards matching {SHARD_GLOBS[split]} in {directory}. Check DATA_PATH. "
                        f"{_GET_DATA_HINT}")
    return files
