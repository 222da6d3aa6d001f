"""The flattened program as the exporter transforms it: one syntax tree per module, one namespace (tooling).

The exporter's later steps (``specialize``, ``shake``) read and rewrite the program as a whole, since
its top-level names form one namespace, but the readable script keeps a section per module. A
:class:`Program` is therefore a list of :class:`Section` (a module's label and its top-level
statements) over which the analyses iterate as if it were one module. This file also holds the scope
helpers both steps use: which names a function binds, and a walk that stays inside one scope.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
               ast.DictComp, ast.GeneratorExp)
FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclass
class Section:
    """A module's part of the program: its name (``pgolf.model.gpt``), label and top-level statements."""

    name: str
    label: str
    body: list[ast.stmt]
    # The module's declared feature switch: a Python expression over flat config names ("" = none).
    switch: str = ""
    # The top-level names the module defined before anything was dropped (for --explain).
    defined: list[str] = field(default_factory=list)


@dataclass
class Program:
    sections: list[Section]

    def statements(self) -> Iterator[ast.stmt]:
        for section in self.sections:
            yield from section.body

    def tree(self) -> ast.Module:
        """The whole program as one module (the nodes are shared: analyses see the current state)."""
        return ast.Module(body=list(self.statements()), type_ignores=[])

    def section_of(self, name: str) -> Section:
        return next(section for section in self.sections if section.name == name)

    def top_level_definitions(self) -> dict[str, ast.stmt]:
        """Name -> the top-level statement that binds it (function, class, assignment, import)."""
        found: dict[str, ast.stmt] = {}
        for statement in self.statements():
            for name in statement_bound_names(statement):
                found.setdefault(name, statement)
        return found


def statement_bound_names(statement: ast.stmt) -> list[str]:
    """Names a top-level statement binds in the module namespace."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return [alias.asname or alias.name.split(".")[0] for alias in statement.names]
    if isinstance(statement, ast.Assign):
        return [name for target in statement.targets for name in target_names(target)]
    if isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        return target_names(statement.target)
    return [node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)]


def target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in target_names(element)]
    if isinstance(target, ast.Starred):
        return target_names(target.value)
    return []


def outer_parts(scope: ast.AST) -> list[ast.AST]:
    """What the enclosing scope evaluates of a nested scope: decorators, defaults, annotations, bases,
    the first comprehension iterable."""
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [*scope.decorator_list, *_argument_defaults(scope.args), *_argument_annotations(scope.args),
                *([scope.returns] if scope.returns is not None else [])]
    if isinstance(scope, ast.Lambda):
        return _argument_defaults(scope.args)
    if isinstance(scope, ast.ClassDef):
        return [*scope.decorator_list, *scope.bases, *[keyword.value for keyword in scope.keywords]]
    return [scope.generators[0].iter]


def scope_children(node: ast.AST) -> Iterator[ast.AST]:
    """Child nodes evaluated in ``node``'s own scope: a nested scope contributes only what its
    enclosing scope evaluates (:func:`outer_parts`)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, SCOPE_NODES):
            yield from outer_parts(child)
        else:
            yield child


def _argument_defaults(args: ast.arguments) -> list[ast.expr]:
    return [d for d in args.defaults + args.kw_defaults if d is not None]


def _argument_annotations(args: ast.arguments) -> list[ast.expr]:
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return [arg.annotation for arg in every if arg.annotation is not None]


def walk_scope(node: ast.AST) -> Iterator[ast.AST]:
    """Every node evaluated in the scope ``node`` opens (a function's body, without nested scopes: a
    ``def`` statement in the body is yielded, with only its :func:`outer_parts` walked)."""
    todo = list(function_body_nodes(node)) if isinstance(node, SCOPE_NODES) else [node]
    while todo:
        current = todo.pop()
        yield current
        if isinstance(current, SCOPE_NODES) and current is not node:
            todo.extend(outer_parts(current))
        else:
            todo.extend(scope_children(current))


def function_body_nodes(node: ast.AST) -> list[ast.AST]:
    """What a scope evaluates inside itself: a function's body, a lambda's expression, a class body,
    a comprehension's element, conditions and inner iterables."""
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return list(node.body)
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
        parts = [node.elt]
    elif isinstance(node, ast.DictComp):
        parts = [node.key, node.value]
    else:
        return []
    for index, generator in enumerate(node.generators):
        parts += [generator.target, *generator.ifs] + ([generator.iter] if index else [])
    return parts


def nested_scopes(node: ast.AST) -> Iterator[ast.AST]:
    """The scopes opened directly inside ``node``'s scope."""
    for current in walk_scope(node):
        for child in ast.iter_child_nodes(current):
            if isinstance(child, SCOPE_NODES):
                yield child


def parameter_names(function: ast.AST) -> list[str]:
    args = function.args
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return [arg.arg for arg in every]


def scope_bindings(scope: ast.AST) -> dict[str, int]:
    """How many times each name is bound in ``scope`` itself (parameters count once; a name declared
    ``global``/``nonlocal`` or bound by a walrus anywhere inside counts as bound many times)."""
    counts: dict[str, int] = {}

    def bind(name: str, times: int = 1) -> None:
        counts[name] = counts.get(name, 0) + times

    if isinstance(scope, FUNCTION_NODES):
        for name in parameter_names(scope):
            bind(name)
    for node in walk_scope(scope):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bind(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                bind(name, 2)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bind(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bind(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bind(node.name, 2)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not scope:
            bind(node.name)
    for inner in ast.walk(scope):  # a walrus in a comprehension binds in the enclosing function
        if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
            bind(inner.target.id, 2)
    return counts


def copy_tree(node):
    """A copy of an AST node (or list of nodes), fields only. Not ``copy.deepcopy``: python-minifier
    annotates nodes it visits (``_parent``, ``namespace``), the shared ``ast.Load()`` singleton
    included, so a deep copy of any name would drag along a whole earlier program (seconds per copy
    after the first export in a process). Context singletons and constant values are shared."""
    if isinstance(node, list):
        return [copy_tree(item) for item in node]
    if not isinstance(node, ast.AST) or isinstance(node, ast.expr_context):
        return node
    copied = type(node)(**{name: copy_tree(value) for name, value in ast.iter_fields(node)})
    for attribute in node._attributes:
        if hasattr(node, attribute):
            setattr(copied, attribute, getattr(node, attribute))
    return copied


def referenced_name(node: ast.AST) -> str | None:
    """The name ``X`` or ``something.X`` refers to (a call's function, a base, a decorator); None for
    anything computed."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def names_loaded(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class _ScopeCollector(ast.NodeVisitor):
    """One walk that records, for every function and lambda, ``scope_bindings`` and the names read
    anywhere inside it (nested scopes included)."""

    def __init__(self) -> None:
        self.bindings: dict[int, tuple[ast.AST, dict[str, int]]] = {}
        self.loads: dict[int, set[str]] = {}
        self.stack: list[tuple[dict[str, int], set[str]]] = []

    def bind(self, name: str, times: int = 1) -> None:
        if self.stack:
            counts = self.stack[-1][0]
            counts[name] = counts.get(name, 0) + times

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            for _, loads in self.stack:
                loads.add(node.id)
        else:
            self.bind(node.id)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self.bind(name, 2)

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bind(node.name)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.bind(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        # A walrus binds in the enclosing function, even from inside a comprehension.
        for counts, _ in reversed(self.stack):
            counts[node.target.id] = counts.get(node.target.id, 0) + 2
            break
        self.visit(node.value)

    def visit_MatchAs(self, node: ast.AST) -> None:
        if node.name:
            self.bind(node.name, 2)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def _function(self, node: ast.AST) -> None:
        if not isinstance(node, ast.Lambda):
            self.bind(node.name)
            for decorator in node.decorator_list:
                self.visit(decorator)
            if node.returns is not None:
                self.visit(node.returns)
        args = node.args
        for default in [d for d in args.defaults + args.kw_defaults if d is not None]:
            self.visit(default)
        for arg in args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]:
            if arg.annotation is not None:
                self.visit(arg.annotation)
        counts: dict[str, int] = {}
        for name in parameter_names(node):
            counts[name] = counts.get(name, 0) + 1
        loads: set[str] = set()
        self.stack.append((counts, loads))
        for child in ([node.body] if isinstance(node, ast.Lambda) else node.body):
            self.visit(child)
        self.stack.pop()
        self.bindings[id(node)] = (node, counts)
        self.loads[id(node)] = loads

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bind(node.name)
        for item in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(item)
        counts: dict[str, int] = {}
        self.stack.append((counts, set()))
        for child in node.body:
            self.visit(child)
        _, loads = self.stack.pop()
        for _, outer in self.stack:
            outer |= loads
        self.bindings[id(node)] = (node, counts)

    def _comprehension(self, node: ast.AST) -> None:
        self.visit(node.generators[0].iter)
        counts: dict[str, int] = {}
        self.stack.append((counts, set()))
        for index, generator in enumerate(node.generators):
            self.visit(generator.target)
            if index:
                self.visit(generator.iter)
            for condition in generator.ifs:
                self.visit(condition)
        for name in ("elt", "key", "value"):
            if hasattr(node, name):
                self.visit(getattr(node, name))
        _, loads = self.stack.pop()
        for _, outer in self.stack:
            outer |= loads
        self.bindings[id(node)] = (node, counts)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension


def collect_scopes(tree: ast.AST) -> _ScopeCollector:
    """Bindings and reads of every scope in ``tree``, in one walk (see :func:`scope_bindings`)."""
    collector = _ScopeCollector()
    collector.visit(tree)
    return collector
