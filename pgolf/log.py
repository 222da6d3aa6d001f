"""The run log: human lines (``train.log``) and one JSON event per line (``metrics.jsonl``).

Only the main rank writes. Human lines keep the challenge's familiar ``key:value`` forms (SPEC 2.11) so
existing log parsers keep working. On a terminal, long phases show a one-line progress bar on stderr;
elsewhere (CI, nohup, torchrun log files) plain lines are printed instead.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class RunLogger:
    def __init__(self, run_dir: Path | None, *, enabled: bool = True, echo: bool = True):
        self.enabled = enabled
        self.echo = echo
        self._log_file: TextIO | None = None
        self._metrics_file: TextIO | None = None
        if enabled and run_dir is not None:
            self._log_file = open(run_dir / "train.log", "a", encoding="utf-8")
            self._metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def line(self, text: str) -> None:
        """One human line, printed and appended to train.log."""
        if not self.enabled:
            return
        if self.echo:
            print(text, flush=True)
        if self._log_file is not None:
            self._log_file.write(text + "\n")
            self._log_file.flush()

    def event(self, kind: str, **fields: Any) -> None:
        """One machine-readable event in metrics.jsonl, stamped with wall time."""
        if not self.enabled or self._metrics_file is None:
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        self._metrics_file.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._metrics_file.flush()

    def close(self) -> None:
        for handle in (self._log_file, self._metrics_file):
            if handle is not None:
                handle.close()
        self._log_file = self._metrics_file = None


class ProgressBar:
    """A dependency-free progress bar: redrawn in place on a terminal, silent otherwise."""

    def __init__(self, label: str, total: float | None, *, enabled: bool = True, stream: TextIO | None = None):
        """``total=None`` when the amount of work is unknown: only the suffix is shown then."""
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label = label
        self.total = None if total is None else max(float(total), 1e-9)
        self._last_draw = 0.0

    def update(self, done: float, suffix: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last_draw < 0.2:
            return
        self._last_draw = now
        if self.total is None:
            self.stream.write(f"\r{self.label} {suffix}\033[K")
            self.stream.flush()
            return
        fraction = min(max(done / self.total, 0.0), 1.0)
        filled = int(fraction * 30)
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\r{self.label} [{bar}] {100 * fraction:5.1f}% {suffix}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
