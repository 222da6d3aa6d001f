"""User-facing errors.

Every error a user can cause (bad config, bad data, an artifact over the cap, a diverged run) is raised
as a subclass of ``PgolfError``. The command line prints these as one clear message without a
traceback; anything else is a bug in pgolf and keeps its traceback.
"""


class PgolfError(Exception):
    """An error caused by input or environment, with a message that names the thing and the fix."""


class ConfigError(PgolfError):
    """Unknown key, wrong type or inconsistent values in the configuration."""


class DataError(PgolfError):
    """Missing, empty, corrupt or mismatched data shards or tokenizer."""


class ArtifactError(PgolfError):
    """A corrupt, truncated or oversized artifact."""


class TrainingError(PgolfError):
    """Training could not continue (for example a non-finite loss)."""
