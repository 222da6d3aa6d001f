"""`pgolf data fineweb` (pgolf/commands/data_fineweb.py): the real huggingface_hub download code against a
local stand-in of the hub (tests/unit/hub_standin.py), never the real hub."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from testkit import word_documents

pytest.importorskip("huggingface_hub")

from hub_standin import HubStandIn, RunningHub  # noqa: E402

from pgolf.cli import main as cli_main  # noqa: E402
from pgolf.data.build import train_sentencepiece_tokenizer  # noqa: E402
from pgolf.commands.data_fineweb import HubClient, download_fineweb, fineweb_dataset_dir, plan_fineweb_download  # noqa: E402
from pgolf.data.shards import SHARD_HEADER_BYTES, read_shard, write_shard  # noqa: E402
from pgolf.data.dataset import verify_dataset  # noqa: E402
from pgolf.errors import DataError  # noqa: E402

REPO = "someone/parameter-golf"
VOCAB = 300
NUM_VAL_SHARDS, NUM_TRAIN_SHARDS, DOCS_PER_SHARD = 2, 4, 6


def _docs(count: int, seed: int) -> list[str]:
    return word_documents("the river stone quick brown fox jumps over lazy dog golf model token data byte 42 7", count, seed)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """The files of a small hub repository laid out like the challenge's (SPEC 1.1)."""
    work = tmp_path_factory.mktemp("repo")
    model = train_sentencepiece_tokenizer(_docs(300, 0), VOCAB, work / "fineweb_300_bpe")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    files, folder = {}, f"datasets/datasets/{fineweb_dataset_dir('sp300')}"
    val_docs = tokens_val = 0
    for split, count in (("val", NUM_VAL_SHARDS), ("train", NUM_TRAIN_SHARDS)):
        for index in range(count):
            docs = _docs(DOCS_PER_SHARD, seed=100 * (split == "train") + index)
            tokens = [t for ids in sp.encode(docs) for t in [1, *ids]]
            path = work / f"{split}{index}.bin"
            write_shard(path, tokens)
            files[f"{folder}/fineweb_{split}_{index:06d}.bin"] = path.read_bytes()
            if split == "val":
                val_docs, tokens_val = val_docs + DOCS_PER_SHARD, tokens_val + len(tokens)
    files["datasets/tokenizers/fineweb_300_bpe.model"] = model.read_bytes()
    files["datasets/tokenizers/fineweb_300_bpe.vocab"] = model.with_suffix(".vocab").read_bytes()
    manifest = {
        "version": "10B", "num_val_docs": val_docs,
        "tokenizers": [{"name": "sp_bpe_300", "kind": "sentencepiece_bpe", "vocab_size": VOCAB, "bos_id": 1,
                        "model_path": "tokenizers/fineweb_300_bpe.model", "vocab_path": "tokenizers/fineweb_300_bpe.vocab"}],
        "datasets": [{"name": "fineweb10B_sp300", "tokenizer_name": "sp_bpe_300", "vocab_size": VOCAB, "bos_id": 1,
                      "stats": {"docs_val": val_docs, "files_val": NUM_VAL_SHARDS, "files_train": NUM_TRAIN_SHARDS,
                                "tokens_val": tokens_val}}],
    }
    files["datasets/manifest.json"] = json.dumps(manifest).encode()
    return files


@pytest.fixture
def hub(repository, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub read the variable when pgolf imported it, before this fixture ran: reset its copy too.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return HubStandIn(REPO, files=dict(repository))


def _download(url, tmp_path, train_shards=2, **kwargs):
    client = HubClient(REPO, endpoint=url, cache_dir=tmp_path / "cache")
    return download_fineweb("sp300", train_shards, tmp_path / "data", client, log=lambda line: None, **kwargs)


def _shard_names(hub):
    return sorted(path for path in hub.gets if path.endswith(".bin"))


def test_fresh_download_places_checked_files_and_counts_validation(hub, tmp_path):
    with RunningHub(hub) as url:
        result = _download(url, tmp_path)
    folder = tmp_path / "data" / "datasets" / "fineweb10B_sp300"
    assert sorted(p.name for p in folder.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert (tmp_path / "data" / "tokenizers" / "fineweb_300_bpe.model").is_file()
    assert result.val_summary["documents"] == NUM_VAL_SHARDS * DOCS_PER_SHARD
    val_tokens = sum(len(read_shard(p)) for p in folder.glob("fineweb_val_*.bin"))
    assert result.val_summary["tokens"] == val_tokens and result.val_summary["bytes"] > val_tokens
    assert len(result.fetched) == 6 and not result.already_present
    assert verify_dataset(folder).ok  # the written manifest and tokenizer path are usable by `data verify`


def test_second_run_fetches_nothing_and_more_shards_fetches_only_the_new_ones(hub, tmp_path):
    with RunningHub(hub) as url:
        _download(url, tmp_path, train_shards=1)
        hub.gets.clear()
        again = _download(url, tmp_path, train_shards=1)
        assert not again.fetched and _shard_names(hub) == []
        more = _download(url, tmp_path, train_shards=3)
    assert sorted(more.fetched) == [f"datasets/fineweb10B_sp300/fineweb_train_00000{i}.bin" for i in (1, 2)]


def test_killed_download_resumes_where_it_stopped(hub, tmp_path):
    """SIGKILL in the middle of a transfer: finished files are kept, nothing half-written is visible,
    and the next run fetches only what is missing."""
    stalled = "datasets/datasets/fineweb10B_sp300/fineweb_train_000001.bin"
    hub.stall.add(stalled)
    with RunningHub(hub) as url:
        command = [sys.executable, "-m", "pgolf", "data", "fineweb", "--variant", "sp300", "--train-shards", "2",
                   "--repo-id", REPO, "--endpoint", url, "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(tmp_path / "data")]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        deadline = time.monotonic() + 60
        while stalled not in hub.gets and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert stalled in hub.gets, "the download never reached the stalled file"
        time.sleep(0.3)  # let the first half land in the cache's .incomplete file
        process.kill()
        process.wait()
        hub.release.set()
        folder = tmp_path / "data" / "datasets" / "fineweb10B_sp300"
        assert (folder / "fineweb_train_000000.bin").is_file()  # completed files kept
        assert not (folder / "fineweb_train_000001.bin").exists()  # nothing half-written
        assert not list(folder.glob(".*partial"))
        hub.stall.clear()
        hub.gets.clear()
        result = _download(url, tmp_path)
    assert _shard_names(hub) == [stalled]
    assert result.fetched == ["datasets/fineweb10B_sp300/fineweb_train_000001.bin", "tokenizers/fineweb_300_bpe.model",
                              "tokenizers/fineweb_300_bpe.vocab"]
    assert (folder / "fineweb_train_000001.bin").read_bytes() == hub.files[stalled]


def test_truncated_local_file_is_rejected_and_fetched_again(hub, tmp_path):
    with RunningHub(hub) as url:
        _download(url, tmp_path)
        shard = tmp_path / "data" / "datasets" / "fineweb10B_sp300" / "fineweb_val_000001.bin"
        good = shard.read_bytes()
        shard.unlink()  # the placed file is a hard link to the cache blob: replace it, do not edit the blob
        shard.write_bytes(good[: SHARD_HEADER_BYTES + 10])
        logged = []
        client = HubClient(REPO, endpoint=url, cache_dir=tmp_path / "cache")
        result = download_fineweb("sp300", 2, tmp_path / "data", client, log=logged.append)
    assert result.fetched == ["datasets/fineweb10B_sp300/fineweb_val_000001.bin"]
    assert shard.read_bytes() == good
    assert "fineweb_val_000001.bin" in logged[0] and "fetching it again" in logged[0]


def test_damaged_transfer_is_caught_by_the_hash_and_fetched_again(hub, tmp_path):
    path = "datasets/datasets/fineweb10B_sp300/fineweb_val_000000.bin"
    hub.damaged_gets[path] = 1  # the first transfer is corrupt, the retry is good
    with RunningHub(hub) as url:
        result = _download(url, tmp_path)
    placed = tmp_path / "data" / "datasets" / "fineweb10B_sp300" / "fineweb_val_000000.bin"
    assert placed.read_bytes() == hub.files[path]
    assert hub.gets.count(path) == 2 and result.val_summary["documents"] == 12


def test_a_truncated_file_on_the_hub_is_refused_and_nothing_is_placed(hub, tmp_path):
    path = "datasets/datasets/fineweb10B_sp300/fineweb_train_000000.bin"
    hub.broken[path] = hub.files[path][:-6]  # the hub's own copy is short: its header promises more tokens
    with RunningHub(hub) as url:
        with pytest.raises(DataError, match=r"fineweb_train_000000.bin.*damaged even after a fresh download"):
            _download(url, tmp_path)
    assert not (tmp_path / "data" / "datasets" / "fineweb10B_sp300" / "fineweb_train_000000.bin").exists()


def test_a_file_missing_from_the_hub_is_reported_by_name(hub, tmp_path):
    del hub.files["datasets/datasets/fineweb10B_sp300/fineweb_val_000001.bin"]
    with RunningHub(hub) as url:
        with pytest.raises(DataError, match=r"fineweb_val_000001.bin is missing from the hub dataset someone/parameter-golf"):
            _download(url, tmp_path)


def test_plan_errors_name_the_fix(repository):
    manifest = json.loads(repository["datasets/manifest.json"])
    with pytest.raises(DataError, match="no dataset 'fineweb10B_sp8192'.*kevclark/parameter-golf"):
        plan_fineweb_download(manifest, "sp8192", 1)
    with pytest.raises(DataError, match="more than the 4 training shards"):
        plan_fineweb_download(manifest, "sp300", 5)
    with pytest.raises(DataError, match=r"--train-shards -1 is negative") as negative:
        plan_fineweb_download(manifest, "sp300", -1)
    assert "more than" not in str(negative.value)
    with pytest.raises(DataError, match="unknown FineWeb variant"):
        fineweb_dataset_dir("gpt2")
    plan = plan_fineweb_download(manifest, "sp300", 0)
    assert [f.kind for f in plan.files] == ["shard", "shard", "tokenizer", "other"]


def test_cli_prints_counts_and_the_next_command(hub, tmp_path, capsys):
    with RunningHub(hub) as url:
        status = cli_main(["data", "fineweb", "--variant", "sp300", "--train-shards", "1", "--repo-id", REPO,
                           "--endpoint", url, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert status == 0
    assert "validation: " in out and "12 documents" in out and "VOCAB_SIZE=300" in out
    skip = cli_main(["data", "fineweb", "--variant", "sp300", "--train-shards", "1", "--repo-id", REPO,
                     "--skip-manifest", "--endpoint", "http://127.0.0.1:9", "--out", str(tmp_path / "data")])
    assert skip == 0 and "fetched 0 files" in capsys.readouterr().out  # offline: nothing needed the hub


def test_a_users_manifest_in_the_dataset_folder_is_not_overwritten(hub, tmp_path):
    folder = tmp_path / "data" / "datasets" / "fineweb10B_sp300"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"mine": true}')
    with RunningHub(hub) as url:
        with pytest.raises(DataError, match="not written by `pgolf data fineweb`"):
            _download(url, tmp_path)
    assert json.loads((folder / "manifest.json").read_text()) == {"mine": True}
    np.testing.assert_equal(len(list(folder.glob("*.bin"))), 4)  # the shards themselves were fine to fetch


@pytest.mark.parametrize("variant,shards,words", [
    ("sp300", "-1", "--train-shards -1 is negative"),
    ("1024", "1", "unknown FineWeb variant '1024' (did you mean sp1024?)"),
    ("spam", "1", "unknown FineWeb variant 'spam'"),
    ("sp1024-", "1", "unknown FineWeb variant 'sp1024-'")])
def test_arguments_are_checked_before_the_hub_is_contacted(variant, shards, words, monkeypatch, tmp_path, capsys):
    """A typo is reported at once: no request reaches the hub (a closed port stands for it, and a client that
    fetched anything would fail the test)."""
    monkeypatch.setattr(HubClient, "fetch", lambda *args, **kwargs: pytest.fail("the hub was contacted"))
    status = cli_main(["data", "fineweb", "--variant", variant, "--train-shards", shards, "--repo-id", REPO,
                       "--endpoint", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"),
                       "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert status == 2 and words in err and "more than" not in err
    assert not (tmp_path / "data").exists()


def test_a_known_variant_with_a_suffix_is_accepted():
    assert fineweb_dataset_dir("sp8192_lossless_caps_caseops_v1_reserved").endswith("_caseops_v1_reserved")
    assert fineweb_dataset_dir("byte260") == "fineweb10B_byte260"


# --------------------------------------------------------------------------- a tokenizer that is not the hub's


@pytest.fixture(scope="module")
def own_tokenizer(tmp_path_factory):
    """A tokenizer of the hub's vocabulary trained on other text: what `pgolf data build` used to write
    at the official path."""
    docs = [doc.upper() for doc in _docs(300, 9)]
    return train_sentencepiece_tokenizer(docs, VOCAB, tmp_path_factory.mktemp("own") / "own_300_bpe")


def _place_own_tokenizer(own_tokenizer, tmp_path) -> Path:
    """The .model and its .vocab twin at the hub tokenizer's paths; returns the .model's path."""
    official = tmp_path / "data" / "tokenizers" / "fineweb_300_bpe.model"
    official.parent.mkdir(parents=True, exist_ok=True)
    official.write_bytes(own_tokenizer.read_bytes())
    official.with_suffix(".vocab").write_bytes(own_tokenizer.with_suffix(".vocab").read_bytes())
    return official


def test_a_present_tokenizer_that_is_not_the_hubs_is_refused_and_kept(hub, own_tokenizer, tmp_path):
    official = _place_own_tokenizer(own_tokenizer, tmp_path)
    mine = official.read_bytes()
    assert mine != hub.files["datasets/tokenizers/fineweb_300_bpe.model"]  # same vocabulary, other pieces
    with RunningHub(hub) as url:
        with pytest.raises(DataError) as error:
            _download(url, tmp_path)
        assert _shard_names(hub) == []  # refused before any shard was fetched
        message = str(error.value)
        twin = official.with_suffix(".vocab")
        assert message.startswith(f"{official} and {twin} are not the hub's tokenizer files")
        assert f"{official}: its sha256 is" in message
        assert f"mv {official} {official}.mine && mv {twin} {twin}.mine" in message  # both files, one error
        assert official.read_bytes() == mine  # never overwritten
        for path in (official, twin):  # the fix the error names
            path.rename(f"{path}.mine")
        result = _download(url, tmp_path)
    assert official.read_bytes() == hub.files["datasets/tokenizers/fineweb_300_bpe.model"]
    assert {"tokenizers/fineweb_300_bpe.model", "tokenizers/fineweb_300_bpe.vocab"} <= set(result.fetched)
    assert Path(f"{official}.mine").read_bytes() == mine


def test_the_hubs_own_tokenizer_already_present_is_kept(hub, tmp_path):
    official = tmp_path / "data" / "tokenizers" / "fineweb_300_bpe.model"
    official.parent.mkdir(parents=True)
    official.write_bytes(hub.files["datasets/tokenizers/fineweb_300_bpe.model"])  # a copy, not a cache link
    with RunningHub(hub) as url:
        result = _download(url, tmp_path)
    assert "tokenizers/fineweb_300_bpe.model" in result.already_present


def test_skip_manifest_checks_a_present_tokenizer_offline_against_the_recorded_hash(hub, own_tokenizer, tmp_path,
                                                                                   capsys):
    with RunningHub(hub) as url:
        _download(url, tmp_path, train_shards=1)
    official = tmp_path / "data" / "tokenizers" / "fineweb_300_bpe.model"
    official.unlink()  # a hard link to the cache's blob: replace it, never edit it
    official.write_bytes(own_tokenizer.read_bytes())  # its .vocab twin stays the hub's
    offline = ["data", "fineweb", "--variant", "sp300", "--train-shards", "1", "--repo-id", REPO, "--skip-manifest",
               "--endpoint", "http://127.0.0.1:9", "--out", str(tmp_path / "data")]
    assert cli_main(offline) == 2
    err = capsys.readouterr().err
    assert f"{official} is not the hub's tokenizer (its sha256 is" in err and "when it was fetched here" in err
    assert official.read_bytes() == own_tokenizer.read_bytes()


# --------------------------------------------------------------------------- CaseOps (issue 16)

CASEOPS_REPO = "romeerp/parameter-golf-caseops-v1"
CASEOPS_DIR = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_MODEL = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved"


@pytest.fixture(scope="module")
def caseops_repository(tmp_path_factory):
    """The CaseOps repository's layout (romeerp/parameter-golf-caseops-v1): token shards, validation byte
    sidecars and the CaseOps tokenizer, made here by `pgolf data build --caseops` on synthetic text."""
    from pgolf.data.dataset import build_dataset

    work = tmp_path_factory.mktemp("caseops_repo")
    docs = [d.title() if i % 3 == 0 else d.upper() if i % 7 == 0 else d for i, d in enumerate(_docs(120, 5))]
    built = build_dataset(lambda: iter(docs), VOCAB, work, name="hub", num_val_docs=20, caseops=True)
    data_dir, model = Path(built["data_dir"]), Path(built["tokenizer_path"])
    folder = f"datasets/datasets/{CASEOPS_DIR}"
    files = {f"{folder}/{path.name}": path.read_bytes() for path in data_dir.glob("*.bin")}
    files[f"datasets/tokenizers/{CASEOPS_MODEL}.model"] = model.read_bytes()
    files[f"datasets/tokenizers/{CASEOPS_MODEL}.vocab"] = model.with_suffix(".vocab").read_bytes()
    stats = json.loads((data_dir / "manifest.json").read_text())["datasets"][0]["stats"]
    manifest = {
        "version": "10B", "num_val_docs": 20,
        "tokenizers": [{"name": "sp_caseops", "kind": "sentencepiece_bpe", "vocab_size": VOCAB, "bos_id": 1,
                        "model_path": f"tokenizers/{CASEOPS_MODEL}.model",
                        "vocab_path": f"tokenizers/{CASEOPS_MODEL}.vocab"}],
        "datasets": [{"name": CASEOPS_DIR, "tokenizer_name": "sp_caseops", "vocab_size": VOCAB, "bos_id": 1,
                      "val_bytes_glob": f"{CASEOPS_DIR}/fineweb_val_bytes_*.bin",
                      "stats": {"docs_val": 20, "files_val": stats["files_val"], "files_train": stats["files_train"],
                                "tokens_val": stats["tokens_val"]}}],
    }
    files["datasets/manifest.json"] = json.dumps(manifest).encode()
    return files, stats


def test_caseops_variant_downloads_its_sidecars_from_its_own_repository(caseops_repository, monkeypatch, tmp_path,
                                                                         capsys):
    from pgolf.config import Config, apply_config_overrides
    from pgolf.data.run_data import prepare_validation_data
    from pgolf.data.val_bytes import TARGET_BYTES_FROM_SIDECARS

    files, stats = caseops_repository
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub = HubStandIn(CASEOPS_REPO, files=dict(files))
    with RunningHub(hub) as url:  # no --repo-id: the variant names its repository
        status = cli_main(["data", "fineweb", "--variant", "sp8192_caseops", "--train-shards", "1", "--endpoint", url,
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert status == 0 and CASEOPS_REPO in out and "from the byte sidecars" in out
    folder = tmp_path / "data" / "datasets" / CASEOPS_DIR
    assert sorted(p.name for p in folder.glob("*.bin")) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin",
                                                           "fineweb_val_bytes_000000.bin"]
    assert (folder / "fineweb_val_bytes_000000.bin").read_bytes() == files[
        f"datasets/datasets/{CASEOPS_DIR}/fineweb_val_bytes_000000.bin"]
    local = json.loads((folder / "manifest.json").read_text())
    assert local["datasets"][0]["val_bytes_glob"] == "fineweb_val_bytes_*.bin" and len(local["tokenizers"][0]["sha256"]) == 64
    assert f"{stats['val_original_bytes']:,} bytes from the byte sidecars" in out
    assert verify_dataset(folder).ok
    tokenizer = tmp_path / "data" / "tokenizers" / f"{CASEOPS_MODEL}.model"
    cfg = apply_config_overrides(Config(), {"DATA_PATH": str(folder), "TOKENIZER_PATH": str(tokenizer),
                                            "VOCAB_SIZE": str(VOCAB), "TRAIN_SEQ_LEN": "32",
                                            "TRAIN_BATCH_TOKENS": "256"}, source="test")
    data = prepare_validation_data(cfg)
    assert data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS
    sidecar = read_shard(folder / "fineweb_val_bytes_000000.bin")
    assert data.target_bytes.total() == int(np.sum(sidecar[1: data.tokens.numel()], dtype=np.int64))


def test_caseops_plan_fetches_sidecars_even_without_val_bytes_glob(caseops_repository):
    files, _ = caseops_repository
    manifest = json.loads(files["datasets/manifest.json"])
    del manifest["datasets"][0]["val_bytes_glob"]
    plan = plan_fineweb_download(manifest, "sp8192_caseops", 0)
    assert [f.path.split("/")[-1] for f in plan.files[:2]] == ["fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    assert fineweb_dataset_dir("sp8192_caseops") == CASEOPS_DIR


# --------------------------------------------------------------------------- no network (issue 17, item 11)


def test_no_network_says_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    """A closed port stands for a machine without network: the error says the hub cannot be reached (it
    used to say the manifest was missing from the repository)."""
    import huggingface_hub.utils._http as hub_http

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # skip huggingface_hub's retry waits
    client = HubClient(REPO, endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"the hub at http://127.0.0.1:9 cannot be reached") as error:
        download_fineweb("sp300", 1, tmp_path / "data", client, log=lambda line: None)
    assert "missing from the hub" not in str(error.value)
