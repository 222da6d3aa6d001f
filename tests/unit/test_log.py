import io
import json

from pgolf.log import ProgressBar, RunLogger


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_a_terminal_only():
    terminal, pipe = FakeTerminal(), io.StringIO()
    ProgressBar("train", 10, stream=terminal).update(5, "step 5")
    ProgressBar("train", 10, stream=pipe).update(5, "step 5")
    assert "50.0%" in terminal.getvalue() and "step 5" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_progress_bar_with_unknown_total_shows_only_the_count():
    terminal = FakeTerminal()
    ProgressBar("export", None, stream=terminal).update(7, "7 docs")
    assert "7 docs" in terminal.getvalue() and "%" not in terminal.getvalue()


def test_logger_writes_lines_and_events(tmp_path, capsys):
    logger = RunLogger(tmp_path, echo=True)
    logger.line("step:1/2 train_loss:1.0000")
    logger.event("train", step=1, train_loss=1.0)
    logger.close()
    assert capsys.readouterr().out == "step:1/2 train_loss:1.0000\n"
    assert (tmp_path / "train.log").read_text() == "step:1/2 train_loss:1.0000\n"
    event = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert event["event"] == "train" and event["step"] == 1 and "time" in event


def test_disabled_logger_on_other_ranks_writes_nothing(tmp_path, capsys):
    logger = RunLogger(tmp_path, enabled=False)
    logger.line("hidden")
    logger.event("x")
    assert capsys.readouterr().out == "" and not (tmp_path / "train.log").exists()
