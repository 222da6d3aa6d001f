"""BYTE_SIDECARS: where a run's validation bytes come from, and what each value refuses.

``auto`` (the default) detects the sidecars as before; ``on`` requires them (the CaseOps presets); ``off``
uses the tokenizer's byte tables and refuses CaseOps data with a message naming the folder and the fix
(the presets on data without sidecars, tiny_cpu included). With ``off`` the exported script ships no
sidecar reader; with ``on`` it does.
"""

import ast
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from pgolf.config import Config, apply_config_overrides
from pgolf.data.dataset import build_dataset, iter_jsonl_documents
from pgolf.data.run_data import prepare_validation_data
from pgolf.data.val_bytes import TARGET_BYTES_FROM_SIDECARS, TARGET_BYTES_FROM_TABLES
from pgolf.errors import ConfigError, DataError
from pgolf.export.bundle import build_exported_script
from pgolf.presets import preset_config, tiny_cpu

VOCAB = 320
WORDS = "The river NASA iPhone McDonald stone OK quick Brown fox x86_64 HTML5 café ÉCOLE über 42 I a".split()
# What reads the sidecars (pgolf.data.byte_sidecars), and the cheap refusal that replaces it with "off".
SIDECAR_READERS = {"byte_sidecar_path", "find_byte_sidecars", "load_byte_sidecars", "target_bytes_from_sidecars"}


def _docs(count: int) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "." for _ in range(count)]


def _build(root: Path, caseops: bool) -> tuple[Path, Path]:
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(160)), encoding="utf-8")
    built = build_dataset(lambda: iter_jsonl_documents(source), VOCAB, root / "out", name="docs", num_val_docs=20,
                          caseops=caseops)
    return Path(built["data_dir"]), Path(built["tokenizer_path"])


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory):
    """A CaseOps dataset (validation byte sidecars, CaseOps tokenizer): (data_dir, tokenizer)."""
    return _build(tmp_path_factory.mktemp("caseops"), caseops=True)


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory):
    """The same documents without the case transform: no sidecars, an ordinary tokenizer."""
    return _build(tmp_path_factory.mktemp("plain"), caseops=False)


def _copy_shards(data_dir: Path, target: Path, sidecars: bool) -> Path:
    target.mkdir()
    for path in data_dir.glob("*.bin"):
        if sidecars or "_bytes_" not in path.name:
            shutil.copy(path, target / path.name)
    return target


def _config(data_dir: Path, tokenizer: Path, byte_sidecars: str | None, base: Config | None = None) -> Config:
    """A small run's config on ``data_dir``; ``byte_sidecars`` None keeps the base config's value."""
    overrides = {"DATA_PATH": str(data_dir), "TOKENIZER_PATH": str(tokenizer), "VOCAB_SIZE": str(VOCAB),
                 "TRAIN_SEQ_LEN": "32", "TRAIN_BATCH_TOKENS": "256"}
    if byte_sidecars is not None:
        overrides["BYTE_SIDECARS"] = byte_sidecars
    return apply_config_overrides(base or Config(), overrides, source="test")


def test_the_default_is_auto_and_the_field_is_a_choice():
    assert Config().data.byte_sidecars == "auto"
    with pytest.raises(ConfigError, match="BYTE_SIDECARS"):
        apply_config_overrides(Config(), {"BYTE_SIDECARS": "yes"}, source="test")


def test_auto_is_unchanged_sidecars_when_present_else_tables(caseops_data, plain_data, tmp_path):
    assert prepare_validation_data(_config(*caseops_data, "auto")).target_bytes.source == TARGET_BYTES_FROM_SIDECARS
    assert prepare_validation_data(_config(*plain_data, "auto")).target_bytes.source == TARGET_BYTES_FROM_TABLES
    bare = _copy_shards(caseops_data[0], tmp_path / "bare", sidecars=False)
    with pytest.raises(DataError, match="is a CaseOps tokenizer .* have no byte sidecars"):
        prepare_validation_data(_config(bare, caseops_data[1], "auto"))


def test_on_reads_the_same_bytes_as_auto(caseops_data):
    on = prepare_validation_data(_config(*caseops_data, "on")).target_bytes
    auto = prepare_validation_data(_config(*caseops_data, "auto")).target_bytes
    assert on.source == TARGET_BYTES_FROM_SIDECARS and torch.equal(on.per_target, auto.per_target)


def test_on_without_sidecars_is_refused_naming_the_folder(caseops_data, plain_data, tmp_path):
    bare = _copy_shards(caseops_data[0], tmp_path / "bare", sidecars=False)
    for data_dir, tokenizer in ((bare, caseops_data[1]), plain_data):
        with pytest.raises(DataError, match="BYTE_SIDECARS=on but the validation shards in") as error:
            prepare_validation_data(_config(data_dir, tokenizer, "on"))
        assert str(data_dir) in str(error.value) and "BYTE_SIDECARS=off" in str(error.value)


def test_off_scores_plain_data_with_the_tables_as_auto_does(plain_data):
    off = prepare_validation_data(_config(*plain_data, "off")).target_bytes
    auto = prepare_validation_data(_config(*plain_data, "auto")).target_bytes
    assert off.source == TARGET_BYTES_FROM_TABLES and torch.equal(off.per_target, auto.per_target)


def test_off_refuses_a_dataset_with_sidecars_naming_the_folder_and_the_fix(caseops_data):
    with pytest.raises(DataError, match="BYTE_SIDECARS=off but the validation shards in") as error:
        prepare_validation_data(_config(*caseops_data, "off"))
    message = str(error.value)
    assert str(caseops_data[0]) in message and "fineweb_val_bytes_000000.bin" in message
    assert "set BYTE_SIDECARS=on" in message


def test_off_refuses_sidecars_by_their_names_alone(plain_data, tmp_path):
    """The refusal is a glob: a file named like a sidecar is enough, whatever it holds (nothing parses it)."""
    copy = _copy_shards(plain_data[0], tmp_path / "copy", sidecars=False)
    (copy / "fineweb_val_bytes_000000.bin").write_bytes(b"not a shard")
    with pytest.raises(DataError, match="BYTE_SIDECARS=off but the validation shards in") as error:
        prepare_validation_data(_config(copy, plain_data[1], "off"))
    assert f"in {copy} have byte sidecars (fineweb_val_bytes_000000.bin" in str(error.value)


def test_off_refuses_a_caseops_tokenizer(caseops_data, tmp_path):
    bare = _copy_shards(caseops_data[0], tmp_path / "bare", sidecars=False)
    with pytest.raises(DataError, match="BYTE_SIDECARS=off but the tokenizer .* is a CaseOps tokenizer") as error:
        prepare_validation_data(_config(bare, caseops_data[1], "off"))
    assert str(caseops_data[1]) in str(error.value) and "Set BYTE_SIDECARS=on" in str(error.value)


def test_tiny_cpu_on_a_caseops_build_is_told_to_set_the_field(caseops_data):
    """tiny_cpu says ``off`` (its embedded data has no sidecars); pointed at a `pgolf data build --caseops`
    dataset it is refused before any training, and the message says what to set; with it, the run scores
    with the sidecars."""
    assert tiny_cpu().data.byte_sidecars == "off"
    with pytest.raises(DataError, match="tiny_cpu.* set BYTE_SIDECARS=on"):
        prepare_validation_data(_config(*caseops_data, None, base=tiny_cpu()))
    data = prepare_validation_data(_config(*caseops_data, "on", base=tiny_cpu()))
    assert data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS


def _exported_functions(preset: str, **overrides: str) -> tuple[set[str], list[str]]:
    paths = {"DATA_PATH": "./d", "TOKENIZER_PATH": "./t.model"}
    cfg = apply_config_overrides(preset_config(preset), {**paths, **overrides}, source="test")
    script = build_exported_script(cfg, preset_name=preset, verify=False)
    functions = {node.name for node in ast.walk(ast.parse(script.readable)) if isinstance(node, ast.FunctionDef)}
    return functions, list(script.dropped_modules)


def test_an_off_export_ships_no_sidecar_reader():
    functions, dropped = _exported_functions("record_sp8192")
    assert not functions & SIDECAR_READERS
    assert "pgolf.data.byte_sidecars" in dropped
    assert {"refuse_byte_sidecars", "refuse_caseops_tokenizer", "list_byte_sidecars", "is_caseops_tokenizer",
            "target_bytes_from_tables"} <= functions


def test_an_on_export_ships_the_sidecar_reader_and_no_refusal():
    functions, dropped = _exported_functions("frontier_caseops")
    assert SIDECAR_READERS <= functions and "pgolf.data.byte_sidecars" not in dropped
    assert not functions & {"refuse_byte_sidecars", "refuse_caseops_tokenizer"}


def test_the_setting_alone_decides_what_ships():
    """record_sp8192 with BYTE_SIDECARS=auto ships the reader and the refusals, as every export did before."""
    functions, dropped = _exported_functions("record_sp8192", BYTE_SIDECARS="auto")
    assert SIDECAR_READERS | {"refuse_caseops_tokenizer"} <= functions and "pgolf.data.byte_sidecars" not in dropped
