"""The download behind ``pgolf data fineweb``: the challenge's tokenized FineWeb from the Hugging Face hub.

The hub repository holds a ``manifest.json`` (SPEC 1.1, 1.3) naming every dataset variant with its
shard counts and tokenizer files. This module reads it, plans the files a variant needs (ALL
validation shards with their byte sidecars when the variant has them (CaseOps), the FIRST N training
shards, the tokenizer files), and fetches only what is not already present and sound locally. Every fetched file is checked before it is accepted:

* shards: header magic and version, and file size == 1024 + 2 x declared tokens;
* tokenizer models: SentencePiece loads them and their vocabulary equals the manifest's;
* every file: its content hash equals the hub's (the cache blob is named by it: sha256 for large,
  LFS-stored files, the git blob sha1 for small ones) when the hub cache exposes it.

A tokenizer file already present must be the hub's, byte for byte (it is small: compared with the hub's
checked copy, or offline with the sha256 recorded when it was fetched): another tokenizer of the same
vocabulary at that path (one a user trained) would otherwise be paired with the official shards. Such a
file is refused, never overwritten. The arguments are checked before the first request.

A damaged file is fetched again once, bypassing the cache; still damaged is an error naming it. Files
are placed with a hard link (or a copy) from the hub cache, through a temporary name and an atomic
rename, so an interrupted run leaves only complete files and the next run resumes where it stopped.

Tooling, never exported: this is why it lives beside the commands and not in ``pgolf/data/`` (whose
modules may only use what a training run may use). The handler that prints is in pgolf/commands/data.py.
"""

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.data.caseops import CASEOPS_BYTE_CONVENTION_KEY, CASEOPS_BYTES_DECODED
from pgolf.data.dataset import dataset_split_stats
from pgolf.data.shards import read_shard_header
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.data.tokenizer_match import file_sha256
from pgolf.data.val_bytes import VAL_SIDECAR_PREFIX
from pgolf.errors import DataError, PgolfError
from pgolf.fsutil import write_text_atomic
from pgolf.log import ProgressBar

try:  # a dependency of pgolf; guarded so that only `pgolf data fineweb` fails (clearly) without it
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
except ImportError:
    hf_hub_download = None

FINEWEB_DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REPO_ENV = "MATCHED_FINEWEB_REPO_ID"
FINEWEB_PREFIX_ENV = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
FINEWEB_DEFAULT_PREFIX = "datasets"
FINEWEB_DEFAULT_TRAIN_SHARDS = 80
FINEWEB_MANIFEST_NAME = "manifest.json"
# Marks the dataset-folder manifest this module writes, so it is never confused with a user's file.
FINEWEB_MANIFEST_MARK = "pgolf_fineweb"
FINEWEB_CASEOPS_REPO_ID = "romeerp/parameter-golf-caseops-v1"
FINEWEB_CASEOPS_VARIANT = "sp8192_lossless_caps_caseops_v1_reserved"
# Short names for variants whose hub name is long.
FINEWEB_VARIANT_ALIASES = {"sp8192_caseops": FINEWEB_CASEOPS_VARIANT}
# Repositories known to hold variants other than the default's sp1024 (SPEC 1.1): the default
# repository of a variant when neither --repo-id nor $MATCHED_FINEWEB_REPO_ID names one.
FINEWEB_KNOWN_REPOS = {"sp1024": "willdepueoai/parameter-golf", "sp4096": "kevclark/parameter-golf",
                       "sp8192": "kevclark/parameter-golf", FINEWEB_CASEOPS_VARIANT: FINEWEB_CASEOPS_REPO_ID}


def fineweb_variant_name(variant: str) -> str:
    """The hub's name of ``variant`` (``sp8192_caseops`` -> ``sp8192_lossless_caps_caseops_v1_reserved``)."""
    return FINEWEB_VARIANT_ALIASES.get(variant, variant)


def fineweb_default_repo(variant: str) -> str:
    """The repository that holds ``variant`` (the challenge's for unknown ones)."""
    return FINEWEB_KNOWN_REPOS.get(fineweb_variant_name(variant), FINEWEB_DEFAULT_REPO_ID)


def fineweb_dataset_dir(variant: str) -> str:
    """``byte260`` -> ``fineweb10B_byte260``; ``sp<vocab>[_<suffix>]`` -> ``fineweb10B_sp<vocab>[_<suffix>]``
    (aliases resolved)."""
    variant = fineweb_variant_name(variant)
    if variant == "byte260" or re.fullmatch(r"sp[0-9]+(_[A-Za-z0-9_]+)?", variant):
        return f"fineweb10B_{variant}"
    digits = re.fullmatch(r"(?i:sp)?_?([0-9]+)", variant)
    hint = f" (did you mean sp{digits.group(1)}?)" if digits else ""
    raise DataError(f"unknown FineWeb variant {variant!r}{hint}; use byte260 or sp<vocab>, e.g. sp1024, sp4096, "
                    "sp8192, sp8192_caseops.")


def check_fineweb_arguments(variant: str, train_shards: int) -> None:
    """What can be checked without the hub, checked before its first request (a typo should not wait for
    a hub round trip, or for huggingface_hub's retries when the hub cannot be reached). That there are
    ``train_shards`` training shards needs the manifest: :func:`plan_fineweb_download` checks it."""
    fineweb_dataset_dir(variant)
    if train_shards < 0:
        raise DataError(f"--train-shards {train_shards} is negative; give how many training shards to fetch: 0 for "
                        f"the validation split only, up to the number the variant has (the hub's manifest lists "
                        f"it; sp1024 has {FINEWEB_DEFAULT_TRAIN_SHARDS}).")


@dataclass(frozen=True)
class RemoteFile:
    """One file of the plan: ``path`` is relative to the remote prefix and to the local output folder."""

    path: str
    kind: str  # "shard" (token shards and byte sidecars), "tokenizer" (a SentencePiece model) or "other"


@dataclass
class FinewebPlan:
    """What a variant needs, read from the hub manifest."""

    dataset_dir: str
    dataset_entry: dict
    tokenizer_entry: dict
    num_val_docs: int | None
    files: list[RemoteFile] = field(default_factory=list)


def _manifest_tokenizer_entry(manifest: dict, name: str | None) -> dict:
    for entry in manifest.get("tokenizers") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return {}


def plan_fineweb_download(manifest: dict, variant: str, train_shards: int) -> FinewebPlan:
    """The files for ``variant``: all validation shards (each followed by its byte sidecar when the
    dataset has them: the manifest entry names ``val_bytes_glob``, or the variant is a CaseOps one), the
    first ``train_shards`` training shards (a prefix of the same frozen shuffled export), then the
    tokenizer files."""
    check_fineweb_arguments(variant, train_shards)
    dataset_dir = fineweb_dataset_dir(variant)
    entries = [d for d in manifest.get("datasets") or [] if isinstance(d, dict) and d.get("name") == dataset_dir]
    if not entries:
        names = sorted(str(d.get("name")) for d in manifest.get("datasets") or [] if isinstance(d, dict))
        known = FINEWEB_KNOWN_REPOS.get(fineweb_variant_name(variant))
        hint = f" The {variant} export lives in --repo-id {known}." if known else ""
        raise DataError(f"the hub manifest has no dataset {dataset_dir!r} (it has: {', '.join(names) or 'none'}).{hint}")
    entry = entries[0]
    stats = entry.get("stats") or {}
    files_val, files_train = int(stats.get("files_val", 0)), int(stats.get("files_train", 0))
    if files_val <= 0:
        raise DataError(f"the hub manifest lists no validation shards for {dataset_dir}; the repository is incomplete.")
    if train_shards > files_train:
        raise DataError(f"--train-shards {train_shards} is more than the {files_train} training shards of {dataset_dir}; "
                        f"use a number from 0 to {files_train}.")
    folder = f"datasets/{dataset_dir}"
    sidecars = bool(entry.get("val_bytes_glob")) or "caseops" in dataset_dir
    files = [RemoteFile(f"{folder}/{prefix}{i:06d}.bin", "shard") for i in range(files_val)
             for prefix in (("fineweb_val_", VAL_SIDECAR_PREFIX) if sidecars else ("fineweb_val_",))]
    files += [RemoteFile(f"{folder}/fineweb_train_{i:06d}.bin", "shard") for i in range(train_shards)]
    tokenizer = _manifest_tokenizer_entry(manifest, entry.get("tokenizer_name"))
    for key in ("model_path", "vocab_path", "path"):
        if tokenizer.get(key):
            kind = "tokenizer" if str(tokenizer[key]).endswith(".model") else "other"
            files.append(RemoteFile(str(tokenizer[key]), kind))
    docs_val = manifest.get("num_val_docs", stats.get("docs_val"))
    return FinewebPlan(dataset_dir, entry, tokenizer, int(docs_val) if docs_val is not None else None, files)


# --------------------------------------------------------------------------- the hub


class HubClient:
    """``hf_hub_download`` for one dataset repository, with hub errors turned into ``DataError``."""

    def __init__(self, repo_id: str, *, prefix: str = FINEWEB_DEFAULT_PREFIX, endpoint: str | None = None,
                 cache_dir: str | os.PathLike | None = None, revision: str | None = None):
        if hf_hub_download is None:
            raise DataError("downloading FineWeb needs huggingface_hub: pip install huggingface_hub")
        self.repo_id, self.prefix, self.endpoint = repo_id, prefix.strip("/"), endpoint
        self.cache_dir, self.revision = cache_dir, revision
        self.requests = 0

    def remote_name(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def fetch(self, path: str, *, force: bool = False) -> Path:
        """The hub cache's copy of ``prefix/path`` (downloaded, or resumed, when missing or stale)."""
        name = self.remote_name(path)
        self.requests += 1
        try:
            return Path(hf_hub_download(self.repo_id, name, repo_type="dataset", revision=self.revision,
                                        endpoint=self.endpoint, cache_dir=self.cache_dir, force_download=force))
        except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
            where = self.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0") else ""
            raise DataError(f"the hub at {where} cannot be reached{offline}, so {name} from {self.repo_id} could not "
                            "be fetched and is not in the local cache. Check the network connection (or HF_ENDPOINT / "
                            "HF_HUB_OFFLINE, --endpoint); files already fetched are kept, so running the command "
                            "again resumes. --skip-manifest re-checks a finished download offline.") from exc
        except EntryNotFoundError as exc:
            raise DataError(f"{name} is missing from the hub dataset {self.repo_id}: the manifest lists it but the "
                            "repository does not hold it. Check --repo-id/--variant, or report it to the "
                            "repository's owner.") from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise DataError(f"hub dataset {self.repo_id} (revision {self.revision or 'main'}) was not found; "
                            f"check --repo-id (default {FINEWEB_DEFAULT_REPO_ID}) and --revision.") from exc
        except (HfHubHTTPError, OSError, ValueError) as exc:
            where = self.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
            raise DataError(f"could not fetch {name} from {self.repo_id} at {where} ({type(exc).__name__}: {exc}). "
                            "Check the network (and HF_ENDPOINT / HF_HUB_OFFLINE); files already fetched are kept, "
                            "so running the command again resumes.") from exc


# --------------------------------------------------------------------------- checks


def _hash_file(path: Path, digest) -> str:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_content_digest_problem(cached: Path) -> str | None:
    """Compare the file with the hash the hub cache names its blob after, when it does.

    The hub's etag of an LFS file (shards, tokenizer models) is the sha256 of its content; of a small
    git file it is the git blob sha1. The cache stores each file as ``blobs/<etag>``.
    """
    blob = Path(os.path.realpath(cached))
    name = blob.name
    if blob.parent.name != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name):
        return None  # no symlinked cache (e.g. Windows): nothing to compare with
    if len(name) == 64:
        actual = _hash_file(blob, hashlib.sha256())
        return None if actual == name else f"sha256 {actual} differs from the hub's {name}"
    git_sha1 = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
    actual = _hash_file(blob, git_sha1)
    return None if actual == name else f"git sha1 {actual} differs from the hub's {name}"


def local_file_problem(path: Path, kind: str, vocab_size: int | None) -> str | None:
    """Why ``path`` is not a sound copy of a file of this ``kind`` (None when it is)."""
    if not path.is_file():
        return "missing"
    if kind == "shard":
        try:
            read_shard_header(path)
        except DataError as error:
            return str(error)
    elif kind == "tokenizer":
        try:
            sp = load_sentencepiece(path)
        except PgolfError as error:
            return str(error)
        if vocab_size is not None and sp.vocab_size() != vocab_size:
            return f"has {sp.vocab_size()} pieces but the manifest says {vocab_size}"
    elif path.stat().st_size == 0:
        return "is empty"
    return None


def place_file(source: Path, destination: Path) -> None:
    """Hard-link (or copy) ``source`` to ``destination`` through a temporary name and an atomic rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    temporary.unlink(missing_ok=True)
    try:
        os.link(os.path.realpath(source), temporary)
    except OSError:  # another filesystem, or links not allowed: copy instead
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


# --------------------------------------------------------------------------- the download


@dataclass
class FinewebResult:
    dataset_path: Path
    tokenizer_path: Path | None
    fetched: list[str]
    already_present: list[str]
    fetched_bytes: int
    seconds: float
    val_summary: dict
    vocab_size: int | None


def _checked_hub_copy(client: HubClient, remote: RemoteFile, local: Path, vocab_size: int | None) -> Path:
    """The hub cache's copy of one file, checked; fetched once more bypassing the cache if damaged."""
    for force in (False, True):
        cached = client.fetch(remote.path, force=force)
        problem = hub_content_digest_problem(cached) or local_file_problem(cached, remote.kind, vocab_size)
        if problem is None:
            return cached
    raise DataError(f"{client.remote_name(remote.path)} from {client.repo_id} is damaged even after a fresh download: "
                    f"{problem}. Nothing was written to {local}; try again later or report it to the repository's owner.")


def _fetch_checked(client: HubClient, remote: RemoteFile, local: Path, vocab_size: int | None) -> int:
    """Fetch one file, check it (see :func:`_checked_hub_copy`), then place it."""
    place_file(_checked_hub_copy(client, remote, local, vocab_size), local)
    return local.stat().st_size


def _tokenizer_files(plan: FinewebPlan) -> list[RemoteFile]:
    """The files of the manifest's tokenizer entry: every file of the plan that is not a shard."""
    return [remote for remote in plan.files if remote.kind != "shard"]


def _recorded_tokenizer_sha256(folder: Path) -> dict:
    """``{path: sha256}`` of the tokenizer files an earlier run fetched (and checked against the hub), from
    the dataset folder's manifest it wrote; empty when there is none."""
    try:
        recorded = json.loads((folder / FINEWEB_MANIFEST_NAME).read_text(encoding="utf-8"))[FINEWEB_MANIFEST_MARK]
        return dict(recorded.get("tokenizer_sha256") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _not_the_hubs_tokenizer(foreign: list[tuple[Path, str]]) -> DataError:
    """One error for every foreign tokenizer file (a .model usually has its .vocab twin beside it)."""
    if len(foreign) == 1:
        (local, difference), = foreign
        what = f"{local} is not the hub's tokenizer ({difference})"
    else:
        named = "; ".join(f"{local}: {difference}" for local, difference in foreign)
        what = f"{' and '.join(str(local) for local, _ in foreign)} are not the hub's tokenizer files ({named})"
    moves = " && ".join(f"mv {local} {local}.mine" for local, _ in foreign)
    return DataError(f"{what}. It may be a tokenizer you trained (pgolf data build names its tokenizers after the "
                     "dataset, but older versions used this name) or one from elsewhere; paired with the hub's "
                     "shards it would tokenize and score them wrongly, so it is neither used nor overwritten. Move "
                     f"it away (e.g. {moves}) and run the command again to fetch the hub's.")


def require_hub_tokenizer_files(client: HubClient, plan: FinewebPlan, out: Path, vocab_size: int | None,
                                recorded: dict) -> None:
    """Every tokenizer file already in ``out`` must be the hub's, byte for byte, else a DataError naming it.

    Compared with the hub's copy (fetched into the hub cache and checked against the hub's hash, as every
    fetched file is), or, for a path in ``recorded`` (``--skip-manifest``: offline), with the sha256
    recorded when an earlier run fetched it. Checked before any shard is fetched; nothing is overwritten.
    """
    foreign = []
    for remote in _tokenizer_files(plan):
        local = out / remote.path
        if not local.exists():
            continue
        if not local.is_file():
            foreign.append((local, "it is not a file"))
            continue
        expected = recorded.get(remote.path)
        if expected is not None:
            hub_side = f"the hub's copy had sha256 {expected} when it was fetched here"
        else:
            expected = file_sha256(_checked_hub_copy(client, remote, local, vocab_size))
            hub_side = f"{client.remote_name(remote.path)} of {client.repo_id} has sha256 {expected}"
        actual = file_sha256(local)
        if actual != expected:
            foreign.append((local, f"its sha256 is {actual}, {hub_side}"))
    if foreign:
        raise _not_the_hubs_tokenizer(foreign)


def _load_manifest(client: HubClient, out: Path, dataset_dir: str, skip_manifest: bool) -> dict:
    """The hub manifest, fetched fresh (it is tiny) unless ``skip_manifest`` reuses the last one saved."""
    if skip_manifest:
        saved = out / "datasets" / dataset_dir / FINEWEB_MANIFEST_NAME
        try:
            return json.loads(saved.read_text(encoding="utf-8"))["hub_manifest"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"--skip-manifest needs {saved} from an earlier `pgolf data fineweb` run; "
                            "run once without --skip-manifest.") from exc
    path = client.fetch(FINEWEB_MANIFEST_NAME)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{client.remote_name(FINEWEB_MANIFEST_NAME)} from {client.repo_id} is not valid JSON "
                        f"({exc}); check --repo-id and --prefix.") from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{client.remote_name(FINEWEB_MANIFEST_NAME)} from {client.repo_id} is not a JSON object.")
    return manifest


def _write_dataset_manifest(folder: Path, plan: FinewebPlan, manifest: dict, client: HubClient,
                            train_shards: int, tokenizer: Path | None, tokenizer_sha256: dict) -> None:
    """The dataset folder's manifest for ``pgolf data stats|verify`` and for runs: the hub's entries with
    paths made relative to the folder, the training counts only when every training shard is present,
    the fetched tokenizer's sha256 (runs refuse another tokenizer), and ``val_bytes_glob`` when the
    validation shards have byte sidecars. ``tokenizer_sha256`` (``{path: sha256}`` of the tokenizer files,
    each checked to be the hub's) is kept for ``--skip-manifest``'s offline re-check."""
    path = folder / FINEWEB_MANIFEST_NAME
    if path.exists():
        try:
            ours = FINEWEB_MANIFEST_MARK in json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise DataError(f"{path} exists and was not written by `pgolf data fineweb`; move it away to download here.")
    entry = dict(plan.dataset_entry)
    stats = dict(entry.get("stats") or {})
    if train_shards < int(stats.get("files_train", 0)):
        for key in ("docs_train", "tokens_train", "docs_total", "tokens_total", "files_total"):
            stats.pop(key, None)
        stats["files_train"] = train_shards
    entry["stats"] = stats
    if any(VAL_SIDECAR_PREFIX in f.path for f in plan.files):
        entry["val_bytes_glob"] = f"{VAL_SIDECAR_PREFIX}*.bin"
        # the published CaseOps export counts the decoded text's bytes (the challenge's convention)
        entry.setdefault(CASEOPS_BYTE_CONVENTION_KEY, CASEOPS_BYTES_DECODED)
    relative = ("model_path", "vocab_path", "path")
    tokenizer_entry = {key: (os.path.join("..", "..", value) if key in relative and value else value)
                       for key, value in plan.tokenizer_entry.items()}
    if tokenizer is not None and tokenizer.is_file():
        tokenizer_entry["sha256"] = file_sha256(tokenizer)
    local = {FINEWEB_MANIFEST_MARK: {"repo_id": client.repo_id, "prefix": client.prefix,
                                     "revision": client.revision, "train_shards": train_shards,
                                     "tokenizer_sha256": tokenizer_sha256},
             "num_val_docs": plan.num_val_docs, "datasets": [entry],
             "tokenizers": [tokenizer_entry] if tokenizer_entry else [],
             "hub_manifest": manifest}
    write_text_atomic(path, json.dumps(local, indent=2) + "\n", overwrite=True)


def _validation_summary(folder: Path, tokenizer: Path | None, expected_docs: int | None) -> dict:
    """Validation tokens, documents (BOS count) and bytes; documents must match the manifest."""
    summary = dataset_split_stats(folder, "val", tokenizer)
    if expected_docs is not None and summary["documents"] != expected_docs:
        raise DataError(f"{folder}: the validation shards hold {summary['documents']} documents but the manifest says "
                        f"{expected_docs}; the download is inconsistent. Delete the fineweb_val_*.bin files and run again.")
    return summary


def download_fineweb(variant: str, train_shards: int, out: str | os.PathLike, client: HubClient, *,
                     skip_manifest: bool = False, log: Callable[[str], None] = print) -> FinewebResult:
    """Fetch what ``variant`` needs into ``out`` (the challenge's ``data/`` layout); see the module doc."""
    out, started = Path(out), time.perf_counter()
    check_fineweb_arguments(variant, train_shards)
    dataset_dir = fineweb_dataset_dir(variant)
    manifest = _load_manifest(client, out, dataset_dir, skip_manifest)
    plan = plan_fineweb_download(manifest, variant, train_shards)
    vocab_size = plan.tokenizer_entry.get("vocab_size") or plan.dataset_entry.get("vocab_size")
    recorded = _recorded_tokenizer_sha256(out / "datasets" / dataset_dir) if skip_manifest else {}
    require_hub_tokenizer_files(client, plan, out, vocab_size, recorded)
    fetched, present, fetched_bytes = [], [], 0
    bar = ProgressBar(f"fineweb {variant}", len(plan.files))
    for done, remote in enumerate(plan.files):
        local = out / remote.path
        problem = local_file_problem(local, remote.kind, vocab_size)
        if problem is None:
            present.append(remote.path)
        else:
            if problem != "missing":
                log(f"{local}: {problem}; fetching it again")
            fetched_bytes += _fetch_checked(client, remote, local, vocab_size)
            fetched.append(remote.path)
        bar.update(done + 1, f"{done + 1}/{len(plan.files)} files, {fetched_bytes / 1e6:,.0f} MB fetched")
    bar.close()
    folder = out / "datasets" / dataset_dir
    tokenizer = next((out / f.path for f in plan.files if f.kind == "tokenizer"), None)
    checked = {remote.path: file_sha256(out / remote.path) for remote in _tokenizer_files(plan)}  # the hub's, each
    _write_dataset_manifest(folder, plan, manifest, client, train_shards, tokenizer, checked)
    summary = _validation_summary(folder, tokenizer, plan.num_val_docs)
    return FinewebResult(folder, tokenizer, fetched, present, fetched_bytes, time.perf_counter() - started, summary,
                         int(vocab_size) if vocab_size else None)
