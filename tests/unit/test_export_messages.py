"""``terse_messages``: raise/assert messages become the readable file's line numbers, and nothing else changes.

A small hand-written program exercises each rule (what is replaced and what must stay); the real
modules of the package check that every message in them goes and that the result still compiles.
"""

import ast
import textwrap
from pathlib import Path

import pytest

import pgolf
from pgolf.export.messages import terse_messages

# Canonical ast.unparse layout, so the expected output differs from it only where a message went.
# Line 1 is ``class AppError``: the numbers below are lines of this text.
SOURCE = '''\
class AppError(Exception):
    """The program's own base: a message and nothing else."""

class ConfigError(AppError):
    pass

class DeepError(ConfigError):
    code = 3

class BadValue(ValueError):
    pass

class StructuredError(AppError):

    def __init__(self, reason):
        super().__init__(f'structured: {reason}')

class InheritsInit(StructuredError):
    pass

class Stopped(KeyboardInterrupt):
    pass

class MissingKey(KeyError):
    pass

def registered(cls):
    return cls

@registered
class Decorated(AppError):
    pass

def make_error(message):
    return ValueError(message)

def plain():
    raise ValueError('plain message')

def f_string(x):
    raise RuntimeError(f'bad {x}') from None

def concatenated(x):
    raise ConfigError('bad ' + str(x) + '!')

def percent(x):
    raise DeepError('bad %s' % x)

def formatted(x):
    raise TypeError('bad {}'.format(x))

def chained(x):
    try:
        return 1 // x
    except ZeroDivisionError as error:
        raise AppError(f'division: {error}') from error

def attribute():
    import builtins
    raise builtins.IndexError('through an attribute')

def subclass_of_builtin():
    raise BadValue('subclass of a builtin')

def asserted(x):
    assert x > 0, f'x must be positive, got {x}'

def bare_assert(x):
    assert x > 0

def value_assert(x):
    assert x > 0, x

def custom_init():
    raise StructuredError('kept')

def inherited_init():
    raise InheritsInit('kept')

def decorated():
    raise Decorated('kept')

def keyboard():
    raise Stopped('kept')

def system_exit():
    raise SystemExit('kept')

def key_error():
    raise KeyError('kept')

def missing_key():
    raise MissingKey('kept')

def stop():
    raise StopIteration('kept')

def several_args():
    raise ValueError('kept', 1)

def keyword_args():
    raise ConfigError('kept', **{})

def variable_message(message):
    raise ValueError(message)

def factory():
    raise make_error('kept')

def bare_class():
    raise ValueError

def empty_call():
    raise ValueError()

def reraise():
    try:
        plain()
    except ValueError:
        raise

def reraise_name():
    try:
        plain()
    except ValueError as error:
        raise error

def not_errors(x):
    import warnings
    print('printed message')
    warnings.warn('a warning')
    return 'returned message'

def missing_file(path):
    raise FileNotFoundError(f'no file {path}')
'''

# Each statement whose message goes, and what it becomes: the line of that statement in SOURCE, then the
# values the message quotes (none for an OSError: its second argument would be a strerror).
REPLACED = {
    "raise ValueError('plain message')": "raise ValueError(38)",
    "raise RuntimeError(f'bad {x}') from None": "raise RuntimeError(41, x) from None",
    "raise ConfigError('bad ' + str(x) + '!')": "raise ConfigError(44, str(x))",
    "raise DeepError('bad %s' % x)": "raise DeepError(47, x)",
    "raise TypeError('bad {}'.format(x))": "raise TypeError(50, x)",
    "raise AppError(f'division: {error}') from error": "raise AppError(56, error) from error",
    "raise FileNotFoundError(f'no file {path}')": "raise FileNotFoundError(135)",
    "raise builtins.IndexError('through an attribute')": "raise builtins.IndexError(60)",
    "raise BadValue('subclass of a builtin')": "raise BadValue(63)",
    "assert x > 0, f'x must be positive, got {x}'": "assert x > 0, 66",
}


def line_of(text: str) -> int:
    # Found in SOURCE itself: the run checks below confirm the numbers written in REPLACED.
    (line,) = [number for number, content in enumerate(SOURCE.splitlines(), 1) if text in content]
    return line


def run_terse(function: str, *args) -> BaseException:
    namespace: dict = {}
    exec(compile(terse_messages(SOURCE)[0], "<terse>", "exec"), namespace)
    with pytest.raises(BaseException) as caught:
        namespace[function](*args)
    return caught.value


def test_only_messages_change_and_each_becomes_its_line():
    expected = SOURCE
    for before, after in REPLACED.items():
        assert expected.count(before) == 1, before
        expected = expected.replace(before, after)
    terse, removed = terse_messages(SOURCE)
    assert terse == ast.unparse(ast.parse(expected))
    assert removed == len(REPLACED)
    compile(terse, "<terse>", "exec")


@pytest.mark.parametrize("function, args, error_type, statement, quoted", [
    ("plain", (), ValueError, "raise ValueError('plain message')", ()),
    ("f_string", (1,), RuntimeError, "raise RuntimeError(f'bad {x}') from None", (1,)),
    ("concatenated", (1,), "ConfigError", "raise ConfigError('bad ' + str(x) + '!')", ("1",)),
    ("percent", (1,), "DeepError", "raise DeepError('bad %s' % x)", (1,)),
    ("formatted", (1,), TypeError, "raise TypeError('bad {}'.format(x))", (1,)),
    ("attribute", (), IndexError, "raise builtins.IndexError('through an attribute')", ()),
    ("subclass_of_builtin", (), ValueError, "raise BadValue('subclass of a builtin')", ()),
    ("asserted", (0,), AssertionError, "assert x > 0, f'x must be positive, got {x}'", ()),
    ("missing_file", ("a.bin",), FileNotFoundError, "raise FileNotFoundError(f'no file {path}')", ()),
])
def test_replaced_messages_raise_the_same_type_with_the_line(function, args, error_type, statement, quoted):
    error = run_terse(function, *args)
    if isinstance(error_type, str):  # a class of the sample program
        assert type(error).__name__ == error_type
    else:
        assert isinstance(error, error_type)
    assert error.args == (line_of(statement), *quoted)


def test_a_quoted_value_is_the_object_the_message_showed():
    error = run_terse("chained", 0)
    line, quoted = error.args
    assert line == line_of("raise AppError(f'division: {error}') from error")
    assert isinstance(quoted, ZeroDivisionError) and quoted is error.__cause__


@pytest.mark.parametrize("function, args, error_type, error_args", [
    ("bare_assert", (0,), AssertionError, ()),
    ("value_assert", (-2,), AssertionError, (-2,)),
    ("custom_init", (), Exception, ("structured: kept",)),
    ("inherited_init", (), Exception, ("structured: kept",)),
    ("decorated", (), Exception, ("kept",)),
    ("keyboard", (), KeyboardInterrupt, ("kept",)),
    ("system_exit", (), SystemExit, ("kept",)),
    ("key_error", (), KeyError, ("kept",)),
    ("missing_key", (), KeyError, ("kept",)),
    ("stop", (), StopIteration, ("kept",)),
    ("several_args", (), ValueError, ("kept", 1)),
    ("keyword_args", (), Exception, ("kept",)),
    ("variable_message", ("kept",), ValueError, ("kept",)),
    ("factory", (), ValueError, ("kept",)),
    ("bare_class", (), ValueError, ()),
    ("empty_call", (), ValueError, ()),
    # plain()'s error, already terse, passes through unchanged
    ("reraise", (), ValueError, (line_of("raise ValueError('plain message')"),)),
    ("reraise_name", (), ValueError, (line_of("raise ValueError('plain message')"),)),
])
def test_other_raises_and_asserts_keep_their_arguments(function, args, error_type, error_args):
    error = run_terse(function, *args)
    assert isinstance(error, error_type)
    assert error.args == error_args


def test_logging_warnings_and_returns_keep_their_strings():
    namespace: dict = {}
    exec(compile(terse_messages(SOURCE)[0], "<terse>", "exec"), namespace)
    with pytest.warns(UserWarning, match="a warning"):
        assert namespace["not_errors"](1) == "returned message"


def test_a_source_without_messages_is_only_reformatted():
    source = "def f(x):\n    raise KeyError(x)\n"
    assert terse_messages(source) == (ast.unparse(ast.parse(source)), 0)


# Real modules: the package's error classes, one data and one config module (f-strings, concatenation,
# re-raised ValueError, AssertionError) and the optimizer modules (assert messages, and asserts whose
# second part is a value and must stay).
REAL_MODULES = ("errors.py", "data/shards.py", "config.py", "optim/groups.py", "optim/schedules.py")


def raise_and_assert_arguments(tree: ast.AST) -> list[tuple[ast.stmt, list[ast.expr]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            found.append((node, node.exc.args))
        elif isinstance(node, ast.Assert) and node.msg is not None:
            found.append((node, [node.msg]))
    return found


def holds_string(expressions: list[ast.expr]) -> bool:
    return any(isinstance(part, ast.JoinedStr) or (isinstance(part, ast.Constant) and isinstance(part.value, str))
               for expression in expressions for part in ast.walk(expression))


def test_real_modules_lose_every_message():
    package = Path(pgolf.__file__).parent
    source = "\n".join((package / module).read_text(encoding="utf-8") for module in REAL_MODULES)
    terse, removed = terse_messages(source)
    compile(terse, "<terse>", "exec")

    statement_lines = {node.lineno for node, _ in raise_and_assert_arguments(ast.parse(source))}
    pointers = []
    for node, arguments in raise_and_assert_arguments(ast.parse(terse)):
        # the message went; what follows the pointer are the values it quoted, not text of its own
        assert arguments[:1] == [] or not holds_string(arguments[:1]), ast.unparse(node)
        assert not any(isinstance(argument, ast.JoinedStr) for argument in arguments), ast.unparse(node)
        if arguments and isinstance(arguments[0], ast.Constant) and type(arguments[0].value) is int:
            pointers.append(arguments[0].value)
    assert removed > 0
    assert len(pointers) == removed
    assert set(pointers) <= statement_lines  # each number names a raise/assert line of the readable source


def test_a_user_errors_one_argument_goes_however_it_is_worded():
    source = textwrap.dedent("""
        class PgolfError(Exception):
            pass

        class DataError(PgolfError):
            pass

        def wording(path):
            return f"{path} is bad"

        def user(path):
            problem = wording(path)
            raise DataError(problem)

        def worded(path):
            raise DataError(wording(path)) from None

        def builtin(value):
            raise ValueError(value)

        def starred(parts):
            raise DataError(*parts)
    """)
    terse, removed = terse_messages(source)
    assert removed == 2
    assert "raise DataError(13)" in terse and "raise DataError(16) from None" in terse
    assert "raise ValueError(value)" in terse and "raise DataError(*parts)" in terse  # not a lone message
