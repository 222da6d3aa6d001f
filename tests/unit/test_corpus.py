"""The embedded default dataset: extraction from Python's own docs, ordering, caching, shards."""

import hashlib
import json
import os
import shutil

import pytest

from pgolf.config import Config, apply_config_overrides, environment_overrides
from pgolf.data import corpus
from pgolf.data.corpus import (
    DEFAULT_CORPUS_NUM_VAL_DOCS,
    DEFAULT_CORPUS_VOCAB_SIZE,
    DefaultDataset,
    clean_corpus_text,
    default_corpus_documents,
    default_dataset_key,
    ensure_default_dataset,
    module_docstring_text,
    resolve_cache_dir,
    stdlib_docstring_documents,
)
from pgolf.errors import DataError


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, str]]:
    return default_corpus_documents()


@pytest.fixture(scope="module")
def built(tmp_path_factory, documents):
    """Build the default dataset once for the whole module: (cache dir, dataset, log lines)."""
    cache = tmp_path_factory.mktemp("cache")
    lines: list[str] = []
    dataset = ensure_default_dataset(cache, log=lines.append)
    return cache, dataset, lines


@pytest.fixture
def cached_documents(monkeypatch, documents):
    """Skip the (seconds-long) re-extraction in tests that build again."""
    monkeypatch.setattr(corpus, "default_corpus_documents", lambda: list(documents))


# --------------------------------------------------------------------------- extraction


def test_clean_corpus_text_is_minimal():
    assert clean_corpus_text("  a  \r\nb\t \r\n\n\n\n\n\nc\x00d\n\n") == "a\nb\n\n\nc d"
    assert clean_corpus_text("x\n\ny\n\n\nz") == "x\n\ny\n\n\nz"  # up to two blank lines survive


def test_module_docstrings_in_source_order():
    source = b'''"""Module doc."""
import os
def f():
    """F doc."""
    def inner():
        """Inner doc."""
class C:
    """C doc.

    Body line.
        Indented line.
    """
    async def m(self):
        """M doc."""
    x = "not a docstring"
try:
    def t():
        """Try doc."""
except ImportError:
    def h():
        """Handler doc."""
else:
    if True:
        def e():
            """Else doc."""
def g():
    "G doc."
'''
    expected = (
        "Module doc.\n\nF doc.\n\nInner doc.\n\nC doc.\n\nBody line.\n    Indented line.\n\nM doc.\n\n"
        "Try doc.\n\nHandler doc.\n\nElse doc.\n\nG doc."
    )
    assert module_docstring_text(source) == expected
    assert module_docstring_text(b"def broken(:\n") is None


def test_stdlib_walk_skips_excluded_dirs_and_never_imports(tmp_path):
    long_doc = "Words about this module. " * 10
    sentinel = tmp_path / "imported.txt"
    files = {
        "good.py": f'"""{long_doc}"""\nopen({str(sentinel)!r}, "w").write("ran")\n',
        "pkg/__init__.py": f'"""{long_doc}"""',
        "pkg/sub.py": f'def f():\n    """{long_doc}"""\n',
        "short.py": '"""Too short."""',
        "bad_syntax.py": "def (:",
        "test/test_x.py": f'"""{long_doc}"""',
        "pkg/tests/t.py": f'"""{long_doc}"""',
        "site-packages/third.py": f'"""{long_doc}"""',
        "idlelib/i.py": f'"""{long_doc}"""',
        "config-3.11-x86_64-linux-gnu/c.py": f'"""{long_doc}"""',
        "__pycache__/p.py": f'"""{long_doc}"""',
        "notes.txt": long_doc,
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    found = stdlib_docstring_documents(tmp_path)
    assert [name for name, _ in found] == ["stdlib:good", "stdlib:pkg", "stdlib:pkg.sub"]
    assert found[0][1] == long_doc.strip()
    assert not sentinel.exists()


def test_corpus_is_deterministic_and_non_trivial(documents):
    assert default_corpus_documents() == documents
    names = [name for name, _ in documents]
    assert len(set(names)) == len(names)
    total_bytes = sum(len(text.encode("utf-8")) for _, text in documents)
    assert 250 <= len(documents) <= 2000
    assert 1_000_000 <= total_bytes <= 20_000_000
    texts = dict(documents)
    assert texts["pydoc-topic:assert"].startswith('The "assert" statement')
    assert texts["stdlib:json"].startswith("JSON (JavaScript Object Notation)")
    assert "stdlib:collections" in texts and "stdlib:email.message" in texts
    assert all(text == text.strip() and len(text) >= 200 for name, text in documents if name.startswith("stdlib:"))
    excluded = ("test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages")
    assert not [name for name in names if set(name.removeprefix("stdlib:").split(".")) & set(excluded)]


def test_documents_sorted_by_sha256_of_name(documents):
    names = [name for name, _ in documents]
    assert names == sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    # The interleave puts both sources into the validation prefix.
    prefix = names[:DEFAULT_CORPUS_NUM_VAL_DOCS]
    assert any(n.startswith("pydoc-topic:") for n in prefix) and any(n.startswith("stdlib:") for n in prefix)


def test_key_depends_on_every_document(documents):
    key = default_dataset_key(documents)
    assert len(key) == 16 and int(key, 16) >= 0
    assert default_dataset_key(list(documents)) == key
    changed = list(documents)
    changed[-1] = (changed[-1][0], changed[-1][1] + ".")
    assert default_dataset_key(changed) != key
    assert default_dataset_key(documents[:-1]) != key


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir("") == tmp_path / "home" / ".cache" / "pgolf"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("") == tmp_path / "xdg" / "pgolf"
    assert resolve_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"  # PGOLF_CACHE_DIR, from the config
    monkeypatch.setenv("PGOLF_CACHE_DIR", str(tmp_path / "ignored"))  # the config reads it, not the cache code
    assert resolve_cache_dir("") == tmp_path / "xdg" / "pgolf"
    cfg = apply_config_overrides(Config(), environment_overrides({"PGOLF_CACHE_DIR": "~/mine"}), source="test")
    assert resolve_cache_dir(cfg.run.pgolf_cache_dir) == tmp_path / "home" / "mine"


def test_too_small_corpus_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "default_corpus_documents", lambda: [("pydoc-topic:x", "text")])
    with pytest.raises(DataError, match="without its .py sources"):
        ensure_default_dataset(tmp_path, log=lambda line: None)


# --------------------------------------------------------------------------- building and caching


def test_build_layout_and_log(built, documents):
    cache, dataset, lines = built
    assert isinstance(dataset, DefaultDataset)
    assert dataset.data_path == cache / "default-data" / dataset.key / "datasets" / "default_sp1024"
    assert dataset.tokenizer_path == cache / "default-data" / dataset.key / "tokenizers" / "default_1024_bpe.model"
    assert dataset.key == default_dataset_key(documents)
    assert dataset.tokenizer_path.with_suffix(".vocab").is_file()
    assert (dataset.data_path.parent.parent / "COMPLETE").is_file()
    assert [p.name for p in (cache / "default-data").iterdir()] == [dataset.key]  # no temporary left
    assert len(lines) == 2 and "building" in lines[0] and "built in" in lines[1]


def test_shards_are_valid_and_splits_disjoint(built, documents):
    from pgolf.data.shards import check_token_ids, find_shards, read_shard
    from pgolf.data.tokenizer import build_byte_tables, load_sentencepiece

    _, dataset, _ = built
    sp = load_sentencepiece(dataset.tokenizer_path)
    assert sp.get_piece_size() == DEFAULT_CORPUS_VOCAB_SIZE
    build_byte_tables(sp, DEFAULT_CORPUS_VOCAB_SIZE)  # usable for BPB (has a standalone space piece)
    stats = dataset.manifest["datasets"][0]["stats"]
    tokens = {}
    for split in ("val", "train"):
        files = find_shards(dataset.data_path, split)
        assert len(files) == stats[f"files_{split}"]
        tokens[split] = [int(t) for path in files for t in read_shard(path, mmap=False)]
        check_token_ids(tokens[split], DEFAULT_CORPUS_VOCAB_SIZE, dataset.data_path)
        assert len(tokens[split]) == stats[f"tokens_{split}"]
    assert set(find_shards(dataset.data_path, "val")).isdisjoint(find_shards(dataset.data_path, "train"))
    # Exact content: validation = the first N documents in the documented order, BOS-prefixed.
    bos = sp.bos_id()
    val_docs = [text for _, text in documents[:DEFAULT_CORPUS_NUM_VAL_DOCS]]
    assert tokens["val"] == [t for ids in sp.encode(val_docs) for t in [bos] + ids]
    assert tokens["val"].count(bos) == stats["docs_val"] == DEFAULT_CORPUS_NUM_VAL_DOCS
    assert tokens["train"].count(bos) == stats["docs_train"] == len(documents) - DEFAULT_CORPUS_NUM_VAL_DOCS
    assert 0.04 < stats["tokens_val"] / (stats["tokens_val"] + stats["tokens_train"]) < 0.12


def test_second_call_reuses_without_rebuilding(built, cached_documents):
    cache, dataset, _ = built
    marker = dataset.data_path.parent.parent / "COMPLETE"
    before = marker.stat().st_mtime_ns
    lines: list[str] = []
    again = ensure_default_dataset(cache, log=lines.append)
    assert again == dataset
    assert len(lines) == 1 and "reusing" in lines[0]
    assert marker.stat().st_mtime_ns == before


def test_leftover_partial_and_damaged_dirs_are_not_used(built, cached_documents, tmp_path):
    _, dataset, _ = built
    source = dataset.data_path.parent.parent
    parent = tmp_path / "default-data"
    leftover = parent / f".{dataset.key}.partial-killed"
    shutil.copytree(source, leftover)
    (leftover / "COMPLETE").unlink()  # a build killed just before its marker
    damaged = parent / dataset.key
    shutil.copytree(source, damaged)
    next(damaged.glob("datasets/*/fineweb_train_*.bin")).write_bytes(b"")  # a shard lost after the build
    lines: list[str] = []
    rebuilt = ensure_default_dataset(tmp_path, log=lines.append)
    assert "built in" in lines[-1]
    assert rebuilt.data_path == damaged / "datasets" / "default_sp1024"
    assert json.loads((damaged / "COMPLETE").read_text())["files"] == json.loads((source / "COMPLETE").read_text())["files"]
    assert leftover.is_dir()  # young leftovers may belong to a running build: left alone
    assert sorted(p.name for p in parent.iterdir()) == sorted([leftover.name, dataset.key])


def test_interrupted_build_leaves_nothing(monkeypatch, cached_documents, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "export_documents_to_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_dataset(tmp_path, log=lambda line: None)
    assert list((tmp_path / "default-data").iterdir()) == []


def test_concurrent_finisher_keeps_the_first_copy(built, tmp_path):
    _, dataset, _ = built
    source = dataset.data_path.parent.parent
    final = tmp_path / dataset.key
    partial = tmp_path / f".{dataset.key}.partial-second"
    shutil.copytree(source, final)
    shutil.copytree(source, partial)
    marker_inode = os.stat(final / "COMPLETE").st_ino
    result = corpus._move_into_place(partial, final, dataset.key)
    assert result.data_path == final / "datasets" / "default_sp1024"
    assert os.stat(final / "COMPLETE").st_ino == marker_inode
    assert not partial.exists()
