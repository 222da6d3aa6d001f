"""The command line's parsing (pgolf.cli): KEY=value items wherever they stand, optional lists, pipes."""

import subprocess
import sys

import pytest

from pgolf.cli import build_parser, main, parse_command_line


def parse(*argv):
    return parse_command_line(build_parser(), list(argv))


def test_key_values_after_a_flag_join_the_ones_before():
    args = parse("eval", "runs/r1", "VAL_MAX_TOKENS=2048", "--json", "EVAL_STRIDE=16")
    assert args.run_dir == "runs/r1" and args.json
    assert args.overrides == ["VAL_MAX_TOKENS=2048", "EVAL_STRIDE=16"]
    args = parse("describe", "NUM_LAYERS=3", "--json", "SEED=2")
    assert args.overrides == ["NUM_LAYERS=3", "SEED=2"]


def test_key_values_are_optional():
    assert parse("export", "tiny_cpu").overrides == []
    assert parse("describe").overrides == []


def test_unknown_items_are_still_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("describe", "--json", "--no-such-flag")
    assert exit_info.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("doctor", "SEED=2")  # doctor takes no KEY=value


def test_export_without_a_target_names_only_the_target(capsys):
    with pytest.raises(SystemExit):
        parse("export")
    err = capsys.readouterr().err
    assert "RUN_DIR|PRESET" in err and "KEY=value" not in err.split("required:")[-1]


def test_a_closed_pipe_ends_quietly():
    # `pgolf describe | head -1`: the reader leaves after one line while the command still writes (10 MB,
    # far beyond a pipe's buffer, so the write fails for sure): no traceback, the shell's SIGPIPE status.
    code = ("import sys, pgolf.cli as cli\n"
            "cli.run_describe_command = lambda args: [print('x' * 99) for _ in range(100_000)] and 0\n"
            "sys.exit(cli.main(['describe']))")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    subprocess.run([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=writer.stdout, check=True)
    writer.stdout.close()
    _, err = writer.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    assert writer.returncode == 141


def test_main_returns_the_handlers_status(capsys):
    assert main(["describe", "--json", "SEED=7"]) == 0
    assert '"seed": 7' in capsys.readouterr().out
