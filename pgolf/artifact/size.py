"""Artifact accounting: code bytes + compressed model bytes against the 16,000,000-byte cap.

The challenge counts ``len(train_gpt.py source encoded as UTF-8)`` plus the size of the compressed
model file, and the cap is decimal (16,000,000 bytes, not 16 MiB). The exact code size is the wrapped
train_gpt.py ``pgolf export`` writes (``pgolf.export.bundle.exported_code_bytes``); where a caller does
not pass it, :func:`upper_bound_code_bytes` (the summed sources of the pgolf modules the run imported)
bounds it from above (the export specializes, minifies and compresses them, so the shipped file is
smaller). Only callers that may lack the exact size call it, so an export that knows its own size ships
none of it.
"""

import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pgolf.errors import ArtifactError, PgolfError

ARTIFACT_CAP_BYTES = 16_000_000

# What never ships in train_gpt.py, by folder: these packages and modules and everything under them
# (command line, command handlers, export, experiment tooling). A rule by folder rather than a list of
# module names, so that a new command or experiment module is tooling the moment it is written.
TOOLING_PACKAGES = ("pgolf.commands", "pgolf.exp", "pgolf.export", "pgolf.cli", "pgolf.__main__")


@dataclass(frozen=True)
class SizeReport:
    """What an artifact costs: code bytes + model bytes, against ``cap``.

    ``code_bytes_note`` says how the code bytes were measured (e.g. "exported train_gpt.py" or
    "upper bound: sum of imported pgolf module sources"), so a report is never ambiguous.
    """

    code_bytes: int
    model_bytes: int
    cap: int = ARTIFACT_CAP_BYTES
    code_bytes_note: str = ""

    def __post_init__(self) -> None:
        for field_name in ("code_bytes", "model_bytes", "cap"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ArtifactError(f"SizeReport.{field_name} must be a non-negative int, got {value!r}.")

    @property
    def total_bytes(self) -> int:
        return self.code_bytes + self.model_bytes

    @property
    def margin_bytes(self) -> int:
        """Bytes left under the cap (negative when over)."""
        return self.cap - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.cap

    def as_dict(self) -> dict:
        """Plain dict for report.json / metrics.jsonl (includes the derived totals)."""
        return {
            "code_bytes": self.code_bytes,
            "model_bytes": self.model_bytes,
            "total_bytes": self.total_bytes,
            "cap": self.cap,
            "margin_bytes": self.margin_bytes,
            "fits": self.fits,
            "code_bytes_note": self.code_bytes_note,
        }


def check_artifact_fits(report: SizeReport) -> SizeReport:
    """Return ``report`` unchanged if the artifact fits; otherwise raise ArtifactError saying by how much."""
    if not report.fits:
        raise ArtifactError(over_cap_message(report))
    return report


def over_cap_message(report: SizeReport) -> str:
    """By how much ``report`` is over the cap, what the model may weigh with this code, and how to fit."""
    note = f" ({report.code_bytes_note})" if report.code_bytes_note else ""
    largest_model = report.cap - report.code_bytes
    if largest_model > 0:
        what_fits = f"with {report.code_bytes:,} code bytes the model may be at most {largest_model:,} bytes"
    else:
        what_fits = "the code alone is over the cap, so no model fits; shrink the code first"
    return (f"artifact is {report.total_bytes:,} bytes (code {report.code_bytes:,}{note} + model "
            f"{report.model_bytes:,}), over the {report.cap:,}-byte cap by {-report.margin_bytes:,} bytes; "
            f"{what_fits}. To fit: use a stronger compressor (compressor=auto, or brotli/lzma with shuffle "
            "stride 2), fewer bits per weight, or a smaller model (fewer layers or a narrower width).")


def _module_source_path(module_name: str) -> Path:
    try:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except ImportError as error:
        raise PgolfError(f"cannot import module {module_name!r} to measure its source size: {error}.") from None
    try:
        source_file = inspect.getsourcefile(module)
    except TypeError:
        source_file = None
    if source_file is None:
        raise PgolfError(
            f"module {module_name!r} has no Python source file to measure (built-in, compiled or a namespace "
            "package); leave it out of the code-size list."
        )
    return Path(source_file)


def source_bytes_of_modules(module_names: Iterable[str]) -> int:
    """Total UTF-8 bytes of the source files of the named modules (each counted once).

    Text is read as the challenge does (``read_text`` then UTF-8 encode), so CRLF files count as LF.
    """
    paths = {_module_source_path(name).resolve() for name in module_names}
    return sum(len(path.read_text(encoding="utf-8").encode("utf-8")) for path in paths)


def is_tooling_module(module_name: str) -> bool:
    """True for a module under one of the ``TOOLING_PACKAGES`` (or one of them itself)."""
    return any(module_name == tool or module_name.startswith(tool + ".") for tool in TOOLING_PACKAGES)


def loaded_pgolf_modules() -> list[str]:
    """Sorted names of the imported pgolf modules that would ship in train_gpt.py (tooling excluded)."""
    names = [
        name for name, module in list(sys.modules.items())
        if module is not None and (name == "pgolf" or name.startswith("pgolf.")) and not is_tooling_module(name)
    ]
    return sorted(names)


def upper_bound_code_bytes() -> int:
    """An upper bound of the counted code size: the sources of the pgolf modules this process imported
    (tooling excluded), for callers without the exact size of the exported train_gpt.py."""
    return source_bytes_of_modules(loaded_pgolf_modules())
