"""User docs stay in step with the code."""

from pathlib import Path

from pgolf.config import config_field_index
from pgolf.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_documented():
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [name.upper() for name in config_field_index() if f"`{name.upper()}`" not in text]
    assert not missing, f"docs/config.md lacks: {missing}"


def test_every_preset_is_documented():
    text = (ROOT / "docs" / "config.md").read_text()
    assert all(f"`{name}`" in text for name in PRESETS)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert command.strip() in readme
