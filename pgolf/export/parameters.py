"""Parameters a function never reads: dropped from its definition and from every call; keyword arguments
made positional; functions of one return expression inlined at their one call (tooling).

Once the configuration is baked, many parameters carry values nothing reads any more
(``compress(data, compressor, shuffle_stride)`` after both were folded to constants; ``name`` once
the message that used it has become a line number). The minifier keeps them, and every call keeps
passing them. This pass removes such a parameter from the ``def`` and its argument from every call,
when that is provably the same program:

- the function is a top-level ``def`` (or the ``__init__`` of an undecorated top-level class nothing
  subclasses), undecorated, without ``*args``/``**kwargs``, bound once in the whole program, and every use of its
  name is a direct call without ``*``/``**`` unpacking (so no caller can reach it another way: not
  ``functools.partial(f)``, not a callback, not ``getattr(module, "f")``); ``type(x)(...)`` or
  ``x.__class__(...)`` anywhere keeps every ``__init__``, and so does a classmethod or ``__new__`` in
  the class (``cls(...)``);
- no node in the function reads the parameter, and the function asks for no frame (``locals()``,
  ``vars()``, ``eval``, ``exec``, ``sys._getframe``);
- every argument given for it, and its default, is a pure expression (a name, a constant, an
  attribute read, operators on them), so not evaluating it changes nothing.

The same functions, and dataclasses, then get their keyword arguments as positional ones
(:func:`pass_by_position`), so that calls spell no parameter names and python-minifier may shorten
the parameters.

Names the export's own check calls from outside the program (:data:`pgolf.export.verify.PROBE_NAMES`)
keep their signatures. The pass runs on the counted program only (the readable file keeps every
parameter); :func:`pgolf.export.verify.verify_minified` runs the readable and the minified program
side by side, so what it changes is checked, not trusted.
"""

import ast

from pgolf.export.facts import dataclass_init_fields
from pgolf.export.program import Program, copy_tree, parameter_names
from pgolf.export.specialize import is_pure

# Builtins and attributes through which a function can see its own parameters by name.
FRAME_BUILTINS = frozenset({"locals", "vars", "eval", "exec", "globals"})
FRAME_ATTRIBUTES = frozenset({"_getframe", "currentframe", "f_locals"})


def drop_unused_parameters(program: Program, keep: frozenset[str] = frozenset()) -> int:
    """Remove every parameter (and its arguments) that the rules above allow; ``keep``: names whose
    signatures stay. Returns how many parameters went."""
    tree = program.tree()
    uses = _name_uses(tree)
    if uses.frame_read_at_top:
        return 0
    dropped = 0
    for statement in tree.body:
        function, skip_first = _rewritable_function(statement, uses)
        if function is None or statement.name in keep:
            continue
        calls = uses.calls.get(statement.name)
        if calls is None:
            continue
        names = [name for name in _unread_parameters(function, skip_first)
                 if _droppable_everywhere(function, name, calls, skip_first)]
        if names:
            _drop(function, set(names), calls, skip_first)
            dropped += len(names)
    return dropped


class _NameUses(ast.NodeVisitor):
    """For each name: its direct calls (None once it is used any other way) and how often it is bound."""

    def __init__(self) -> None:
        self.calls: dict[str, list[ast.Call] | None] = {}
        self.bound: dict[str, int] = {}
        self.neutral: set[int] = set()  # uses that call nothing: callees, isinstance classes, annotations
        self.rebuilds_instances = False  # type(x)(...) or x.__class__(...): constructors called indirectly
        self.frame_read_at_top = False
        self.declared: set[str] = set()  # names some scope declares global or nonlocal
        self.parents: dict[int, ast.AST] = {}

    def bind(self, name: str) -> None:
        self.bound[name] = self.bound.get(name, 0) + 1

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            unpacks = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
            known = self.calls.setdefault(func.id, [])
            if unpacks:
                self.calls[func.id] = None
            elif known is not None:
                known.append(node)
            self.neutral.add(id(func))
            if func.id == "globals":
                self.frame_read_at_top = True
            if func.id == "isinstance" and len(node.args) == 2:
                classes = node.args[1]
                for item in classes.elts if isinstance(classes, ast.Tuple) else [classes]:
                    self.neutral.add(id(item))
        elif isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id == "type":
            self.rebuilds_instances = True
        elif isinstance(func, ast.Attribute) and func.attr == "__class__":
            self.rebuilds_instances = True
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.bind(node.id)
        elif id(node) not in self.neutral:
            self.calls[node.id] = None

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.bind(node.name)
        for name in parameter_names(node):
            self.bind(name)
        self._neutral_annotations(node.args, node.returns)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.neutral.update(id(n) for n in ast.walk(node.annotation))
        self.generic_visit(node)

    def _neutral_annotations(self, args: ast.arguments, returns: ast.expr | None) -> None:
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        for annotation in [a.annotation for a in every if a.annotation is not None] + [returns]:
            if annotation is not None:
                self.neutral.update(id(n) for n in ast.walk(annotation))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for name in parameter_names(node):
            self.bind(name)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bind(node.name)
        self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> None:
        self.bind(node.asname or node.name.split(".")[0])

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bind(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.AST) -> None:
        if node.name:
            self.bind(node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.bind(node.rest)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self.bind(name)
            self.bind(name)
            self.declared.add(name)

    visit_Nonlocal = visit_Global


def _name_uses(tree: ast.Module) -> _NameUses:
    uses = _NameUses()
    uses.visit(tree)
    uses.parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    return uses


def _rewritable_function(statement: ast.stmt, uses: _NameUses) -> tuple[ast.FunctionDef | None, bool]:
    """(the function whose signature and calls may change together, whether its first parameter is
    ``self``)."""
    if uses.bound.get(getattr(statement, "name", None), 0) != 1:
        return None, False
    if isinstance(statement, ast.FunctionDef):
        function, skip_first = statement, False
    elif isinstance(statement, ast.ClassDef) and not statement.decorator_list and not uses.rebuilds_instances \
            and not _subclassed(statement, uses):  # a decorator such as @dataclass may build instances itself
        inits = [s for s in statement.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"]
        if len(inits) != 1 or _builds_through_cls(statement):
            return None, False
        function, skip_first = inits[0], True
    else:
        return None, False
    if function.decorator_list or function.args.vararg or function.args.kwarg or _reads_frame(function):
        return None, False
    return function, skip_first


def _builds_through_cls(cls: ast.ClassDef) -> bool:
    """A classmethod (``cls(...)``) or ``__new__`` may build instances without naming the class."""
    return any(isinstance(s, ast.FunctionDef) and (s.name == "__new__" or any(
        isinstance(d, ast.Name) and d.id == "classmethod" for d in s.decorator_list)) for s in cls.body)


def _subclassed(cls: ast.ClassDef, uses: _NameUses) -> bool:
    # A class used as a base is a Name load that is not a call: its calls entry is None already.
    return uses.calls.get(cls.name) is None


def _reads_frame(function: ast.FunctionDef) -> bool:
    return any((isinstance(n, ast.Name) and n.id in FRAME_BUILTINS)
               or (isinstance(n, ast.Attribute) and n.attr in FRAME_ATTRIBUTES) for n in ast.walk(function))


def _unread_parameters(function: ast.FunctionDef, skip_first: bool) -> list[str]:
    read = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
    args = function.args
    candidates = (args.posonlyargs + args.args)[1 if skip_first else 0:] + args.kwonlyargs
    return [a.arg for a in candidates if a.arg not in read]


def _positional_names(function: ast.FunctionDef, skip_first: bool) -> list[str]:
    return [a.arg for a in (function.args.posonlyargs + function.args.args)[1 if skip_first else 0:]]


def _given(call: ast.Call, name: str, positional: list[str]) -> ast.expr | None:
    """The expression ``call`` passes for parameter ``name`` (None: it leaves the default)."""
    if name in positional and positional.index(name) < len(call.args):
        return call.args[positional.index(name)]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _default(function: ast.FunctionDef, name: str) -> ast.expr | None:
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return defaults.get(name)


def _droppable_everywhere(function: ast.FunctionDef, name: str, calls: list[ast.Call], skip_first: bool) -> bool:
    positional = _positional_names(function, skip_first)
    given = [_given(call, name, positional) for call in calls]
    default = _default(function, name)
    if default is None and any(value is None for value in given):
        return False  # a call that passes too few arguments raises TypeError today; keep that
    return all(value is None or is_pure(value) for value in [*given, default])


def _drop(function: ast.FunctionDef, names: set[str], calls: list[ast.Call], skip_first: bool) -> None:
    positional = _positional_names(function, skip_first)
    dropped_indices = {i for i, name in enumerate(positional) if name in names}
    for call in calls:
        call.args = [a for i, a in enumerate(call.args) if i not in dropped_indices]
        call.keywords = [k for k in call.keywords if k.arg not in names]
    args = function.args
    every_positional = args.posonlyargs + args.args
    first_default = len(every_positional) - len(args.defaults)
    kept_defaults = [d for a, d in zip(every_positional[first_default:], args.defaults) if a.arg not in names]
    args.posonlyargs = [a for a in args.posonlyargs if a.arg not in names]
    args.args = [a for a in args.args if a.arg not in names]
    args.defaults = kept_defaults
    kept_keyword_only = [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if a.arg not in names]
    args.kwonlyargs = [a for a, _ in kept_keyword_only]
    args.kw_defaults = [d for _, d in kept_keyword_only]


def pass_by_position(program: Program, keep: frozenset[str] = frozenset()) -> int:
    """Keyword arguments of calls to the program's own functions, constructors and dataclasses become
    positional, in parameter order, so that the call spells no parameter name (and, once no call names
    it, python-minifier may shorten the parameter). A function qualifies as for
    :func:`drop_unused_parameters` (a dataclass: :func:`pgolf.export.facts.dataclass_init_fields` gives
    its ``__init__``'s order; ``kw_only`` ones stay as they are); every call must convert, or none does. A
    call converts when what it skips before its last argument has a literal default (copied in), and
    when moving the keyword arguments into parameter order cannot reorder side effects (they are already
    in that order, or pure). A converted ``def``'s parameters all become positional-only (no call names
    them, whatever other calls in the program pass by keyword), when the defaults stay a trailing run.
    Returns how many keyword arguments became positional."""
    tree = program.tree()
    uses = _name_uses(tree)
    if uses.frame_read_at_top:
        return 0
    moved = 0
    for statement in tree.body:
        if getattr(statement, "name", None) in keep or not uses.calls.get(getattr(statement, "name", None)):
            continue
        signature = _positional_signature(statement, uses)
        if signature is None:
            continue
        order, defaults, function = signature
        calls = uses.calls[statement.name]
        converted = [_positional_arguments(call, order, defaults) for call in calls]
        if any(arguments is None for arguments in converted):
            continue
        for call, arguments in zip(calls, converted):
            moved += len(call.keywords)
            call.args, call.keywords = arguments, []
        if function is not None:  # no call names a parameter now: all may be positional-only
            args = function.args
            args.posonlyargs, args.args = args.posonlyargs + args.args + args.kwonlyargs, []
            args.defaults = args.defaults + [d for d in args.kw_defaults if d is not None]
            args.kwonlyargs, args.kw_defaults = [], []
    return moved


def _positional_signature(statement: ast.stmt, uses: _NameUses) -> tuple[list[str], dict, ast.FunctionDef | None] | None:
    """(parameter names in positional order, name -> default expression, the def to convert or None)."""
    function, skip_first = _rewritable_function(statement, uses)
    if function is not None:
        args = function.args
        positional = (args.posonlyargs + args.args)[1 if skip_first else 0:]
        order = [a.arg for a in positional + args.kwonlyargs]
        defaults = {name: _default(function, name) for name in order if _default(function, name) is not None}
        with_default = [name in defaults for name in order]
        if with_default != sorted(with_default):  # a parameter without a default after one with
            return None
        return order, defaults, function
    if isinstance(statement, ast.ClassDef) and uses.bound.get(statement.name) == 1 and not _subclassed(statement, uses):
        fields = dataclass_init_fields(statement)
        if fields and all(f.positional for f in fields):
            return [f.name for f in fields], {f.name: f.default for f in fields if f.default is not None}, None
    return None


def _positional_arguments(call: ast.Call, order: list[str], defaults: dict) -> list[ast.expr] | None:
    """``call``'s arguments, all positional (None when it cannot be converted without changing it)."""
    if len(call.args) > len(order) or any(k.arg not in order for k in call.keywords):
        return None  # a call that raises TypeError today keeps raising it
    given = dict(zip(order, call.args))
    for keyword in call.keywords:
        if keyword.arg in given:
            return None
        given[keyword.arg] = keyword.value
    if not call.keywords:
        return list(call.args)
    indices = [order.index(k.arg) for k in call.keywords]
    if indices != sorted(indices) and not all(is_pure(k.value) for k in call.keywords):
        return None  # keyword arguments are evaluated as written; moving them must not reorder effects
    arguments = []
    for name in order[:max(order.index(name) for name in given) + 1]:
        default = defaults.get(name)
        if name in given:
            arguments.append(given[name])
        elif isinstance(default, ast.Constant):
            arguments.append(copy_tree(default))
        else:
            return None
    return arguments



def inline_single_calls(program: Program, keep: frozenset[str] = frozenset()) -> int:
    """A function whose body is one ``return <expression>`` and that one call in the whole program uses
    is replaced, at that call, by the expression with the call's arguments in place of the parameters.
    Only when that is the same program: the function qualifies as for :func:`drop_unused_parameters`
    (not a constructor), its expression opens no scope and binds nothing (no lambda, comprehension,
    walrus, ``yield`` or ``await``) and reads each parameter at most once; each argument is a constant,
    or a name no scope declares ``global``/``nonlocal`` (so nothing the expression runs first can change
    it); a parameter the call leaves out has a literal default; and every other name the expression
    reads is bound only at top level or nowhere (a builtin): no scope around the call can shadow it.
    Rounds repeat until nothing changes (a round inlines only functions independent of each other);
    returns how many calls were inlined."""
    inlined = 0
    while True:
        uses = _name_uses(program.tree())
        if uses.frame_read_at_top:
            return inlined
        top_level = set(program.top_level_definitions())
        plans = {s.name: plan for s in program.statements() if isinstance(s, ast.FunctionDef) and s.name not in keep
                 for plan in [_inline_plan(s, uses, top_level)] if plan is not None}
        # A round inlines functions that do not touch each other: once f's call inside g is replaced, g
        # waits for the next round (its body changed), and so does any function f's expression calls.
        owner = {id(n): s.name for s in program.statements() if getattr(s, "name", None) in plans for n in ast.walk(s)}
        done, waiting = set(), set()
        for name, (call, replacement) in plans.items():
            if name in waiting or owner.get(id(call)) in done:
                continue
            _replace_node(call, replacement, uses.parents[id(call)])
            done.add(name)
            waiting |= {owner.get(id(call))} | {n.id for n in ast.walk(replacement) if isinstance(n, ast.Name)}
        if not done:
            return inlined
        for section in program.sections:
            section.body = [s for s in section.body if not (isinstance(s, ast.FunctionDef) and s.name in done)]
        inlined += len(done)


def _inline_plan(function: ast.FunctionDef, uses: _NameUses, top_level: set[str]) -> tuple[ast.Call, ast.expr] | None:
    """(the one call, the expression to put there) when the rules allow inlining ``function``."""
    calls = uses.calls.get(function.name)
    checked, _ = _rewritable_function(function, uses)
    if checked is None or not calls or len(calls) != 1 or not _single_return(function):
        return None
    expression = _body_statements(function)[0].value
    call = calls[0]
    if any(n is call for n in ast.walk(function)):
        return None  # its one call is its own
    order = [a.arg for a in function.args.posonlyargs + function.args.args + function.args.kwonlyargs]
    arguments = _positional_arguments(call, order, {n: _default(function, n) for n in order if _default(function, n)})
    if arguments is None:
        return None
    values = dict(zip(order, arguments))
    for name in order[len(arguments):]:
        default = _default(function, name)
        if not isinstance(default, ast.Constant):
            return None
        values[name] = default
    if not all(isinstance(v, ast.Constant) or (isinstance(v, ast.Name) and v.id not in uses.declared)
               for v in values.values()):
        return None
    reads = [n.id for n in ast.walk(expression) if isinstance(n, ast.Name)]
    if any(reads.count(name) > 1 for name in order):
        return None
    others = {name for name in reads if name not in values}
    if any(uses.bound.get(name, 0) > (1 if name in top_level else 0) for name in others):
        return None
    return call, _Substitute(values).visit(copy_tree(expression))


def _body_statements(function: ast.FunctionDef) -> list[ast.stmt]:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return body


def _single_return(function: ast.FunctionDef) -> bool:
    body = _body_statements(function)
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return False
    binders = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr, ast.Yield,
               ast.YieldFrom, ast.Await)
    return not any(isinstance(n, binders) for n in ast.walk(body[0].value))


class _Substitute(ast.NodeTransformer):
    def __init__(self, values: dict[str, ast.expr]) -> None:
        self.values = values

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return copy_tree(self.values[node.id]) if node.id in self.values else node


def _replace_node(old: ast.AST, new: ast.AST, parent: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list) and any(item is old for item in value):
            value[[i for i, item in enumerate(value) if item is old][0]] = new
            return
    raise ValueError("internal: the call to inline is not where its parent says")
