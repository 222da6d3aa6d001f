"""Training and validation curves, runs overlaid: the figure ``pgolf plot`` writes (tooling; the command
is pgolf/commands/plot.py).

One 2 x 2 figure: training loss against step and against training seconds (top), validation BPB
against step and against training seconds (bottom). Each run is one colour, labelled with its run id
(a run directory) or its file name (a log); the legend names them. The data come from
:func:`pgolf.exp.logs.read_run_log` and are laid out by :func:`plot_panels`, which does no drawing, so
tests can check that what is drawn is what the logs say.

matplotlib (the ``plots`` extra) draws on a bare :class:`~matplotlib.figure.Figure`: no pyplot, no
backend or display, no global figure registry. Without matplotlib, plotting is a clear error.
The output format follows the file's extension (``.png``, ``.svg``, ``.pdf``); an existing file is
never overwritten.
"""

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.fsutil import require_writable_directory
from pgolf.exp.logs import RunLog, read_run_log

try:  # the `plots` extra (optional): require_matplotlib() says how to install it
    from matplotlib import rcParams
    from matplotlib.figure import Figure
except ImportError:
    rcParams = Figure = None

PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
PLOT_DPI = 120


@dataclass(frozen=True)
class Series:
    """One run's line in one panel."""

    run: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    markers: bool  # validation points are few: draw them as dots too


def _train_series(log: RunLog, by_time: bool) -> Series:
    points = [p for p in log.train if not by_time or p.train_seconds is not None]
    xs = tuple(float(p.train_seconds) if by_time else float(p.step) for p in points)
    return Series(log.name, xs, tuple(p.train_loss for p in points))


def _val_series(log: RunLog, by_time: bool) -> Series:
    points = [p for p in log.val if not by_time or p.train_seconds is not None]
    xs = tuple(float(p.train_seconds) if by_time else float(p.step) for p in points)
    return Series(log.name, xs, tuple(p.val_bpb for p in points))


def plot_panels(logs: list[RunLog]) -> list[Panel]:
    """The four panels, in reading order (row by row), with every run's series."""
    return [
        Panel("train loss vs step", "step", "train loss (nats/token)",
              tuple(_train_series(log, False) for log in logs), False),
        Panel("train loss vs time", "training seconds", "train loss (nats/token)",
              tuple(_train_series(log, True) for log in logs), False),
        Panel("val BPB vs step", "step", "val BPB (bits/byte)", tuple(_val_series(log, False) for log in logs), True),
        Panel("val BPB vs time", "training seconds", "val BPB (bits/byte)",
              tuple(_val_series(log, True) for log in logs), True),
    ]


def unique_run_names(logs: list[RunLog]) -> list[RunLog]:
    """Two logs with one name (``train.log`` of two runs) get their parent folder in front of it."""
    counts = Counter(log.name for log in logs)
    for log in logs:
        if counts[log.name] > 1:
            log.name = f"{Path(log.source).parent.name}/{log.name}"
    return logs


def require_matplotlib() -> None:
    """A clear error telling how to install matplotlib when it is missing."""
    if Figure is None:
        raise PgolfError("pgolf plot needs matplotlib, which is not installed: pip install 'pgolf[plots]' "
                         "(or pip install matplotlib).")


def plot_format(output: Path) -> str:
    """The image format the file name asks for."""
    fmt = PLOT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise PgolfError(f"{output}: unknown image type {output.suffix!r}; use one of {', '.join(PLOT_FORMATS)}.")
    return fmt


def draw_figure(panels: list[Panel], title: str):
    """The 2 x 2 figure of ``panels``, one colour per run, the legend in the first panel."""
    figure = Figure(figsize=(12, 8), constrained_layout=True)
    axes = figure.subplots(2, 2)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, panel in zip(axes.flat, panels):
        for index, series in enumerate(panel.series):
            style = {"marker": "o", "markersize": 4} if panel.markers else {}
            axis.plot(series.xs, series.ys, label=series.run, color=colours[index % len(colours)], **style)
        axis.set_title(panel.title)
        axis.set_xlabel(panel.xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(title)
    return figure


def write_figure(figure, output: Path) -> None:
    """Save without ever replacing an existing file (exclusive create; a failed save leaves nothing)."""
    fmt = plot_format(output)
    try:
        handle = open(output, "xb")
    except FileExistsError:
        raise PgolfError(f"{output} already exists; pgolf plot never overwrites. Move it away or use -o.") from None
    try:
        with handle:
            figure.savefig(handle, format=fmt, dpi=PLOT_DPI)
    except BaseException:
        os.unlink(output)
        raise


def plot_runs(paths: list[str | Path], output: str | Path) -> tuple[Path, list[RunLog]]:
    """Read the runs, draw the figure into ``output``; returns the path and the logs drawn."""
    output = Path(output)
    plot_format(output)
    if output.exists():
        raise PgolfError(f"{output} already exists; pgolf plot never overwrites. Move it away or use -o.")
    require_writable_directory(output.parent, f"the plot {output.name}", may_create=False)
    logs = unique_run_names([read_run_log(path) for path in paths])
    empty = [log.source for log in logs if not (log.train or log.val)]
    if empty:
        raise PgolfError(f"no training or validation lines found in {', '.join(empty)}; give pgolf run directories "
                         "or logs of train_gpt.py.")
    require_matplotlib()
    write_figure(draw_figure(plot_panels(logs), ", ".join(log.name for log in logs)), output)
    return output, logs
