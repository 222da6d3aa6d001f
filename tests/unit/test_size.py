"""Artifact accounting against the decimal 16,000,000-byte cap."""

import sys
import types

import pytest

import pgolf.errors
from pgolf.artifact.size import (
    ARTIFACT_CAP_BYTES,
    SizeReport,
    check_artifact_fits,
    loaded_pgolf_modules,
    source_bytes_of_modules,
)
from pgolf.errors import ArtifactError, PgolfError


def test_cap_is_decimal():
    assert ARTIFACT_CAP_BYTES == 16_000_000 != 16 * 1024 * 1024


def test_report_arithmetic_and_dict():
    report = SizeReport(code_bytes=47_642, model_bytes=15_815_847, code_bytes_note="train_gpt.py")
    assert report.cap == 16_000_000
    assert report.total_bytes == 15_863_489  # the baseline's published total (SPEC 2.10)
    assert report.margin_bytes == 136_511
    assert report.fits
    assert report.as_dict() == {
        "code_bytes": 47_642,
        "model_bytes": 15_815_847,
        "total_bytes": 15_863_489,
        "cap": 16_000_000,
        "margin_bytes": 136_511,
        "fits": True,
        "code_bytes_note": "train_gpt.py",
    }
    assert check_artifact_fits(report) is report


def test_exactly_at_the_cap_fits_and_one_more_byte_does_not():
    assert check_artifact_fits(SizeReport(code_bytes=1_000, model_bytes=15_999_000)).fits
    over = SizeReport(code_bytes=1_000, model_bytes=15_999_001)
    assert not over.fits and over.margin_bytes == -1
    with pytest.raises(ArtifactError, match="by 1 bytes"):
        check_artifact_fits(over)


def test_over_cap_message_states_total_cap_excess_and_what_fits():
    report = SizeReport(code_bytes=50_000, model_bytes=16_050_000, code_bytes_note="upper bound")
    with pytest.raises(ArtifactError) as caught:
        check_artifact_fits(report)
    message = str(caught.value)
    for expected in ("16,100,000", "16,000,000", "by 100,000", "at most 15,950,000", "upper bound", "compressor", "bits", "smaller model"):
        assert expected in message, expected


def test_code_alone_over_the_cap_says_so():
    with pytest.raises(ArtifactError, match="code alone"):
        check_artifact_fits(SizeReport(code_bytes=16_000_001, model_bytes=0))


def test_custom_cap_and_invalid_fields():
    assert not SizeReport(code_bytes=6, model_bytes=5, cap=10).fits
    for bad in ({"code_bytes": -1, "model_bytes": 0}, {"code_bytes": 1.5, "model_bytes": 0}, {"code_bytes": 0, "model_bytes": True}):
        with pytest.raises(ArtifactError):
            SizeReport(**bad)


def test_source_bytes_count_utf8_and_read_like_the_challenge(tmp_path, monkeypatch):
    package = tmp_path / "sizeprobe_pkg"
    package.mkdir()
    (package / "__init__.py").write_bytes(b"")
    (package / "ascii_mod.py").write_bytes(b"x = 1\n")  # 6 bytes
    (package / "unicode_mod.py").write_bytes("s = 'é▁'\r\n".encode("utf-8"))  # CRLF counts as LF: 12 bytes
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("sizeprobe_pkg", "sizeprobe_pkg.ascii_mod", "sizeprobe_pkg.unicode_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert source_bytes_of_modules(["sizeprobe_pkg.ascii_mod"]) == 6
    assert source_bytes_of_modules(["sizeprobe_pkg.unicode_mod"]) == len("s = 'é▁'\n".encode("utf-8")) == 12
    # a module listed twice counts once; an empty __init__ counts zero
    assert source_bytes_of_modules(["sizeprobe_pkg", "sizeprobe_pkg.ascii_mod", "sizeprobe_pkg.ascii_mod"]) == 6


def test_source_bytes_of_a_real_pgolf_module():
    with open(pgolf.errors.__file__, encoding="utf-8") as handle:
        expected = len(handle.read().encode("utf-8"))
    assert source_bytes_of_modules(["pgolf.errors"]) == expected > 0


def test_modules_without_source_are_errors():
    with pytest.raises(PgolfError, match="sys"):
        source_bytes_of_modules(["sys"])
    with pytest.raises(PgolfError, match="no_such_module_xyz"):
        source_bytes_of_modules(["no_such_module_xyz"])


def test_loaded_pgolf_modules_excludes_tooling_by_folder(monkeypatch):
    tooling = ("pgolf.cli", "pgolf.__main__", "pgolf.commands.zz_new_command", "pgolf.export.bundle", "pgolf.exp.zz_new")
    for name in (*tooling, "pgolfish", "pgolf.zz_core_probe", "pgolf.data.zz_core_probe", "pgolf.commandsish"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    names = loaded_pgolf_modules()
    assert names == sorted(names)
    for core in ("pgolf", "pgolf.artifact.size", "pgolf.zz_core_probe", "pgolf.data.zz_core_probe", "pgolf.commandsish"):
        assert core in names
    for excluded in (*tooling, "pgolfish"):
        assert excluded not in names
