"""Parameters in the counted program (pgolf/export/parameters.py, shake.make_positional_only): unread ones
leave, keyword arguments become positional, names go positional-only, only where no caller can tell."""

import ast
import textwrap

from pgolf.export.parameters import drop_unused_parameters, inline_single_calls, pass_by_position
from pgolf.export.program import Program, Section, copy_tree
from pgolf.export.shake import ExternalBases, make_positional_only


def _transformed(transform, source: str, keep: frozenset[str] = frozenset()) -> tuple[int, str]:
    """(what ``transform`` returned, the program after it) for ``source`` as a one-section program."""
    program = Program([Section("m", "m", ast.parse(textwrap.dedent(source)).body)])
    count = transform(program, keep)
    return count, "\n".join(ast.unparse(s) for s in program.statements())


def _dropped(source: str, keep: frozenset[str] = frozenset()) -> tuple[int, str]:
    return _transformed(drop_unused_parameters, source, keep)


def _run(source: str) -> dict:
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "<test>", "exec"), namespace)
    return namespace["RESULT"]


def test_unread_parameters_leave_the_def_and_every_call_and_the_result_is_the_same():
    source = """
        def scale(x, name, factor, /, *, unit, verbose=False):
            return x * factor
        RESULT = [scale(2, 'a', 3, unit='kg'), scale(5, 'b', 7, unit='m', verbose=True)]
    """
    count, after = _dropped(source)
    assert count == 3
    assert "def scale(x, factor, /):" in after
    assert "scale(2, 3)" in after and "scale(5, 7)" in after
    assert _run(after + "\n") == _run(source) == [6, 35]


def test_a_function_used_any_way_but_a_direct_call_keeps_its_signature():
    for use in ("CALLBACK = pick", "import functools\nP = functools.partial(pick, 1)",
                "ARGS = (1, 2)\nX = pick(*ARGS)", "KW = {'b': 2}\nX = pick(1, **KW)"):
        count, after = _dropped(f"def pick(a, b):\n    return a\n{use}\nY = pick(1, 2)\n")
        assert count == 0 and "def pick(a, b):" in after, use


def test_an_argument_with_side_effects_keeps_its_parameter():
    source = """
        LOG = []
        def note(x):
            LOG.append(x)
            return x
        def first(a, b):
            return a
        X = first(1, note(2))
        RESULT = LOG
    """
    count, after = _dropped(source)
    assert count == 0 and _run(after + "\n") == [2]


def test_a_parameter_read_anywhere_inside_stays():
    for body in ("return (lambda: b)()", "return [b for _ in range(1)]", "def inner():\n        return b\n    return inner()",
                 "return locals()", "return eval('b')"):
        count, after = _dropped(f"def f(b):\n    {body}\nX = f(2)\n")
        assert count == 0 and "def f(b):" in after, body


def test_names_bound_twice_or_kept_on_request_stay():
    shadowed = "def f(a, b):\n    return a\ndef g(f):\n    return f(1, 2)\nX = f(1, 2)\n"
    assert _dropped(shadowed)[0] == 0  # g's parameter f is another function: its call must keep two arguments
    rebound = "def f(a, b):\n    return a\ndef f(a, b):\n    return b\nX = f(1, 2)\n"
    assert _dropped(rebound)[0] == 0
    assert _dropped("def build(a, b):\n    return a\nX = build(1, 2)\n", keep=frozenset({"build"}))[0] == 0


def test_a_call_that_relies_on_a_missing_argument_raising_keeps_it():
    count, _ = _dropped("def f(a, b):\n    return a\ntry:\n    f(1)\nexcept TypeError:\n    pass\n")
    assert count == 0


def test_constructor_parameters_go_only_for_classes_built_by_direct_calls():
    plain = """
        class Box:
            def __init__(self, size, label):
                self.size = size
        RESULT = Box(3, 'x').size
    """
    count, after = _dropped(plain)
    assert count == 1 and "def __init__(self, size):" in after and "Box(3)" in after
    assert _run(after + "\n") == 3
    checked = plain.replace("RESULT = Box(3, 'x').size", "RESULT = isinstance(Box(3, 'x'), Box)")
    assert _dropped(checked)[0] == 1  # isinstance reads the class, calls nothing
    for extra in ("class Big(Box):\n    pass", "def copy_of(b):\n    return type(b)(1, 2)",
                  "def copy_of(b):\n    return b.__class__(1, 2)"):
        assert _dropped(textwrap.dedent(plain) + extra + "\n")[0] == 0, extra
    factory = plain.replace("RESULT =", "    @classmethod\n            def small(cls):\n                return cls(1, 'y')\n        RESULT =")
    assert "cls(1, 'y')" in factory and _dropped(factory)[0] == 0
    decorated = "import dataclasses\n@dataclasses.dataclass\nclass Box:\n    def __init__(self, size, label):\n" \
                "        self.size = size\nX = Box(3, 'x')\n"
    assert _dropped(decorated)[0] == 0


def test_annotations_that_name_a_function_or_class_are_not_uses():
    source = """
        class Box:
            def __init__(self, size, label):
                self.size = size
        def size_of(box: Box, unused) -> int:
            return box.size
        ITEM: Box = Box(4, 'y')
        RESULT = size_of(ITEM, None)
    """
    count, after = _dropped(source)
    assert count == 2 and _run(after + "\n") == 4


def _positional(source: str, keep: frozenset[str] = frozenset()) -> tuple[int, str]:
    return _transformed(pass_by_position, source, keep)


def test_keyword_arguments_become_positional_with_skipped_literal_defaults_copied_in():
    source = """
        def window(tokens, start=0, *, size, stride=1):
            return tokens[start:start + size:stride]
        RESULT = [window('abcdefgh', size=3), window('abcdefgh', 2, stride=2, size=4)]
    """
    count, after = _positional(source)  # size has no default but follows start, which has one:
    assert count == 0 and "*, size, stride=1" in after  # it cannot become positional, so nothing changes
    assert _positional(source.replace("*, size,", "*, size=2,"))[0] == 3


def test_positional_conversion_keeps_results_and_evaluation_order():
    source = """
        def window(tokens, start=0, *, size=2, stride=1):
            return tokens[start:start + size:stride]
        RESULT = [window('abcdefgh', size=3), window('abcdefgh', 2, stride=2, size=4)]
    """
    count, after = _positional(source)
    assert count == 3 and "window('abcdefgh', 0, 3)" in after and "window('abcdefgh', 2, 4, 2)" in after
    assert "def window(tokens, start=0, size=2, stride=1, /):" in after
    assert _run(after + "\n") == _run(source) == ['abc', 'ce']
    effects = """
        LOG = []
        def note(x):
            LOG.append(x)
            return x
        def pair(a, b):
            return (a, b)
        X = pair(b=note(1), a=note(2))
        RESULT = LOG
    """
    count, after = _positional(effects)
    assert count == 0 and _run(after + "\n") == [1, 2]  # b is evaluated first: moving it would reorder


def test_calls_that_cannot_all_convert_leave_every_call_as_written():
    source = """
        def f(a, b=None, *, c=0):
            return (a, b, c)
        X = f(1, c=2)
        Y = f(1, c=3)
        Z = f(1, b=[], c=4) if False else None
    """
    count, _ = _positional(source.replace("b=None", "b=[]").replace("b=[], c=4", "c=4"))
    assert count == 0  # skipping b needs its default copied in, and [] is not a literal constant
    assert _positional(source)[0] == 4  # c twice, b and c once
    assert _positional(source, keep=frozenset({"f"}))[0] == 0
    assert _positional("def f(a, b):\n    return a\nX = f(1, c=2)\n")[0] == 0  # raises TypeError today


def test_dataclass_constructions_become_positional_unless_keyword_only():
    source = """
        from dataclasses import dataclass, field
        @dataclass(frozen=True)
        class Sums:
            loss: float
            count: int = 0
            tags: list = field(default_factory=list)
        RESULT = [repr(Sums(count=3, loss=1.5)), repr(Sums(2.0))]
    """
    count, after = _positional(source)
    assert count == 2 and "Sums(1.5, 3)" in after and _run(after + "\n") == _run(source)
    assert _positional(source.replace("(frozen=True)", "(frozen=True, kw_only=True)").replace("Sums(2.0)", "Sums(loss=2.0)"))[0] == 0
    skipping = source.replace("Sums(count=3, loss=1.5)", "Sums(tags=[1], loss=1.5)")
    assert "Sums(tags=[1], loss=1.5)" in skipping
    assert _positional(skipping)[0] == 2  # count's literal default is copied in: Sums(1.5, 0, [1])
    assert _run(_positional(skipping)[1] + "\n") == _run(skipping)


def _positional_only(source: str) -> str:
    return _transformed(lambda program, _: make_positional_only(program, ExternalBases(program)), source)[1]


def test_parameters_no_call_names_become_positional_only_through_pass_through_decorators_only():
    after = _positional_only("""
        import functools
        import torch
        def area(width, height):
            return width * height
        class Box:
            def __init__(self, size):
                self.size = size
            @property
            def doubled(self):
                return 2 * self.size
            @torch.no_grad()
            def scaled(self, factor):
                return self.size * factor
            @functools.cache
            def cached(self, factor):
                return factor
        def traced(fn):
            return fn
        @traced
        def kept(value):
            return value
        X = area(2, height=3)
    """)
    assert "def area(width, /, height):" in after  # height is passed by keyword somewhere
    assert "def doubled(self, /):" in after and "def scaled(self, factor, /):" in after
    assert "def cached(self, factor, /):" in after
    assert "def kept(value):" in after  # an unknown decorator may read the signature


def _inlined(source: str, keep: frozenset[str] = frozenset()) -> tuple[int, str]:
    return _transformed(inline_single_calls, source, keep)


def test_a_one_call_one_return_function_is_inlined_with_its_arguments_in_place():
    source = """
        def header(kind, version=1):
            '''The frame header.'''
            return bytes([kind, version])
        def frame(payload):
            return header(3) + payload
        RESULT = frame(b'x')
    """
    count, after = _inlined(source)
    assert count == 2 and "def header" not in after and "def frame" not in after
    assert "RESULT = bytes([3, 1]) + b'x'" in after and _run(after + "\n") == _run(source) == b"\x03\x01x"


def test_inlining_keeps_what_the_call_would_have_done_otherwise():
    cases = {
        "two calls": "def f(a):\n    return a + 1\nX = f(1)\nY = f(2)\n",
        "an attribute argument, read after the body's calls": "import os\ndef f(a):\n    return g() + a\n"
                                                               "def g():\n    return 0\nX = f(os.sep)\nY = g()\n",
        "a parameter read twice": "def f(a):\n    return a * a\nX = f(3)\n",
        "a nested scope": "def f(a):\n    return [a for _ in range(2)]\nX = f(3)\n",
        "a name the caller shadows": "LIMIT = 3\ndef f(a):\n    return min(a, LIMIT)\n"
                                     "def g(LIMIT):\n    return f(LIMIT)\nX = g(9)\nY = g(8)\n",
        "a global the body may change": "N = 1\ndef bump():\n    global N\n    N += 1\n    return 0\n"
                                        "def f(a):\n    return bump() + a\nX = f(N)\n",
        "a function used as a value": "def f(a):\n    return a\nG = f\nX = f(1)\n",
        "its only call is its own": "def f(a):\n    return f(a - 1) if a else 0\n",
        "more than one statement": "def f(a):\n    b = a\n    return b\nX = f(1)\n",
    }
    for label, source in cases.items():
        count, _ = _inlined(source)
        assert count == 0, label
    assert _inlined("def f(a):\n    return a\nX = f(1)\n", keep=frozenset({"f"}))[0] == 0


def test_copies_of_nodes_take_their_fields_only():
    """python-minifier annotates the nodes it visits, the shared ``ast.Load()`` included: a copy must not
    follow those annotations (a deep copy would drag a whole earlier program along)."""
    node = ast.parse("limit(a + 1, key='x')", mode="eval").body
    node.annotation_by_a_tool = ast.parse("big = [1, 2, 3]")
    copied = copy_tree(node)
    assert ast.dump(copied, include_attributes=True) == ast.dump(node, include_attributes=True)
    assert copied is not node and copied.args[0] is not node.args[0]
    assert not hasattr(copied, "annotation_by_a_tool")
    assert copied.func.ctx is node.func.ctx  # the context singletons are shared, never copied
