"""``pgolf plot`` (pgolf.exp.plot): what is drawn is what the logs say; the image is a real PNG (or SVG);
an existing file is never replaced; a missing matplotlib is a clear error."""

import struct

import pytest

from pgolf.cli import main as cli_main
from pgolf.errors import PgolfError
from pgolf.exp.logs import read_run_log
from pgolf.exp.plot import plot_panels, plot_runs

LOG_A = """\
step:0/100 val_loss:6.9000 val_bpb:3.6000 train_time:0ms step_avg:0.01ms
step:10/100 train_loss:5.5000 train_time:1000ms step_avg:100.00ms
step:20/100 train_loss:5.0000 train_time:2000ms step_avg:100.00ms
step:20/100 val_loss:4.9000 val_bpb:2.6000 train_time:2000ms step_avg:100.00ms
"""
# R1081 format, times from tok/s with 1000-token batches; its validation at step 20 is interpolated.
LOG_B = """\
  train_batch_tokens: 1000
0/100 val_loss: 6.8000 val_bpb: 3.5000
10/100 train_loss: 5.4000 train_time: 0.0m tok/s: 5000
30/100 train_loss: 4.8000 train_time: 0.1m tok/s: 5000
20/100 val_loss: 4.7000 val_bpb: 2.5000
"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_logs(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(LOG_A)
    b.write_text(LOG_B)
    return a, b


def test_the_panels_hold_the_logged_numbers(two_logs):
    panels = plot_panels([read_run_log(path) for path in two_logs])
    assert [(p.title, p.xlabel) for p in panels] == [("train loss vs step", "step"),
                                                      ("train loss vs time", "training seconds"),
                                                      ("val BPB vs step", "step"), ("val BPB vs time", "training seconds")]
    table = {(panel.title, s.run): (s.xs, s.ys) for panel in panels for s in panel.series}
    assert table["train loss vs step", "a.log"] == ((10.0, 20.0), (5.5, 5.0))
    assert table["train loss vs time", "a.log"] == ((1.0, 2.0), (5.5, 5.0))
    assert table["val BPB vs step", "a.log"] == ((0.0, 20.0), (3.6, 2.6))
    assert table["val BPB vs time", "a.log"] == ((0.0, 2.0), (3.6, 2.6))
    assert table["train loss vs step", "b.log"] == ((10.0, 30.0), (5.4, 4.8))
    assert table["train loss vs time", "b.log"] == ((2.0, 6.0), (5.4, 4.8))  # 10 x 1000 / 5000 = 2 s
    assert table["val BPB vs time", "b.log"] == ((0.0, 4.0), (3.5, 2.5))  # halfway between 2 s and 6 s


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk that follows the PNG signature."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_a_png_and_never_overwrites(two_logs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "curves.png"
    assert cli_main(["plot", *map(str, two_logs), "-o", str(output)]) == 0
    data = output.read_bytes()
    assert len(data) > 1000 and png_size(data) == (1440, 960)  # 12 x 8 inches at 120 dpi
    assert "a.log: 2 train points, 2 val points" in capsys.readouterr().out
    assert cli_main(["plot", str(two_logs[0]), "-o", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err and output.read_bytes() == data


def test_svg_by_extension_and_unknown_extensions(two_logs, tmp_path):
    pytest.importorskip("matplotlib")
    svg, _ = plot_runs(two_logs, tmp_path / "curves.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    with pytest.raises(PgolfError, match="unknown image type"):
        plot_runs(two_logs, tmp_path / "curves.bmp")


def test_same_file_names_are_told_apart(tmp_path):
    pytest.importorskip("matplotlib")
    paths = []
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        paths.append(tmp_path / run / "train.log")
        paths[-1].write_text(LOG_A)
    _, logs = plot_runs(paths, tmp_path / "same.png")
    assert [log.name for log in logs] == ["run1/train.log", "run2/train.log"]


def test_missing_matplotlib_is_a_clear_error(two_logs, tmp_path, monkeypatch):
    monkeypatch.setattr("pgolf.exp.plot.Figure", None)  # what the guarded import leaves without matplotlib
    with pytest.raises(PgolfError, match=r"pip install 'pgolf\[plots\]'"):
        plot_runs(two_logs, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_a_log_without_curves_is_refused(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing to see\n")
    with pytest.raises(PgolfError, match="no training or validation lines"):
        plot_runs([empty], tmp_path / "empty.png")
