"""Specialize the flattened program to one configuration: fold what the configuration fixes (tooling).

The exporter knows the configuration the script bakes. Every field it folds is a constant in the
script: the script refuses an environment variable that would change one (the fields the environment
may still set are :data:`pgolf.export.bundle.ENVIRONMENT_FIELDS`), so a read of a folded field can be
replaced by its value. Then whatever those values decide is decided here, at export time:

* **config reads**: ``cfg.model.smear_gate_enabled``, ``m.num_loops`` or ``self.cfg.fused_mlp`` become
  constants wherever the exporter can tell that the object read is a configuration section. It can
  tell from annotations (``cfg: Config``, ``model_cfg: ModelConfig``), from locals assigned once from
  such an expression (``m = cfg.model``), and from attributes a class assigns once in ``__init__``
  (``self.cfg = cfg``). Annotations are trusted: pgolf's core code is annotated, and the run check
  (``pgolf.export.verify``) catches a lie;
* **values that follow**: constant expressions are evaluated (``x if False else None``, ``0 > 0``,
  ``"auto" == "fa3"``); a local assigned one constant once, at the top of its function; an attribute
  whose one assignment anywhere is ``self.x = <constant>`` in ``__init__`` (``self.smear_gate =
  None``); a property or function that only returns a constant; a parameter to which every call of
  its function passes the same constant (``MLP(..., fused=False)``); ``TABLE["key"]`` of a module-level
  dict that is never changed; a module-level name bound once to a short constant, read in a function;
  ``isinstance(<constant>, <builtin types>)``; ``any(False for x in xs)``/``all(True for x in xs)``
  when iterating ``xs`` runs no code; a neutral constant where only a truth value counts
  (``x and True`` -> ``x`` in an ``if`` test: :func:`as_test`); a dataclass field every construction
  leaves one constant and nothing may change (``_dataclass_field_facts`` in :mod:`pgolf.export.facts`);
  a local bound once to a module-level name bound once (:class:`GlobalAlias`);
* **defaults never used**: a parameter's default goes when every call passes it
  (:func:`pgolf.export.facts.drop_passed_defaults`);
* **dead code**: an ``if`` whose test is constant keeps one branch; statements after ``return`` or
  ``raise`` go; a local that is assigned but never read goes.

No field is folded if the shipped code makes a config object with a different value for it
(``dataclasses.replace(cfg, ttt_lr=...)`` keeps ``ttt_lr`` a live read; see
:func:`pgolf.export.facts.config_facts`). What the program proves (the facts these rules use) is read by
:mod:`pgolf.export.facts`; this module changes the program.
After folding, :mod:`pgolf.export.shake` removes what nothing reaches any more; the two repeat until
nothing changes. Assumptions, all checked by running the result (``pgolf.export.verify`` and the
tests): annotations tell the truth, attribute reads have no side effects, a ``setattr`` with a
computed name only replaces submodules (never an attribute that holds a constant).
"""

import ast
import operator
from dataclasses import dataclass
from typing import Any

from pgolf.export.facts import (ConfigFacts, ProgramFacts, analyze, constant_value, drop_passed_defaults,
                                function_types, representable)
from pgolf.export.program import FUNCTION_NODES, SCOPE_NODES, Program, collect_scopes, copy_tree, walk_scope

# Builtins whose value on constants the exporter may compute (unless the program rebinds the name).
PURE_BUILTINS = {"len": len, "bool": bool, "int": int, "float": float, "str": str, "abs": abs, "min": min,
                 "max": max, "round": round}
# Builtin types ``isinstance(<constant>, ...)`` is decided against (unless the program rebinds the name).
BUILTIN_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex, "str": str, "bytes": bytes,
                 "tuple": tuple, "list": list, "dict": dict, "set": set, "frozenset": frozenset, "object": object,
                 "type": type}
# Annotations of a parameter whose iteration runs no code of the program (annotations are trusted).
SEQUENCE_ANNOTATIONS = frozenset({"list", "tuple", "dict", "set", "frozenset"})
BINARY_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
                    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
                    ast.LShift: operator.lshift, ast.RShift: operator.rshift}
COMPARE_OPERATORS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                     ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
                     ast.NotIn: lambda a, b: a not in b}
UNARY_OPERATORS = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
MAX_ROUNDS = 30


# ---------------------------------------------------------------------------------------------------
# Folding


@dataclass(frozen=True)
class GlobalAlias:
    """A local bound once, at the top of its function, to a module-level name bound once
    (``muon_class = Muon``): its reads become that name (then ``Muon(...)`` is a direct call)."""

    name: str


@dataclass
class _Scope:
    types: dict[str, str]
    constants: dict[str, Any]
    class_name: str | None = None
    function: ast.AST | None = None


class Folder(ast.NodeTransformer):
    """One folding pass over the program with a round's facts (see the module docstring).

    ``opaque``: values that may travel (a parameter every call passes it to) and be compared with
    ``is None``, but never enter arithmetic, so that every place they reach still spells them out
    (the script's own byte count is filled in after folding)."""

    def __init__(self, facts: ProgramFacts, opaque: frozenset = frozenset()):
        self.facts = facts
        self.opaque = opaque
        self.scopes = [_Scope({}, {})]
        self.class_stack: list[str] = []
        # Expressions used as a container or callable (x[...], x.attr, x(...)): never folded to None or
        # another scalar, which would only turn code that cannot run into a warning at compile time.
        self.used_as_object: set[int] = set()

    @property
    def scope(self) -> _Scope:
        return self.scopes[-1]

    def run(self, program: Program) -> None:
        for section in program.sections:  # a module may end up empty (clean_block's ``pass`` is for blocks)
            section.body = [s for s in self.fold_block(section.body, None) if not isinstance(s, ast.Pass)]

    # -- statements ------------------------------------------------------------------------------

    def fold_block(self, statements: list[ast.stmt], top_level_function: ast.AST | None) -> list[ast.stmt]:
        """Fold a statement list; at a function's top level, locals assigned one constant become known
        for the statements after them; in any block of a function, a local bound once to a fixed global
        (:class:`GlobalAlias`) is that global for the rest of the block."""
        function = top_level_function or self.scope.function
        bindings = self.facts.bindings(function) if isinstance(function, FUNCTION_NODES) else {}
        aliases: list[str] = []
        result: list[ast.stmt] = []
        for statement in statements:
            folded = self.visit(statement)
            folded = folded if isinstance(folded, list) else [folded] if folded is not None else []
            result.extend(folded)
            node = folded[0] if len(folded) == 1 else None
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and bindings.get(node.targets[0].id) == 1):
                continue
            if top_level_function is not None and isinstance(node.value, ast.Constant):
                self.scope.constants[node.targets[0].id] = node.value.value
            elif self._is_fixed_global(node.value):
                self.scope.constants[node.targets[0].id] = GlobalAlias(node.value.id)
                aliases.append(node.targets[0].id)
        if top_level_function is None:  # after an inner block the local may be unbound (branch not taken)
            for name in aliases:
                self.scope.constants.pop(name, None)
        return clean_block(result)

    def _is_fixed_global(self, node: ast.expr) -> bool:
        """A module-level name bound once and never locally: once read, it names that object for good."""
        return isinstance(node, ast.Name) and self.facts.top_level_counts.get(node.id) == 1 \
            and not self._locally_bound(node.id)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, name, self.fold_block(value, None))
            elif isinstance(value, list):
                new_values = []
                for item in value:
                    if isinstance(item, ast.AST):
                        item = self.visit(item)
                        if item is None:
                            continue
                    new_values.append(item)
                value[:] = new_values
            elif isinstance(value, ast.AST):
                new = self.visit(value)
                if new is None:
                    delattr(node, name)
                else:
                    setattr(node, name, new)
        return node

    def visit_If(self, node: ast.If):
        node.test = as_test(self.visit(node.test))
        known, value = truthiness(node.test)
        if known:
            chosen = node.body if value else node.orelse
            return self.fold_block(chosen, None) if chosen else []
        node.body = self.fold_block(node.body, None)
        node.orelse = self.fold_block(node.orelse, None) if node.orelse else []
        return node

    def visit_While(self, node: ast.While):
        node.test = as_test(self.visit(node.test))
        known, value = truthiness(node.test)
        if known and not value:
            return self.fold_block(node.orelse, None) if node.orelse else []
        node.body = self.fold_block(node.body, None)
        node.orelse = self.fold_block(node.orelse, None) if node.orelse else []
        return node

    def visit_Assert(self, node: ast.Assert):
        self.generic_visit(node)
        node.test = as_test(node.test)
        known, value = constant_value(node.test)
        return [] if known and value else node

    def visit_Expr(self, node: ast.Expr):
        self.generic_visit(node)
        if isinstance(node.value, ast.Constant) and not isinstance(node.value.value, str):
            return []
        return node

    # -- scopes ----------------------------------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        self.class_stack.append(node.name)
        self.scopes.append(_Scope({}, {}, node.name))
        node.body = self.fold_block(node.body, None)
        self.scopes.pop()
        self.class_stack.pop()
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        if id(node) in self.facts.always_passed:
            drop_passed_defaults(node.args, self.facts.always_passed[id(node)])
        node.args = self.visit(node.args)
        class_name = self.scope.class_name if self.scopes[-1].function is None else None
        types = {**self._inherited_types(node), **function_types(self.facts, node, class_name)}
        constants = self._inherited_constants(node)
        bindings = self.facts.bindings(node)
        constants.update({name: value for name, value in self.facts.parameter_constants.get(id(node), {}).items()
                          if bindings.get(name) == 1})
        self.scopes.append(_Scope(types, constants, class_name, node))
        node.body = self.fold_block(node.body, node)
        self.scopes.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda):
        node.args = self.visit(node.args)
        self.scopes.append(_Scope(self._inherited_types(node), self._inherited_constants(node), None, node))
        node.body = self.visit(node.body)
        self.scopes.pop()
        return node

    def _comprehension(self, node: ast.AST):
        node.generators[0].iter = self.visit(node.generators[0].iter)
        self.scopes.append(_Scope(self._inherited_types(node), self._inherited_constants(node), None, node))
        for index, generator in enumerate(node.generators):
            if index:
                generator.iter = self.visit(generator.iter)
            generator.ifs = [as_test(self.visit(condition)) for condition in generator.ifs]
        for name in ("elt", "key", "value"):
            if hasattr(node, name):
                setattr(node, name, self.visit(getattr(node, name)))
        self.scopes.pop()
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def _shadowed(self, scope: ast.AST) -> set[str]:
        return set(self.facts.bindings(scope))

    def _inherited_types(self, scope: ast.AST) -> dict[str, str]:
        shadowed = self._shadowed(scope)
        if self.scope.function is None:  # class bodies and the module do not enclose functions' locals
            return {}
        return {name: kind for name, kind in self.scope.types.items() if name not in shadowed}

    def _inherited_constants(self, scope: ast.AST) -> dict[str, Any]:
        if self.scope.function is None:
            return {}
        shadowed = self._shadowed(scope)
        return {name: value for name, value in self.scope.constants.items() if name not in shadowed}

    # -- expressions -----------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name):
        if isinstance(node.ctx, ast.Load) and isinstance(self.scope.constants.get(node.id), GlobalAlias):
            alias = self.scope.constants[node.id].name
            return node if self._locally_bound(alias) else ast.copy_location(ast.Name(id=alias, ctx=ast.Load()), node)
        if isinstance(node.ctx, ast.Load) and node.id in self.scope.constants and id(node) not in self.used_as_object:
            return _constant(self.scope.constants[node.id], node)
        if isinstance(node.ctx, ast.Load) and node.id == "TYPE_CHECKING" and not self.facts.rebinds("TYPE_CHECKING"):
            return _constant(False, node)
        if isinstance(node.ctx, ast.Load) and node.id in self.facts.module_constants \
                and id(node) not in self.used_as_object and not self._locally_bound(node.id) \
                and self.scope.function is not None:  # in functions: module-level code keeps its names
            return _constant(self.facts.module_constants[node.id], node)
        return node

    def visit_Attribute(self, node: ast.Attribute):
        self.used_as_object.add(id(node.value))
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load) or id(node) in self.used_as_object:
            return node
        kind = self.facts.expression_type(node.value, self.scope.types)
        if kind is None:
            return node
        known, value = self.facts.config.folded_value(kind, node.attr)
        if not known and kind in self.facts.classes and not self._inside_init_of(kind) and is_pure(node.value):
            for table in (self.facts.attr_constants, self.facts.property_constants):
                if (kind, node.attr) in table:
                    known, value = True, table[(kind, node.attr)]
        return _constant(value, node) if known and representable(value) else node

    def _inside_init_of(self, class_name: str) -> bool:
        function = self.scope.function
        return isinstance(function, ast.FunctionDef) and function.name == "__init__" and \
            self.scope.class_name == class_name

    def visit_Subscript(self, node: ast.Subscript):
        if not isinstance(node.value, ast.Name):
            self.used_as_object.add(id(node.value))
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            return node
        known_key, key = constant_value(node.slice)
        if not known_key:
            return node
        if isinstance(node.value, ast.Name) and node.value.id in self.facts.tables \
                and node.value.id not in self.scope.constants:
            table = self.facts.tables[node.value.id]
            try:
                item = table.get(key) if key in table else None
            except TypeError:
                item = None
            if self._copyable(item):
                return ast.copy_location(copy_tree(item), node)
            return node
        known, value = constant_value(node.value)
        if known and isinstance(value, (tuple, str)) and isinstance(key, int):
            return _evaluated(lambda: value[key], node)
        return node

    def _copyable(self, item: ast.AST | None) -> bool:
        """A table value small enough to write in place of the lookup: constants, global names, tuples of them."""
        if isinstance(item, (ast.Tuple, ast.List)):
            return len(item.elts) <= 4 and all(isinstance(e, (ast.Constant, ast.Name)) and self._copyable(e)
                                               for e in item.elts)
        return isinstance(item, ast.Constant) or (isinstance(item, ast.Name) and not self._locally_bound(item.id))

    def _locally_bound(self, name: str) -> bool:
        return any(scope.function is not None and name in self.facts.bindings(scope.function) for scope in self.scopes)

    def visit_Call(self, node: ast.Call):
        self.used_as_object.add(id(node.func))
        self.generic_visit(node)
        if not isinstance(node.func, ast.Name) or self._locally_bound(node.func.id):
            return node
        name = node.func.id
        arguments = node.args + [keyword.value for keyword in node.keywords]
        if name == "isinstance" and not self.facts.top_level_counts.get(name) and len(node.args) == 2 \
                and not node.keywords and is_pure(node.args[0]):
            return self._fold_isinstance(node)
        if name in ("any", "all") and not self.facts.top_level_counts.get(name) and len(node.args) == 1 \
                and not node.keywords:
            return self._fold_any_all(node, name == "any")
        if name in self.facts.constant_functions and all(is_pure(argument) for argument in arguments):
            value = self.facts.constant_functions[name]
            return _constant(value, node) if representable(value) else node
        if name in PURE_BUILTINS and not self.facts.top_level_counts.get(name) and not node.keywords \
                and node.args and all(isinstance(a, ast.Constant) for a in node.args) and not self._is_opaque(*node.args):
            return _evaluated(lambda: PURE_BUILTINS[name](*[a.value for a in node.args]), node)
        return node

    def _fold_isinstance(self, node: ast.Call) -> ast.AST:
        """A constant against builtin types is decided; otherwise drop classes no instance of which can
        exist (none left: False)."""
        classes = node.args[1]
        items = classes.elts if isinstance(classes, ast.Tuple) else [classes]
        builtin_types = [self._builtin_type(c) for c in items]
        if isinstance(node.args[0], ast.Constant) and items and all(builtin_types):
            return _evaluated(lambda: isinstance(node.args[0].value, tuple(builtin_types)), node)
        left = [c for c in items if not (isinstance(c, ast.Name) and c.id in self.facts.never_instantiated
                                         and not self._locally_bound(c.id))]
        if not left:
            return _constant(False, node)
        if len(left) < len(items):
            node.args[1] = left[0] if len(left) == 1 else ast.Tuple(elts=left, ctx=ast.Load())
        return node

    def _fold_any_all(self, node: ast.Call, is_any: bool) -> ast.AST:
        """``any(False for x in xs)`` is False and ``all(True for x in xs)`` True when iterating ``xs``
        runs no code (:meth:`_iterates_without_effect`): every element is the one that does not decide."""
        items = node.args[0]
        if not isinstance(items, (ast.GeneratorExp, ast.ListComp)) or len(items.generators) != 1:
            return node
        loop = items.generators[0]
        known, value = constant_value(items.elt)
        if not known or bool(value) == is_any or loop.ifs or loop.is_async or not isinstance(loop.target, ast.Name):
            return node
        return _constant(not is_any, node) if self._iterates_without_effect(loop.iter) else node

    def _iterates_without_effect(self, node: ast.expr) -> bool:
        """A constant or a display of constants, or a name of this function bound once: a parameter
        annotated as a builtin container (annotations are trusted) or a local assigned a display or a
        list comprehension (whose own evaluation has happened when the name was bound)."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (tuple, str, bytes))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return all(isinstance(e, ast.Constant) for e in node.elts)
        function = self.scope.function
        if not (isinstance(node, ast.Name) and isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))) \
                or self.facts.bindings(function).get(node.id) != 1:
            return False
        args = function.args
        for parameter in args.posonlyargs + args.args + args.kwonlyargs:
            if parameter.arg == node.id:
                annotation = parameter.annotation
                base = annotation.value if isinstance(annotation, ast.Subscript) else annotation
                return isinstance(base, ast.Name) and base.id in SEQUENCE_ANNOTATIONS \
                    and not self.facts.top_level_counts.get(base.id)
        for statement in walk_scope(function):
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id
                                                         for t in statement.targets):
                return len(statement.targets) == 1 and isinstance(
                    statement.value, (ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.DictComp, ast.SetComp))
        return False

    def _builtin_type(self, node: ast.AST) -> type | None:
        """The builtin type ``node`` names, unless the program binds that name itself."""
        if not (isinstance(node, ast.Name) and node.id in BUILTIN_TYPES):
            return None
        if self.facts.top_level_counts.get(node.id) or self._locally_bound(node.id):
            return None
        return BUILTIN_TYPES[node.id]

    def _is_opaque(self, *nodes: ast.AST) -> bool:
        return any(isinstance(n, ast.Constant) and type(n.value) is int and n.value in self.opaque for n in nodes)

    def visit_UnaryOp(self, node: ast.UnaryOp):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = as_test(node.operand)
        known, value = constant_value(node.operand)
        if self._is_opaque(node.operand) and not isinstance(node.op, ast.Not):
            return node
        return _evaluated(lambda: UNARY_OPERATORS[type(node.op)](value), node) if known else node

    def visit_BinOp(self, node: ast.BinOp):
        original = (node.left, node.right)
        self.generic_visit(node)
        if self._is_opaque(node.left, node.right):
            # The read stays a read: python-minifier would compute ``16000000 - 987654321`` itself.
            node.left, node.right = (before if self._is_opaque(after) and not isinstance(before, ast.Constant)
                                     else after for before, after in zip(original, (node.left, node.right)))
            return node
        (left_known, left), (right_known, right) = constant_value(node.left), constant_value(node.right)
        if not (left_known and right_known) or isinstance(left, str) or isinstance(right, str):
            return node  # string arithmetic (and % formatting) stays as written
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            return node
        return _evaluated(lambda: BINARY_OPERATORS[type(node.op)](left, right), node)

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        if (len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) and isinstance(node.left, ast.Constant)
                and isinstance(node.comparators[0], ast.Name) and node.comparators[0].id in self.facts.tables
                and not self._locally_bound(node.comparators[0].id)):
            keys = self.facts.tables[node.comparators[0].id]
            return _evaluated(lambda: (node.left.value in keys) == isinstance(node.ops[0], ast.In), node)
        operands = [node.left, *node.comparators]
        if not all(isinstance(operand, ast.Constant) for operand in operands):
            return node
        if self._is_opaque(*operands) and not all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            return node
        values = [operand.value for operand in operands]

        def compare() -> bool:
            for op, left, right in zip(node.ops, values, values[1:]):
                if isinstance(op, (ast.Is, ast.IsNot)):
                    if not any(v is None or isinstance(v, bool) for v in (left, right)):
                        raise TypeError("identity of non-singletons is not folded")
                    outcome = (left is right) if isinstance(op, ast.Is) else (left is not right)
                else:
                    outcome = COMPARE_OPERATORS[type(op)](left, right)
                if not outcome:
                    return False
            return True

        return _evaluated(compare, node)

    def visit_BoolOp(self, node: ast.BoolOp):
        self.generic_visit(node)
        is_and = isinstance(node.op, ast.And)
        kept: list[ast.expr] = []
        for index, value in enumerate(node.values):
            known, constant = constant_value(value)
            last = index == len(node.values) - 1
            if known and bool(constant) != is_and:  # short-circuits here: the rest never runs
                kept.append(value)
                break
            if known and not last:
                continue  # evaluation goes on to the next value
            kept.append(value)
        if len(kept) == 1:
            return kept[0]
        node.values = kept
        return node

    def visit_IfExp(self, node: ast.IfExp):
        node.test = as_test(self.visit(node.test))
        known, value = truthiness(node.test)
        if known:
            return self.visit(node.body if value else node.orelse)
        node.body, node.orelse = self.visit(node.body), self.visit(node.orelse)
        return node


def truthiness(node: ast.AST) -> tuple[bool, bool]:
    """(True, truth) when ``node``'s truth value is fixed and evaluating it has no side effects to keep:
    a constant, ``pure or <true constant>``, ``pure and <false constant>``, ``not`` of such."""
    known, value = constant_value(node)
    if known:
        return True, bool(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        known, value = truthiness(node.operand)
        return known, not value
    if isinstance(node, ast.BoolOp):
        decides = not isinstance(node.op, ast.And)
        for item in node.values:
            known, value = truthiness(item)
            if known and value == decides:
                return True, decides
            if not is_pure(item):
                return False, False
    return False, False


def as_test(node: ast.expr) -> ast.expr:
    """``node`` (folded already) where only its truth value counts: an if/while/assert test, a ``not``
    operand, a comprehension condition, and then the operands of and/or in such a place. There a
    neutral constant operand goes (``x and True`` -> ``x``, ``x or False`` -> ``x``): the value changes
    but not its truth, and nothing that ran is skipped; a truth fixed without side effects (see
    :func:`truthiness`) becomes that constant."""
    if isinstance(node, ast.BoolOp):
        neutral = isinstance(node.op, ast.And)  # True changes nothing in an `and`, False in an `or`
        operands = [as_test(value) for value in node.values]
        kept = [v for v in operands if not (isinstance(v, ast.Constant) and bool(v.value) == neutral)]
        if not kept:
            return _constant(neutral, node)
        node.values = kept
        if len(kept) == 1:
            return kept[0]
    known, value = truthiness(node)
    return _constant(value, node) if known and not isinstance(node, ast.Constant) else node


def _constant(value: Any, like: ast.AST) -> ast.AST:
    return ast.copy_location(ast.Constant(value=value), like) if representable(value) else like


def _evaluated(compute, node: ast.AST) -> ast.AST:
    try:
        value = compute()
    except Exception:  # an expression that raises stays as written (and raises at run time)
        return node
    return _constant(value, node)


def is_pure(node: ast.AST) -> bool:
    """An expression without side effects (names, constants, attribute reads and operators on them)."""
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.Attribute):
        return is_pure(node.value)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(is_pure(e) for e in node.elts)
    if isinstance(node, ast.Dict):  # constant keys only: hashing a constant runs no program code (None: **x)
        return all(isinstance(k, ast.Constant) for k in node.keys) and all(is_pure(v) for v in node.values)
    if isinstance(node, ast.Set):
        return all(isinstance(e, ast.Constant) for e in node.elts)
    if isinstance(node, ast.BinOp):
        return is_pure(node.left) and is_pure(node.right)
    if isinstance(node, ast.UnaryOp):
        return is_pure(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(is_pure(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return is_pure(node.left) and all(is_pure(c) for c in node.comparators)
    if isinstance(node, ast.IfExp):
        return is_pure(node.test) and is_pure(node.body) and is_pure(node.orelse)
    return False


TERMINATORS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def clean_block(statements: list[ast.stmt]) -> list[ast.stmt]:
    """Drop what follows a return/raise/break/continue and needless ``pass``; never leave a block empty."""
    kept: list[ast.stmt] = []
    for statement in statements:
        if isinstance(statement, ast.Pass):
            continue
        kept.append(statement)
        if isinstance(statement, TERMINATORS):
            break
    return kept or [ast.Pass()]


def remove_dead_stores(program: Program) -> None:
    """Remove ``name = <pure expression>`` in functions when ``name`` is never read in that function
    (nested scopes included); repeated per function, since a removal can leave another store unread."""
    scopes = collect_scopes(program.tree())
    for key, (node, _) in scopes.bindings.items():
        if not isinstance(node, FUNCTION_NODES[:2]):
            continue
        loaded = scopes.loads[key]
        while _remove_dead_stores_in(node, loaded):
            loaded = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _remove_dead_stores_in(function: ast.AST, loaded: set[str]) -> bool:
    holders = [function, *(n for n in walk_scope(function) if hasattr(n, "body"))]
    candidates = [s for h in holders for name, value in ast.iter_fields(h) if isinstance(value, list)
                  for s in value if isinstance(s, (ast.Assign, ast.AnnAssign))]
    if not any(_is_dead_store(s, loaded, set()) for s in candidates):
        return False
    declared = {name for n in walk_scope(function) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
    removed = False
    for holder in holders:
        if isinstance(holder, SCOPE_NODES) and holder is not function:
            continue  # a nested function's or class's statements are not this function's locals
        for name, value in ast.iter_fields(holder):
            if not (isinstance(value, list) and value and isinstance(value[0], ast.stmt)):
                continue
            kept = [s for s in value if not _is_dead_store(s, loaded, declared)]
            if len(kept) != len(value):
                setattr(holder, name, kept or [ast.Pass()])
                removed = True
    return removed


def _is_dead_store(statement: ast.stmt, loaded: set[str], declared: set[str]) -> bool:
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target, value = statement.targets[0], statement.value
    elif isinstance(statement, ast.AnnAssign) and statement.value is not None and statement.simple:
        target, value = statement.target, statement.value
    else:
        return False
    return (isinstance(target, ast.Name) and target.id not in loaded and target.id not in declared
            and is_pure(value))


def fold_program(program: Program, config: ConfigFacts, after_round=None, opaque: frozenset = frozenset()) -> int:
    """Fold and clean until nothing changes (``after_round(program)`` runs after each round, for the
    tree shaker; ``opaque``: see :class:`Folder`); returns the number of rounds."""
    previous = None
    if after_round is not None:  # drop what nothing reaches before the first, costliest round
        after_round(program)
    for rounds in range(1, MAX_ROUNDS + 1):
        facts = analyze(program, config)
        Folder(facts, opaque).run(program)
        remove_dead_stores(program)
        if after_round is not None:
            after_round(program)
        current = ast.dump(program.tree())
        if current == previous:
            return rounds
        previous = current
    return MAX_ROUNDS


def bake_config_defaults(program: Program, config: ConfigFacts, values: dict[str, dict[str, Any]]) -> None:
    """Make the section classes' defaults the baked values, so ``Config()`` in the script is the
    baked configuration (``values``: section class -> {field: value} that differ from the defaults)."""
    for statement in program.statements():
        if not (isinstance(statement, ast.ClassDef) and statement.name in values):
            continue
        for item in statement.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                    and item.target.id in values[statement.name]:
                item.value = ast.copy_location(ast.Constant(value=values[statement.name][item.target.id]), item)

