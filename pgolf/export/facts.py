"""What the program's text proves, for the specializer (tooling): the configuration's folded fields, and
per round the constants, types and fields the folder may rely on.

:func:`config_facts` says which fields of the baked configuration are constants in the script.
:func:`analyze` reads the whole program once per round and returns :class:`ProgramFacts`: the
functions that only return a constant, the attributes assigned one constant, the parameters every
call passes the same constant, the dataclass fields every construction leaves one constant, the
module-level tables and short constants never changed, and the types the annotations give (the rules
are listed in :mod:`pgolf.export.specialize`). Nothing here changes the program; the folder does.
"""

import ast
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pgolf.config import Config
from pgolf.export.program import (FUNCTION_NODES, SCOPE_NODES, Program, collect_scopes, is_docstring, referenced_name,
                                  scope_bindings, statement_bound_names, walk_scope)
from pgolf.export.verify import PROBE_NAMES

FOLDABLE_TYPES = (bool, int, float, str, type(None))
CONSTANT_TYPES = (bool, int, float, str, bytes, type(None), tuple)
MUTATING_METHODS = frozenset({"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"})
# Types of ``getattr(cfg, name)`` and ``getattr(section, name)`` with a computed name: some configuration
# section, some field's value. Nothing folds through them; they bound what such an object can be.
ANY_SECTION = "<a configuration section>"
SECTION_VALUE = "<a configuration field's value>"
# A module-level constant is written where it is read only when short (a long one is cheaper named once).
MODULE_CONSTANT_MAX_CHARS = 40
MODULE_CONSTANT_MAX_ITEMS = 8


@dataclass(frozen=True)
class ConfigFacts:
    """What the exporter knows of the configuration: section classes and the folded fields' values."""

    root: str  # "Config"
    sections: dict[str, str]  # attribute of the root -> section class ("model" -> "ModelConfig")
    folded: dict[str, dict[str, Any]]  # section class -> {field: value} of every folded field
    live: frozenset[str]  # fields left as reads (the environment may set them, or the code replaces them)
    value_types: frozenset[str] = frozenset()  # class names of every field's value ("int", "tuple", ...)

    @property
    def type_names(self) -> set[str]:
        return {self.root, *self.sections.values()}

    def folded_value(self, type_name: str, name: str) -> tuple[bool, Any]:
        values = self.folded.get(type_name, {})
        return (True, values[name]) if name in values else (False, None)


def replaced_config_fields(program: Program, field_names: set[str]) -> set[str]:
    """Fields the shipped code gives other values: keywords of ``replace(...)`` calls and of calls that
    construct a config section (``ModelConfig(num_layers=2)``). Those stay live reads."""
    found = set()
    for node in ast.walk(program.tree()):
        if not isinstance(node, ast.Call):
            continue
        name = referenced_name(node.func) or ""
        if name == "replace" or name.endswith("Config"):
            found.update(keyword.arg for keyword in node.keywords if keyword.arg in field_names)
    return found


def config_facts(cfg: Config, program: Program, environment_fields: frozenset[str]) -> ConfigFacts:
    """Every field of ``cfg`` is folded except ``environment_fields`` and those the code replaces."""
    sections = {section.name: type(getattr(cfg, section.name)).__name__ for section in dataclasses.fields(cfg)}
    every = {leaf.name for section in dataclasses.fields(cfg) for leaf in dataclasses.fields(getattr(cfg, section.name))}
    live = frozenset(environment_fields | replaced_config_fields(program, every))
    folded = {}
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        folded[type(value).__name__] = {
            leaf.name: getattr(value, leaf.name) for leaf in dataclasses.fields(value)
            if leaf.name not in live and isinstance(getattr(value, leaf.name), FOLDABLE_TYPES)}
    value_types = frozenset(type(getattr(getattr(cfg, section.name), leaf.name)).__name__
                            for section in dataclasses.fields(cfg) for leaf in dataclasses.fields(getattr(cfg, section.name)))
    return ConfigFacts(type(cfg).__name__, sections, folded, live, value_types)


# ---------------------------------------------------------------------------------------------------
# Facts about the program, recomputed each round


def constant_value(node: ast.AST | None) -> tuple[bool, Any]:
    if isinstance(node, ast.Constant):
        return True, node.value
    return False, None


def same_constant(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


def representable(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(representable(item) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, CONSTANT_TYPES) and not (isinstance(value, (str, bytes)) and len(value) > 4096)


def _annotation_type(annotation: ast.expr | None, known: set[str]) -> str | None:
    """``ModelConfig`` from ``ModelConfig`` or ``ModelConfig | None``; None otherwise."""
    if isinstance(annotation, ast.Name) and annotation.id in known:
        return annotation.id
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = [_annotation_type(side, known) for side in (annotation.left, annotation.right)]
        named = [side for side in sides if side]
        none = [s for s in (annotation.left, annotation.right) if isinstance(s, ast.Constant) and s.value is None]
        if len(named) == 1 and none:
            return named[0]
    return None


@dataclass
class ProgramFacts:
    config: ConfigFacts
    classes: dict[str, ast.ClassDef]
    subclassed: set[str]
    top_level_counts: dict[str, int]
    attr_types: dict[tuple[str, str], str] = field(default_factory=dict)
    attr_constants: dict[tuple[str, str], Any] = field(default_factory=dict)
    property_constants: dict[tuple[str, str], Any] = field(default_factory=dict)
    constant_functions: dict[str, Any] = field(default_factory=dict)
    parameter_constants: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(function) -> values
    tables: dict[str, dict[Any, ast.expr]] = field(default_factory=dict)
    # Module-level names bound once to a short constant (``AUTO_COMPRESSOR = "auto"``): reads fold.
    module_constants: dict[str, Any] = field(default_factory=dict)
    binding_cache: dict[int, tuple[ast.AST, dict[str, int]]] = field(default_factory=dict)
    # Program classes no kept code can instantiate: ``isinstance(x, C)`` is False for them.
    never_instantiated: set[str] = field(default_factory=set)
    # id(function) -> parameters with a default that every call passes (the default is never used).
    always_passed: dict[int, set[str]] = field(default_factory=dict)
    # Field names ``replace(x, name=...)`` passes; classes whose instances may be built other than by a
    # ``Name(...)`` call (see :func:`_rebuilt_classes`).
    replaced_fields: set[str] = field(default_factory=set)
    rebuilt: set[str] = field(default_factory=set)

    def bindings(self, scope: ast.AST) -> dict[str, int]:
        """``scope_bindings`` of ``scope``, computed once a round (folding only removes bindings, so a
        cached count can only be too high: the safe side)."""
        if id(scope) not in self.binding_cache:  # the node is held too, so its id is never reused
            self.binding_cache[id(scope)] = (scope, scope_bindings(scope))
        return self.binding_cache[id(scope)][1]

    @property
    def known_types(self) -> set[str]:
        return self.config.type_names | set(self.classes)

    def rebinds(self, name: str) -> bool:
        return self.top_level_counts.get(name, 0) != 1

    def expression_type(self, node: ast.AST, types: dict[str, str]) -> str | None:
        """The configuration section or program class ``node`` evaluates to, when known."""
        if isinstance(node, ast.Name):
            return types.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.expression_type(node.value, types)
            if base == self.config.root and node.attr in self.config.sections:
                return self.config.sections[node.attr]
            return self.attr_types.get((base, node.attr)) if base else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.classes:
            return node.func.id if not self.rebinds(node.func.id) else None
        if _is_builtin_call(node, "getattr", self.top_level_counts) and len(node.args) == 2:
            return self._getattr_type(node, types)
        return None

    def _getattr_type(self, node: ast.Call, types: dict[str, str]) -> str | None:
        """``getattr(x, "name")`` is ``x.name``; with a computed name, ``getattr(<Config>, name)`` is some
        section and ``getattr(<section>, name)`` some field's value."""
        owner, name = node.args
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return self.expression_type(ast.Attribute(value=owner, attr=name.value, ctx=ast.Load()), types)
        base = self.expression_type(owner, types)
        if base == self.config.root:
            return ANY_SECTION
        return SECTION_VALUE if base == ANY_SECTION or base in self.config.sections.values() else None

    def possible_classes(self, node: ast.AST, types: dict[str, str]) -> set[str] | None:
        """The class names ``node``'s value may have (None: any)."""
        kind = self.expression_type(node, types)
        if kind == ANY_SECTION:
            return set(self.config.sections.values())
        if kind == SECTION_VALUE:
            return set(self.config.value_types)
        return {kind} if kind else None


def _is_builtin_call(node: ast.AST, name: str, top_level_counts: dict[str, int]) -> bool:
    """A call of the builtin ``name`` (the program does not define that name at top level)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
            and not node.keywords and not top_level_counts.get(name))


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _decorator_names(function: ast.AST) -> list[str]:
    return [referenced_name(d) or "?" for d in getattr(function, "decorator_list", [])]


def _self_name(method: ast.FunctionDef) -> str | None:
    if {"staticmethod", "classmethod"} & set(_decorator_names(method)):
        return None
    params = method.args.posonlyargs + method.args.args
    return params[0].arg if params else None


def _returned_constant(function: ast.FunctionDef) -> tuple[bool, Any]:
    """(True, value) when the body (docstring aside) only returns a constant (or nothing)."""
    body = [s for s in function.body if not is_docstring(s) and not isinstance(s, ast.Pass)]
    if not body:
        return True, None
    if len(body) == 1 and isinstance(body[0], ast.Return):
        return (True, None) if body[0].value is None else constant_value(body[0].value)
    return False, None


@dataclass
class _Index:
    """What one walk over the program collects for a round's analyses."""

    parents: dict[int, ast.AST] = field(default_factory=dict)
    annotations: set[int] = field(default_factory=set)  # ids of nodes inside annotations
    attribute_stores: dict[str, int] = field(default_factory=dict)  # attribute name -> assignments anywhere
    mutated: set[str] = field(default_factory=set)  # names changed in place (item stores, .update(), ...)
    names: dict[str, list[ast.Name]] = field(default_factory=dict)  # loads of each name
    global_declared: dict[str, int] = field(default_factory=dict)
    writes_dict: bool = False  # the program touches some object's __dict__
    strings: set[str] = field(default_factory=set)  # string constants outside annotations


def _index(tree: ast.Module) -> _Index:
    index = _Index()
    annotation_roots = []
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            index.parents[id(child)] = node
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                index.names.setdefault(node.id, []).append(node)
        elif isinstance(node, ast.Attribute):
            if node.attr == "__dict__":  # obj.__dict__[...] = ...: any attribute may change
                index.writes_dict = True
            if not isinstance(node.ctx, ast.Load):
                index.attribute_stores[node.attr] = index.attribute_stores.get(node.attr, 0) + 1
            elif isinstance(node.value, ast.Name) and node.attr in MUTATING_METHODS:
                index.mutated.add(node.value.id)
        elif isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and not isinstance(node.ctx, ast.Load):
                index.mutated.add(node.value.id)
        elif isinstance(node, ast.Call):
            name = referenced_name(node.func) or ""
            if name in ("setattr", "delattr", "__setattr__", "__delattr__"):
                # setattr(obj, "name", v), object.__setattr__(obj, "name", v), obj.__setattr__("name", v)
                for argument in node.args[:2]:
                    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                        index.attribute_stores[argument.value] = index.attribute_stores.get(argument.value, 0) + 2
        elif isinstance(node, ast.arg):
            if node.annotation is not None:
                annotation_roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                annotation_roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotation_roots.append(node.annotation)
        elif isinstance(node, ast.Global):
            for name in node.names:
                index.global_declared[name] = index.global_declared.get(name, 0) + 2
    index.annotations = {id(inner) for root in annotation_roots for inner in ast.walk(root)}
    index.strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                     and id(n) not in index.annotations}
    return index


def analyze(program: Program, config: ConfigFacts) -> ProgramFacts:
    """The facts one folding round uses (see the module docstring)."""
    tree = program.tree()
    index = _index(tree)
    scopes = collect_scopes(tree)
    counts: dict[str, int] = dict(index.global_declared)
    for statement in tree.body:
        for name in statement_bound_names(statement):
            counts[name] = counts.get(name, 0) + 1
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef)}
    subclassed = {b.id for c in classes.values() for b in c.bases if isinstance(b, ast.Name) and b.id in classes}
    facts = ProgramFacts(config, classes, subclassed, counts)
    facts.binding_cache = scopes.bindings
    if not index.writes_dict:
        _attribute_facts(facts, index.attribute_stores)
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef) and not statement.decorator_list and not facts.rebinds(statement.name):
            known, value = _returned_constant(statement)
            if known:
                facts.constant_functions[statement.name] = value
        _collect_table(facts, statement, index.mutated)
        _collect_module_constant(facts, statement)
    facts.replaced_fields, facts.rebuilt = _rebuilt_classes(facts, tree, index)
    _parameter_facts(facts, tree, index)
    if not index.writes_dict:
        _dataclass_field_facts(facts, index)
    facts.never_instantiated = _never_instantiated(facts, index)
    return facts


def _never_instantiated(facts: ProgramFacts, index: _Index) -> set[str]:
    """Classes named only in annotations, ``isinstance`` checks and ``except`` clauses, and derived by
    no class that is named otherwise: no instance of them can exist."""
    named = set()
    for name in facts.classes:
        for node in index.names.get(name, []):
            parent = index.parents.get(id(node))
            if id(node) in index.annotations or _in_isinstance_classes(node, index.parents) \
                    or isinstance(parent, ast.ExceptHandler):
                continue
            if isinstance(parent, ast.Tuple) and isinstance(index.parents.get(id(parent)), ast.ExceptHandler):
                continue
            named.add(name)
            break
    instantiable, todo = set(), list(named)
    while todo:
        name = todo.pop()
        if name in instantiable or facts.rebinds(name):
            continue
        instantiable.add(name)
        todo += [b.id for b in facts.classes[name].bases if isinstance(b, ast.Name) and b.id in facts.classes]
    return {name for name in facts.classes if name not in instantiable and not facts.rebinds(name)}


def _self_stores(facts: ProgramFacts) -> dict[str, dict[str, int]]:
    """attribute -> {class: how many ``self.attribute = ...`` its methods hold}."""
    found: dict[str, dict[str, int]] = {}
    for name, cls in facts.classes.items():
        for method in _methods(cls).values():
            self_name = _self_name(method)
            for node in ast.walk(method):
                if (isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load)
                        and isinstance(node.value, ast.Name) and node.value.id == self_name):
                    per_class = found.setdefault(node.attr, {})
                    per_class[name] = per_class.get(name, 0) + 1
    return found


def _relatives(facts: ProgramFacts, name: str) -> set[str]:
    """Program classes above or below ``name`` in the class tree (``name`` excluded)."""
    def bases(cls: str) -> list[str]:
        return [b.id for b in facts.classes[cls].bases if isinstance(b, ast.Name) and b.id in facts.classes]

    above, todo = set(), bases(name)
    while todo:
        current = todo.pop()
        if current not in above:
            above.add(current)
            todo += bases(current)
    below = {other for other in facts.classes if name in bases(other)}
    return above | below


def _attribute_facts(facts: ProgramFacts, stores: dict[str, int]) -> None:
    """Types and constants of attributes a class assigns exactly once, at the top of ``__init__``, where
    every assignment of that attribute name in the program is ``self.<name> = ...`` in some class's
    methods (so no other object's assignment can reach this class's instances) and no class related to
    it by inheritance assigns the name."""
    self_stores = _self_stores(facts)
    for name, cls in facts.classes.items():
        init = _methods(cls).get("__init__")
        self_name = _self_name(init) if init else None
        if name not in facts.subclassed:
            _class_constants(facts, name, cls, stores)
        if self_name is None or name in facts.subclassed:
            continue
        relatives = _relatives(facts, name)
        types = function_types(facts, init, name)
        for statement in init.body:
            if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
                continue
            target = statement.targets[0]
            if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == self_name):
                continue
            per_class = self_stores.get(target.attr, {})
            if (per_class.get(name) != 1 or sum(per_class.values()) != stores.get(target.attr)
                    or relatives & set(per_class)):
                continue
            known, value = constant_value(statement.value)
            if known:
                facts.attr_constants[(name, target.attr)] = value
            elif kind := facts.expression_type(statement.value, types):
                facts.attr_types[(name, target.attr)] = kind
        for method in _methods(cls).values():
            if "property" in _decorator_names(method) and stores.get(method.name, 0) == 0:
                known, value = _returned_constant(method)
                if known:
                    facts.property_constants[(name, method.name)] = value


def _class_constants(facts: ProgramFacts, name: str, cls: ast.ClassDef, stores: dict[str, int]) -> None:
    """``x = <constant>`` in the class body (not a field: no annotation; not an enum member), never
    assigned on any object: a read through an instance is that constant."""
    if any("Enum" in ast.unparse(base) or "Flag" in ast.unparse(base) for base in cls.bases):
        return
    for statement in cls.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
            continue
        target, value = statement.targets[0], statement.value
        known, constant = constant_value(value)
        if known and isinstance(target, ast.Name) and not stores.get(target.id):
            facts.attr_constants[(name, target.id)] = constant


def function_types(facts: ProgramFacts, function: ast.AST, class_name: str | None) -> dict[str, str]:
    """Names of ``function`` whose configuration section or program class is known."""
    known = facts.known_types
    bindings = facts.bindings(function)
    types: dict[str, str] = {}
    args = function.args
    for index, arg in enumerate(args.posonlyargs + args.args + args.kwonlyargs):
        kind = _annotation_type(arg.annotation, known)
        if index == 0 and class_name and isinstance(function, ast.FunctionDef) and _self_name(function) == arg.arg:
            kind = class_name
        if kind and bindings.get(arg.arg) == 1:
            types[arg.arg] = kind
    if isinstance(function, ast.Lambda):
        return types
    for _ in range(2):  # a second pass sees locals typed from locals assigned later in the walk
        for node in walk_scope(function):
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target, value = node.targets[0], node.value
            pairs = [(target, value)]
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                pairs = list(zip(target.elts, value.elts))
            for name_node, value_node in pairs:
                if isinstance(name_node, ast.Name) and bindings.get(name_node.id) == 1:
                    kind = facts.expression_type(value_node, types)
                    if kind:
                        types[name_node.id] = kind
    return types


def _collect_table(facts: ProgramFacts, statement: ast.stmt, mutated: set[str]) -> None:
    """A module-level dict with constant keys, bound once and never changed: ``TABLE["key"]`` folds."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target, value = statement.targets[0], statement.value
    elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
        target, value = statement.target, statement.value
    else:
        return
    if not (isinstance(target, ast.Name) and isinstance(value, ast.Dict) and not facts.rebinds(target.id)):
        return
    if target.id in mutated or not all(isinstance(key, ast.Constant) for key in value.keys):
        return
    facts.tables[target.id] = {key.value: item for key, item in zip(value.keys, value.values)}


def _collect_module_constant(facts: ProgramFacts, statement: ast.stmt) -> None:
    """``NAME = <constant>`` at module level, bound once: a scalar (strings up to
    :data:`MODULE_CONSTANT_MAX_CHARS`) or a short tuple of them, which a read may be replaced with (so
    ``compressor == AUTO_COMPRESSOR`` and ``x in NAMES`` fold)."""
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)) or facts.rebinds(statement.targets[0].id):
        return
    node = statement.value
    if isinstance(node, ast.Tuple) and all(isinstance(item, ast.Constant) for item in node.elts):
        known, value = True, tuple(item.value for item in node.elts)
    else:
        known, value = constant_value(node)
    if known and _small_constant(value):
        facts.module_constants[statement.targets[0].id] = value


def _small_constant(value: Any) -> bool:
    if isinstance(value, tuple):
        return len(value) <= MODULE_CONSTANT_MAX_ITEMS and all(_small_constant(item) and not isinstance(item, tuple)
                                                               for item in value)
    if isinstance(value, (str, bytes)):
        return len(value) <= MODULE_CONSTANT_MAX_CHARS
    return isinstance(value, FOLDABLE_TYPES)


def _parameter_facts(facts: ProgramFacts, tree: ast.Module, index: _Index) -> None:
    """Parameters to which every call passes the same constant (functions and class constructors)."""
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef) and not statement.decorator_list:
            function, is_init = statement, False
        elif isinstance(statement, ast.ClassDef) and statement.name not in facts.subclassed:
            function, is_init = _methods(statement).get("__init__"), True
            if not (isinstance(function, ast.FunctionDef) and not function.decorator_list):
                continue
        else:
            continue
        if facts.rebinds(statement.name):
            continue
        calls = []
        for node in index.names.get(statement.name, []):
            parent = index.parents.get(id(node))
            if isinstance(parent, ast.Call) and parent.func is node:
                calls.append(parent)
            elif id(node) in index.annotations or (is_init and _in_isinstance_classes(node, index.parents)):
                continue
            else:
                calls = []
                break
        values = _agreed_arguments(facts, function, calls, skip_first=is_init) if calls else {}
        if values:
            facts.parameter_constants[id(function)] = values
        # The run check's probe calls the PROBE_NAMES itself (build_optimizers(model, cfg.optim, ...)).
        if calls and not (is_init and statement.name in facts.rebuilt) and statement.name not in PROBE_NAMES:
            facts.always_passed[id(function)] = _always_passed(function, calls, skip_first=is_init)


def _always_passed(function: ast.FunctionDef, calls: list[ast.Call], *, skip_first: bool) -> set[str]:
    """Parameters every call passes, by position or keyword (none when a call unpacks ``*``/``**``)."""
    args = function.args
    positional = [a.arg for a in (args.posonlyargs + args.args)[1 if skip_first else 0:]]
    passed = set(positional + [a.arg for a in args.kwonlyargs])
    for call in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return set()
        passed &= set(positional[:len(call.args)]) | {k.arg for k in call.keywords}
    return passed


def drop_passed_defaults(args: ast.arguments, passed: set[str]) -> None:
    """Defaults of parameters every call passes: dropped, with what only they read (``orthogonalize=
    zeropower_via_newton_schulz``). Positional defaults fill the last parameters, so only a leading run
    of them can go."""
    positional = args.posonlyargs + args.args
    first = len(positional) - len(args.defaults)
    dropped = 0
    while dropped < len(args.defaults) and positional[first + dropped].arg in passed:
        dropped += 1
    args.defaults = args.defaults[dropped:]
    args.kw_defaults = [None if a.arg in passed else d for a, d in zip(args.kwonlyargs, args.kw_defaults)]


def _in_isinstance_classes(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    """``node`` is (in) the class argument of ``isinstance(x, ...)``: a use that passes nothing."""
    parent = parents.get(id(node))
    if isinstance(parent, ast.Tuple):
        node, parent = parent, parents.get(id(parent))
    return (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == "isinstance"
            and len(parent.args) == 2 and parent.args[1] is node)


def _agreed_arguments(facts: ProgramFacts, function: ast.FunctionDef, calls: list[ast.Call], *,
                      skip_first: bool) -> dict[str, Any]:
    args = function.args
    positional = (args.posonlyargs + args.args)[1 if skip_first else 0:]
    defaults = dict(zip([a.arg for a in (args.posonlyargs + args.args)][-len(args.defaults):], args.defaults)) \
        if args.defaults else {}
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    names = [a.arg for a in positional] + [a.arg for a in args.kwonlyargs]
    agreed: dict[str, tuple[bool, Any]] = {}
    for call in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return {}
        if len(call.args) > len(positional) and args.vararg is None:
            return {}
        given: dict[str, ast.expr] = {param.arg: value for param, value in zip(positional, call.args)}
        given.update({k.arg: k.value for k in call.keywords})
        for name in names:
            known, value = constant_value(given.get(name, defaults.get(name)))
            previous = agreed.get(name)
            if not known or (previous is not None and not (previous[0] and same_constant(previous[1], value))):
                agreed[name] = (False, None)
            elif previous is None:
                agreed[name] = (True, value)
    bindings = facts.bindings(function)
    return {name: value for name, (known, value) in agreed.items() if known and bindings.get(name) == 1}


# A dataclass that defines one of these builds, copies or sets its instances its own way.
OWN_CONSTRUCTION_METHODS = frozenset({"__init__", "__new__", "__setattr__", "__getattr__", "__getattribute__",
                                      "__copy__", "__deepcopy__", "__reduce__", "__reduce_ex__", "__setstate__",
                                      "__init_subclass__", "__class_getitem__"})
# Keywords of ``field(...)`` that leave the field an ordinary ``__init__`` parameter.
PLAIN_FIELD_KEYWORDS = frozenset({"default", "default_factory", "repr", "hash", "compare", "metadata"})
# ``type(x).__name__``: the type is read, never called.
TYPE_NAME_ATTRIBUTES = frozenset({"__name__", "__qualname__", "__module__"})


@dataclass
class InitField:
    """A dataclass field as ``__init__`` takes it."""

    name: str
    default: ast.expr | None  # None: every construction must pass it
    positional: bool


def _dataclass_field_facts(facts: ProgramFacts, index: _Index) -> None:
    """A field of a program dataclass that every construction passes as one constant (or leaves at a
    constant default) and that nothing assigns: ``x.field`` is that constant wherever ``x`` is known to
    be of that class (``parts.qat is not None`` -> False). Copies keep the values they copy; what could
    build an instance with other values makes the field (or the class's every field) unfoldable."""
    for name, cls in facts.classes.items():
        fields = _init_fields(facts, cls)
        calls = _construction_calls(name, index)
        if fields is None or name in facts.rebuilt or calls is None or name in PROBE_NAMES:
            continue
        for field_name, value in _agreed_fields(fields, calls).items():
            if field_name not in facts.replaced_fields and not index.attribute_stores.get(field_name):
                facts.attr_constants.setdefault((name, field_name), value)


def _init_fields(facts: ProgramFacts, cls: ast.ClassDef) -> list[InitField] | None:
    """:func:`dataclass_init_fields` of a class nothing subclasses or rebinds."""
    if cls.name in facts.subclassed or facts.rebinds(cls.name):
        return None
    return dataclass_init_fields(cls)


def dataclass_init_fields(cls: ast.ClassDef) -> list[InitField] | None:
    """The fields of ``cls`` in its generated ``__init__``'s order, when instances get their values from
    that ``__init__`` only: decorated by ``dataclass`` alone (``init`` not turned off), no base, no
    method that builds, copies or sets attributes its own way, no ``InitVar``/``KW_ONLY`` and no
    ``field(init=..., kw_only=...)`` (subclasses are the caller's to rule out)."""
    options = _dataclass_options(cls)
    if options is None or cls.bases or cls.keywords:
        return None
    init, kw_only = options.get("init"), options.get("kw_only")
    if not (init is None or (isinstance(init, ast.Constant) and init.value is True)) \
            or not _is_bool_constant(kw_only, default=True):
        return None
    positional = not (isinstance(kw_only, ast.Constant) and kw_only.value is True)
    fields = []
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if item.name in OWN_CONSTRUCTION_METHODS:
                return None
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            kind = _special_annotation(item.annotation)
            if kind in ("InitVar", "KW_ONLY"):
                return None
            if kind is None:
                default = _field_default(item.value)
                if default is False:
                    return None
                fields.append(InitField(item.target.id, default, positional))
    return fields


def _builds_itself(cls: ast.ClassDef) -> bool:
    """A method may make an instance without naming the class: ``cls(...)``, ``self.__class__(...)``."""
    return any((isinstance(n, ast.Attribute) and n.attr == "__class__")
               or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and "classmethod" in _decorator_names(n))
               for n in ast.walk(cls))


def _dataclass_options(cls: ast.ClassDef) -> dict[str, ast.expr] | None:
    """The keywords of the class's one decorator, ``@dataclass`` or ``@dataclass(...)`` (None: not so)."""
    if len(cls.decorator_list) != 1:
        return None
    decorator = cls.decorator_list[0]
    call = decorator if isinstance(decorator, ast.Call) else None
    name = referenced_name(call.func if call else decorator) or ""
    if name != "dataclass" or (call and (call.args or any(k.arg is None for k in call.keywords))):
        return None
    return {k.arg: k.value for k in call.keywords} if call else {}


def _is_bool_constant(node: ast.expr | None, *, default: bool) -> bool:
    return default if node is None else isinstance(node, ast.Constant) and isinstance(node.value, bool)


def _special_annotation(annotation: ast.expr) -> str | None:
    """``ClassVar``, ``InitVar`` or ``KW_ONLY`` when the field's annotation is one of them (as a name,
    ``typing.ClassVar[...]``, or in a string, whose text dataclasses reads)."""
    for kind in ("ClassVar", "InitVar", "KW_ONLY"):
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str) and kind in annotation.value:
            return kind
        if any(getattr(n, "id", None) == kind or getattr(n, "attr", None) == kind for n in ast.walk(annotation)):
            return kind
    return None


def _field_default(value: ast.expr | None) -> ast.expr | None | bool:
    """The default a field's ``__init__`` parameter has (None: none); False when ``field(...)`` takes it
    out of ``__init__``'s plain order (``init=``, ``kw_only=``, or anything unknown)."""
    if not (isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field"):
        return value
    if value.args or any(k.arg not in PLAIN_FIELD_KEYWORDS for k in value.keywords):
        return False
    given = {k.arg: k.value for k in value.keywords}
    return given.get("default", value if "default_factory" in given else None)


def _construction_calls(name: str, index: _Index) -> list[ast.Call] | None:
    """Every ``Name(...)`` call of the class; None when the class is also used as a value (passed,
    stored, ``Name.attr``). Annotations and ``isinstance`` classes pass nothing."""
    calls = []
    for node in index.names.get(name, []):
        parent = index.parents.get(id(node))
        if isinstance(parent, ast.Call) and parent.func is node:
            calls.append(parent)
        elif not (id(node) in index.annotations or _in_isinstance_classes(node, index.parents)):
            return None
    return calls


def _agreed_fields(fields: list[InitField], calls: list[ast.Call]) -> dict[str, Any]:
    """Field -> the constant every call passes for it (or leaves at a constant default)."""
    positional = [f.name for f in fields if f.positional]
    agreed: dict[str, tuple[bool, Any]] = {}
    for call in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords) \
                or len(call.args) > len(positional):
            return {}
        given: dict[str, ast.expr] = dict(zip(positional, call.args))
        given.update({k.arg: k.value for k in call.keywords})
        for item in fields:
            known, value = constant_value(given.get(item.name, item.default))
            previous = agreed.get(item.name)
            if not known or (previous is not None and not (previous[0] and same_constant(previous[1], value))):
                agreed[item.name] = (False, None)
            elif previous is None:
                agreed[item.name] = (True, value)
    return {name: value for name, (known, value) in agreed.items() if known}


def _rebuilt_classes(facts: ProgramFacts, tree: ast.Module, index: _Index) -> tuple[set[str], set[str]]:
    """What may give an instance other values than a ``Name(...)`` call gave it: fields
    ``replace(x, field=...)`` names (in any class), and the classes of objects that ``replace(x,
    **changes)``, ``type(x)``/``x.__class__`` (which may be called) or ``setattr(x, <computed name>, ...)``
    may be of, and classes named in a string (``globals()["Name"]``) or building themselves (``cls(...)``)."""
    replaced: set[str] = set()
    candidates = set(facts.classes)
    rebuilt = {name for name in candidates if name in index.strings or _builds_itself(facts.classes[name])}

    def may_be(node: ast.AST, types: dict[str, str]) -> set[str]:
        possible = facts.possible_classes(node, types)
        return set(candidates) if possible is None else possible & candidates

    for node, types in _typed_nodes(facts, tree):
        if isinstance(node, ast.Call) and _call_name(node) == "replace" and node.args:
            replaced |= {k.arg for k in node.keywords if k.arg}
            if any(k.arg is None for k in node.keywords):
                rebuilt |= may_be(node.args[0], types)
        elif (target := _computed_setattr_target(node)) is not None:
            rebuilt |= may_be(target, types)
        elif (instance := _type_of(node)) is not None:
            parent = index.parents.get(id(node))
            if not (isinstance(parent, ast.Attribute) and parent.attr in TYPE_NAME_ATTRIBUTES):
                rebuilt |= may_be(instance, types)
    return replaced, rebuilt


def _call_name(call: ast.Call) -> str:
    return referenced_name(call.func) or ""


def _type_of(node: ast.AST) -> ast.expr | None:
    """``x`` of ``type(x)`` or ``x.__class__``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type" \
            and len(node.args) == 1:
        return node.args[0]
    if isinstance(node, ast.Attribute) and node.attr == "__class__":
        return node.value
    return None


def _computed_setattr_target(node: ast.AST) -> ast.expr | None:
    """The object of ``setattr(x, name, v)``, ``object.__setattr__(x, name, v)`` or
    ``x.__setattr__(name, v)`` (and the ``del`` forms) when ``name`` is not a string constant."""
    if not isinstance(node, ast.Call) or _call_name(node) not in ("setattr", "delattr", "__setattr__", "__delattr__"):
        return None
    through_object = isinstance(node.func, ast.Name) or isinstance(node.func.value, ast.Name) \
        and node.func.value.id == "object"
    target, rest = (node.args[0], node.args[1:]) if through_object and node.args else (node.func.value, node.args)
    named = rest and isinstance(rest[0], ast.Constant) and isinstance(rest[0].value, str)
    return None if named else target


def _typed_nodes(facts: ProgramFacts, tree: ast.Module) -> Iterator[tuple[ast.AST, dict[str, str]]]:
    """Every node of the program with the types known in its scope (:func:`function_types`; a nested
    scope inherits the types of the names it does not bind itself)."""
    stack: list[tuple[ast.AST, dict[str, str], str | None]] = [(tree, {}, None)]
    while stack:
        scope, types, class_name = stack.pop()
        for node in walk_scope(scope):
            yield node, types
            for inner in ast.iter_child_nodes(node):  # walk_scope yields only the outer parts of these
                if isinstance(inner, ast.ClassDef):
                    stack.append((inner, {}, inner.name))
                elif isinstance(inner, SCOPE_NODES):
                    inherited = {} if scope is tree or isinstance(scope, ast.ClassDef) else \
                        {name: kind for name, kind in types.items() if name not in facts.bindings(inner)}
                    own = function_types(facts, inner, class_name) if isinstance(inner, FUNCTION_NODES) else {}
                    stack.append((inner, {**inherited, **own}, None))
